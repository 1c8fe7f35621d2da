//! Driving the built binaries: `confab-server` on a free port and `confab --plain` clients
//! whose output is read line by line.

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// How long a test waits for a binary to print or do something.
pub const PATIENCE: Duration = Duration::from_secs(15);
/// The built binaries.
pub const SERVER: &str = env!("CARGO_BIN_EXE_confab-server");
pub const CLIENT: &str = env!("CARGO_BIN_EXE_confab");
/// The demo accounts the server binary imports.
pub const CREDENTIALS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/credentials.txt");

pub struct Proc {
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    pub stdout: Lines<BufReader<ChildStdout>>,
    /// Every line read so far.
    pub seen: Vec<String>,
}

impl Proc {
    pub fn spawn(mut command: Command) -> Self {
        command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        command.kill_on_drop(true);
        let mut child = command.spawn().expect("the binary starts");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        Proc { child, stdin, stdout, seen: Vec::new() }
    }

    /// Reads lines until one contains `needle`; returns it.
    pub async fn expect(&mut self, needle: &str) -> String {
        let wait = async {
            while let Some(line) = self.stdout.next_line().await.unwrap() {
                self.seen.push(line.clone());
                if line.contains(needle) {
                    return Some(line);
                }
            }
            None
        };
        let why = match tokio::time::timeout(PATIENCE, wait).await {
            Ok(Some(line)) => return line,
            Ok(None) => "output ended without",
            Err(_) => "in time, no",
        };
        // What it printed instead: the cause is usually in the last lines.
        let last = &self.seen[self.seen.len().saturating_sub(12)..];
        panic!("{why} {needle:?}; the last lines were:\n{}", last.join("\n"))
    }

    /// Reads the rest of the output (the process must be exiting); returns every line
    /// read since it started.
    pub async fn all_output(&mut self) -> &[String] {
        let rest = async {
            while let Some(line) = self.stdout.next_line().await.unwrap() {
                self.seen.push(line);
            }
        };
        tokio::time::timeout(PATIENCE, rest).await.expect("the output ends");
        &self.seen
    }

    pub async fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(format!("{line}\n").as_bytes()).await.unwrap();
        stdin.flush().await.unwrap();
    }

    pub async fn exit(&mut self) -> ExitStatus {
        tokio::time::timeout(PATIENCE, self.child.wait()).await.expect("exits in time").unwrap()
    }

    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id().unwrap() as i32), signal).unwrap();
    }
}

/// Starts the server binary on a free port; returns it and its address.
pub async fn start_server(db: &Path) -> (Proc, String) {
    start_server_with(db, &[]).await
}

pub async fn start_server_with(db: &Path, extra: &[&str]) -> (Proc, String) {
    start_server_at(db, "127.0.0.1:0", extra).await
}

/// Starts the server binary on `listen` (again on the address an earlier one had, say).
pub async fn start_server_at(db: &Path, listen: &str, extra: &[&str]) -> (Proc, String) {
    let mut cmd = Command::new(SERVER);
    // TLS end to end is tests/tls.rs's; these are about what the client does.
    cmd.args(["--plaintext", "--listen", listen, "--credentials", CREDENTIALS, "--db"]).arg(db);
    cmd.args(extra);
    let mut server = Proc::spawn(cmd);
    let line = server.expect("listening on").await;
    let addr = line.rsplit(' ').next().unwrap().to_owned();
    (server, addr)
}

/// A `confab --plain` client that has logged in as `user`.
pub async fn logged_in(addr: &str, user: &str, password: &str) -> Proc {
    logged_in_with(addr, user, password, &[]).await
}

pub async fn logged_in_with(addr: &str, user: &str, password: &str, extra: &[&str]) -> Proc {
    let mut proc = client_with(addr, user, password, extra);
    proc.expect(&format!("logged in as {user}")).await;
    proc
}

pub fn client(addr: &str, user: &str, password: &str) -> Proc {
    client_with(addr, user, password, &[])
}

pub fn client_with(addr: &str, user: &str, password: &str, extra: &[&str]) -> Proc {
    let mut cmd = Command::new(CLIENT);
    cmd.arg("--plaintext");
    client_by(cmd, addr, user, password, extra)
}

/// Starts the server binary with TLS through `cmd`, a [`SERVER`] command that may wrap it
/// (`Lab::command`, in a namespace); returns it, its address and the fingerprint of the
/// certificate it made next to `db` (printed before the address).
pub async fn start_tls_server_by(
    mut cmd: Command,
    db: &Path,
    listen: &str,
) -> (Proc, String, String) {
    cmd.args(["--listen", listen, "--credentials", CREDENTIALS, "--db"]).arg(db);
    let mut server = Proc::spawn(cmd);
    let line = server.expect("confab-server certificate ").await;
    let fingerprint = line.rsplit(' ').next().unwrap().to_owned();
    let line = server.expect("listening on").await;
    let addr = line.rsplit(' ').next().unwrap().to_owned();
    (server, addr, fingerprint)
}

/// A `confab --plain` client started through `cmd`, a [`CLIENT`] command that may wrap it
/// (`Lab::command`, in a namespace), as `user` against `addr`.
pub fn client_by(mut cmd: Command, addr: &str, user: &str, password: &str, extra: &[&str]) -> Proc {
    cmd.args(["--plain", "--server", addr, "--user", user]);
    cmd.env("CONFAB_PASSWORD", password);
    cmd.args(extra);
    Proc::spawn(cmd)
}
