//! The `NetworkReady` condition: ready once the CNI configuration directory
//! holds a loadable network configuration. As libcni does, files are taken
//! in name order and the first loadable one is the pod network.

use super::actor::Network;
use super::cni::NetworkList;
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
    NetworkList::first_in(dir).map(|l| l.name)
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
