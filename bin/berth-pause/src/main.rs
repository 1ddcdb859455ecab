//! berth-pause: the first process of every pod. It holds the pod's
//! namespaces open, reaps zombies when it is the init of a shared PID
//! namespace, and exits on SIGINT or SIGTERM. It does nothing else, so it
//! costs next to nothing.
//!
//! On x86-64 and AArch64 it is its own entry point: no C library start-up
//! and no Rust runtime run, only a few system calls, so that a pod's pause
//! process is a handful of resident pages (about 80 KiB, statically
//! linked) rather than the C library's and the runtime's start-up
//! (1.8 MiB). Elsewhere it is an ordinary program doing the same.

#![cfg_attr(any(target_arch = "x86_64", target_arch = "aarch64"), no_main)]

/// The signals it waits for, as the kernel's 64-bit mask (bit n-1 for
/// signal n).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const WAITED: u64 =
    (1 << (libc::SIGINT - 1)) | (1 << (libc::SIGTERM - 1)) | (1 << (libc::SIGCHLD - 1));

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod bare {
    use super::WAITED;

    #[cfg(target_arch = "x86_64")]
    mod arch {
        pub const RT_SIGPROCMASK: usize = 14;
        pub const RT_SIGTIMEDWAIT: usize = 128;
        pub const WAIT4: usize = 61;
        pub const EXIT_GROUP: usize = 231;

        /// A system call of up to four arguments; the kernel's answer
        /// (negative: an errno).
        ///
        /// # Safety
        /// The arguments must be what system call `n` takes.
        pub unsafe fn syscall4(n: usize, a: usize, b: usize, c: usize, d: usize) -> isize {
            let ret: isize;
            // SAFETY: the x86-64 system call convention; the caller vouches
            // for the arguments.
            unsafe {
                core::arch::asm!(
                    "syscall",
                    inlateout("rax") n as isize => ret,
                    in("rdi") a, in("rsi") b, in("rdx") c, in("r10") d,
                    lateout("rcx") _, lateout("r11") _,
                    options(nostack),
                );
            }
            ret
        }

        // The kernel starts the process here with the stack 16-byte
        // aligned; `call` keeps the alignment the Rust function expects.
        core::arch::global_asm!(
            ".globl _start",
            "_start:",
            "xor ebp, ebp",
            "and rsp, -16",
            "call {main}",
            "ud2",
            main = sym super::pause_main,
        );
    }

    #[cfg(target_arch = "aarch64")]
    mod arch {
        pub const RT_SIGPROCMASK: usize = 135;
        pub const RT_SIGTIMEDWAIT: usize = 137;
        pub const WAIT4: usize = 260;
        pub const EXIT_GROUP: usize = 94;

        /// A system call of up to four arguments; the kernel's answer
        /// (negative: an errno).
        ///
        /// # Safety
        /// The arguments must be what system call `n` takes.
        pub unsafe fn syscall4(n: usize, a: usize, b: usize, c: usize, d: usize) -> isize {
            let ret: isize;
            // SAFETY: the AArch64 system call convention; the caller
            // vouches for the arguments.
            unsafe {
                core::arch::asm!(
                    "svc 0",
                    in("x8") n,
                    inlateout("x0") a as isize => ret,
                    in("x1") b, in("x2") c, in("x3") d,
                    options(nostack),
                );
            }
            ret
        }

        core::arch::global_asm!(
            ".globl _start",
            "_start:",
            "mov x29, xzr",
            "mov x30, xzr",
            "bl {main}",
            "brk #0",
            main = sym super::pause_main,
        );
    }

    use arch::*;

    fn exit(code: usize) -> ! {
        loop {
            // SAFETY: exit_group takes a status and does not return.
            unsafe { syscall4(EXIT_GROUP, code, 0, 0, 0) };
        }
    }

    extern "C" fn pause_main() -> ! {
        let set = WAITED;
        let set_ptr = &set as *const u64 as usize;
        // SAFETY: rt_sigprocmask(SIG_BLOCK, &set, NULL, 8) blocks the
        // waited signals, so that they queue for rt_sigtimedwait.
        unsafe { syscall4(RT_SIGPROCMASK, libc::SIG_BLOCK as usize, set_ptr, 0, 8) };
        loop {
            let mut info = [0u64; 16];
            // SAFETY: rt_sigtimedwait(&set, &info, NULL, 8) waits for one of
            // them; `info` is the 128 bytes of a siginfo_t.
            let sig =
                unsafe { syscall4(RT_SIGTIMEDWAIT, set_ptr, info.as_mut_ptr() as usize, 0, 8) };
            match sig as i32 {
                libc::SIGINT | libc::SIGTERM => exit(0),
                libc::SIGCHLD => {
                    // Reap every orphan that ended: wait4(-1, NULL, WNOHANG).
                    // SAFETY: no status or usage is asked for.
                    while unsafe { syscall4(WAIT4, usize::MAX, 0, libc::WNOHANG as usize, 0) } > 0 {
                    }
                }
                _ => {}
            }
        }
    }
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn main() {
    // SAFETY: signal masks and sigwaitinfo on this single-threaded process.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGCHLD] {
            libc::sigaddset(&mut set, sig);
        }
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        loop {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            match libc::sigwaitinfo(&set, &mut info) {
                libc::SIGINT | libc::SIGTERM => std::process::exit(0),
                libc::SIGCHLD => {
                    while libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) > 0 {}
                }
                _ => {}
            }
        }
    }
}
