//! Direct peer-to-peer links: private chat over TCP and file transfer over UDP.
//!
//! The server introduces two users and steps aside. Each client has a long-term key pair
//! ([`identity`], kept in its data directory). Before logging in, it binds its
//! [`DirectSockets`] and announces their ports and local address with its public key; the
//! server pairs them with the IP address it sees the client connect from. When one user
//! accepts another's private chat request, the server gives both a one-time token, the
//! other's addresses and key, and a relay link; both clients connect to each other at once
//! (through port-preserving NATs the two connections meet as one), and the first way that
//! opens is the chat ([`chat`]). The link opens with a Noise handshake ([`noise`]) that only
//! the two holders of the keys the server vouched for, who both know the token, can
//! complete; a listener lets each token in once ([`tokens`]). What is said on the link is
//! encrypted end to end; a direct link never passes through the server, so it keeps
//! working when the server goes away, and one that found no direct way is relayed by the
//! server, which can read none of it. Which way a link goes is its [`Route`]. Users who
//! compare their safety code (`/verify`) pin each other's keys, so that a server that later
//! vouches for another key is caught.
//!
//! Files go the same way over the UDP socket ([`transfer`]): for `/p2pvideo`, the server
//! gives the sender the receiver's UDP addresses (the reflexive one its UDP endpoint saw
//! among them), key and a one-time token, and tells the receiver the sender's; the
//! receiver punches toward the sender while the sender offers to every address; the offer
//! and its answer are a `Noise_KKpsk0` handshake too, and every later datagram is sealed,
//! directly or through the server's relay.

pub mod chat;
pub mod identity;
pub mod limits;
pub mod noise;
pub mod tokens;
pub mod transfer;

use std::io;
use std::net::{IpAddr, SocketAddr};

use tokio::net::{TcpListener, TcpSocket, UdpSocket};

use crate::protocol::{DirectEndpoint, LinkId};

use identity::Identity;

pub use crate::limit::Rate;
pub use chat::{
    ChatConfig, ChatLink, CloseReason, PrivateChats, PrivateError, PrivateEvent, PrivateEvents,
    EVENT_QUEUE,
};
pub use limits::HandshakeLimits;

/// Which way a direct link's bytes go: straight to the peer, or through the server's relay
/// (chats over the server connection, transfers through its UDP endpoint).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// To and from this address.
    Direct(SocketAddr),
    /// Through the server, on this relay link of the introduction.
    Relay(LinkId),
}

impl Route {
    /// The direct route to `addr`, IPv4 written the IPv4 way.
    pub fn direct(addr: SocketAddr) -> Self {
        Route::Direct(normalize(addr))
    }

    /// Whether it goes through the relay.
    pub fn is_relayed(&self) -> bool {
        matches!(self, Route::Relay(_))
    }
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Route::Direct(addr) => write!(f, "direct to {addr}"),
            Route::Relay(_) => f.write_str("relayed through the server"),
        }
    }
}

/// IPv4 addresses seen through an IPv6 socket, written the IPv4 way, so they compare equal.
pub fn normalize(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

/// A listener on `addr` whose port outgoing connections may share (`SO_REUSEPORT`): a
/// chat dials from its listener's port, so that a port-preserving NAT maps the dial to the
/// address the peer was told, and two dials that cross meet as one connection (a TCP
/// simultaneous open).
fn listen_shared(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// The local sockets for direct links, bound before login so that their ports can be
/// announced to the server.
#[derive(Debug)]
pub struct DirectSockets {
    /// The private-chat listener; hand it to [`PrivateChats::start`].
    pub tcp: TcpListener,
    /// The file-transfer socket, kept bound for the transfer.
    pub udp: UdpSocket,
    /// The ports picked (where 0 was asked for): TCP, UDP.
    ports: (u16, u16),
    /// The address both are bound to.
    ip: IpAddr,
}

/// A direct socket could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The private-chat listener could not be bound.
    #[error("cannot listen for private chats on {addr}: {source}")]
    Tcp {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// The file-transfer socket could not be bound.
    #[error("cannot bind the file-transfer port {addr}: {source}")]
    Udp {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
}

impl DirectSockets {
    /// Binds the TCP listener and the UDP socket on `ip`; a port of 0 picks a free one.
    ///
    /// `ip` is best the local address of the server connection: that is the address the
    /// server will see and tell peers about.
    pub async fn bind(ip: IpAddr, tcp_port: u16, udp_port: u16) -> Result<Self, BindError> {
        let addr = SocketAddr::new(ip, tcp_port);
        let tcp_error = |source| BindError::Tcp { addr, source };
        let tcp = listen_shared(addr).map_err(tcp_error)?;
        let tcp_port = tcp.local_addr().map_err(tcp_error)?.port();
        let addr = SocketAddr::new(ip, udp_port);
        let udp_error = |source| BindError::Udp { addr, source };
        let udp = UdpSocket::bind(addr).await.map_err(udp_error)?;
        let udp_port = udp.local_addr().map_err(udp_error)?.port();
        Ok(Self { tcp, udp, ports: (tcp_port, udp_port), ip })
    }

    /// What to announce at login: the ports (the ones picked, where 0 was asked for), the
    /// address they are bound to (the server pairs the ports with the address it sees, a
    /// NAT's if there is one, and tells peers both), and the key of `identity`, which the
    /// links will be authenticated with.
    pub fn endpoint(&self, identity: &Identity) -> DirectEndpoint {
        let local = Some(self.ip).filter(|ip| !ip.is_unspecified());
        DirectEndpoint { tcp: self.ports.0, udp: self.ports.1, key: identity.public(), local }
    }

    /// The private-chat listener's port.
    pub fn tcp_port(&self) -> u16 {
        self.ports.0
    }
}
