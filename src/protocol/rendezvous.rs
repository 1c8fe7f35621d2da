//! The datagrams between a client's transfer socket and the server's UDP endpoint.
//!
//! The server listens on UDP beside TCP (the same port number by default). It does two
//! things there, as STUN and TURN do:
//!
//! - **Address discovery.** A logged-in client sends [`Datagram::Bind`] from its transfer
//!   socket; the server answers [`Datagram::Seen`] with the address and port it saw (the
//!   client's *reflexive* address: its NAT's public side) and hands that address to the
//!   peers it introduces, beside the client's own. The bind proves the session without
//!   showing its secret: it names the session's public binding id and a counter, with an
//!   HMAC-SHA256 over both under the secret the login reply gave ([`UdpBinding`]). A
//!   counter not above the last one is a replay and is ignored. Binds repeat every
//!   [`BIND_INTERVAL`], which also keeps the NAT's mapping toward the server open.
//! - **Relay.** When two clients find no direct path, a transfer's datagrams go through the
//!   server wrapped in [`Datagram::Relay`] with the link id of their introduction. The
//!   server forwards one unchanged only if it came from one of the link's two clients (from
//!   the address its bind proved) and then only to the other, within the link's and the
//!   users' bandwidth caps. What it forwards is sealed end to end (`p2p::transfer`): it can
//!   read none of it.
//!
//! ```text
//! "CR" | version (1) | kind (1) | ...
//! Bind:  binding id (8) | counter (8) | HMAC-SHA256(secret, "confab bind" | id | counter)[..16]
//! Seen:  counter (8) | family (1: 4 or 6) | address (4 or 16) | port (2)
//! Relay: link id (16) | the datagram carried
//! ```
//!
//! Integers are big-endian. [`parse`] never panics and never allocates.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use super::{LinkId, Token, UdpBinding};

/// Bytes before the carried datagram in a [`Datagram::Relay`].
pub const RELAY_HEADER: usize = 4 + 16;
/// How often a client repeats its bind once the server has answered: often enough to keep a
/// NAT's UDP mapping (commonly 30 s or more without traffic) open.
pub const BIND_INTERVAL: Duration = Duration::from_secs(15);

const MAGIC: [u8; 2] = *b"CR";
const VERSION: u8 = 1;
const BIND: u8 = 1;
const SEEN: u8 = 2;
const RELAY: u8 = 3;
const TAG_LEN: usize = 16;
const BIND_LEN: usize = 4 + 8 + 8 + TAG_LEN;

/// One datagram of the rendezvous protocol, borrowed from the bytes it was parsed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datagram<'a> {
    /// Client to server: "this socket belongs to session `id`".
    Bind {
        /// The session's binding id, from its login reply.
        id: u64,
        /// Increases with every bind of the session.
        counter: u64,
        /// The HMAC that proves the secret.
        tag: &'a [u8],
    },
    /// Server to client: the address the bind numbered `counter` came from.
    Seen {
        /// The bind's counter.
        counter: u64,
        /// The client's address as the server saw it.
        addr: SocketAddr,
    },
    /// Either way: a datagram relayed on link `link`.
    Relay {
        /// The introduction's link.
        link: LinkId,
        /// The datagram carried, unread.
        payload: &'a [u8],
    },
}

/// Why bytes are not a rendezvous datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RendezvousError {
    /// Not this protocol (another magic or version, an unknown kind).
    #[error("not a rendezvous datagram")]
    Foreign,
    /// Shorter than its kind needs.
    #[error("truncated rendezvous datagram")]
    Truncated,
}

/// Parses one datagram.
pub fn parse(bytes: &[u8]) -> Result<Datagram<'_>, RendezvousError> {
    if bytes.len() < 4 || bytes[..2] != MAGIC || bytes[2] != VERSION {
        return Err(RendezvousError::Foreign);
    }
    let body = &bytes[4..];
    match bytes[3] {
        BIND => {
            if bytes.len() != BIND_LEN {
                return Err(RendezvousError::Truncated);
            }
            Ok(Datagram::Bind { id: u64_at(body, 0), counter: u64_at(body, 8), tag: &body[16..] })
        }
        SEEN => {
            let truncated = RendezvousError::Truncated;
            let counter = u64_at(body.get(..8).ok_or(truncated)?, 0);
            let (ip, rest): (IpAddr, &[u8]) = match body.get(8) {
                Some(4) => {
                    let octets: [u8; 4] = body.get(9..13).ok_or(truncated)?.try_into().unwrap();
                    (Ipv4Addr::from(octets).into(), &body[13..])
                }
                Some(6) => {
                    let octets: [u8; 16] = body.get(9..25).ok_or(truncated)?.try_into().unwrap();
                    (Ipv6Addr::from(octets).into(), &body[25..])
                }
                Some(_) => return Err(RendezvousError::Foreign),
                None => return Err(truncated),
            };
            let port = u16::from_be_bytes(rest.get(..2).ok_or(truncated)?.try_into().unwrap());
            Ok(Datagram::Seen { counter, addr: SocketAddr::new(ip, port) })
        }
        RELAY => {
            let link = body.get(..16).ok_or(RendezvousError::Truncated)?;
            Ok(Datagram::Relay { link: LinkId(link.try_into().unwrap()), payload: &body[16..] })
        }
        _ => Err(RendezvousError::Foreign),
    }
}

/// The bind numbered `counter` of the session `binding`.
pub fn bind(binding: &UdpBinding, counter: u64) -> Vec<u8> {
    let mut out = header(BIND);
    out.extend_from_slice(&binding.id.to_be_bytes());
    out.extend_from_slice(&counter.to_be_bytes());
    out.extend_from_slice(&bind_tag(&binding.secret, binding.id, counter));
    out
}

/// Whether `tag` is the HMAC of a bind of session `id` numbered `counter` under `secret`
/// (compared in constant time).
pub fn bind_is_genuine(secret: &Token, id: u64, counter: u64, tag: &[u8]) -> bool {
    // The tag is half an HMAC, so ring's own verify does not apply; `Token`'s `==` compares
    // in constant time.
    let Ok(tag) = <[u8; TAG_LEN]>::try_from(tag) else {
        return false;
    };
    Token(bind_tag(secret, id, counter)) == Token(tag)
}

/// The server's answer to the bind numbered `counter`, seen from `addr`.
pub fn seen(counter: u64, addr: SocketAddr) -> Vec<u8> {
    let mut out = header(SEEN);
    out.extend_from_slice(&counter.to_be_bytes());
    match addr.ip().to_canonical() {
        IpAddr::V4(ip) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&addr.port().to_be_bytes());
    out
}

/// Writes the relay header of `link` into the first [`RELAY_HEADER`] bytes of `out`.
pub fn relay_header(link: &LinkId, out: &mut [u8]) {
    out[..4].copy_from_slice(&header(RELAY));
    out[4..RELAY_HEADER].copy_from_slice(&link.0);
}

fn header(kind: u8) -> Vec<u8> {
    vec![MAGIC[0], MAGIC[1], VERSION, kind]
}

fn bind_tag(secret: &Token, id: u64, counter: u64) -> [u8; TAG_LEN] {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret.0);
    let mut context = ring::hmac::Context::with_key(&key);
    context.update(b"confab bind");
    context.update(&id.to_be_bytes());
    context.update(&counter.to_be_bytes());
    let mut tag = [0; TAG_LEN];
    tag.copy_from_slice(&context.sign().as_ref()[..TAG_LEN]);
    tag
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(bytes[at..at + 8].try_into().unwrap())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding() -> UdpBinding {
        UdpBinding { port: 4000, id: 77, secret: Token([5; 16]) }
    }

    #[test]
    fn a_bind_proves_the_secret_and_its_counter() {
        let bytes = bind(&binding(), 9);
        let Ok(Datagram::Bind { id, counter, tag }) = parse(&bytes) else {
            panic!("a bind parses");
        };
        assert_eq!((id, counter), (77, 9));
        assert!(bind_is_genuine(&binding().secret, id, counter, tag));
        assert!(!bind_is_genuine(&Token([6; 16]), id, counter, tag), "another secret");
        assert!(!bind_is_genuine(&binding().secret, id, 10, tag), "another counter");
        assert!(!bind_is_genuine(&binding().secret, 78, counter, tag), "another session");
    }

    #[test]
    fn seen_carries_both_address_families() {
        for addr in ["198.51.100.7:40001", "[2001:db8::9]:5"] {
            let addr: SocketAddr = addr.parse().unwrap();
            assert_eq!(parse(&seen(3, addr)), Ok(Datagram::Seen { counter: 3, addr }));
        }
    }

    #[test]
    fn a_relay_header_names_its_link_and_leaves_the_payload_alone() {
        let mut bytes = vec![0; RELAY_HEADER];
        relay_header(&LinkId([8; 16]), &mut bytes);
        bytes.extend_from_slice(b"sealed bytes");
        let parsed = parse(&bytes).unwrap();
        assert_eq!(parsed, Datagram::Relay { link: LinkId([8; 16]), payload: b"sealed bytes" });
    }

    #[test]
    fn anything_else_is_refused_without_a_panic() {
        let bind = bind(&binding(), 1);
        let seen = seen(1, "[2001:db8::9]:5".parse().unwrap());
        for cut in 0..seen.len().max(bind.len()) {
            let _ = parse(&bind[..cut.min(bind.len())]);
            let _ = parse(&seen[..cut.min(seen.len())]);
        }
        assert_eq!(parse(b"CF\x02\x01rest"), Err(RendezvousError::Foreign));
        assert_eq!(parse(b"CR\x01\x09"), Err(RendezvousError::Foreign));
        assert_eq!(parse(&bind[..bind.len() - 1]), Err(RendezvousError::Truncated));
        assert_eq!(parse(b"CR\x01\x03short"), Err(RendezvousError::Truncated));
    }
}
