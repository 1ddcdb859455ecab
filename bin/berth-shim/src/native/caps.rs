//! Capabilities by name, as the OCI spec spells them, and the sets the
//! kernel takes (`capset(2)` version 3: two 32-bit words per set).

/// The kernel's capability numbers, in order (`linux/capability.h`).
const NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The highest capability this kernel knows.
pub fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(NAMES.len() as u32 - 1)
}

/// A set of capabilities as a bit mask. Names this kernel does not know
/// are left out, as runc leaves them out (with a warning in its log).
pub fn mask(names: &[String], last: u32) -> u64 {
    names
        .iter()
        .filter_map(|n| NAMES.iter().position(|k| k == n))
        .filter(|&bit| bit as u32 <= last)
        .fold(0, |m, bit| m | 1 << bit)
}

/// The capabilities in `mask`, as numbers.
pub fn numbers(mask: u64, last: u32) -> Vec<libc::c_int> {
    (0..=last.min(63))
        .filter(|bit| mask & (1 << bit) != 0)
        .map(|bit| bit as libc::c_int)
        .collect()
}

#[repr(C)]
struct Header {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const VERSION_3: u32 = 0x2008_0522;

/// `capset(2)` for the calling thread. Async-signal-safe.
pub fn set(effective: u64, permitted: u64, inheritable: u64) -> libc::c_int {
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let word = |m: u64, i: u32| (m >> (32 * i)) as u32;
    let data = [0, 1].map(|i| Data {
        effective: word(effective, i),
        permitted: word(permitted, i),
        inheritable: word(inheritable, i),
    });
    // SAFETY: a version-3 header and two data words, as capset takes.
    unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) as libc::c_int }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_to_masks_and_back() {
        let names = ["CAP_CHOWN", "CAP_KILL", "CAP_BPF", "CAP_NOT_A_THING"].map(String::from);
        let m = mask(&names, 40);
        assert_eq!(m, 1 | 1 << 5 | 1 << 39);
        assert_eq!(numbers(m, 40), vec![0, 5, 39]);
        // A kernel that stops at CAP_AUDIT_READ knows no CAP_BPF.
        assert_eq!(mask(&names, 37), 1 | 1 << 5);
        assert_eq!(NAMES[21], "CAP_SYS_ADMIN");
        assert_eq!(NAMES[40], "CAP_CHECKPOINT_RESTORE");
    }
}
