//! What the native exec reads: the exec's process spec (JSON, as the task
//! API's exec carries it) and, once per container, the few parts of the
//! bundle's `config.json` that decide whether the shim can do the exec
//! itself.
//!
//! The process spec is read strictly: a field the shim does not carry
//! out (`ioPriority`, `scheduler`, `execCPUAffinity`, `commandLine`, ...)
//! makes the exec go through the runtime instead of being dropped.

use serde::Deserialize;
use std::path::Path;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Process {
    /// Read but not used: the exec request's own flag decides.
    #[allow(dead_code)]
    #[serde(default)]
    pub terminal: Option<bool>,
    #[serde(default)]
    pub console_size: Option<ConsoleSize>,
    #[serde(default)]
    pub user: Option<User>,
    #[serde(default)]
    pub args: Option<Vec<String>>,
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub cwd: Option<String>,
    #[serde(default)]
    pub capabilities: Option<Capabilities>,
    #[serde(default)]
    pub rlimits: Option<Vec<Rlimit>>,
    #[serde(default)]
    pub no_new_privileges: Option<bool>,
    #[serde(default)]
    pub apparmor_profile: Option<String>,
    #[serde(default)]
    pub oom_score_adj: Option<i32>,
    #[serde(default)]
    pub selinux_label: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleSize {
    pub height: u16,
    pub width: u16,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct User {
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
    #[serde(default)]
    pub umask: Option<u32>,
    #[serde(default)]
    pub additional_gids: Option<Vec<u32>>,
    /// Windows only; ignored, as runc does.
    #[allow(dead_code)]
    #[serde(default)]
    pub username: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    #[serde(default)]
    pub bounding: Option<Vec<String>>,
    #[serde(default)]
    pub effective: Option<Vec<String>>,
    #[serde(default)]
    pub inheritable: Option<Vec<String>>,
    #[serde(default)]
    pub permitted: Option<Vec<String>>,
    #[serde(default)]
    pub ambient: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rlimit {
    #[serde(rename = "type")]
    pub kind: String,
    pub hard: u64,
    pub soft: u64,
}

impl Process {
    /// Parses an exec's process spec; Err says why the runtime must run it.
    pub fn parse(json: &[u8]) -> Result<Process, String> {
        let p: Process =
            serde_json::from_slice(json).map_err(|e| format!("its process spec: {e}"))?;
        if p.apparmor_profile.as_deref().is_some_and(|s| !s.is_empty()) {
            return Err("it has an AppArmor profile".into());
        }
        if p.selinux_label.as_deref().is_some_and(|s| !s.is_empty()) {
            return Err("it has an SELinux label".into());
        }
        if p.args.as_ref().is_none_or(|a| a.is_empty()) {
            return Err("it has no args".into());
        }
        Ok(p)
    }
}

/// Why the container's exec'd processes must go through the runtime, or
/// None: the shim can start them itself. Read from `config.json` once.
pub fn container_refusal(bundle: &Path) -> Option<String> {
    let text = match std::fs::read(bundle.join("config.json")) {
        Ok(t) => t,
        Err(e) => return Some(format!("config.json: {e}")),
    };
    let spec: serde_json::Value = match serde_json::from_slice(&text) {
        Ok(v) => v,
        Err(e) => return Some(format!("config.json: {e}")),
    };
    refusal(&spec)
}

fn refusal(spec: &serde_json::Value) -> Option<String> {
    let linux = spec.get("linux")?;
    let set = |key: &str| {
        linux
            .get(key)
            .is_some_and(|v| !v.is_null() && v.as_array().is_none_or(|a| !a.is_empty()))
    };
    for (key, what) in [
        ("seccomp", "a seccomp profile"),
        ("uidMappings", "a user namespace"),
        ("gidMappings", "a user namespace"),
        ("personality", "a personality"),
        ("intelRdt", "an Intel RDT group"),
    ] {
        if set(key) {
            return Some(format!("the container has {what}"));
        }
    }
    let namespaces = linux.get("namespaces").and_then(|n| n.as_array());
    for ns in namespaces.into_iter().flatten() {
        match ns.get("type").and_then(|t| t.as_str()) {
            Some("user") => return Some("the container has a user namespace".into()),
            Some("time") => return Some("the container has a time namespace".into()),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_plain_process_is_taken() {
        let p = Process::parse(
            br#"{"terminal":false,"user":{"uid":1000,"gid":1000,"additionalGids":[1000,10]},
            "args":["sh","-c","id"],"env":["PATH=/bin"],"cwd":"/tmp",
            "capabilities":{"bounding":["CAP_KILL"],"effective":["CAP_KILL"],"permitted":["CAP_KILL"]},
            "rlimits":[{"type":"RLIMIT_NOFILE","hard":1024,"soft":512}],
            "noNewPrivileges":true,"oomScoreAdj":100}"#,
        )
        .expect("parsed");
        assert_eq!(p.user.as_ref().map(|u| u.uid), Some(1000));
        assert_eq!(p.args.as_ref().map(|a| a.len()), Some(3));
        assert_eq!(p.rlimits.as_ref().map(|r| r[0].soft), Some(512));
    }

    #[test]
    fn what_the_shim_does_not_do_goes_to_the_runtime() {
        for (json, why) in [
            (r#"{"args":["true"],"apparmorProfile":"x"}"#, "AppArmor"),
            (r#"{"args":["true"],"selinuxLabel":"x"}"#, "SELinux"),
            (
                r#"{"args":["true"],"scheduler":{"policy":"SCHED_OTHER"}}"#,
                "scheduler",
            ),
            (r#"{"args":[]}"#, "no args"),
            (r#"{"args":"true"}"#, "process spec"),
        ] {
            let e = Process::parse(json.as_bytes()).expect_err(json);
            assert!(e.contains(why), "{json}: {e}");
        }
        // Empty labels and profiles are no labels and profiles.
        Process::parse(br#"{"args":["true"],"apparmorProfile":"","selinuxLabel":null}"#)
            .expect("empty");
    }

    #[test]
    fn containers_the_runtime_must_exec_into() {
        let plain = json!({"linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}],
            "seccomp": null, "uidMappings": []}});
        assert_eq!(refusal(&plain), None);
        assert_eq!(refusal(&json!({})), None);
        for spec in [
            json!({"linux": {"seccomp": {"defaultAction": "SCMP_ACT_ERRNO"}}}),
            json!({"linux": {"uidMappings": [{"containerID": 0, "hostID": 1000, "size": 1}]}}),
            json!({"linux": {"namespaces": [{"type": "user"}]}}),
            json!({"linux": {"namespaces": [{"type": "time"}]}}),
            json!({"linux": {"personality": {"domain": "LINUX32"}}}),
        ] {
            assert!(refusal(&spec).is_some(), "{spec}");
        }
    }
}
