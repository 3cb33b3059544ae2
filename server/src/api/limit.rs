//! Failed authentications per client address: after `MAX_FAILURES` wrong tokens within
//! `WINDOW`, every authenticated request from that address is answered 429 (with Retry-After)
//! until the window ends, right or wrong token alike (else a correct guess would still get
//! through the lockout). A rater token has 128 bits, so guessing is hopeless anyway; the limit
//! keeps a guesser from costing the server a token lookup per request, and shows up in the log.
//!
//! Kept in memory per server process (a restart forgets), keyed by the connection's peer
//! address: behind a reverse proxy every client shares the proxy's address, so the proxy
//! should limit too.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const MAX_FAILURES: u32 = 30;
pub const WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
pub struct AuthLimiter {
    by_address: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl AuthLimiter {
    /// How long `ip` must still wait, if it is locked out.
    pub fn locked(&self, ip: IpAddr) -> Option<Duration> {
        let map = self.by_address.lock().unwrap();
        let &(start, failures) = map.get(&ip)?;
        let left = WINDOW.checked_sub(start.elapsed())?;
        (failures >= MAX_FAILURES).then_some(left)
    }

    /// Counts a wrong token from `ip`.
    pub fn failed(&self, ip: IpAddr) {
        let mut map = self.by_address.lock().unwrap();
        // Forget windows that have ended (bounded memory under a spray of addresses).
        if map.len() > 10_000 {
            map.retain(|_, (start, _)| start.elapsed() < WINDOW);
        }
        let entry = map.entry(ip).or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= WINDOW {
            *entry = (Instant::now(), 0);
        }
        entry.1 += 1;
        if entry.1 == MAX_FAILURES {
            tracing::warn!(address = %ip, failures = MAX_FAILURES, "authentication failures: address locked out for a minute");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_after_the_limit_and_only_that_address() {
        let l = AuthLimiter::default();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        for _ in 0..MAX_FAILURES - 1 {
            l.failed(a);
        }
        assert!(l.locked(a).is_none());
        l.failed(a);
        let left = l.locked(a).unwrap();
        assert!(left <= WINDOW && left > WINDOW - Duration::from_secs(5));
        assert!(l.locked(b).is_none());
    }
}
