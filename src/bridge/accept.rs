//! The bridge's door: connections from strangers, before they prove the
//! cluster secret.
//!
//! At most `bridge.max_handshakes` connections are in their handshake at once,
//! and at most an eighth of those (at least one) from one source, so that one
//! address cannot hold every slot and keep real peers out. A source is an IPv4
//! address or an IPv6 /64 (one host commonly holds a whole /64). A connection
//! past either cap is closed before anything is read from it.
//!
//! Refusals are logged at most once per network (IPv4 /24, IPv6 /64) per
//! [`REFUSAL_LOG_EVERY`], the next line counting those left out, so a stranger
//! with many addresses in one network still writes few lines.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::session;
use super::state::Bridge;
use crate::logging::{untrusted, Throttle, Verdict};

/// How often one network may have a refused connection logged.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);
/// How many networks the refusal log remembers.
const REFUSAL_LOG_NETWORKS: usize = 1024;
/// One source may hold at most `max_handshakes / SOURCE_SHARE` handshakes (at least one).
const SOURCE_SHARE: usize = 8;

/// The handshakes running now: all of them, and per source.
struct Admission {
    all: Arc<Semaphore>,
    per_source: usize,
    /// Handshakes running per source. A source is here only while one of its
    /// handshakes runs, so the table holds at most `max_handshakes` entries.
    running: Mutex<HashMap<IpAddr, usize>>,
}

/// One running handshake's place; freed when dropped.
struct Slot {
    admission: Arc<Admission>,
    source: IpAddr,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut running = self.admission.running.lock();
        if let Some(count) = running.get_mut(&self.source) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                running.remove(&self.source);
            }
        }
    }
}

impl Admission {
    fn new(max_handshakes: usize) -> Arc<Admission> {
        let cap = max_handshakes.clamp(1, Semaphore::MAX_PERMITS);
        Arc::new(Admission {
            all: Arc::new(Semaphore::new(cap)),
            per_source: (cap / SOURCE_SHARE).max(1),
            running: Mutex::default(),
        })
    }

    /// A slot for a handshake from `from`, or why there is none.
    fn admit(self: &Arc<Self>, from: IpAddr, max_handshakes: usize) -> Result<Slot, String> {
        let source = source(from);
        let mut running = self.running.lock();
        let count = running.get(&source).copied().unwrap_or(0);
        if count >= self.per_source {
            return Err(format!(
                "{count} handshakes already running from {} (at most {} per address: \
                 bridge.max_handshakes / {SOURCE_SHARE})",
                Network(source, if source.is_ipv4() { 32 } else { 64 }),
                self.per_source
            ));
        }
        let Ok(permit) = self.all.clone().try_acquire_owned() else {
            return Err(format!(
                "{max_handshakes} handshakes already running (bridge.max_handshakes)"
            ));
        };
        running.insert(source, count.saturating_add(1));
        Ok(Slot {
            admission: self.clone(),
            source,
            _permit: permit,
        })
    }
}

/// The address itself for IPv4 (also when mapped into IPv6); the /64 for IPv6.
fn source(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => IpAddr::V6(prefix_64(v6)),
    }
}

fn prefix_64(v6: Ipv6Addr) -> Ipv6Addr {
    Ipv6Addr::from(v6.to_bits() & !u128::from(u64::MAX))
}

/// A network: its first address and prefix length, shown as `127.0.3.0/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Network(IpAddr, u8);

impl std::fmt::Display for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.0, self.1)
    }
}

/// The network whose refusals share one log budget: IPv4 /24, IPv6 /64.
fn log_network(ip: IpAddr) -> Network {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            Network(IpAddr::from([a, b, c, 0]), 24)
        }
        IpAddr::V6(v6) => Network(IpAddr::V6(prefix_64(v6)), 64),
    }
}

/// Accepts connections and runs their handshakes within the caps (see the
/// module's doc); refusals are logged through one throttle per network.
pub(super) async fn accept_loop(bridge: Arc<Bridge>, listener: TcpListener) {
    let max_handshakes = bridge.config.max_handshakes;
    let admission = Admission::new(max_handshakes);
    let refusals = Arc::new(Mutex::new(Throttle::new(
        REFUSAL_LOG_EVERY,
        REFUSAL_LOG_NETWORKS,
    )));
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                log::warn!("bridge: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Held until the handshake ends, whichever way.
        let slot = match admission.admit(from.ip(), max_handshakes) {
            Ok(slot) => slot,
            Err(why) => {
                drop(stream);
                log_refusal(&refusals, from, &why);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let bridge = bridge.clone();
        let refusals = refusals.clone();
        actix_rt::spawn(async move {
            let opened = bridge.open(stream, false).await;
            drop(slot);
            match opened {
                Ok((framed, name)) => {
                    let why = session::run(bridge, framed, name.clone()).await;
                    log::debug!("bridge: link from {name} ended: {}", untrusted(&why));
                }
                Err(why) => log_refusal(&refusals, from, &why),
            }
        });
    }
}

/// Logs a refused connection, unless `from`'s network had one logged lately.
fn log_refusal(refusals: &Mutex<Throttle<Network>>, from: SocketAddr, why: &str) {
    let network = log_network(from.ip());
    let verdict = refusals.lock().note(network, std::time::Instant::now());
    let every = REFUSAL_LOG_EVERY.as_secs();
    match verdict {
        Verdict::Line { suppressed: 0 } => log::warn!(
            "bridge: rejected connection from {from}: {} (logged once per {every} s for {network})",
            untrusted(why)
        ),
        Verdict::Line { suppressed } => log::warn!(
            "bridge: rejected connection from {from}: {} ({suppressed} more refused from {network} since its last line)",
            untrusted(why)
        ),
        Verdict::Overflow { suppressed } => log::warn!(
            "bridge: refusing connections from over {REFUSAL_LOG_NETWORKS} networks; \
             {suppressed} refused from new networks since the last such line, not logged one by one"
        ),
        Verdict::Quiet => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    #[test]
    fn one_source_holds_at_most_an_eighth_of_the_slots_and_leaves_no_entry() {
        let admission = Admission::new(16);
        let a: Vec<Slot> = (0..2)
            .map(|_| admission.admit(ip("10.0.0.1"), 16).expect("a slot"))
            .collect();
        let why = admission.admit(ip("10.0.0.1"), 16).err().expect("refused");
        assert!(why.contains("10.0.0.1/32"), "{why}");
        // The same host through an IPv4-mapped address is the same source.
        assert!(admission.admit(ip("::ffff:10.0.0.1"), 16).is_err());
        // One IPv6 /64 is one source.
        let b = admission.admit(ip("2001:db8::1"), 16).expect("a slot");
        let c = admission.admit(ip("2001:db8::2:3"), 16).expect("a slot");
        let why = admission
            .admit(ip("2001:db8::ffff"), 16)
            .err()
            .expect("refused");
        assert!(why.contains("2001:db8::/64"), "{why}");
        assert!(admission.admit(ip("2001:db8:0:1::1"), 16).is_ok());
        assert_eq!(admission.running.lock().len(), 2);
        drop((a, b, c));
        assert!(admission.running.lock().is_empty());
    }

    #[test]
    fn the_global_cap_still_holds_and_a_small_one_allows_one_per_source() {
        let admission = Admission::new(4);
        let slots: Vec<Slot> = (1..=4)
            .map(|n| {
                admission
                    .admit(ip(&format!("10.0.0.{n}")), 4)
                    .expect("a slot")
            })
            .collect();
        assert!(admission.admit(ip("10.0.0.5"), 4).is_err());
        assert_eq!(admission.running.lock().len(), 4);
        drop(slots);
        let _one = admission.admit(ip("10.0.0.1"), 4).expect("a slot");
        assert!(admission.admit(ip("10.0.0.1"), 4).is_err());
    }

    #[test]
    fn refusals_are_counted_per_ipv4_24_and_ipv6_64() {
        assert_eq!(log_network(ip("127.0.3.77")).to_string(), "127.0.3.0/24");
        assert_eq!(
            log_network(ip("::ffff:127.0.3.9")).to_string(),
            "127.0.3.0/24"
        );
        assert_eq!(
            log_network(ip("2001:db8:1:2:aaaa::1")).to_string(),
            "2001:db8:1:2::/64"
        );
    }
}
