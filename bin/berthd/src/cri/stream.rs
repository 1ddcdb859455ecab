//! Exec, Attach and PortForward: each checks its request and its target,
//! then answers a single-use URL on the streaming server, where the work
//! happens once the client connects.

use super::Cri;
use berth_actors::container::messages as ctr;
use berth_actors::sandbox::messages as pod;
use berth_actors::sandbox::store::SandboxState;
use berth_actors::Error;
use berth_protocol::cri::{
    AttachRequest, AttachResponse, ExecRequest, ExecResponse, PortForwardRequest,
    PortForwardResponse,
};
use berth_stream::tokens::TokenError;
use berth_stream::Request;

fn url_error(e: TokenError) -> Error {
    match e {
        TokenError::Full => Error::ResourceExhausted(e.to_string()),
        TokenError::Random(_) => Error::Internal(e.to_string()),
    }
}

/// The stdio a remote command asks for: at least one stream, and no
/// stderr beside a terminal (its output is one stream).
fn check_stdio(tty: bool, stdin: bool, stdout: bool, stderr: bool) -> Result<(), Error> {
    if tty && stderr {
        return Err(Error::InvalidArgument(
            "tty and stderr cannot both be true".into(),
        ));
    }
    if !(stdin || stdout || stderr) {
        return Err(Error::InvalidArgument(
            "one of stdin, stdout, or stderr must be set".into(),
        ));
    }
    Ok(())
}

impl Cri {
    /// The checks Exec and Attach share: a container named, a command
    /// (Exec's), stdio asked for, and the container running. Answers its
    /// full ID.
    async fn remote_command_target(
        &self,
        container_id: String,
        cmd: Option<&[String]>,
        (tty, stdin, stdout, stderr): (bool, bool, bool, bool),
    ) -> Result<String, Error> {
        if container_id.is_empty() {
            return Err(Error::InvalidArgument("container_id is empty".into()));
        }
        if cmd.is_some_and(|c| c.iter().all(|a| a.is_empty())) {
            return Err(Error::InvalidArgument("cmd is empty".into()));
        }
        check_stdio(tty, stdin, stdout, stderr)?;
        self.node
            .container
            .call(ctr::RunningContainer { id: container_id })
            .await
    }

    /// A single-use URL on the streaming server for `req`.
    fn url(&self, req: Request) -> Result<String, Error> {
        self.stream.url_for(req).map_err(url_error)
    }

    pub(super) async fn exec_url(&self, req: ExecRequest) -> Result<ExecResponse, Error> {
        let stdio = (req.tty, req.stdin, req.stdout, req.stderr);
        let id = self
            .remote_command_target(req.container_id, Some(&req.cmd), stdio)
            .await?;
        let url = self.url(Request::Exec(berth_stream::ExecRequest {
            container_id: id,
            cmd: req.cmd,
            tty: req.tty,
            stdin: req.stdin,
            stdout: req.stdout,
            stderr: req.stderr,
        }))?;
        Ok(ExecResponse { url })
    }

    pub(super) async fn attach_url(&self, req: AttachRequest) -> Result<AttachResponse, Error> {
        let stdio = (req.tty, req.stdin, req.stdout, req.stderr);
        let id = self
            .remote_command_target(req.container_id, None, stdio)
            .await?;
        let url = self.url(Request::Attach(berth_stream::AttachRequest {
            container_id: id,
            tty: req.tty,
            stdin: req.stdin,
            stdout: req.stdout,
            stderr: req.stderr,
        }))?;
        Ok(AttachResponse { url })
    }

    pub(super) async fn port_forward_url(
        &self,
        req: PortForwardRequest,
    ) -> Result<PortForwardResponse, Error> {
        if req.pod_sandbox_id.is_empty() {
            return Err(Error::InvalidArgument("pod_sandbox_id is empty".into()));
        }
        let ports = req
            .port
            .iter()
            .map(|p| {
                u16::try_from(*p)
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| Error::InvalidArgument(format!("port {p} is not 1-65535")))
            })
            .collect::<Result<Vec<u16>, Error>>()?;
        let record = self
            .node
            .sandbox
            .call(pod::PodSandboxStatus {
                id: req.pod_sandbox_id,
            })
            .await?;
        if record.state != SandboxState::Ready {
            return Err(Error::FailedPrecondition(format!(
                "pod sandbox {} is not ready",
                record.id
            )));
        }
        let url = self.url(Request::PortForward(berth_stream::PortForwardRequest {
            sandbox_id: record.id,
            ports,
        }))?;
        Ok(PortForwardResponse { url })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdio_must_be_asked_for_and_a_terminal_has_no_stderr() {
        assert!(check_stdio(false, false, true, true).is_ok());
        assert!(check_stdio(true, true, true, false).is_ok());
        assert!(matches!(
            check_stdio(true, false, true, true),
            Err(Error::InvalidArgument(m)) if m.contains("tty and stderr")
        ));
        assert!(matches!(
            check_stdio(false, false, false, false),
            Err(Error::InvalidArgument(_))
        ));
    }
}
