//! Failed authentications per client address: after `MAX_FAILURES` wrong tokens within
//! `WINDOW`, every authenticated request from that address is answered 429 (with Retry-After)
//! until the window ends, right or wrong token alike (else a correct guess would still get
//! through the lockout). A rater token has 128 bits, so guessing is hopeless anyway; the limit
//! keeps a guesser from costing the server a token lookup per request, and shows up in the log.
//!
//! Kept in memory per server process (a restart forgets), keyed by the connection's peer
//! address (an IPv6 address by its /64, which one subscriber usually holds whole): behind a
//! reverse proxy every client shares the proxy's address, so the proxy should limit too. At
//! most `MAX_TRACKED` addresses are tracked; ended windows are swept at most once a second,
//! and while the table is full of live windows a new address is treated as locked (a spray of
//! fresh addresses is itself an attack).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const MAX_FAILURES: u32 = 30;
pub const WINDOW: Duration = Duration::from_secs(60);
pub const MAX_TRACKED: usize = 10_000;

#[derive(Debug, Default)]
pub struct AuthLimiter {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    by_address: HashMap<IpAddr, (Instant, u32)>,
    last_sweep: Option<Instant>,
}

/// The key of an address: IPv4 as it is, IPv6 by its /64.
fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
        v4 => v4,
    }
}

impl AuthLimiter {
    /// How long `ip` must still wait, if it is locked out.
    pub fn locked(&self, ip: IpAddr) -> Option<Duration> {
        let st = self.state.lock().unwrap();
        match st.by_address.get(&key(ip)) {
            Some(&(start, failures)) => {
                let left = WINDOW.checked_sub(start.elapsed())?;
                (failures >= MAX_FAILURES).then_some(left)
            }
            // Full of live windows: a new address is not let through to guess.
            None if st.by_address.len() >= MAX_TRACKED => Some(Duration::from_secs(1)),
            None => None,
        }
    }

    /// Counts a wrong token from `ip`.
    pub fn failed(&self, ip: IpAddr) {
        let mut st = self.state.lock().unwrap();
        let now = Instant::now();
        if st.by_address.len() >= MAX_TRACKED && st.last_sweep.is_none_or(|t| now - t >= Duration::from_secs(1)) {
            st.by_address.retain(|_, (start, _)| start.elapsed() < WINDOW);
            st.last_sweep = Some(now);
        }
        let ip = key(ip);
        if st.by_address.len() >= MAX_TRACKED && !st.by_address.contains_key(&ip) {
            return;
        }
        let entry = st.by_address.entry(ip).or_insert((now, 0));
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
        // One IPv6 /64 is one address.
        let v6 = |s: &str| -> IpAddr { s.parse().unwrap() };
        for i in 0..MAX_FAILURES {
            l.failed(v6(&format!("2001:db8:1:2::{:x}", i + 1)));
        }
        assert!(l.locked(v6("2001:db8:1:2:ffff::1")).is_some());
        assert!(l.locked(v6("2001:db8:1:3::1")).is_none());
    }

    #[test]
    fn a_spray_of_addresses_is_bounded() {
        let l = AuthLimiter::default();
        for i in 0..(MAX_TRACKED as u32 + 50) {
            l.failed(IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i)));
        }
        assert_eq!(l.state.lock().unwrap().by_address.len(), MAX_TRACKED);
        // A fresh address while the table is full of live windows is held back.
        assert!(l.locked("192.0.2.1".parse().unwrap()).is_some());
    }
}
