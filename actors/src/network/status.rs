//! The `NetworkReady` condition: ready once the CNI configuration directory
//! holds a loadable network configuration. As libcni does, files are taken
//! in name order and the first loadable one is the pod network.

use super::actor::Network;
use super::messages::NetworkReadiness;
use std::path::Path;

/// containerd and CRI-O report the same reason, which tooling matches on.
const NOT_READY: &str = "NetworkPluginNotReady";

impl Network {
    pub(super) fn readiness(&self) -> NetworkReadiness {
        let dir = &self.config.cni_conf_dir;
        match first_network(dir) {
            Ok(name) => NetworkReadiness {
                ready: true,
                reason: String::new(),
                message: format!("CNI network {name:?} is configured"),
            },
            Err(why) => NetworkReadiness {
                ready: false,
                reason: NOT_READY.to_string(),
                message: format!("cni config uninitialized: {why}"),
            },
        }
    }
}

/// The name of the first loadable network in `dir`, or why there is none.
pub(super) fn first_network(dir: &Path) -> Result<String, String> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read CNI config directory {}: {e}", dir.display()))?;
    let mut files: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("conf" | "conflist" | "json")
            )
        })
        .collect();
    files.sort();
    let mut problems = Vec::new();
    for file in &files {
        match load_network_name(file) {
            Ok(name) => return Ok(name),
            Err(e) => problems.push(format!("{}: {e}", file.display())),
        }
    }
    if problems.is_empty() {
        Err(format!("no network config found in {}", dir.display()))
    } else {
        Err(problems.join("; "))
    }
}

fn load_network_name(file: &Path) -> Result<String, String> {
    let text = std::fs::read(file).map_err(|e| e.to_string())?;
    let conf: serde_json::Value = serde_json::from_slice(&text).map_err(|e| e.to_string())?;
    let name = conf
        .get("name")
        .and_then(|n| n.as_str())
        .filter(|n| !n.is_empty())
        .ok_or("no network name")?;
    let has_plugins = match conf.get("plugins") {
        Some(p) => p.as_array().is_some_and(|a| !a.is_empty()),
        None => conf.get("type").and_then(|t| t.as_str()).is_some(),
    };
    if !has_plugins {
        return Err("no plugin in the network config".into());
    }
    Ok(name.to_string())
}

#[cfg(test)]
mod tests {
    use super::first_network;

    #[test]
    fn first_loadable_config_in_name_order_wins() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(first_network(dir.path())
            .unwrap_err()
            .contains("no network config found"));
        std::fs::write(dir.path().join("00-broken.conflist"), "{").expect("write");
        std::fs::write(dir.path().join("README"), "not a config").expect("write");
        let err = first_network(dir.path()).unwrap_err();
        assert!(err.contains("00-broken.conflist"), "{err}");
        std::fs::write(
            dir.path().join("20-b.conflist"),
            r#"{"cniVersion":"1.0.0","name":"b","plugins":[{"type":"bridge"}]}"#,
        )
        .expect("write");
        std::fs::write(
            dir.path().join("10-a.conf"),
            r#"{"cniVersion":"0.4.0","name":"a","type":"bridge"}"#,
        )
        .expect("write");
        assert_eq!(first_network(dir.path()), Ok("a".to_string()));
    }

    #[test]
    fn a_missing_directory_is_a_reason() {
        let err = first_network(std::path::Path::new("/nonexistent/berth-cni")).unwrap_err();
        assert!(err.contains("/nonexistent/berth-cni"), "{err}");
    }
}
