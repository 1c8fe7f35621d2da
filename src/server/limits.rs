//! What one network address may take from the server: connections at once, new connections
//! per second, and login attempts.
//!
//! Pure bookkeeping ([`AddrTable`]); the caller passes `now`. Addresses are counted by
//! [`addr_key`]: an IPv4 address as it is, an IPv6 address by its /64, since one host is
//! given a whole /64. Rates are token buckets ([`Limit`]: a burst, then a steady rate).
//! Networks listed as exempt ([`Cidr`], `--exempt`) skip every per-address limit: a class
//! behind one campus NAT shares one address. Loopback is not exempt unless listed.
//!
//! An address's entry lives while it has connections or while one of its buckets is still
//! refilling; after that it is forgotten, since a full bucket and no connections is what a
//! new entry holds anyway. The table sweeps itself when it reaches [`MAX_ENTRIES`], so a
//! spray from many addresses cannot grow it without bound.

use std::collections::HashMap;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use tokio::time::Instant;

use crate::limit::addr_key;
use crate::limit::TokenBucket;
use crate::protocol::{ErrorCode, ErrorReply};

/// Entries past which the table sweeps out the addresses it can forget.
pub const MAX_ENTRIES: usize = 65_536;

/// A rate limit: `burst` at once after a quiet spell, then `per_second` steadily.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    /// Tokens refilled per second (may be below one).
    pub per_second: f64,
    /// Tokens the bucket holds when full.
    pub burst: u32,
}

impl Limit {
    /// `per_second` steadily with bursts of `burst`.
    pub const fn new(per_second: f64, burst: u32) -> Self {
        Self { per_second, burst }
    }

    /// A full bucket for this limit at `now`.
    pub fn bucket(&self, now: Instant) -> TokenBucket {
        TokenBucket::with_interval(self.burst, Duration::from_secs_f64(1.0 / self.per_second), now)
    }

    /// Parses a flag's value: `PER_SECOND,BURST` (`4,16`; `0.5,10` is one every 2 s), or `0`
    /// (or `off`) for no limit.
    pub fn parse_flag(s: &str) -> Result<Option<Limit>, String> {
        let s = s.trim();
        if s == "0" || s.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        let bad = || format!("'{s}' is not PER_SECOND,BURST (e.g. 4,16) or 0 for no limit");
        let (rate, burst) = s.split_once(',').ok_or_else(bad)?;
        let per_second: f64 = rate.trim().parse().map_err(|_| bad())?;
        let burst: u32 = burst.trim().parse().map_err(|_| bad())?;
        if !(per_second.is_finite() && per_second > 0.0 && per_second <= 1e6) || burst == 0 {
            return Err(bad());
        }
        Ok(Some(Limit { per_second, burst }))
    }
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{},{}", self.per_second, self.burst)
    }
}

/// A network: an address and how many leading bits of it count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` is inside this network (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        match (self.net, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    /// `ADDRESS/BITS`, or a bare address for just that address.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("'{s}' is not a network like 10.0.0.0/8 or 2001:db8::/32");
        let (addr, bits) = match s.trim().split_once('/') {
            Some((addr, bits)) => (addr, Some(bits)),
            None => (s.trim(), None),
        };
        let net: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match bits {
            Some(bits) => bits.parse::<u8>().map_err(|_| bad())?,
            None => max,
        };
        if prefix > max {
            return Err(bad());
        }
        Ok(Cidr { net: net.to_canonical(), prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

/// The per-address limits (`confab-server` flags in brackets).
#[derive(Debug, Clone, PartialEq)]
pub struct AddrLimits {
    /// Connections one address may hold at once; 0 for no limit (`--max-conns-per-addr`).
    pub max_conns: usize,
    /// New connections per second from one address (`--conn-rate`).
    pub conn_rate: Option<Limit>,
    /// Login attempts from one address (`--login-rate`).
    pub login_rate: Option<Limit>,
    /// Networks the per-address limits do not apply to (`--exempt`, repeatable).
    pub exempt: Vec<Cidr>,
}

impl Default for AddrLimits {
    fn default() -> Self {
        Self {
            max_conns: 16,
            conn_rate: Some(Limit::new(4.0, 16)),
            login_rate: Some(Limit::new(0.5, 10)),
            exempt: Vec::new(),
        }
    }
}

/// Why an address was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The address holds [`AddrLimits::max_conns`] connections already.
    #[error("too many connections from your address")]
    TooManyConnections,
    /// The address's bucket is empty; one more may come after the duration.
    #[error("too many attempts from your address")]
    RateLimited(Duration),
}

impl Refusal {
    /// The error reply that tells the client.
    pub fn reply(self, what: &str) -> ErrorReply {
        match self {
            Refusal::TooManyConnections => ErrorReply::new(
                ErrorCode::TooManyConnections,
                "too many connections from your address; close some and try again",
            ),
            Refusal::RateLimited(wait) => rate_limited(what, wait),
        }
    }
}

/// The [`ErrorCode::RateLimited`] reply for `what`, to be tried again after `wait`.
pub fn rate_limited(what: &str, wait: Duration) -> ErrorReply {
    let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1)
        + u64::from(wait.subsec_nanos() % 1_000_000 > 0);
    ErrorReply::new(
        ErrorCode::RateLimited { retry_after_ms: ms },
        format!("too many {what}; try again in {:.1} s", ms as f64 / 1000.0),
    )
}

/// The connections and buckets of every address that has any.
#[derive(Debug)]
pub struct AddrTable {
    limits: AddrLimits,
    entries: HashMap<IpAddr, Entry>,
}

#[derive(Debug)]
struct Entry {
    conns: usize,
    new_conns: Option<TokenBucket>,
    logins: Option<TokenBucket>,
}

impl Entry {
    fn forgettable(&self, now: Instant) -> bool {
        let full = |b: &Option<TokenBucket>| b.as_ref().is_none_or(|b| b.is_full(now));
        self.conns == 0 && full(&self.new_conns) && full(&self.logins)
    }
}

impl AddrTable {
    /// An empty table under `limits`.
    pub fn new(limits: AddrLimits) -> Self {
        Self { limits, entries: HashMap::new() }
    }

    /// Whether `ip` is in an exempt network.
    pub fn is_exempt(&self, ip: IpAddr) -> bool {
        self.limits.exempt.iter().any(|net| net.contains(ip))
    }

    /// A new connection from `ip` at `now`: counted, or refused (and not counted). Every
    /// admitted connection must be given back with [`AddrTable::release`].
    pub fn admit(&mut self, ip: IpAddr, now: Instant) -> Result<(), Refusal> {
        if self.is_exempt(ip) {
            return Ok(());
        }
        let max_conns = self.limits.max_conns;
        let entry = self.entry(ip, now);
        if max_conns > 0 && entry.conns >= max_conns {
            return Err(Refusal::TooManyConnections);
        }
        if let Some(bucket) = &mut entry.new_conns {
            bucket.try_take(now).map_err(Refusal::RateLimited)?;
        }
        entry.conns += 1;
        Ok(())
    }

    /// A connection admitted from `ip` has closed.
    pub fn release(&mut self, ip: IpAddr) {
        if self.is_exempt(ip) {
            return;
        }
        if let Some(entry) = self.entries.get_mut(&addr_key(ip)) {
            entry.conns = entry.conns.saturating_sub(1);
        }
    }

    /// A login attempt from `ip` at `now`: allowed, or refused with how long to wait.
    pub fn login(&mut self, ip: IpAddr, now: Instant) -> Result<(), Refusal> {
        if self.is_exempt(ip) {
            return Ok(());
        }
        match &mut self.entry(ip, now).logins {
            Some(bucket) => bucket.try_take(now).map_err(Refusal::RateLimited),
            None => Ok(()),
        }
    }

    /// Connections counted for `ip` now.
    pub fn conns(&self, ip: IpAddr) -> usize {
        self.entries.get(&addr_key(ip)).map_or(0, |e| e.conns)
    }

    /// Addresses the table holds an entry for.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table holds no entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn entry(&mut self, ip: IpAddr, now: Instant) -> &mut Entry {
        let key = addr_key(ip);
        if !self.entries.contains_key(&key) && self.entries.len() >= MAX_ENTRIES {
            self.sweep(now);
        }
        let limits = &self.limits;
        self.entries.entry(key).or_insert_with(|| Entry {
            conns: 0,
            new_conns: limits.conn_rate.map(|l| l.bucket(now)),
            logins: limits.login_rate.map(|l| l.bucket(now)),
        })
    }

    /// Forgets what can be forgotten; if that is not enough, every address without a
    /// connection too (their buckets start full again: a spray across that many addresses
    /// is held back by the server-wide limits instead). Those with connections are at most
    /// the server's connection limit.
    fn sweep(&mut self, now: Instant) {
        self.entries.retain(|_, e| !e.forgettable(now));
        if self.entries.len() >= MAX_ENTRIES * 3 / 4 {
            self.entries.retain(|_, e| e.conns > 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn v4(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
    }

    fn limits() -> AddrLimits {
        AddrLimits {
            max_conns: 3,
            conn_rate: Some(Limit::new(2.0, 5)),
            login_rate: Some(Limit::new(0.5, 2)),
            exempt: vec!["10.0.0.0/8".parse().unwrap()],
        }
    }

    #[test]
    fn connections_are_capped_per_address() {
        let now = Instant::now();
        let mut t = AddrTable::new(limits());
        for _ in 0..3 {
            t.admit(v4(2), now).unwrap();
        }
        assert_eq!(t.admit(v4(2), now), Err(Refusal::TooManyConnections));
        assert!(t.admit(v4(3), now).is_ok(), "another address has its own count");
        t.release(v4(2));
        assert_eq!(t.conns(v4(2)), 2);
        assert!(t.admit(v4(2), now).is_ok());
    }

    #[test]
    fn new_connections_are_rate_limited_with_the_wait() {
        let now = Instant::now();
        let mut t = AddrTable::new(AddrLimits { max_conns: 0, ..limits() });
        for _ in 0..5 {
            t.admit(v4(2), now).unwrap();
        }
        assert_eq!(t.admit(v4(2), now), Err(Refusal::RateLimited(Duration::from_millis(500))));
        let later = now + Duration::from_millis(500);
        assert!(t.admit(v4(2), later).is_ok());
        assert!(t.admit(v4(2), later).is_err());
    }

    #[test]
    fn logins_have_their_own_bucket() {
        let now = Instant::now();
        let mut t = AddrTable::new(limits());
        assert!(t.login(v4(2), now).is_ok());
        assert!(t.login(v4(2), now).is_ok());
        assert_eq!(t.login(v4(2), now), Err(Refusal::RateLimited(Duration::from_secs(2))));
        assert!(t.login(v4(3), now).is_ok(), "per address");
        assert!(t.login(v4(2), now + Duration::from_secs(2)).is_ok(), "one every 2 s");
    }

    #[test]
    fn exempt_networks_skip_every_limit_and_loopback_is_not_exempt_by_default() {
        let now = Instant::now();
        let mut t = AddrTable::new(limits());
        let campus: IpAddr = "10.1.2.3".parse().unwrap();
        for _ in 0..100 {
            t.admit(campus, now).unwrap();
            t.login(campus, now).unwrap();
        }
        assert!(t.is_empty(), "exempt addresses are not even counted");
        t.release(campus);
        let mut d = AddrTable::new(AddrLimits::default());
        assert!(!d.is_exempt(v4(1)));
        assert!((0..16).all(|_| d.admit(v4(1), now).is_ok()));
        assert_eq!(d.admit(v4(1), now), Err(Refusal::TooManyConnections));
    }

    #[test]
    fn ipv6_addresses_count_by_their_64() {
        let now = Instant::now();
        let mut t = AddrTable::new(limits());
        for host in 1..=3 {
            t.admit(format!("2001:db8:0:1::{host}").parse().unwrap(), now).unwrap();
        }
        let same_64: IpAddr = "2001:db8:0:1:ffff::9".parse().unwrap();
        assert_eq!(t.admit(same_64, now), Err(Refusal::TooManyConnections));
        assert!(t.admit("2001:db8:0:2::1".parse().unwrap(), now).is_ok());
    }

    #[test]
    fn the_table_forgets_idle_addresses_and_stays_bounded() {
        let now = Instant::now();
        let mut t = AddrTable::new(limits());
        let held = v4(9);
        t.admit(held, now).unwrap();
        for i in 0..(MAX_ENTRIES as u32 + 10) {
            let ip = IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + i));
            t.admit(ip, now).unwrap();
            t.release(ip);
        }
        assert!(t.len() <= MAX_ENTRIES, "{} entries", t.len());
        assert_eq!(t.conns(held), 1, "an address with a connection is never forgotten");
        // Once the buckets have refilled, the next sweep forgets the idle ones.
        let later = now + Duration::from_secs(60);
        t.sweep(later);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn networks_parse_and_match() {
        let net: Cidr = "127.0.0.0/8".parse().unwrap();
        assert!(net.contains(v4(200)));
        assert!(net.contains("::ffff:127.9.9.9".parse().unwrap()));
        assert!(!net.contains("128.0.0.1".parse().unwrap()));
        let one: Cidr = "192.168.1.7".parse().unwrap();
        assert!(one.contains("192.168.1.7".parse().unwrap()));
        assert!(!one.contains("192.168.1.8".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8:ffff::1".parse().unwrap()));
        assert!(!v6.contains(v4(1)));
        for bad in ["127.0.0.0/33", "banana", "::/129", "10.0.0.0/x"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn limit_flags_parse() {
        assert_eq!(Limit::parse_flag("4,16"), Ok(Some(Limit::new(4.0, 16))));
        assert_eq!(Limit::parse_flag("0.5, 10"), Ok(Some(Limit::new(0.5, 10))));
        assert_eq!(Limit::parse_flag("0"), Ok(None));
        assert_eq!(Limit::parse_flag("off"), Ok(None));
        for bad in ["4", "4,0", "-1,3", "x,3", "inf,3"] {
            assert!(Limit::parse_flag(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_refusal_says_when_to_retry() {
        let reply = Refusal::RateLimited(Duration::from_micros(1500)).reply("logins");
        assert_eq!(reply.code, ErrorCode::RateLimited { retry_after_ms: 2 });
        assert!(reply.message.contains("too many logins"), "{}", reply.message);
    }
}
