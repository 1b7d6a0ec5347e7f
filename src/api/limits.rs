//! File descriptors: the node raises its soft limit to the hard one at start, and
//! the API never takes the last of them. Each API connection costs a descriptor;
//! without a cap, a flood of idle connections ends in "Too many open files" for
//! the bridge, the health check and every file the node opens.

/// Descriptors kept out of the API's reach, for the bridge, spawned children,
/// logs and files (half the limit when the limit itself is small).
const RESERVE: u64 = 256;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the soft limit
/// now in force (`None` if it cannot be read).
pub(crate) fn raise_fd_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            log::debug!(
                "raised the open-file limit from {} to {}",
                limit.rlim_cur,
                limit.rlim_max
            );
            limit.rlim_cur = limit.rlim_max;
        }
    }
    Some(limit.rlim_cur)
}

/// How many API connections may be open at once: `configured`, but never so
/// many that they leave fewer than the reserve of a `fd_limit`.
pub(crate) fn connection_budget(configured: usize, fd_limit: Option<u64>) -> usize {
    let Some(limit) = fd_limit else {
        return configured.max(1);
    };
    let reserve = RESERVE.min(limit / 2);
    let room = usize::try_from(limit.saturating_sub(reserve)).unwrap_or(usize::MAX);
    configured.min(room).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_leaves_a_reserve() {
        assert_eq!(connection_budget(512, Some(1 << 20)), 512);
        assert_eq!(connection_budget(5000, Some(1024)), 768);
        assert_eq!(connection_budget(5000, Some(100)), 50);
        assert_eq!(connection_budget(5000, Some(0)), 1);
        assert_eq!(connection_budget(5000, None), 5000);
    }
}
