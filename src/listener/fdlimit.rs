//! The process's file-descriptor limit (RLIMIT_NOFILE): raising it at daemon start, how
//! many of its descriptors the listener may spend on connections, and the spare descriptor
//! that lets the accept loop shed a connection when the limit is reached anyway.

use std::fs::File;
use std::io;

/// Descriptors kept out of the listener's reach: the control socket and its clients, the Raft store,
/// connections to peers, service processes, log files.
pub const FD_RESERVE: u64 = 64;

/// The soft and hard RLIMIT_NOFILE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileLimit {
    /// What `open` and `accept` are held to.
    pub soft: u64,
    /// How far the soft limit may be raised without privileges.
    pub hard: u64,
}

/// The current RLIMIT_NOFILE.
// rlim_t is u64 on Linux but not everywhere: keep the casts.
#[allow(clippy::unnecessary_cast)]
pub fn nofile() -> io::Result<NofileLimit> {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(NofileLimit {
        soft: rl.rlim_cur as u64,
        hard: rl.rlim_max as u64,
    })
}

/// Raises the soft RLIMIT_NOFILE to the hard one (to the kernel's `nr_open` when the hard
/// limit is unlimited: Linux refuses more); returns the limits before and after.
#[allow(clippy::unnecessary_cast)]
pub fn raise_nofile() -> io::Result<(NofileLimit, NofileLimit)> {
    let before = nofile()?;
    let target = before.hard.min(nr_open());
    if before.soft < target {
        let rl = libc::rlimit {
            rlim_cur: target as libc::rlim_t,
            rlim_max: before.hard as libc::rlim_t,
        };
        // SAFETY: setrlimit only reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok((before, nofile()?))
}

/// The most descriptors a process may have open (`/proc/sys/fs/nr_open`, 2^20 if unreadable).
fn nr_open() -> u64 {
    std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1 << 20)
}

/// The connection cap in force: `max_conns`, lowered so that [`FD_RESERVE`] descriptors
/// (and the spare) stay free under the soft limit; at least 1.
pub fn effective_cap(max_conns: usize, soft: u64) -> usize {
    let room = soft.saturating_sub(FD_RESERVE + 1);
    (max_conns as u64).min(room).max(1) as usize
}

/// The spare descriptor: closed to make room for one `accept` when the limit is reached.
pub fn open_spare() -> Option<File> {
    File::open("/dev/null").ok()
}

/// Whether an accept error means the process or system ran out of descriptors.
pub fn is_fd_exhaustion(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_leaves_the_reserve_free() {
        assert_eq!(effective_cap(1024, 1024), 1024 - 65);
        assert_eq!(effective_cap(100, 1024), 100);
        assert_eq!(effective_cap(100, 10), 1);
        let l = nofile().unwrap();
        assert!(l.soft <= l.hard);
    }
}
