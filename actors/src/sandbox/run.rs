//! RunPodSandbox: validate, reserve the name, journal the intent, then make
//! the pod: sandbox image, network namespace, pod files, and at once the CNI
//! ADD and the pause container (neither waits for the other). Every step
//! registers its undo; a failure anywhere rolls back all that was done and
//! answers the error, leaving nothing behind.

use super::actor::{SandboxDeps, Sandboxes};
use super::files::PodFiles;
use super::messages::{NamespaceMode, PodConfig, RunPodSandbox};
use super::spec::PauseSpec;
use super::store::{SandboxRecord, SandboxState};
use super::validate;
use crate::events::Lifecycle;
use crate::image::messages::{EnsureSandboxImage, SandboxImage};
use crate::kernel::{patiently, Reply};
use crate::network::messages::{AttachPod, CreateNetns, PodIdentity, RemovePodNetwork};
use crate::shim::messages::{CreateTask, DeleteTask, StartTask};
use crate::{Error, Result};

/// What a made pod is.
struct Made {
    netns: String,
    ips: Vec<String>,
    pid: u32,
    image: SandboxImage,
}

/// The undo of every step done so far, run in reverse on failure (and by
/// recovery, for a pod whose making was cut short).
pub(super) struct Undo {
    pub(super) deps: SandboxDeps,
    pub(super) id: String,
    pub(super) task: bool,
    pub(super) network: bool,
    pub(super) files: Option<PodFiles>,
}

impl Undo {
    /// Undoes every step; true if all of it went.
    pub(super) async fn run(self) -> bool {
        let mut clean = true;
        if self.task {
            let shim = &self.deps.shim;
            let id = &self.id;
            if let Err(e) = patiently(|| shim.call(DeleteTask { id: id.clone() })).await {
                tracing::warn!(sandbox = %self.id, error = %e, "rollback: pause task not deleted");
                clean = false;
            }
        }
        if self.network {
            let network = &self.deps.network;
            let id = &self.id;
            let remove = || {
                network.call(RemovePodNetwork {
                    sandbox_id: id.clone(),
                })
            };
            if let Err(e) = patiently(remove).await {
                tracing::warn!(sandbox = %self.id, error = %e, "rollback: network not removed");
                clean = false;
            }
        }
        if let Some(files) = self.files {
            let removed = tokio::task::spawn_blocking(move || files.remove()).await;
            if !matches!(removed, Ok(Ok(()))) {
                tracing::warn!(sandbox = %self.id, "rollback: pod files not removed");
                clean = false;
            }
        }
        clean
    }
}

/// A Kubernetes quantity ("10M", "1Gi", "500k", "2e6") in units.
fn quantity(q: &str) -> Option<u64> {
    let q = q.trim();
    let split = q
        .find(|c: char| c.is_ascii_alphabetic() && c != 'e')
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let factor: f64 = match suffix {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let n: f64 = num.parse().ok()?;
    (n.is_finite() && n > 0.0).then_some((n * factor) as u64)
}

/// Traffic shaping kubelet asks for through the pod's annotations, in bits
/// per second, for the CNI `bandwidth` capability.
fn bandwidth(config: &PodConfig) -> Result<Option<crate::network::cni::Bandwidth>> {
    let get = |key: &str| -> Result<u64> {
        match config.annotations.get(key) {
            None => Ok(0),
            Some(v) => quantity(v).ok_or_else(|| {
                Error::InvalidArgument(format!("annotation {key}: {v:?} is not a quantity"))
            }),
        }
    };
    let ingress = get("kubernetes.io/ingress-bandwidth")?;
    let egress = get("kubernetes.io/egress-bandwidth")?;
    Ok(
        (ingress > 0 || egress > 0).then_some(crate::network::cni::Bandwidth {
            ingress_rate: ingress,
            egress_rate: egress,
        }),
    )
}

/// The pod's hostname: kubelet's, or the node's when kubelet gives none or
/// the pod shares the node's network (containerd and CRI-O do the same; a
/// pod's metadata name can be longer than a hostname may be).
fn hostname_of(config: &PodConfig, host_network: bool) -> Result<String> {
    if !host_network && !config.hostname.is_empty() {
        return Ok(config.hostname.clone());
    }
    nix::unistd::gethostname()
        .map_err(|e| Error::Internal(format!("the node's hostname: {e}")))?
        .into_string()
        .map_err(|h| Error::Internal(format!("the node's hostname {h:?} is not UTF-8")))
}

async fn make(
    deps: SandboxDeps,
    undo: &mut Undo,
    id: &str,
    config: &PodConfig,
    handler: &str,
    cgroups_path: &str,
    cached_image: Option<SandboxImage>,
) -> Result<Made> {
    let ns = &config.security.namespaces;
    let host_network = ns.network == NamespaceMode::Node;
    let image = match cached_image {
        Some(i) => i,
        None => {
            deps.image
                .call(EnsureSandboxImage {
                    pause_binary: deps.config.pause_binary.clone(),
                    rebuild: false,
                })
                .await?
        }
    };
    let netns = if host_network {
        None
    } else {
        // The network's own journal holds the intent: undo either way.
        undo.network = true;
        Some(
            deps.network
                .call(CreateNetns {
                    sandbox_id: id.into(),
                    userns: config.security.user_namespace,
                })
                .await?,
        )
    };
    let files = PodFiles::new(&deps.config.state, id);
    undo.files = Some(files.clone());
    let hostname = hostname_of(config, host_network)?;
    let (c, h, host_ipc) = (
        config.clone(),
        hostname.clone(),
        ns.ipc == NamespaceMode::Node,
    );
    let f = files.clone();
    let userns = config.security.user_namespace.is_some();
    let image_root = image.rootfs.clone();
    tokio::task::spawn_blocking(move || {
        f.create(&c, &h, host_ipc)?;
        if userns {
            // The pod's root must reach the pause's root: under the pod's
            // files, not the image store.
            f.bind_root(&image_root)?;
        }
        Ok::<(), Error>(())
    })
    .await
    .map_err(|e| Error::Internal(format!("pod files task: {e}")))??;
    let pause_root = if userns {
        files.root()
    } else {
        image.rootfs.clone()
    };
    let spec = PauseSpec {
        config,
        rootfs: &pause_root,
        hostname: &hostname,
        netns: netns.as_deref().map(std::path::Path::new),
        cgroups_path: cgroups_path.to_string(),
    }
    .build()?;
    if config.security.user_namespace.is_some() && netns.is_none() {
        return Err(Error::InvalidArgument(
            "a pod in its own user namespace needs its own network namespace".into(),
        ));
    }

    undo.task = true;
    let shim = deps.shim.clone();
    let start = async move {
        shim.call(CreateTask {
            id: id.into(),
            pod: id.into(),
            spec,
            log_path: None,
            runtime_handler: handler.into(),
            stdin: false,
            checkpoint: None,
        })
        .await?;
        shim.call(StartTask { id: id.into() }).await
    };
    let attach = async {
        if netns.is_none() {
            return Ok(Vec::new());
        }
        deps.network
            .call(AttachPod {
                pod: PodIdentity {
                    sandbox_id: id.into(),
                    name: config.metadata.name.clone(),
                    namespace: config.metadata.namespace.clone(),
                    uid: config.metadata.uid.clone(),
                },
                port_mappings: config.port_mappings.clone(),
                bandwidth: bandwidth(config)?,
            })
            .await
    };
    // CNI ADD and the pause container at once: neither needs the other.
    let (pid, ips) = futures::join!(start, attach);
    Ok(Made {
        netns: netns.unwrap_or_default(),
        ips: ips?,
        pid: pid?,
        image,
    })
}

impl Sandboxes {
    pub(super) fn run(&mut self, msg: RunPodSandbox) -> Reply<Self, String> {
        match self.admit(msg) {
            Err(e) => Reply::Now(Err(e)),
            Ok((id, name, config, handler, cgroups_path)) => {
                let deps = self.deps.clone();
                let cached = self.sandbox_image.clone();
                let work = {
                    let id = id.clone();
                    async move {
                        let mut undo = Undo {
                            deps: deps.clone(),
                            id: id.clone(),
                            task: false,
                            network: false,
                            files: None,
                        };
                        let made = make(
                            deps,
                            &mut undo,
                            &id,
                            &config,
                            &handler,
                            &cgroups_path,
                            cached,
                        )
                        .await;
                        if made.is_err() {
                            undo.run().await;
                        }
                        made
                    }
                };
                Reply::later(work, move |me: &mut Self, made: Result<Made>| {
                    me.reserved.remove(&name);
                    let made = match made {
                        Ok(m) => m,
                        Err(e) => {
                            me.pending_exits.remove(&id);
                            let _ = me.records.remove(&id);
                            return Err(e);
                        }
                    };
                    me.sandbox_image.get_or_insert(made.image.clone());
                    let mut record = me.records.get(&id).cloned().ok_or_else(|| {
                        Error::Internal(format!("pod {id} vanished while being made"))
                    })?;
                    record.state = SandboxState::Ready;
                    record.netns_path = made.netns;
                    record.ips = made.ips;
                    record.pid = made.pid;
                    me.records.put(record.clone())?;
                    me.publish(&record, Lifecycle::Created);
                    me.publish(&record, Lifecycle::Started);
                    tracing::info!(sandbox = %id, pod = %name, "pod sandbox ready");
                    // A pause that died while the pod was being made.
                    me.settle_pending(&id)?;
                    Ok(id)
                })
            }
        }
    }

    /// Checks the request, reserves the name and journals the intent.
    #[allow(clippy::type_complexity)]
    fn admit(&mut self, msg: RunPodSandbox) -> Result<(String, String, PodConfig, String, String)> {
        validate::pod(&msg.config)?;
        bandwidth(&msg.config)?;
        let handler = msg.runtime_handler;
        if !(handler.is_empty()
            || handler == "runc"
            || self.deps.config.runtime_handlers.contains(&handler))
        {
            let mut known: Vec<&str> = vec!["", "runc"];
            for h in &self.deps.config.runtime_handlers {
                if !known.contains(&h.as_str()) {
                    known.push(h);
                }
            }
            return Err(Error::InvalidArgument(format!(
                "runtime handler {} is not configured (known: {known:?})",
                crate::checked::shown(&handler)
            )));
        }
        if let Some(why) = self
            .deps
            .config
            .unusable_handlers
            .get()
            .and_then(|u| u.get(&handler))
        {
            return Err(Error::FailedPrecondition(format!(
                "runtime handler {handler:?} cannot run pods on this node: {why}"
            )));
        }
        if msg.config.security.user_namespace.is_some() {
            match self.deps.config.user_namespaces.get() {
                Some(Ok(())) => {}
                Some(Err(why)) => {
                    return Err(Error::FailedPrecondition(format!(
                        "config.linux.security_context.namespace_options.userns_options: pods cannot have user namespaces of their own on this node: {why}"
                    )))
                }
                None => {
                    return Err(Error::Unavailable(
                        "berthd is still trying whether pods can have user namespaces here; retry"
                            .into(),
                    ))
                }
            }
        }
        let name = msg.config.metadata.reserved_name();
        let holder = self.reserved.get(&name).cloned().or_else(|| {
            self.records
                .iter()
                .find(|r| r.name == name)
                .map(|r| r.id.clone())
        });
        if let Some(holder) = holder {
            // A holder still Creating that no call is making was cut short
            // (a restart) and is being undone: the name is free soon.
            let undoing = !self.reserved.contains_key(&name)
                && self
                    .records
                    .get(&holder)
                    .is_some_and(|r| r.state == SandboxState::Creating);
            if undoing {
                return Err(Error::Unavailable(format!(
                    "pod sandbox name {name:?} is held by {holder}, whose making was cut short and is being undone; retry"
                )));
            }
            return Err(Error::AlreadyExists(format!(
                "pod sandbox name {name:?} is reserved for {holder}"
            )));
        }
        let id = crate::ids::new_id()?;
        let parent = if msg.config.cgroup_parent.is_empty() {
            self.deps.config.cgroup_parent.clone()
        } else {
            msg.config.cgroup_parent.clone()
        };
        let cgroups_path = format!("{}/{id}", parent.trim_end_matches('/'));
        self.records.put(SandboxRecord {
            id: id.clone(),
            name: name.clone(),
            created_unix_nanos: crate::journal::unix_nanos(),
            config: msg.config.clone(),
            runtime_handler: handler.clone(),
            state: SandboxState::Creating,
            netns_path: String::new(),
            ips: Vec::new(),
            pid: 0,
            cgroups_path: cgroups_path.clone(),
        })?;
        self.reserved.insert(name.clone(), id.clone());
        Ok((id, name, msg.config, handler, cgroups_path))
    }
}

#[cfg(test)]
mod tests {
    use super::quantity;

    #[test]
    fn quantities_read_as_kubernetes_writes_them() {
        assert_eq!(quantity("10M"), Some(10_000_000));
        assert_eq!(quantity("1Mi"), Some(1 << 20));
        assert_eq!(quantity("500k"), Some(500_000));
        assert_eq!(quantity("2e6"), Some(2_000_000));
        assert_eq!(quantity("fast"), None);
        assert_eq!(quantity("-1M"), None);
    }
}
