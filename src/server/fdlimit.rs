//! File descriptors: the server raises its own limit at start and keeps some back.
//!
//! Every connection is a descriptor, and so are the database, its WAL, the listener and the
//! blocking pool's files. The common soft limit of 1,024 would let about a thousand idle
//! connections take the server's last descriptor, after which `accept` fails and a new user
//! hears nothing at all. So [`raise`] lifts the soft limit to the hard one at start, and
//! [`connection_cap`] keeps [`RESERVE`] descriptors back from connections: past it a new
//! connection is still accepted, told `ServerFull` and closed.

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// Descriptors kept back from connections, for the store, the listener, logs and the
/// refusals themselves.
pub const RESERVE: u64 = 64;

/// Raises the soft descriptor limit to the hard limit; returns the limit now in force.
pub fn raise() -> std::io::Result<u64> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
        return Ok(hard);
    }
    Ok(soft)
}

/// The most connections the current descriptor limit leaves room for, at most `wanted`.
pub fn connection_cap(wanted: usize) -> usize {
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, _)) => {
            let room = soft.saturating_sub(RESERVE).max(1);
            wanted.min(usize::try_from(room).unwrap_or(usize::MAX))
        }
        Err(_) => wanted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_keeps_the_reserve_back() {
        let limit = raise().unwrap();
        let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        assert_eq!(soft, limit);
        assert_eq!(connection_cap(10), 10.min(limit.saturating_sub(RESERVE) as usize));
        assert_eq!(connection_cap(usize::MAX) as u64, limit.saturating_sub(RESERVE).max(1));
    }
}
