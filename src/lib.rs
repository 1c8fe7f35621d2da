//! Confab: a self-hosted terminal messenger.
//!
//! A central server handles accounts, presence and message relay; clients connect to it over
//! TCP, inside TLS by default, with length-prefixed MessagePack frames. For a private chat
//! or a file transfer the server introduces two clients, which then talk over a direct
//! connection of their own (TCP for a chat, UDP for a file), encrypted end to end.
//!
//! # Layout
//!
//! - [`protocol`]: wire messages (serde enums) and the framed codec; shared by everything;
//!   [`protocol::rendezvous`]: the datagrams between a client's transfer socket and the
//!   server's UDP endpoint (binds, the reflexive address, relayed datagrams).
//! - [`store`]: durable state (accounts, blocks, groups, the message log with each user's
//!   delivery cursor, login history) behind the [`store::Store`] trait, with the embedded
//!   SQLite backend and the one-server-per-database lock ([`store::lock`]); no networking
//!   and no wire types.
//! - [`limit`]: the token bucket and the per-address key that the server's admission and
//!   the direct links' listener both count by.
//! - [`tls`]: certificate fingerprints, the server's certificate (PEM files, or self-signed,
//!   made once and kept) and the rustls settings shared by server and client.
//! - [`server`]: accept loop, the socket plumbing (`conn`, over plain TCP or TLS: `tls`) and
//!   the phases of one session task per connection, the hub that routes (and holds group
//!   membership, the log's ids, cursors and quotas, and commits the log in groups:
//!   [`server::hub::log`]), the catch-up
//!   bookkeeping ([`server::delivery`]), one file per command; started with [`server::run`].
//!   The abuse limits: per address ([`server::limits`]), fair password hashing
//!   ([`server::hashing`]), per-user request rates ([`server::rate`]) and the descriptor
//!   headroom ([`server::fdlimit`]); docs/SECURITY.md lists them. The UDP endpoint
//!   ([`server::rendezvous`]): each session's binding and reflexive address, and the relay
//!   links (with their caps) that transfers and chats fall back on when no direct path works.
//!
//! Delivery: every relayed message is committed to the log before its sender's reply, carries
//! its log id to the recipient, and is sent again at the next login until the client
//! acknowledges it ([`client::Client::ack`]); see docs/ARCHITECTURE.md.
//! - [`client`]: the typed async [`client::Client`], opened by a [`client::Connector`] (TLS
//!   by default, with [`client::trust`]'s rules: known_servers, CA, pinned), command-line
//!   parsing and line formatting used by the `confab` binary, the tests and the benchmarks;
//!   the front-end neutral [`client::session::Session`] (the connection, private chats and
//!   transfers, reconnect, every session rule in [`client::session::rules`]); and the
//!   full-screen interface ([`client::tui`]: a pure `App` with a window per conversation,
//!   its renderer and the terminal driver).
//! - [`p2p`]: direct links between clients, encrypted end to end: each client's long-term
//!   key and the keys its user verified ([`p2p::identity`]), the Noise handshakes and a
//!   chat's sealed frames ([`p2p::noise`]), the private chat ([`p2p::PrivateChats`]), the
//!   sockets announced at login, the [`p2p::Route`] a link takes (direct, or through the
//!   server's relay), and the UDP file transfer ([`p2p::transfer`]: sans-io sender and
//!   receiver machines behind one sans-io endpoint that checks and seals every datagram and
//!   tries every address of the peer, and one engine that drives it). It does not know the
//!   server connection: the client session makes the requests and carries relayed bytes.
//!
//! The binaries in `src/bin` only parse arguments, set up logging and call into these; the
//! benchmarks (`confab-bench`, `confab-transfer-bench`) keep their own modules there, outside
//! the product library.

pub mod client;
pub mod limit;
pub mod p2p;
pub mod protocol;
pub mod server;
pub mod store;
pub mod tls;
