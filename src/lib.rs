//! Confab: a self-hosted terminal messenger.
//!
//! A central server handles accounts, presence and message relay; clients connect to it over
//! TCP with length-prefixed MessagePack frames.
//!
//! # Layout
//!
//! - [`protocol`]: wire messages (serde enums) and the framed codec; shared by everything.
//! - [`store`]: durable state (accounts, blocks, groups, offline messages, message and login
//!   history) behind the [`store::Store`] trait, with the embedded SQLite backend; no
//!   networking.
//! - [`server`]: accept loop, one session task per connection, the hub that routes (and holds
//!   group membership), one file per command; started with [`server::run`].
//! - [`client`]: the typed async [`client::Client`], command-line parsing and line formatting
//!   used by the `confab` binary, the tests and the benchmarks.
//! - [`p2p`]: direct private chat and UDP file transfer (placeholder for now).
//!
//! The binaries in `src/bin` only parse arguments, set up logging and call into these.

pub mod client;
pub mod p2p;
pub mod protocol;
pub mod server;
pub mod store;
