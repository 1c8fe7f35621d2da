//! `--text-logs DIR`: the log as plain text, for admins who want to read or grep it, in the
//! Tessenger course spec's formats.
//!
//! - `messagelog.txt`: every committed direct message, `seq; time; user; text`.
//! - `GROUP_messagelog.txt`: the same for each group's messages.
//! - `userlog.txt`: the users online now, `seq; time; user; ip; udp port`, rewritten (and so
//!   renumbered) whenever someone logs in or out. A client that takes no direct connections
//!   shows `-` for the address.
//!
//! Times are UTC, as `01 Jun 2023 15:00:01`. The files are written on the store thread (the
//! hub queues the writes there, after the commit they describe), so no file I/O runs on an
//! async worker; a failed write is logged and does not affect delivery. Sequence numbers go
//! on from the lines already in a file.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::protocol::Timestamp;
use crate::store::{LogEntry, To};

/// The text log files in one directory.
pub struct TextLogs {
    dir: PathBuf,
    /// The last sequence number written, per message file.
    seqs: HashMap<PathBuf, u64>,
}

/// One online user as `userlog.txt` lists them.
pub struct OnlineEntry {
    /// Account name.
    pub user: String,
    /// When they logged in.
    pub since: Timestamp,
    /// Their file-transfer address, if their client takes direct connections.
    pub udp: Option<SocketAddr>,
}

impl TextLogs {
    /// Text logs in `dir`, which is created if needed.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Self { dir: dir.to_owned(), seqs: HashMap::new() })
    }

    /// Appends the committed `entries` to their message files.
    pub fn messages<'a>(&mut self, entries: impl IntoIterator<Item = &'a LogEntry>) {
        let mut lines: Vec<(PathBuf, String)> = Vec::new();
        for m in entries {
            let path = match &m.to {
                To::User(_) => self.dir.join("messagelog.txt"),
                To::Group(group) => self.dir.join(format!("{group}_messagelog.txt")),
            };
            let seq = self.next_seq(&path);
            let line = format!("{seq}; {}; {}; {}\n", time(m.sent_at), m.sender, m.body);
            lines.push((path, line));
        }
        for (path, line) in lines {
            let written = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .and_then(|mut f| f.write_all(line.as_bytes()));
            if let Err(e) = written {
                tracing::error!("cannot write {}: {e}", path.display());
            }
        }
    }

    /// Rewrites `userlog.txt` with `online`, in login order.
    pub fn users(&mut self, mut online: Vec<OnlineEntry>) {
        online.sort_by(|a, b| (a.since, &a.user).cmp(&(b.since, &b.user)));
        let mut text = String::new();
        for (i, u) in online.iter().enumerate() {
            let (ip, port) = match u.udp {
                Some(addr) => (addr.ip().to_string(), addr.port().to_string()),
                None => ("-".into(), "-".into()),
            };
            text.push_str(&format!("{}; {}; {}; {ip}; {port}\n", i + 1, time(u.since), u.user));
        }
        let path = self.dir.join("userlog.txt");
        let tmp = self.dir.join("userlog.txt.tmp");
        let written = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            tracing::error!("cannot write {}: {e}", path.display());
        }
    }

    fn next_seq(&mut self, path: &Path) -> u64 {
        let seq = self.seqs.entry(path.to_owned()).or_insert_with(|| {
            std::fs::read_to_string(path).map_or(0, |text| text.lines().count() as u64)
        });
        *seq += 1;
        *seq
    }
}

/// A timestamp as the course spec writes it: `01 Jun 2023 15:00:01` (UTC).
pub fn time(at: Timestamp) -> String {
    chrono::DateTime::from_timestamp_millis(at)
        .map(|t| t.format("%d %b %Y %H:%M:%S").to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(to: To, body: &str) -> LogEntry {
        LogEntry {
            id: 1,
            sender: "alice".into(),
            to,
            body: body.into(),
            sent_at: 1_685_631_601_000,
            send_id: None,
        }
    }

    #[test]
    fn messages_go_to_their_file_numbered_on_from_what_is_there() {
        let dir = tempfile::tempdir().unwrap();
        let mut logs = TextLogs::open(dir.path()).unwrap();
        let direct = entry(To::User("bob".into()), "hi bob");
        let group = entry(To::Group("devs".into()), "standup");
        logs.messages([&direct, &group, &direct]);
        let mut reopened = TextLogs::open(dir.path()).unwrap();
        reopened.messages([&direct]);
        let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
        let line = "01 Jun 2023 15:00:01; alice; hi bob";
        assert_eq!(read("messagelog.txt"), format!("1; {line}\n2; {line}\n3; {line}\n"));
        assert_eq!(read("devs_messagelog.txt"), "1; 01 Jun 2023 15:00:01; alice; standup\n");
    }

    #[test]
    fn the_user_log_lists_who_is_online_in_login_order_renumbered() {
        let dir = tempfile::tempdir().unwrap();
        let mut logs = TextLogs::open(dir.path()).unwrap();
        let at = 1_685_631_601_000;
        let online = |users: &[(&str, i64)]| {
            users
                .iter()
                .map(|(u, s)| OnlineEntry {
                    user: u.to_string(),
                    since: at + s,
                    udp: (*u == "bob").then(|| "127.0.0.1:5001".parse().unwrap()),
                })
                .collect()
        };
        logs.users(online(&[("carol", 2000), ("bob", 1000), ("alice", 0)]));
        logs.users(online(&[("carol", 2000), ("bob", 1000)]));
        let text = std::fs::read_to_string(dir.path().join("userlog.txt")).unwrap();
        assert_eq!(
            text,
            "1; 01 Jun 2023 15:00:02; bob; 127.0.0.1; 5001\n2; 01 Jun 2023 15:00:03; carol; -; -\n"
        );
    }
}
