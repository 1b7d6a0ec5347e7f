//! The spawned side of `spawn`: what a node started by another node learns from
//! its environment (how often it was restarted, its parent's bridge) and how it
//! tells its parent that it listens. The spawning side is the `spawn` surface;
//! these variables are the whole of what passes between the two.

use std::sync::atomic::{AtomicBool, Ordering};

/// The environment variable that names the child's notify pipe.
pub(crate) const NOTIFY_FD: &str = "COLONY_NOTIFY_FD";
/// The environment variable that tells a child how often it was restarted.
pub(crate) const RESTARTS: &str = "COLONY_RESTARTS";
/// The environment variable with the spawning node's bridge address: a spawned
/// worker whose config has a bridge but no `join` joins it.
pub(crate) const PARENT_BRIDGE: &str = "COLONY_PARENT_BRIDGE";

/// The restarts the parent counted before starting this process.
pub(crate) fn restarts_from_env() -> u64 {
    std::env::var(RESTARTS)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The bridge address of the node that spawned this process, if one did.
pub(crate) fn parent_bridge() -> Option<std::net::SocketAddr> {
    std::env::var(PARENT_BRIDGE).ok()?.parse().ok()
}

/// The CPUs this process may run on.
pub(crate) fn affinity() -> Vec<usize> {
    // SAFETY: sched_getaffinity fills a stack-allocated cpu_set_t of the size given.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) < 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect()
    }
}

/// In a spawned child: tells the parent where this node listens, on the pipe at
/// `$COLONY_NOTIFY_FD`, and closes it. Does nothing in a node started by hand.
pub(crate) fn notify_listening(
    api: Option<std::net::SocketAddr>,
    bridge: Option<std::net::SocketAddr>,
) {
    use std::io::Write;
    use std::os::fd::FromRawFd;
    let Some(fd) = std::env::var(NOTIFY_FD)
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
    else {
        return;
    };
    // Only once, and only an fd that is open.
    static NOTIFIED: AtomicBool = AtomicBool::new(false);
    if NOTIFIED.swap(true, Ordering::SeqCst) {
        return;
    }
    // SAFETY: fcntl(F_GETFD) only asks whether the fd is open.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        log::warn!("{NOTIFY_FD}={fd} is not an open file descriptor");
        return;
    }
    // SAFETY: the fd is open, was handed to this process for this, and nothing
    // else in the process uses it; the File closes it.
    let mut pipe = unsafe { std::fs::File::from_raw_fd(fd) };
    let line = serde_json::json!({ "api": api, "bridge": bridge });
    if let Err(e) = writeln!(pipe, "{line}") {
        log::warn!("cannot tell the parent node where this node listens: {e}");
    }
}
