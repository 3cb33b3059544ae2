//! Where the LLM judge may send its requests, and the API key with them (SECURITY.md, "the
//! judge's base URL"). Project admins choose the judge's base URL; the server's operator decides
//! which addresses that URL may reach. By default, only public ones: loopback, private,
//! link-local, carrier-grade NAT, unique-local, multicast and unspecified addresses are refused
//! *after resolution*, however the host is written (`2130706433`, `0x7f000001`,
//! `[::ffff:127.0.0.1]` and `localhost` all come out as 127.0.0.1), unless `apl serve
//! --judge-allow` names the host or a network containing the address (a llama.cpp judge on
//! 127.0.0.1 is a real use: `--judge-allow 127.0.0.1`).
//!
//! The check sits in the HTTP client's resolver, so the addresses checked are the addresses
//! connected to (no second lookup that a rebinding DNS server could answer differently), and
//! a refused host never sees a connection, let alone the key. Redirects are not followed and
//! no proxy is used (a proxy would resolve the host itself, past this check).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

/// An address the policy refused: which host, which address, and how to allow it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the judge's host {host} is an internal address ({kind}); the judge may call only public addresses unless the \
     server's operator allows this one (apl serve --judge-allow {host})"
)]
pub struct Refused {
    pub host: String,
    /// The address it resolved to: for the operator's log, not for the admin's message (it
    /// would map internal names to addresses).
    pub address: IpAddr,
    pub kind: &'static str,
}

/// A `--judge-allow` entry: a host name as written in the URL, or a network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allow {
    Host(String),
    Net { addr: IpAddr, prefix: u8 },
}

/// A `--judge-allow` entry that is neither a host name nor a network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--judge-allow: {0:?} is not a host name, an address or a network (10.0.0.0/8)")]
pub struct BadAllow(pub String);

impl std::str::FromStr for Allow {
    type Err = BadAllow;

    fn from_str(s: &str) -> Result<Self, BadAllow> {
        let t = s.trim().trim_start_matches('[').trim_end_matches(']');
        let bad = || BadAllow(s.to_string());
        if let Some((a, p)) = t.split_once('/') {
            let addr: IpAddr = a.parse().map_err(|_| bad())?;
            let prefix: u8 = p.parse().map_err(|_| bad())?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            return if prefix <= max { Ok(Allow::Net { addr, prefix }) } else { Err(bad()) };
        }
        if let Ok(addr) = t.parse::<IpAddr>() {
            return Ok(Allow::Net { addr, prefix: if addr.is_ipv4() { 32 } else { 128 } });
        }
        let host = t.to_ascii_lowercase();
        let ok = !host.is_empty()
            && host.len() <= 253
            && host
                .split('.')
                .all(|l| !l.is_empty() && l.len() <= 63 && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
        if ok { Ok(Allow::Host(host)) } else { Err(bad()) }
    }
}

fn in_net(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    match (canonical(ip), canonical(net)) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix.min(32)) };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if prefix == 0 { 0 } else { u128::MAX << (128 - prefix.min(128)) };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// IPv6 addresses that carry an IPv4 address, as that address: IPv4-mapped (`::ffff:a.b.c.d`),
/// IPv4-compatible (`::a.b.c.d`), NAT64 (`64:ff9b::/96`, `64:ff9b:1::/48`, which a DNS64/NAT64
/// network routes to the IPv4 address) and 6to4 (`2002:aabb:ccdd::/48`).
fn canonical(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = ip else { return ip };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return IpAddr::V4(v4);
    }
    let s = v6.segments();
    let v4 = |hi: u16, lo: u16| IpAddr::V4(Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8));
    // ::a.b.c.d (deprecated "compatible" form), but not :: and ::1.
    if s[..6].iter().all(|&x| x == 0) && (s[6] != 0 || s[7] > 1) {
        return v4(s[6], s[7]);
    }
    if s[0] == 0x64 && s[1] == 0xff9b && (s[2..6].iter().all(|&x| x == 0) || s[2] == 1) {
        return v4(s[6], s[7]);
    }
    if s[0] == 0x2002 {
        return v4(s[1], s[2]);
    }
    ip
}

/// What kind of internal address `ip` is, if it is one.
pub fn internal(ip: IpAddr) -> Option<&'static str> {
    match canonical(ip) {
        IpAddr::V4(a) => {
            let o = a.octets();
            if a.is_loopback() {
                Some("loopback")
            } else if a.is_private() {
                Some("private")
            } else if a.is_link_local() {
                Some("link-local")
            } else if a.is_unspecified() || o[0] == 0 {
                Some("unspecified")
            } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
                Some("carrier-grade NAT")
            } else if (o[0] == 198 && (o[1] & 0xfe) == 18) || (o[0] == 192 && o[1] == 0 && o[2] == 0) {
                Some("benchmarking or protocol-assignment")
            } else if a.is_multicast() || a.is_broadcast() || o[0] >= 240 {
                Some("multicast or reserved")
            } else {
                None
            }
        }
        IpAddr::V6(a) => {
            let s = a.segments();
            if a.is_loopback() {
                Some("loopback")
            } else if a.is_unspecified() {
                Some("unspecified")
            } else if (s[0] & 0xfe00) == 0xfc00 {
                Some("unique-local")
            } else if (s[0] & 0xffc0) == 0xfe80 || (s[0] & 0xffc0) == 0xfec0 {
                Some("link-local")
            } else if a.is_multicast() {
                Some("multicast or reserved")
            } else {
                None
            }
        }
    }
}

/// The operator's policy for judge destinations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Destinations {
    /// Every address (the operator's own commands: `apl experiment`, `apl judge`).
    any: bool,
    allow: Vec<Allow>,
}

impl Destinations {
    /// Public addresses, and those `allow` names (the server's policy).
    pub fn public_and(allow: Vec<Allow>) -> Self {
        Self { any: false, allow }
    }

    /// Everything: for commands the operator runs on their own machine.
    pub fn any() -> Self {
        Self { any: true, allow: Vec::new() }
    }

    /// Parses a comma-separated `--judge-allow` list.
    pub fn parse_allow(list: &str) -> Result<Vec<Allow>, BadAllow> {
        list.split(',').filter(|s| !s.trim().is_empty()).map(str::parse).collect()
    }

    /// Whether `host` (as written in the URL, lower-cased) may be reached at `ip`.
    pub fn check(&self, host: &str, ip: IpAddr) -> Result<(), Refused> {
        if self.any {
            return Ok(());
        }
        let Some(kind) = internal(ip) else { return Ok(()) };
        let host = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        let allowed = self.allow.iter().any(|a| match a {
            Allow::Host(h) => *h == host,
            Allow::Net { addr, prefix } => in_net(ip, *addr, *prefix),
        });
        if allowed { Ok(()) } else { Err(Refused { host, address: canonical(ip), kind }) }
    }

    /// A URL whose host is an address literal, checked before any request (the resolver only
    /// sees names).
    pub fn check_url(&self, url: &reqwest::Url) -> Result<(), Refused> {
        let ip = match url.host() {
            Some(url::Host::Ipv4(a)) => IpAddr::V4(a),
            Some(url::Host::Ipv6(a)) => IpAddr::V6(a),
            _ => return Ok(()),
        };
        self.check(url.host_str().unwrap_or_default(), ip)
    }
}

/// The judge client's resolver: the system's answer, less the addresses the policy refuses;
/// an error naming the first refused one when nothing is left.
#[derive(Debug, Clone)]
pub struct CheckedResolver(pub Arc<Destinations>);

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refused = None;
            let kept: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| match policy.check(&host, a.ip()) {
                    Ok(()) => true,
                    Err(r) => {
                        tracing::warn!(host = %r.host, address = %r.address, kind = r.kind, "judge call refused");
                        refused.get_or_insert(r);
                        false
                    }
                })
                .collect();
            match (kept.is_empty(), refused) {
                (true, Some(r)) => Err(Box::new(r) as Box<dyn std::error::Error + Send + Sync>),
                _ => Ok(Box::new(kept.into_iter()) as reqwest::dns::Addrs),
            }
        })
    }
}

/// Whether an HTTP client error came from the policy (then it is final, not retried).
pub fn refusal(e: &(dyn std::error::Error + 'static)) -> Option<Refused> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<Refused>() {
            return Some(r.clone());
        }
        cur = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(url: &str) -> Option<&'static str> {
        let u = reqwest::Url::parse(url).unwrap();
        Destinations::default().check_url(&u).err().map(|r| r.kind)
    }

    #[test]
    fn every_spelling_of_an_internal_address_is_refused() {
        for (url, kind) in [
            ("http://127.0.0.1:8080/v1", "loopback"),
            ("http://2130706433:8080/v1", "loopback"),
            ("http://0x7f000001:8080/v1", "loopback"),
            ("http://0177.0.0.1/v1", "loopback"),
            ("http://127.1/v1", "loopback"),
            ("http://[::1]:8080/v1", "loopback"),
            ("http://[::ffff:127.0.0.1]:8080/v1", "loopback"),
            ("http://[::ffff:7f00:1]/v1", "loopback"),
            ("http://[::127.0.0.1]/v1", "loopback"),
            ("http://169.254.169.254/latest/meta-data", "link-local"),
            ("http://[fe80::1]/v1", "link-local"),
            ("http://10.1.2.3/v1", "private"),
            ("http://172.16.0.1/v1", "private"),
            ("http://192.168.1.1/v1", "private"),
            ("http://100.64.0.1/v1", "carrier-grade NAT"),
            ("http://[fd00::1]/v1", "unique-local"),
            ("http://0.0.0.0:8080/v1", "unspecified"),
            ("http://[::]:8080/v1", "unspecified"),
            ("http://224.0.0.1/v1", "multicast or reserved"),
            ("http://[64:ff9b::a00:5]/v1", "private"),
            ("http://[64:ff9b:1::7f00:1]/v1", "loopback"),
            ("http://[2002:a00:5::1]/v1", "private"),
            ("http://198.18.0.1/v1", "benchmarking or protocol-assignment"),
            ("http://192.0.0.8/v1", "benchmarking or protocol-assignment"),
        ] {
            assert_eq!(refused(url), Some(kind), "{url}");
        }
        for url in ["https://api.openai.com/v1", "http://8.8.8.8/v1", "http://[2606:4700::1111]/v1"] {
            assert_eq!(refused(url), None, "{url}");
        }
    }

    #[test]
    fn the_operator_allows_hosts_and_networks() {
        let allow = Destinations::parse_allow("127.0.0.1, llama.local ,10.0.0.0/8,[::1]").unwrap();
        let d = Destinations::public_and(allow);
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(d.check("127.0.0.1", lo).is_ok());
        // The mapped spelling of an allowed address is that address.
        assert!(d.check("::ffff:127.0.0.1", "::ffff:127.0.0.1".parse().unwrap()).is_ok());
        assert!(d.check("llama.local", "192.168.1.9".parse().unwrap()).is_ok(), "an allowed host, wherever it is");
        assert!(d.check("gpu-box", "10.9.8.7".parse().unwrap()).is_ok(), "inside an allowed network");
        assert!(d.check("::1", "::1".parse().unwrap()).is_ok());
        let r = d.check("metadata", "169.254.169.254".parse().unwrap()).unwrap_err();
        assert!(r.to_string().contains("--judge-allow metadata"), "{r}");
        assert!(Destinations::any().check("x", lo).is_ok());
        for bad in ["10.0.0.0/33", "a b", "http://x", "1.2.3.4/x"] {
            assert!(Destinations::parse_allow(bad).is_err(), "{bad}");
        }
    }
}
