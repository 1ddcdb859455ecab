//! The IDs berth makes: random, 64 hex digits for pods and containers,
//! like other CRI runtimes', and a short one for exec'd processes.

use crate::{Error, Result};
use std::io::Read;

fn random_hex(bytes: usize) -> Result<String> {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| Error::Internal(format!("random id: {e}")))?;
    Ok(hex::encode(buf))
}

/// A new pod or container ID: 64 hex digits.
pub fn new_id() -> Result<String> {
    random_hex(32)
}

/// A new short ID (16 hex digits), for processes exec'd in a container.
pub fn short_id() -> Result<String> {
    random_hex(8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_hex_of_their_length_and_differ() {
        let (a, b) = (new_id().expect("id"), new_id().expect("id"));
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        assert_eq!(short_id().expect("short").len(), 16);
    }
}
