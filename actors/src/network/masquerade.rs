//! Source NAT for pod traffic leaving the node, as one chain for the whole
//! node instead of a chain per pod.
//!
//! With `[cni] masquerade` listing the pod subnets (and `ipMasq: false` in
//! the bridge plugin's configuration), berthd keeps, in the nat table:
//!
//! ```text
//! -A POSTROUTING -m comment --comment "berth: masquerade pod subnets" -j BERTH-MASQ-xxxxxxxx
//! -A BERTH-MASQ-xxxxxxxx -d 224.0.0.0/4 -j RETURN      (multicast: no NAT)
//! -A BERTH-MASQ-xxxxxxxx -d SUBNET -j RETURN           (pod to pod: no NAT)
//! -A BERTH-MASQ-xxxxxxxx -s SUBNET -j MASQUERADE       (pod to elsewhere)
//! ```
//!
//! which is what the bridge plugin's `ipMasq` does per pod, so that a pod's
//! CNI ADD and DEL run no iptables at all. The chain is named after the
//! state directory (several berthds on one host keep theirs apart) and is
//! rewritten whole, atomically, by `iptables-restore`. It stays while
//! berthd is down, as the pods do.

use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::sync::Mutex;

/// The comment on the POSTROUTING jump.
const COMMENT: &str = "berth: masquerade pod subnets";

/// A CIDR as iptables takes it: an address and a prefix length that fits.
pub fn parse_cidr(text: &str) -> Result<(IpAddr, u8), String> {
    let (addr, len) = text
        .split_once('/')
        .ok_or_else(|| format!("{text:?} is not a CIDR (address/prefix)"))?;
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("{text:?}: {addr:?} is not an IP address"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len: u8 = len
        .parse()
        .ok()
        .filter(|l| *l <= max)
        .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {max}"))?;
    Ok((addr, len))
}

/// The chain of the berthd whose state directory is `state`.
pub fn chain_name(state: &std::path::Path) -> String {
    // FNV-1a: stable across builds, unlike std's hasher.
    let mut h: u32 = 0x811c_9dc5;
    for b in state.as_os_str().as_encoded_bytes() {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("BERTH-MASQ-{h:08x}")
}

/// One address family's tools and its multicast range.
struct Family {
    iptables: &'static str,
    restore: &'static str,
    multicast: &'static str,
    v6: bool,
}

const FAMILIES: [Family; 2] = [
    Family {
        iptables: "iptables",
        restore: "iptables-restore",
        multicast: "224.0.0.0/4",
        v6: false,
    },
    Family {
        iptables: "ip6tables",
        restore: "ip6tables-restore",
        multicast: "ff00::/8",
        v6: true,
    },
];

fn run(program: &str, args: &[&str], input: Option<&str>) -> Result<(), String> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| format!("{program}: writing its input: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{program} {}: {} ({})",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim(),
        out.status
    ))
}

/// The chain's rules, as `iptables-restore --noflush` input (which
/// empties a chain it declares before adding to it).
fn rules(chain: &str, family: &Family, subnets: &[&str]) -> String {
    let mut text = format!(
        "*nat\n:{chain} - [0:0]\n-A {chain} -d {} -j RETURN\n",
        family.multicast
    );
    for s in subnets {
        text.push_str(&format!("-A {chain} -d {s} -j RETURN\n"));
    }
    for s in subnets {
        text.push_str(&format!("-A {chain} -s {s} -j MASQUERADE\n"));
    }
    text.push_str("COMMIT\n");
    text
}

fn jump_args<'a>(op: &'a str, chain: &'a str) -> Vec<&'a str> {
    vec![
        "-w",
        "5",
        "-t",
        "nat",
        op,
        "POSTROUTING",
        "-m",
        "comment",
        "--comment",
        COMMENT,
        "-j",
        chain,
    ]
}

/// Makes one family's chain hold exactly `subnets`, or removes chain and
/// jump when there are none.
fn apply_family(chain: &str, family: &Family, subnets: &[&str]) -> Result<(), String> {
    if subnets.is_empty() {
        remove_family(chain, family);
        return Ok(());
    }
    run(
        family.restore,
        &["-w", "5", "--noflush"],
        Some(&rules(chain, family, subnets)),
    )?;
    if run(family.iptables, &jump_args("-C", chain), None).is_err() {
        run(family.iptables, &jump_args("-A", chain), None)?;
    }
    Ok(())
}

/// Removes one family's chain and its jump, if the chain is there.
fn remove_family(chain: &str, family: &Family) {
    let exists = run(
        family.iptables,
        &["-w", "5", "-t", "nat", "-S", chain],
        None,
    )
    .is_ok();
    if !exists {
        return;
    }
    while run(family.iptables, &jump_args("-D", chain), None).is_ok() {}
    let _ = run(
        family.iptables,
        &["-w", "5", "-t", "nat", "-F", chain],
        None,
    );
    let _ = run(
        family.iptables,
        &["-w", "5", "-t", "nat", "-X", chain],
        None,
    );
}

/// What this process last applied, so that an actor restart does not run
/// iptables again for nothing, and two incarnations never apply at once.
static APPLIED: Mutex<Option<(String, Vec<String>)>> = Mutex::new(None);

/// Makes the node's masquerade rules for `chain` cover exactly `subnets`
/// (CIDRs, checked by the configuration). Idempotent; blocking.
pub fn apply(chain: &str, subnets: &[String]) -> Result<(), String> {
    let mut applied = APPLIED.lock().unwrap_or_else(|p| p.into_inner());
    let want = (chain.to_string(), subnets.to_vec());
    if applied.as_ref() == Some(&want) {
        return Ok(());
    }
    for family in &FAMILIES {
        let mine: Vec<&str> = subnets
            .iter()
            .filter(|s| parse_cidr(s).is_ok_and(|(a, _)| a.is_ipv6() == family.v6))
            .map(String::as_str)
            .collect();
        apply_family(chain, family, &mine)?;
    }
    *applied = Some(want);
    Ok(())
}

/// Removes `chain` and its jump, in both families (tests, uninstall).
pub fn remove(chain: &str) {
    for family in &FAMILIES {
        remove_family(chain, family);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_are_checked() {
        assert!(parse_cidr("10.89.0.0/16").is_ok());
        assert!(parse_cidr("fd00::/64").is_ok());
        assert!(parse_cidr("10.89.0.0").is_err());
        assert!(parse_cidr("10.89.0.0/33").is_err());
        assert!(parse_cidr("fd00::/129").is_err());
        assert!(parse_cidr("pods/16").is_err());
    }

    #[test]
    fn chains_are_per_state_directory_and_fit_iptables() {
        let a = chain_name(std::path::Path::new("/run/berth"));
        let b = chain_name(std::path::Path::new("/tmp/berth-e2e-x/run"));
        assert_ne!(a, b);
        assert_eq!(a, chain_name(std::path::Path::new("/run/berth")));
        assert!(a.len() <= 28, "{a}");
    }

    #[test]
    fn the_rules_leave_pod_to_pod_and_multicast_alone() {
        let text = rules("C", &FAMILIES[0], &["10.1.0.0/16", "10.2.0.0/16"]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "*nat",
                ":C - [0:0]",
                "-A C -d 224.0.0.0/4 -j RETURN",
                "-A C -d 10.1.0.0/16 -j RETURN",
                "-A C -d 10.2.0.0/16 -j RETURN",
                "-A C -s 10.1.0.0/16 -j MASQUERADE",
                "-A C -s 10.2.0.0/16 -j MASQUERADE",
                "COMMIT",
            ]
        );
    }
}
