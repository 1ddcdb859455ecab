//! berth-pause: the first process of every pod. It holds the pod's
//! namespaces open, reaps zombies when it is the init of a shared PID
//! namespace, and exits on SIGINT or SIGTERM. It does nothing else, so it
//! costs next to nothing.

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
                    // Reap every orphan that ended.
                    while libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) > 0 {}
                }
                _ => {}
            }
        }
    }
}
