//! Bad start-up input: each is a one-line error naming the problem and a
//! non-zero exit; and berthctl without a berthd says so.

use berth_tests::{bin, run_berthd_expecting_failure, Daemon};
use std::process::Command;

fn expect_one_line_error(config_extra: &str, expected: &[&str]) {
    let d = Daemon::configure(config_extra);
    let out = run_berthd_expecting_failure(&d.config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "berthd accepted {config_extra:?}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    for e in expected {
        assert!(stderr.contains(e), "{e:?} not in: {stderr}");
    }
}

#[test]
fn malformed_config_names_the_key() {
    expect_one_line_error("colour = \"blue\"", &["unknown field `colour`", "line"]);
    expect_one_line_error(
        "[daemon]\nshutdown_grace_secs = \"soon\"",
        &["shutdown_grace_secs"],
    );
    let d = Daemon::configure("");
    std::fs::write(&d.config, "root = [\n").expect("write");
    let out = run_berthd_expecting_failure(&d.config);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("config.toml"));
}

#[test]
fn a_stream_tls_half_set_or_unreadable_is_refused() {
    expect_one_line_error(
        "[stream]\ntls_cert_file = \"/nonexistent/c.pem\"",
        &["tls_cert_file and tls_key_file go together"],
    );
    expect_one_line_error(
        "[stream]\ntls_cert_file = \"/nonexistent/c.pem\"\ntls_key_file = \"/nonexistent/k.pem\"",
        &["stream.tls", "/nonexistent/c.pem"],
    );
    expect_one_line_error("[stream]\naddress = \"not-an-ip\"", &["address"]);
}

#[test]
fn a_missing_config_file_is_named() {
    let out = run_berthd_expecting_failure(std::path::Path::new("/nonexistent/berth.toml"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("/nonexistent/berth.toml"), "{stderr}");
}

#[test]
fn a_socket_in_a_missing_directory_is_named() {
    let d = Daemon::configure("");
    let text = std::fs::read_to_string(&d.config).expect("read");
    let text = text.replace("run/berth.sock", "missing/dir/berth.sock");
    std::fs::write(&d.config, text).expect("write");
    let out = run_berthd_expecting_failure(&d.config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("cri.socket")
            && stderr.contains("missing/dir")
            && stderr.contains("does not exist"),
        "{stderr}"
    );
}

/// A read-only bind mount of a directory onto itself; unmounted on drop.
struct ReadOnly(std::path::PathBuf);

impl ReadOnly {
    fn new(dir: &std::path::Path) -> ReadOnly {
        use nix::mount::{mount, MsFlags};
        std::fs::create_dir_all(dir).expect("mkdir");
        mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .expect("bind mount (the end-to-end tests run as root)");
        let guard = ReadOnly(dir.to_path_buf());
        mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .expect("remount read-only");
        guard
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn an_unwritable_root_is_named() {
    let d = Daemon::configure("");
    let _ro = ReadOnly::new(&d.root());
    let out = run_berthd_expecting_failure(&d.config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("root") && stderr.contains("not writable") && stderr.contains("Read-only"),
        "{stderr}"
    );
}

#[test]
fn berthctl_without_berthd_says_so() {
    let out = Command::new(bin("berthctl"))
        .args(["--socket", "/nonexistent/admin.sock", "actors"])
        .output()
        .expect("berthctl");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("cannot reach berthd at /nonexistent/admin.sock")
            && stderr.contains("is berthd running"),
        "{stderr}"
    );
}
