//! Deadlines from durations that may come from outside (a `?timeout=`, a peer's
//! lease, a config): `Instant + Duration` panics on overflow, so every such sum
//! goes through here and saturates at a far future instead.

use std::time::{Duration, Instant};

/// A deadline past any wait colony would honour: about thirty years.
const FAR: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

/// `now + wait`, or a far future when that would overflow.
pub(crate) fn after(wait: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(wait)
        .or_else(|| now.checked_add(FAR))
        .unwrap_or(now)
}

/// [`after`] on tokio's clock (which follows a paused test clock).
pub(crate) fn tokio_after(wait: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(wait)
        .or_else(|| now.checked_add(FAR))
        .unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_waits_saturate_instead_of_panicking() {
        assert!(after(Duration::MAX) > Instant::now());
        assert!(after(Duration::from_secs(1)) > Instant::now());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        rt.block_on(async {
            assert!(tokio_after(Duration::MAX) > tokio::time::Instant::now());
        });
    }
}
