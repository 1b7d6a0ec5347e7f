//! What a bridge counts of its traffic, shared by its links: frames and bytes
//! in, bytes out (from the writer task and from callers that write directly),
//! links opened.

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

/// The bridge's traffic counters.
#[derive(Default)]
pub(crate) struct Counters {
    pub(super) frames_in: [AtomicU64; 6],
    pub(super) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    pub(super) links_opened: AtomicU64,
    pub(super) reconnects: AtomicU64,
    /// Every node this node has linked with.
    pub(super) linked: Mutex<std::collections::HashSet<String>>,
}

impl Counters {
    pub(crate) fn received(&self, kind: u8, len: usize) {
        if let Some(n) = self.frames_in.get(usize::from(kind).wrapping_sub(1)) {
            n.fetch_add(1, Ordering::Relaxed);
        }
        self.bytes_in.fetch_add(len as u64 + 5, Ordering::Relaxed);
    }
}
