//! CRIU, probed once: `criu check` says whether checkpoint and restore can
//! work on this node, and if not, why (CRIU's own error lines).

use crate::{Error, Result};
use std::path::PathBuf;
use std::sync::OnceLock;

/// The CRIU a node has.
pub trait Criu: Send + Sync {
    /// Whether CRIU works here; the error is CRIU's reason.
    fn check(&self) -> std::result::Result<(), String>;
}

/// The `criu` program (found in PATH, as the OCI runtime finds it).
pub struct CriuBinary {
    pub path: PathBuf,
}

impl Default for CriuBinary {
    fn default() -> Self {
        CriuBinary {
            path: PathBuf::from("criu"),
        }
    }
}

/// How much of CRIU's complaint a reason carries.
const REASON_MAX: usize = 1024;

impl Criu for CriuBinary {
    fn check(&self) -> std::result::Result<(), String> {
        let out = std::process::Command::new(&self.path)
            .arg("check")
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.path.display()))?;
        if out.status.success() {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        Err(reason(&text, out.status))
    }
}

/// CRIU's error lines, or all it said when it named none.
fn reason(text: &str, status: std::process::ExitStatus) -> String {
    let errors: Vec<String> = text
        .lines()
        .filter_map(|l| l.split_once("Error"))
        .map(|(_, rest)| format!("Error{}", rest.trim_end()))
        .collect();
    let mut said = if errors.is_empty() {
        text.trim().to_string()
    } else {
        errors.join("; ")
    };
    if said.is_empty() {
        said = format!("criu check failed ({status})");
    }
    if said.len() > REASON_MAX {
        let mut cut = REASON_MAX;
        while !said.is_char_boundary(cut) {
            cut -= 1;
        }
        said.truncate(cut);
        said.push('…');
    }
    said
}

/// The probe's answer, asked for once and kept.
pub struct CriuProbe {
    criu: Box<dyn Criu>,
    answer: OnceLock<std::result::Result<(), String>>,
}

impl CriuProbe {
    pub fn new(criu: Box<dyn Criu>) -> CriuProbe {
        CriuProbe {
            criu,
            answer: OnceLock::new(),
        }
    }

    /// Ok if CRIU works here; else FAILED_PRECONDITION carrying its
    /// reason. Blocking the first time (it runs `criu check`).
    pub fn usable(&self, what: &str) -> Result<()> {
        let answer = self.answer.get_or_init(|| {
            let answer = self.criu.check();
            match &answer {
                Ok(()) => tracing::info!("CRIU works on this node: checkpoint and restore are on"),
                Err(r) => tracing::info!(reason = %r, "CRIU cannot work on this node"),
            }
            answer
        });
        answer.clone().map_err(|r| {
            Error::FailedPrecondition(format!(
                "{what} needs CRIU, which cannot work on this node: {r}"
            ))
        })
    }
}

impl std::fmt::Debug for CriuProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CriuProbe")
            .field("answer", &self.answer.get())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn the_reason_is_crius_error_lines() {
        let said = "Version: 3.17.1\nError (criu/vdso.c:381): vdso: Unexpected rt vDSO area bounds\n\
                    Warn: something\nError (criu/crtools.c:260): Could not initialize kernel features detection.\n";
        assert_eq!(
            reason(said, std::process::ExitStatus::from_raw(256)),
            "Error (criu/vdso.c:381): vdso: Unexpected rt vDSO area bounds; \
             Error (criu/crtools.c:260): Could not initialize kernel features detection."
        );
        assert_eq!(
            reason("", std::process::ExitStatus::from_raw(256)),
            "criu check failed (exit status: 1)"
        );
        let long = "Error ".to_string() + &"é".repeat(2000);
        assert!(reason(&long, std::process::ExitStatus::from_raw(256)).len() <= REASON_MAX + 3);
    }

    struct Counted(Arc<AtomicUsize>, std::result::Result<(), String>);

    impl Criu for Counted {
        fn check(&self) -> std::result::Result<(), String> {
            self.0.fetch_add(1, Ordering::SeqCst);
            self.1.clone()
        }
    }

    #[test]
    fn criu_is_probed_once_and_its_reason_kept() {
        let asked = Arc::new(AtomicUsize::new(0));
        let probe = CriuProbe::new(Box::new(Counted(asked.clone(), Err("no vdso".into()))));
        for _ in 0..3 {
            let err = probe.usable("checkpoint").expect_err("unusable");
            assert!(
                matches!(&err, Error::FailedPrecondition(m) if m.contains("no vdso") && m.starts_with("checkpoint")),
                "{err:?}"
            );
        }
        assert_eq!(asked.load(Ordering::SeqCst), 1);
        let missing = CriuProbe::new(Box::new(CriuBinary {
            path: "/nonexistent/criu".into(),
        }));
        let err = missing.usable("restore").expect_err("no criu");
        assert!(
            matches!(&err, Error::FailedPrecondition(m) if m.contains("/nonexistent/criu")),
            "{err:?}"
        );
    }
}
