//! A client for the OCI distribution protocol: manifests and blobs from
//! registries, over HTTPS (plain HTTP only for hosts configured insecure),
//! through the configured mirrors first and the upstream last, with the
//! registry's auth challenges answered (Basic, or a Bearer token fetched
//! from the realm it names).

use super::reference::{Digest, Reference};
use crate::{Error, Result};
use base64::Engine as _;
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, WWW_AUTHENTICATE};
use reqwest::StatusCode;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// What config.toml says about one registry host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostConfig {
    /// Mirror endpoints (`http://127.0.0.1:5000`, `https://mirror.example`),
    /// tried in order before the host itself.
    pub mirrors: Vec<String>,
    /// Plain HTTP (and no certificate check over HTTPS) for this host.
    pub insecure: bool,
    /// An extra CA (PEM) to trust for this host.
    pub ca_file: Option<PathBuf>,
}

/// Credentials from the CRI `AuthConfig`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    /// `base64(username:password)`, as docker's config.json keeps it.
    pub auth: String,
    /// A refresh token for the registry's token endpoint.
    pub identity_token: String,
    /// A bearer token sent as is.
    pub registry_token: String,
}

impl Credentials {
    /// Username and password, from the fields or decoded from `auth`.
    fn basic(&self) -> Result<Option<(String, String)>> {
        if !self.username.is_empty() {
            return Ok(Some((self.username.clone(), self.password.clone())));
        }
        if self.auth.is_empty() {
            return Ok(None);
        }
        let raw = base64::engine::general_purpose::STANDARD
            .decode(self.auth.trim())
            .map_err(|_| Error::InvalidArgument("auth: not base64".into()))?;
        let text =
            String::from_utf8(raw).map_err(|_| Error::InvalidArgument("auth: not text".into()))?;
        let (u, p) = text
            .split_once(':')
            .ok_or_else(|| Error::InvalidArgument("auth: not username:password".into()))?;
        Ok(Some((u.to_string(), p.to_string())))
    }
}

/// One place to fetch from: a mirror or the upstream.
#[derive(Clone)]
pub struct Endpoint {
    /// `scheme://host[:port]`.
    pub base: String,
    pub mirror: bool,
    client: reqwest::Client,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}{}",
            self.base,
            if self.mirror { " (mirror)" } else { "" }
        )
    }
}

/// The registry configuration and one HTTP client per distinct TLS setup.
pub struct Registries {
    hosts: BTreeMap<String, HostConfig>,
    clients: Mutex<HashMap<(bool, Option<PathBuf>), reqwest::Client>>,
}

fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    rest.split('/').next().unwrap_or(rest)
}

impl Registries {
    pub fn new(hosts: BTreeMap<String, HostConfig>) -> Self {
        Registries {
            hosts,
            clients: Mutex::new(HashMap::new()),
        }
    }

    fn client(&self, insecure: bool, ca: Option<&PathBuf>) -> Result<reqwest::Client> {
        let key = (insecure, ca.cloned());
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(&key) {
            return Ok(c.clone());
        }
        let mut b = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(15))
            .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
            .danger_accept_invalid_certs(insecure);
        if let Some(path) = ca {
            let pem = std::fs::read(path).map_err(|e| {
                Error::FailedPrecondition(format!("registry CA {}: {e}", path.display()))
            })?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| {
                Error::FailedPrecondition(format!("registry CA {}: {e}", path.display()))
            })?;
            b = b.add_root_certificate(cert);
        }
        let client = b
            .build()
            .map_err(|e| Error::Internal(format!("http client: {e}")))?;
        clients.insert(key, client.clone());
        Ok(client)
    }

    fn config_for(&self, host: &str) -> HostConfig {
        self.hosts.get(host).cloned().unwrap_or_default()
    }

    /// Where to fetch `r` from, in order: its mirrors, then the upstream.
    pub fn endpoints(&self, r: &Reference) -> Result<Vec<Endpoint>> {
        let upstream = self.config_for(&r.registry);
        let mut out = Vec::new();
        for m in &upstream.mirrors {
            let m = m.trim_end_matches('/');
            let mirror_cfg = self.config_for(host_of(m));
            let insecure = mirror_cfg.insecure || m.starts_with("http://");
            out.push(Endpoint {
                base: m.to_string(),
                mirror: true,
                client: self.client(insecure, mirror_cfg.ca_file.as_ref())?,
            });
        }
        let scheme = if upstream.insecure { "http" } else { "https" };
        out.push(Endpoint {
            base: format!("{scheme}://{}", r.endpoint_host()),
            mirror: false,
            client: self.client(upstream.insecure, upstream.ca_file.as_ref())?,
        });
        Ok(out)
    }
}

/// The parts of a `WWW-Authenticate` challenge berth answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub scheme: String,
    pub params: BTreeMap<String, String>,
}

/// Parses `Bearer realm="https://x/token",service="x",scope="a:b:pull,push"`.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let mut params = BTreeMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            value.push(n)
                        }
                    }
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek() {
                if *c == ',' {
                    break;
                }
                value.push(*c);
                chars.next();
            }
        }
        params.insert(key.trim().to_lowercase(), value.trim().to_string());
    }
    Some(Challenge {
        scheme: scheme.to_lowercase(),
        params,
    })
}

fn unreachable_err(base: &str, e: reqwest::Error) -> Error {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        msg = format!("{msg}: {s}");
        source = s.source();
    }
    Error::Unavailable(format!("registry {base} unreachable: {msg}"))
}

/// A conversation with one endpoint about one repository, keeping the
/// authorization it earned.
pub struct Session {
    pub endpoint: Endpoint,
    /// The registry as named in the reference (`ns` for mirrors).
    registry: String,
    repository: String,
    creds: Option<Credentials>,
    authorization: Option<String>,
}

impl Session {
    pub fn new(endpoint: Endpoint, r: &Reference, creds: Option<Credentials>) -> Self {
        let authorization = creds
            .as_ref()
            .filter(|c| !c.registry_token.is_empty())
            .map(|c| format!("Bearer {}", c.registry_token));
        Session {
            endpoint,
            registry: r.registry.clone(),
            repository: r.repository.clone(),
            creds,
            authorization,
        }
    }

    fn url(&self, kind: &str, reference: &str) -> String {
        let mut url = format!(
            "{}/v2/{}/{kind}/{reference}",
            self.endpoint.base, self.repository
        );
        if self.endpoint.mirror {
            // Pull-through caches serve several upstreams and ask which.
            url.push_str(&format!("?ns={}", self.registry));
        }
        url
    }

    /// GET with the session's authorization; a 401 is answered once.
    async fn get(&mut self, url: &str, accept: Option<&str>) -> Result<reqwest::Response> {
        for attempt in 0..2 {
            let mut headers = HeaderMap::new();
            if let Some(a) = accept {
                headers.insert(
                    ACCEPT,
                    HeaderValue::from_str(a).map_err(|e| Error::Internal(e.to_string()))?,
                );
            }
            if let Some(auth) = &self.authorization {
                headers.insert(
                    AUTHORIZATION,
                    HeaderValue::from_str(auth).map_err(|_| {
                        Error::InvalidArgument("credentials are not valid header text".into())
                    })?,
                );
            }
            let resp = self
                .endpoint
                .client
                .get(url)
                .headers(headers)
                .send()
                .await
                .map_err(|e| unreachable_err(&self.endpoint.base, e))?;
            if resp.status() != StatusCode::UNAUTHORIZED {
                return Ok(resp);
            }
            if attempt == 1 {
                break;
            }
            let challenge = resp
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|h| h.to_str().ok())
                .and_then(parse_challenge)
                .ok_or_else(|| {
                    Error::Unauthenticated(format!(
                        "registry {} refused access and sent no usable challenge",
                        self.endpoint.base
                    ))
                })?;
            self.authorization = Some(self.answer(&challenge).await?);
        }
        Err(Error::Unauthenticated(format!(
            "registry {} refused the credentials for {}",
            self.endpoint.base, self.repository
        )))
    }

    async fn answer(&self, ch: &Challenge) -> Result<String> {
        let creds = self.creds.clone().unwrap_or_default();
        let basic = creds.basic()?;
        match ch.scheme.as_str() {
            "basic" => {
                let (u, p) = basic.ok_or_else(|| {
                    Error::Unauthenticated(format!(
                        "registry {} requires credentials for {}",
                        self.endpoint.base, self.repository
                    ))
                })?;
                let token = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
                Ok(format!("Basic {token}"))
            }
            "bearer" => {
                let realm = ch.params.get("realm").ok_or_else(|| {
                    Error::Unauthenticated("bearer challenge without a realm".into())
                })?;
                let scope = ch
                    .params
                    .get("scope")
                    .cloned()
                    .unwrap_or_else(|| format!("repository:{}:pull", self.repository));
                let service = ch.params.get("service").cloned().unwrap_or_default();
                let client = &self.endpoint.client;
                let req = if !creds.identity_token.is_empty() {
                    let form = [
                        ("grant_type", "refresh_token"),
                        ("refresh_token", creds.identity_token.as_str()),
                        ("service", service.as_str()),
                        ("scope", scope.as_str()),
                        ("client_id", "berth"),
                    ];
                    client.post(realm).form(&form)
                } else {
                    let mut req = client
                        .get(realm)
                        .query(&[("service", service.as_str()), ("scope", scope.as_str())]);
                    if let Some((u, p)) = &basic {
                        req = req.basic_auth(u, Some(p));
                    }
                    req
                };
                let resp = req.send().await.map_err(|e| unreachable_err(realm, e))?;
                if resp.status() == StatusCode::UNAUTHORIZED
                    || resp.status() == StatusCode::FORBIDDEN
                {
                    return Err(Error::Unauthenticated(format!(
                        "token service {realm} refused the credentials ({})",
                        resp.status()
                    )));
                }
                if !resp.status().is_success() {
                    return Err(Error::Unavailable(format!(
                        "token service {realm} answered {}",
                        resp.status()
                    )));
                }
                let bytes =
                    read_capped(resp, TOKEN_MAX, &format!("token service {realm}"), realm).await?;
                let body: serde_json::Value = serde_json::from_slice(&bytes)
                    .map_err(|e| Error::Unavailable(format!("token service {realm}: {e}")))?;
                let token = body
                    .get("token")
                    .or_else(|| body.get("access_token"))
                    .and_then(|t| t.as_str())
                    .ok_or_else(|| {
                        Error::Unavailable(format!("token service {realm} sent no token"))
                    })?;
                Ok(format!("Bearer {token}"))
            }
            other => Err(Error::Unauthenticated(format!(
                "registry {} asks for unsupported auth scheme {other:?}",
                self.endpoint.base
            ))),
        }
    }

    fn status_err(&self, what: &str, status: StatusCode) -> Error {
        let msg = format!("{what} from {}: {status}", self.endpoint.base);
        match status {
            StatusCode::NOT_FOUND => Error::NotFound(msg),
            StatusCode::FORBIDDEN => Error::Unauthenticated(msg),
            _ => Error::Unavailable(msg),
        }
    }

    /// A manifest (or index) by tag or digest: its bytes and media type.
    pub async fn manifest(&mut self, reference: &str) -> Result<(Vec<u8>, String)> {
        let url = self.url("manifests", reference);
        let resp = self.get(&url, Some(MANIFEST_ACCEPT)).await?;
        if !resp.status().is_success() {
            return Err(self.status_err(
                &format!("manifest {}:{reference}", self.repository),
                resp.status(),
            ));
        }
        let media_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|h| h.to_str().ok())
            .map(|s| s.split(';').next().unwrap_or(s).trim().to_string())
            .unwrap_or_default();
        let what = format!("manifest {}:{reference}", self.repository);
        let bytes = read_capped(resp, MANIFEST_MAX, &what, &self.endpoint.base).await?;
        Ok((bytes, media_type))
    }

    /// A small blob's response read whole, refused past `max` bytes.
    pub async fn read_capped(
        &self,
        resp: reqwest::Response,
        max: u64,
        what: &str,
    ) -> Result<Vec<u8>> {
        let max = usize::try_from(max).unwrap_or(usize::MAX);
        read_capped(resp, max, what, &self.endpoint.base).await
    }

    /// A blob, as a response to stream.
    pub async fn blob(&mut self, digest: &Digest) -> Result<reqwest::Response> {
        let url = self.url("blobs", digest.as_str());
        let resp = self.get(&url, None).await?;
        if !resp.status().is_success() {
            return Err(self.status_err(&format!("blob {digest}"), resp.status()));
        }
        Ok(resp)
    }
}

/// The largest manifest or index berth reads; real ones are a few KiB,
/// and a registry that sends more is refused before it fills memory.
pub const MANIFEST_MAX: usize = 4 * 1024 * 1024;

/// The largest answer of a token service berth reads.
const TOKEN_MAX: usize = 1024 * 1024;

/// A response body of at most `max` bytes (by its length, and by what
/// actually arrives): a bigger one is an error naming `what`.
async fn read_capped(
    mut resp: reqwest::Response,
    max: usize,
    what: &str,
    host: &str,
) -> Result<Vec<u8>> {
    let too_big = || {
        Error::Unavailable(format!(
            "{what} from {host} is larger than {max} bytes; refused"
        ))
    };
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Err(too_big());
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| unreachable_err(host, e))? {
        if out.len() + chunk.len() > max {
            return Err(too_big());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_and_basic_challenges() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        )
        .expect("challenge");
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.params["realm"], "https://auth.example/token");
        assert_eq!(c.params["scope"], "repository:a/b:pull,push");
        assert_eq!(c.params["service"], "registry.example");
        let b = parse_challenge(r#"Basic realm="Registry Realm""#).expect("basic");
        assert_eq!(b.scheme, "basic");
        assert_eq!(b.params["realm"], "Registry Realm");
    }

    #[test]
    fn credentials_come_from_fields_or_auth() {
        let c = Credentials {
            auth: base64::engine::general_purpose::STANDARD.encode("u:p:w"),
            ..Default::default()
        };
        assert_eq!(c.basic().expect("ok"), Some(("u".into(), "p:w".into())));
        let bad = Credentials {
            auth: "***".into(),
            ..Default::default()
        };
        assert!(bad.basic().is_err());
        assert_eq!(Credentials::default().basic().expect("ok"), None);
    }

    #[test]
    fn mirrors_come_first_then_the_upstream() {
        let mut hosts = BTreeMap::new();
        hosts.insert(
            "registry.k8s.io".to_string(),
            HostConfig {
                mirrors: vec!["http://127.0.0.1:5000/".into(), "https://m.example".into()],
                ..Default::default()
            },
        );
        hosts.insert(
            "10.0.0.1:5000".to_string(),
            HostConfig {
                insecure: true,
                ..Default::default()
            },
        );
        let regs = Registries::new(hosts);
        let r = Reference::parse("registry.k8s.io/pause:3.10").expect("ref");
        let eps: Vec<_> = regs
            .endpoints(&r)
            .expect("endpoints")
            .into_iter()
            .map(|e| (e.base, e.mirror))
            .collect();
        assert_eq!(
            eps,
            vec![
                ("http://127.0.0.1:5000".to_string(), true),
                ("https://m.example".to_string(), true),
                ("https://registry.k8s.io".to_string(), false)
            ]
        );
        let r = Reference::parse("10.0.0.1:5000/app").expect("ref");
        assert_eq!(
            regs.endpoints(&r).expect("eps")[0].base,
            "http://10.0.0.1:5000"
        );
        let r = Reference::parse("busybox").expect("ref");
        assert_eq!(
            regs.endpoints(&r).expect("eps")[0].base,
            "https://registry-1.docker.io"
        );
    }
}
