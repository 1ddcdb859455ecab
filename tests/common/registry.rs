//! A real OCI registry (Debian's `docker-registry`, i.e. distribution 2.8)
//! on a loopback port for the pull tests, helpers to push what
//! [`crate::image`] builds into it, and a TCP proxy that stalls mid-response.
//!
//! Needs `apt-get install docker-registry busybox-static`.

use crate::image::{build_index, sha256_digest, BuiltImage, BuiltIndex, Platform};
use base64::Engine as _;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// A loopback port nobody listens on right now. Another process may take
/// it before the caller binds it; [`Registry::start`] retries for that.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local_addr").port()
}

/// What an HTTP request got back, whatever the status.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    /// Header names are lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON; panics (with the body) if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(5))
        .timeout_read(Duration::from_secs(60))
        .timeout_write(Duration::from_secs(60))
        .redirects(0)
        .build()
}

fn basic_auth(user: &str, password: &str) -> String {
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {token}")
}

/// Sends a request and returns the reply, 4xx and 5xx included; `Err` only
/// when no HTTP answer came back (connection refused, timeout...).
fn send(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    credentials: Option<(&str, &str)>,
    body: Option<&[u8]>,
) -> Result<Reply, String> {
    let mut req = agent().request(method, url);
    for (name, value) in headers {
        req = req.set(name, value);
    }
    if let Some((user, password)) = credentials {
        req = req.set("Authorization", &basic_auth(user, password));
    }
    let result = match body {
        Some(bytes) => req.send_bytes(bytes),
        None => req.call(),
    };
    let resp = match result {
        Ok(resp) => resp,
        Err(ureq::Error::Status(_, resp)) => resp,
        Err(ureq::Error::Transport(t)) => return Err(t.to_string()),
    };
    let status = resp.status();
    let headers = resp
        .headers_names()
        .into_iter()
        .filter_map(|n| {
            let value = resp.header(&n)?.to_string();
            Some((n.to_ascii_lowercase(), value))
        })
        .collect();
    let mut body = Vec::new();
    if let Err(e) = resp.into_reader().read_to_end(&mut body) {
        panic!("read the body from {url}: {e}");
    }
    Ok(Reply {
        status,
        headers,
        body,
    })
}

/// GETs `url` with an optional `Accept` header and basic-auth credentials.
/// Panics if no HTTP answer comes back; any status is returned.
pub fn http_get(url: &str, accept: Option<&str>, credentials: Option<(&str, &str)>) -> Reply {
    let headers: Vec<(&str, &str)> = accept.map(|a| ("Accept", a)).into_iter().collect();
    send("GET", url, &headers, credentials, None).unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

/// What [`Registry::push_image`] pushed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pushed {
    pub manifest_digest: String,
    pub config_digest: String,
}

/// A `docker-registry serve` on 127.0.0.1, storing on the filesystem under
/// its own temporary directory. Killed when dropped.
pub struct Registry {
    dir: tempfile::TempDir,
    port: u16,
    credentials: Option<(String, String)>,
    child: Option<Child>,
}

impl Registry {
    /// A registry anyone may pull from and push to.
    pub fn start() -> Registry {
        Registry::launch(None)
    }

    /// A registry that wants HTTP basic auth (htpasswd) for everything,
    /// pushes included; the push helpers send these credentials.
    pub fn start_with_auth(user: &str, password: &str) -> Registry {
        Registry::launch(Some((user.to_string(), password.to_string())))
    }

    fn launch(credentials: Option<(String, String)>) -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("berth-registry-")
            .tempdir()
            .expect("registry tempdir");
        let auth = match &credentials {
            Some((user, password)) => {
                // The registry only understands bcrypt entries; the lowest
                // cost keeps each authenticated request cheap.
                let hash = bcrypt::hash(password, 4).expect("bcrypt the password");
                let htpasswd = dir.path().join("htpasswd");
                std::fs::write(&htpasswd, format!("{user}:{hash}\n")).expect("write htpasswd");
                format!(
                    "auth:\n  htpasswd:\n    realm: berth-tests\n    path: {}\n",
                    htpasswd.display()
                )
            }
            None => String::new(),
        };
        let mut registry = Registry {
            port: 0,
            credentials,
            child: None,
            dir,
        };
        // The port can be taken between free_port() and the registry's bind;
        // a few attempts make that race harmless.
        for _ in 0..5 {
            registry.port = free_port();
            let config = registry.dir.path().join("config.yml");
            // No blob descriptor cache: sizes then come from the files on
            // each request, which lets corrupt_blob() change a blob's length.
            let text = format!(
                "version: 0.1\n\
                 log:\n  level: info\n  accesslog:\n    disabled: false\n\
                 storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n  \
                 maintenance:\n    uploadpurging:\n      enabled: false\n\
                 http:\n  addr: 127.0.0.1:{port}\n  secret: berth-tests-not-secret\n\
                 {auth}",
                storage = registry.storage_dir().display(),
                port = registry.port,
            );
            std::fs::write(&config, text).expect("write registry config");
            let log = std::fs::File::create(registry.log_path()).expect("registry log");
            let mut cmd = Command::new(REGISTRY_BIN);
            cmd.arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("dup log"))
                .stderr(log);
            // REGISTRY_* variables override the config file; keep the
            // caller's environment out of it.
            for (key, _) in std::env::vars_os() {
                if key.to_string_lossy().starts_with("REGISTRY_") {
                    cmd.env_remove(key);
                }
            }
            registry.child = Some(cmd.spawn().unwrap_or_else(|e| {
                panic!("spawn {REGISTRY_BIN} ({e}): apt-get install docker-registry")
            }));
            if registry.wait_ready() {
                return registry;
            }
            let log = registry.log();
            if !log.contains("address already in use") {
                panic!("docker-registry did not come up:\n{log}");
            }
        }
        panic!("docker-registry found no free port:\n{}", registry.log());
    }

    /// Waits for `/v2/` to answer; false if the process exits first.
    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        let url = format!("{}/v2/", self.url());
        while Instant::now() < deadline {
            let child = self.child.as_mut().expect("registry child");
            if child.try_wait().expect("try_wait registry").is_some() {
                self.child = None;
                return false;
            }
            if let Ok(r) = send("GET", &url, &[], None, None) {
                if r.status == 200 || r.status == 401 {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "docker-registry did not answer on {url} within 10 s:\n{}",
            self.log()
        );
    }

    /// `127.0.0.1:PORT`, the registry part of an image reference.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.host())
    }

    /// `HOST/repo:tag`, or `HOST/repo@sha256:...` when `reference` is a
    /// digest: what a CRI client asks to pull.
    pub fn image_ref(&self, repo: &str, reference: &str) -> String {
        let sep = if reference.contains(':') { '@' } else { ':' };
        format!("{}/{repo}{sep}{reference}", self.host())
    }

    /// The user and password given to [`Registry::start_with_auth`].
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.credentials
            .as_ref()
            .map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// The registry's own log (access log included).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    /// The filesystem storage driver's root directory.
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// GETs `path` (e.g. `/v2/repo/manifests/tag`) with this registry's
    /// credentials, if any.
    pub fn get(&self, path: &str, accept: Option<&str>) -> Reply {
        http_get(&format!("{}{path}", self.url()), accept, self.credentials())
    }

    fn request(&self, method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
        let body = if method == "POST" && body.is_empty() {
            None
        } else {
            Some(body)
        };
        send(method, url, headers, self.credentials(), body)
            .unwrap_or_else(|e| panic!("{method} {url}: {e}\n{}", self.log()))
    }

    /// Uploads a blob in one piece and returns its digest. Skipped if the
    /// repository already has it.
    pub fn push_blob(&self, repo: &str, bytes: &[u8]) -> String {
        let digest = sha256_digest(bytes);
        let url = format!("{}/v2/{repo}/blobs/{digest}", self.url());
        if self.request("HEAD", &url, &[], &[]).status == 200 {
            return digest;
        }
        let start = format!("{}/v2/{repo}/blobs/uploads/", self.url());
        let r = self.request("POST", &start, &[], &[]);
        assert_eq!(r.status, 202, "start upload to {repo}: {r:?}");
        let location = r.header("location").expect("upload Location");
        let mut put = if location.starts_with("http") {
            location.to_string()
        } else {
            format!("{}{location}", self.url())
        };
        put.push(if put.contains('?') { '&' } else { '?' });
        put.push_str("digest=");
        put.push_str(&digest);
        let r = self.request(
            "PUT",
            &put,
            &[("Content-Type", "application/octet-stream")],
            bytes,
        );
        assert_eq!(
            r.status,
            201,
            "upload {digest} to {repo}: {}",
            String::from_utf8_lossy(&r.body)
        );
        digest
    }

    /// Puts a manifest (or index) under `reference`, a tag or its digest,
    /// and returns its digest. The registry checks that everything it
    /// references is already there.
    pub fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> String {
        let url = format!("{}/v2/{repo}/manifests/{reference}", self.url());
        let r = self.request("PUT", &url, &[("Content-Type", media_type)], bytes);
        assert_eq!(
            r.status,
            201,
            "put manifest {repo}:{reference}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let digest = sha256_digest(bytes);
        if let Some(echoed) = r.header("docker-content-digest") {
            assert_eq!(echoed, digest, "registry digested the manifest differently");
        }
        digest
    }

    /// Pushes the layers, the config and the manifest; under `tag`, or by
    /// digest only when `tag` is None.
    pub fn push_image(&self, repo: &str, tag: Option<&str>, image: &BuiltImage) -> Pushed {
        for layer in &image.layers {
            self.push_blob(repo, &layer.bytes);
        }
        let config_digest = self.push_blob(repo, &image.config_bytes);
        let reference = tag.unwrap_or(&image.manifest_digest);
        let manifest_digest = self.push_manifest(
            repo,
            reference,
            &image.manifest_media_type,
            &image.manifest_bytes,
        );
        Pushed {
            manifest_digest,
            config_digest,
        }
    }

    /// Pushes each image by digest, then an OCI image index over them
    /// under `tag` (by digest when None). Returns the index digest.
    pub fn push_index(
        &self,
        repo: &str,
        tag: Option<&str>,
        entries: &[(Platform, &BuiltImage)],
    ) -> String {
        self.push_index_of(repo, tag, entries, false)
    }

    /// As [`Registry::push_index`], with a docker manifest list instead.
    pub fn push_manifest_list(
        &self,
        repo: &str,
        tag: Option<&str>,
        entries: &[(Platform, &BuiltImage)],
    ) -> String {
        self.push_index_of(repo, tag, entries, true)
    }

    fn push_index_of(
        &self,
        repo: &str,
        tag: Option<&str>,
        entries: &[(Platform, &BuiltImage)],
        docker_list: bool,
    ) -> String {
        for (_, image) in entries {
            self.push_image(repo, None, image);
        }
        let BuiltIndex {
            bytes,
            digest,
            media_type,
        } = build_index(entries, docker_list);
        self.push_manifest(repo, tag.unwrap_or(&digest), &media_type, &bytes)
    }

    /// Replaces the stored content of blob `digest` with `bytes` (any
    /// length), behind the registry's back. The registry verifies digests
    /// on upload but not when serving, so afterwards it hands out `bytes`
    /// under `digest`: this is how the tests get a manifest that references
    /// a blob whose content does not match its digest. Works for manifests
    /// too (they are stored as blobs): fetched by tag or by digest, the new
    /// bytes come back with the old `Docker-Content-Digest`.
    pub fn corrupt_blob(&self, digest: &str, bytes: &[u8]) {
        let hex = digest.strip_prefix("sha256:").expect("a sha256: digest");
        let path = self
            .storage_dir()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data");
        assert!(
            path.exists(),
            "{digest} is not stored at {}",
            path.display()
        );
        std::fs::write(&path, bytes).expect("overwrite blob data");
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A TCP proxy on 127.0.0.1 that forwards to `upstream` faithfully until it
/// has passed `stall_after` bytes from the server to the client on a
/// connection; after that it forwards nothing more to that client but keeps
/// the connection open, as a hung server or network would. Counting is per
/// connection, over all the requests sent on it. Stops (best effort) when
/// dropped.
pub struct StallProxy {
    port: u16,
    stop: Arc<AtomicBool>,
    stalled: Arc<AtomicUsize>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
    acceptor: Option<JoinHandle<()>>,
}

impl StallProxy {
    /// Listens on a free loopback port; `upstream` is `host:port`.
    pub fn start(upstream: &str, stall_after: usize) -> StallProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let stalled = Arc::new(AtomicUsize::new(0));
        let streams = Arc::new(Mutex::new(Vec::new()));
        let upstream = upstream.to_string();
        let acceptor = {
            let (stop, stalled, streams) = (stop.clone(), stalled.clone(), streams.clone());
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(client) = client else { continue };
                    let Ok(server) = TcpStream::connect(&upstream) else {
                        continue;
                    };
                    let conn = Conn {
                        client,
                        server,
                        limit: stall_after,
                        stop: stop.clone(),
                        stalled: stalled.clone(),
                    };
                    conn.register(&streams);
                    std::thread::spawn(move || conn.run());
                }
            })
        };
        StallProxy {
            port,
            stop,
            stalled,
            streams,
            acceptor: Some(acceptor),
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.host())
    }

    /// How many connections have stalled so far.
    pub fn stalled_connections(&self) -> usize {
        self.stalled.load(Ordering::SeqCst)
    }
}

impl Drop for StallProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Closing every socket unblocks the connection threads; a throwaway
        // connection wakes the acceptor so that it sees `stop`.
        if let Ok(streams) = self.streams.lock() {
            for s in streams.iter() {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

struct Conn {
    client: TcpStream,
    server: TcpStream,
    limit: usize,
    stop: Arc<AtomicBool>,
    stalled: Arc<AtomicUsize>,
}

impl Conn {
    fn register(&self, streams: &Mutex<Vec<TcpStream>>) {
        if let (Ok(c), Ok(s), Ok(mut all)) = (
            self.client.try_clone(),
            self.server.try_clone(),
            streams.lock(),
        ) {
            all.push(c);
            all.push(s);
        }
    }

    fn run(self) {
        let (Ok(mut from_client), Ok(mut to_server)) =
            (self.client.try_clone(), self.server.try_clone())
        else {
            return;
        };
        let client_gone = Arc::new(AtomicBool::new(false));
        let gone = client_gone.clone();
        // Requests always go through; only responses are held back.
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from_client, &mut to_server);
            let _ = to_server.shutdown(Shutdown::Write);
            gone.store(true, Ordering::SeqCst);
        });

        let (mut server, mut client) = (self.server, self.client);
        let mut sent = 0usize;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match server.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = client.shutdown(Shutdown::Write);
                    return;
                }
                Ok(n) => n,
            };
            let allowed = n.min(self.limit - sent);
            if client.write_all(&buf[..allowed]).is_err() {
                let _ = server.shutdown(Shutdown::Both);
                return;
            }
            sent += allowed;
            if allowed < n {
                break;
            }
        }
        self.stalled.fetch_add(1, Ordering::SeqCst);
        // Hold the connection, silent, until the client hangs up or the
        // proxy goes away.
        while !client_gone.load(Ordering::SeqCst) && !self.stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = client.shutdown(Shutdown::Both);
        let _ = server.shutdown(Shutdown::Both);
    }
}
