//! Exec and Attach, whatever carries them: the client's streams become a
//! [`ProcessIo`] for the runtime, and the outcome becomes what the error
//! stream says under the negotiated protocol version.

use crate::request::{AttachRequest, ExecRequest, ProcessIo, Runtime, StreamError, TermSize};
use bytes::Bytes;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Chunks of output queued towards a client before the process waits.
pub const OUTPUT_QUEUE: usize = 16;

/// The remote command protocol versions, newest first (the order servers
/// prefer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    /// `channel.k8s.io` (or no version named).
    V1,
    V2,
    /// Adds the resize stream.
    V3,
    /// Adds the JSON status on the error stream, with exit codes.
    V4,
    /// WebSocket only: adds the close signal (stdin EOF).
    V5,
}

/// The streams a command uses, from the cached request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wanted {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl Wanted {
    pub fn of_exec(r: &ExecRequest) -> Wanted {
        Wanted {
            stdin: r.stdin,
            stdout: r.stdout,
            // A terminal merges stderr into stdout.
            stderr: r.stderr && !r.tty,
            tty: r.tty,
        }
    }

    pub fn of_attach(r: &AttachRequest) -> Wanted {
        Wanted {
            stdin: r.stdin,
            stdout: r.stdout,
            stderr: r.stderr && !r.tty,
            tty: r.tty,
        }
    }
}

/// What the runtime is asked to do.
#[derive(Debug, Clone)]
pub enum Command {
    Exec(ExecRequest),
    Attach(AttachRequest),
}

impl Command {
    pub fn wanted(&self) -> Wanted {
        match self {
            Command::Exec(r) => Wanted::of_exec(r),
            Command::Attach(r) => Wanted::of_attach(r),
        }
    }

    pub async fn run(self, runtime: &Arc<dyn Runtime>, io: ProcessIo) -> Result<(), StreamError> {
        match self {
            Command::Exec(r) => runtime.exec(r, io).await,
            Command::Attach(r) => runtime.attach(r, io).await,
        }
    }

    fn doing(&self) -> &'static str {
        match self {
            Command::Exec(_) => "error executing command in container",
            Command::Attach(_) => "error attaching to container",
        }
    }

    fn describe(&self) -> String {
        match self {
            Command::Exec(r) => format!("{:?}", r.cmd),
            Command::Attach(r) => format!("attach to {}", r.container_id),
        }
    }
}

/// What goes on the error stream after the command, if anything.
pub fn status_message(
    version: Version,
    command: &Command,
    outcome: &Result<(), StreamError>,
) -> Option<Vec<u8>> {
    if version < Version::V4 {
        // Older clients read any text as the failure.
        return match outcome {
            Ok(()) => None,
            Err(StreamError::ExitCode(code)) => Some(
                format!(
                    "command terminated with non-zero exit code: error executing command {}, exit code {code}",
                    command.describe()
                )
                .into_bytes(),
            ),
            Err(StreamError::Failed(msg)) => Some(msg.clone().into_bytes()),
        };
    }
    let status = match outcome {
        Ok(()) => serde_json::json!({"metadata": {}, "status": "Success"}),
        Err(StreamError::ExitCode(code)) => serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": format!(
                "command terminated with non-zero exit code: error executing command {}, exit code {code}",
                command.describe()
            ),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        Err(StreamError::Failed(msg)) => serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("Internal error occurred: {}: {msg}", command.doing()),
            "reason": "InternalError",
            "details": {"causes": [{"message": format!("{}: {msg}", command.doing())}]},
            "code": 500,
        }),
    };
    Some(status.to_string().into_bytes())
}

/// Reads terminal sizes off a resize stream: JSON objects one after
/// another, split anywhere. A malformed one ends the stream's use.
pub fn spawn_resize_parser(mut raw: mpsc::Receiver<Bytes>) -> mpsc::Receiver<TermSize> {
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        let mut buf: Vec<u8> = Vec::new();
        while let Some(b) = raw.recv().await {
            buf.extend_from_slice(&b);
            loop {
                let mut it = serde_json::Deserializer::from_slice(&buf).into_iter::<TermSize>();
                match it.next() {
                    Some(Ok(size)) => {
                        let used = it.byte_offset();
                        buf.drain(..used);
                        if tx.send(size).await.is_err() {
                            return;
                        }
                    }
                    Some(Err(e)) if e.is_eof() => break,
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "a malformed resize message ends resizing");
                        return;
                    }
                    None => {
                        buf.clear();
                        break;
                    }
                }
            }
            if buf.len() > 64 * 1024 {
                tracing::debug!("a resize message over 64 KiB ends resizing");
                return;
            }
        }
    });
    rx
}

/// An output channel for the runtime, and its receiving end for the
/// transport.
pub fn output() -> (mpsc::Sender<Bytes>, mpsc::Receiver<Bytes>) {
    mpsc::channel(OUTPUT_QUEUE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec() -> Command {
        Command::Exec(ExecRequest {
            container_id: "c".into(),
            cmd: vec!["sh".into(), "-c".into(), "exit 3".into()],
            tty: false,
            stdin: false,
            stdout: true,
            stderr: true,
        })
    }

    fn json(b: Option<Vec<u8>>) -> serde_json::Value {
        serde_json::from_slice(&b.expect("a status")).expect("json")
    }

    #[test]
    fn v4_statuses_carry_the_exit_code() {
        let ok = json(status_message(Version::V4, &exec(), &Ok(())));
        assert_eq!(ok["status"], "Success");
        let code = json(status_message(
            Version::V4,
            &exec(),
            &Err(StreamError::ExitCode(3)),
        ));
        assert_eq!(code["status"], "Failure");
        assert_eq!(code["reason"], "NonZeroExitCode");
        assert_eq!(code["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(code["details"]["causes"][0]["message"], "3");
        let failed = json(status_message(
            Version::V5,
            &exec(),
            &Err(StreamError::Failed("no such container".into())),
        ));
        assert_eq!(failed["reason"], "InternalError");
        assert_eq!(failed["code"], 500);
        assert!(failed["message"]
            .as_str()
            .is_some_and(|m| m.contains("no such container")));
    }

    #[test]
    fn older_versions_say_only_failures_in_words() {
        assert_eq!(status_message(Version::V3, &exec(), &Ok(())), None);
        let text =
            status_message(Version::V1, &exec(), &Err(StreamError::ExitCode(3))).expect("text");
        let text = String::from_utf8(text).expect("utf8");
        assert!(text.contains("exit code 3"), "{text}");
    }

    #[test]
    fn tty_merges_stderr() {
        let w = Command::Exec(ExecRequest {
            container_id: "c".into(),
            cmd: vec![],
            tty: true,
            stdin: true,
            stdout: true,
            stderr: true,
        })
        .wanted();
        assert!(w.tty && w.stdin && w.stdout && !w.stderr);
    }

    #[tokio::test]
    async fn resize_messages_split_anywhere_are_read_whole() {
        let (tx, raw) = mpsc::channel(8);
        let mut sizes = spawn_resize_parser(raw);
        for piece in [
            &b"{\"Width\":80,"[..],
            b"\"Height\":24}\n{\"Width\"",
            b":100,\"Height\":50}{\"width\":1,\"height\":2}",
        ] {
            tx.send(Bytes::copy_from_slice(piece)).await.expect("send");
        }
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(sizes.recv().await.expect("size"));
        }
        assert_eq!(
            got,
            vec![
                TermSize {
                    width: 80,
                    height: 24
                },
                TermSize {
                    width: 100,
                    height: 50
                },
                TermSize {
                    width: 1,
                    height: 2
                },
            ]
        );
        tx.send(Bytes::from_static(b"[garbage"))
            .await
            .expect("send");
        tx.send(Bytes::from_static(b"]")).await.expect("send");
        assert_eq!(sizes.recv().await, None, "malformed input ends resizing");
    }
}
