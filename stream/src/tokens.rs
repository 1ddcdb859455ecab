//! Single-use tokens: each Exec, Attach or PortForward call stores its
//! request under a fresh random token, which its URL carries; the first
//! connection to the URL takes it. Tokens expire after a minute, and at
//! most [`MAX_IN_FLIGHT`] wait at once.

use crate::request::Request;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a token waits for its connection.
pub const TOKEN_TTL: Duration = Duration::from_secs(60);

/// Tokens waiting at once; past this the CRI call is refused.
pub const MAX_IN_FLIGHT: usize = 1000;

/// Random bytes in a token (URL-safe base64 of them is the token).
const TOKEN_BYTES: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("{MAX_IN_FLIGHT} streaming requests are already waiting for their connection")]
    Full,
    #[error("no randomness for a token: {0}")]
    Random(String),
}

#[derive(Default)]
pub struct Tokens {
    waiting: Mutex<HashMap<String, (Request, Instant)>>,
}

impl Tokens {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Request, Instant)>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores `req` and answers its token.
    pub fn insert(&self, req: Request) -> Result<String, TokenError> {
        self.insert_at(req, Instant::now())
    }

    fn insert_at(&self, req: Request, now: Instant) -> Result<String, TokenError> {
        let mut raw = [0u8; TOKEN_BYTES];
        getrandom::getrandom(&mut raw).map_err(|e| TokenError::Random(e.to_string()))?;
        let token = url_safe(&raw);
        let mut waiting = self.lock();
        waiting.retain(|_, (_, at)| now.duration_since(*at) < TOKEN_TTL);
        if waiting.len() >= MAX_IN_FLIGHT {
            return Err(TokenError::Full);
        }
        waiting.insert(token.clone(), (req, now));
        Ok(token)
    }

    /// Takes the request of `token` if it is known and fresh; a token is
    /// taken once.
    pub fn take(&self, token: &str) -> Option<Request> {
        self.take_at(token, Instant::now())
    }

    fn take_at(&self, token: &str, now: Instant) -> Option<Request> {
        let (req, at) = self.lock().remove(token)?;
        (now.duration_since(at) < TOKEN_TTL).then_some(req)
    }

    /// Tokens waiting (expired ones included until the next insert).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Unpadded URL-safe base64.
fn url_safe(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len() * 4 / 3 + 2);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(ABC[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::PortForwardRequest;

    fn req(n: u16) -> Request {
        Request::PortForward(PortForwardRequest {
            sandbox_id: "p".into(),
            ports: vec![n],
        })
    }

    #[test]
    fn a_token_is_taken_once() {
        let t = Tokens::default();
        let a = t.insert(req(1)).expect("token");
        let b = t.insert(req(2)).expect("token");
        assert_ne!(a, b);
        assert_eq!(a.len(), 22);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        assert_eq!(t.take(&a), Some(req(1)));
        assert_eq!(t.take(&a), None, "used");
        assert_eq!(t.take("unknown"), None);
        assert_eq!(t.take(&b), Some(req(2)));
    }

    #[test]
    fn tokens_expire_after_a_minute() {
        let t = Tokens::default();
        let start = Instant::now();
        let a = t.insert_at(req(1), start).expect("token");
        assert_eq!(t.take_at(&a, start + TOKEN_TTL), None);
        let b = t.insert_at(req(1), start).expect("token");
        assert!(t
            .take_at(&b, start + TOKEN_TTL - Duration::from_secs(1))
            .is_some());
    }

    #[test]
    fn waiting_tokens_are_bounded_and_expired_ones_make_room() {
        let t = Tokens::default();
        let start = Instant::now();
        for _ in 0..MAX_IN_FLIGHT {
            t.insert_at(req(1), start).expect("token");
        }
        assert_eq!(t.insert_at(req(1), start), Err(TokenError::Full));
        assert!(t.insert_at(req(1), start + TOKEN_TTL).is_ok());
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn url_safe_base64() {
        assert_eq!(url_safe(b"\xfb\xff"), "-_8");
        assert_eq!(url_safe(b"Man"), "TWFu");
    }
}
