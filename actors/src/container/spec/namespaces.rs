//! Namespaces: the pod's network, IPC and UTS (and maybe PID) namespaces
//! joined through its pause process, or a target container's PID namespace.

use super::*;

pub(super) fn namespaces(inputs: &SpecInputs) -> Result<Vec<LinuxNamespace>> {
    let pod = &inputs.pod_security.namespaces;
    let new = |typ: LinuxNamespaceType| {
        LinuxNamespaceBuilder::default()
            .typ(typ)
            .build()
            .map_err(spec_err)
    };
    let join = |typ: LinuxNamespaceType, name: &str| {
        if inputs.pod_pid == 0 {
            return Err(Error::FailedPrecondition(
                "the pod has no pause process whose namespaces to join".to_string(),
            ));
        }
        LinuxNamespaceBuilder::default()
            .typ(typ)
            .path(format!("/proc/{}/ns/{name}", inputs.pod_pid))
            .build()
            .map_err(spec_err)
    };
    let mut list = vec![new(LinuxNamespaceType::Mount)?];
    // The pod's own user namespace first: the others are its.
    if inputs.pod_security.user_namespace.is_some() {
        list.push(join(LinuxNamespaceType::User, "user")?);
    }
    // With neither entry, a host-network pod's containers stay in the
    // host's network and UTS namespaces, as its pause container does.
    if pod.network != NamespaceMode::Node {
        list.push(join(LinuxNamespaceType::Network, "net")?);
        list.push(join(LinuxNamespaceType::Uts, "uts")?);
    }
    if pod.ipc != NamespaceMode::Node {
        list.push(join(LinuxNamespaceType::Ipc, "ipc")?);
    }
    match inputs.config.security.pid_namespace {
        NamespaceMode::Pod => list.push(join(LinuxNamespaceType::Pid, "pid")?),
        NamespaceMode::Container => list.push(new(LinuxNamespaceType::Pid)?),
        NamespaceMode::Node => {}
        NamespaceMode::Target => {
            // The target container's own PID namespace (debug containers).
            let pid = inputs.target_pid.filter(|p| *p > 0).ok_or_else(|| {
                invalid("pid_namespace: target mode names no running target container")
            })?;
            list.push(
                LinuxNamespaceBuilder::default()
                    .typ(LinuxNamespaceType::Pid)
                    .path(format!("/proc/{pid}/ns/pid"))
                    .build()
                    .map_err(spec_err)?,
            );
        }
    }
    Ok(list)
}
