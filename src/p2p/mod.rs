//! Direct peer-to-peer links: private chat over TCP and file transfer over UDP.
//!
//! Not built yet. The server will introduce two users (address, port, one-time token) and
//! step aside; this module will hold the authenticated private-chat connection and the
//! sans-io transfer state machines with their single UDP driver. See `docs/ARCHITECTURE.md`.
