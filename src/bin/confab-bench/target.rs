//! The servers under test: a `confab-server`, `ngircd` or `inspircd` process started on loopback in a
//! scratch directory of its own, and what `/proc` says about it.
//!
//! Confab gets a fresh copy of a database prepared once per benchmark (the accounts `u0`,
//! `u1`, ... with one password), its default settings otherwise (history stored, `synchronous
//! = FULL`), and only the limits raised that would refuse the benchmark (idle timeout, session queue). The
//! accounts' password hash uses the smallest Argon2 parameters: a stored hash carries its own
//! parameters, so this only makes the 10,000 logins of the idle workload take seconds instead
//! of minutes; no login happens while anything is measured.
//!
//! ngIRCd gets a configuration written here: loopback only, no DNS or ident lookups, no MOTD
//! file, flood penalties off (`MaxPenaltyTime = 0`), no per-IP or total connection limit,
//! started with `-n` so it stays in the foreground as our child.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use confab::store::{SqliteStore, Store};

use crate::run::BenchError;

/// The password of every benchmark account.
pub const PASSWORD: &str = "bench-pw";

/// Linux reports CPU times in /proc in units of USER_HZ, which is 100 on every architecture
/// the kernel ABI fixes it for.
const TICKS_PER_SEC: u64 = 100;

/// How long a server has to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Which server a measurement ran against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `confab-server`, plaintext.
    Confab,
    /// `confab-server` with TLS (its own self-signed certificate).
    ConfabTls,
    /// ngIRCd.
    Ngircd,
    /// ngIRCd serving TLS only (a self-signed certificate made by the benchmark).
    NgircdTls,
    /// InspIRCd.
    Inspircd,
}

impl Kind {
    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Confab => "Confab",
            Kind::ConfabTls => "Confab TLS",
            Kind::Ngircd => "ngIRCd",
            Kind::NgircdTls => "ngIRCd TLS",
            Kind::Inspircd => "InspIRCd",
        }
    }
}

/// A scratch directory removed on drop.
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    /// A new empty directory under the system's temp dir.
    pub fn new(label: &str) -> Result<Self, BenchError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let dir = std::env::temp_dir()
            .join(format!("confab-bench-{label}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| BenchError::io("creating a scratch dir", e))?;
        Ok(Self(dir))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A Confab database with the accounts `u0` .. `u{users-1}`, copied for every server start.
pub struct Template {
    _dir: ScratchDir,
    db: PathBuf,
}

impl Template {
    /// Creates the database with `users` accounts, all with password [`PASSWORD`].
    pub fn create(users: usize) -> Result<Self, BenchError> {
        use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};
        let dir = ScratchDir::new("template")?;
        let db = dir.path().join("confab.db");
        let params = argon2::Params::new(argon2::Params::MIN_M_COST, 1, 1, None)
            .map_err(|e| BenchError::Setup(format!("argon2 parameters: {e}")))?;
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let hash = argon
            .hash_password(PASSWORD.as_bytes(), &SaltString::generate(&mut OsRng))
            .map_err(|e| BenchError::Setup(format!("hashing: {e}")))?
            .to_string();
        let accounts: Vec<_> = (0..users).map(|i| (user_name(i), hash.clone())).collect();
        let mut store = SqliteStore::open(&db)?;
        store.create_users(&accounts, 0)?;
        drop(store);
        Ok(Self { _dir: dir, db })
    }
}

/// The account (and IRC nick) of client `i`.
pub fn user_name(i: usize) -> String {
    format!("u{i}")
}

/// Where to find the two servers.
#[derive(Debug, Clone)]
pub struct Programs {
    /// The `confab-server` binary.
    pub confab_server: PathBuf,
    /// The `ngircd` binary, if ngIRCd is to be measured.
    pub ngircd: Option<PathBuf>,
    /// The `inspircd` binary, if InspIRCd is to be measured.
    pub inspircd: Option<PathBuf>,
}

/// A running server process.
pub struct Server {
    /// Which server.
    pub kind: Kind,
    /// Where it listens.
    pub addr: SocketAddr,
    child: Child,
    _dir: ScratchDir,
}

impl Server {
    /// Starts a server of `kind` and waits until it listens.
    pub fn start(kind: Kind, programs: &Programs, template: &Template) -> Result<Self, BenchError> {
        match kind {
            Kind::Confab => start_confab(&programs.confab_server, template, false),
            Kind::ConfabTls => start_confab(&programs.confab_server, template, true),
            Kind::Ngircd | Kind::NgircdTls => {
                let Some(ngircd) = &programs.ngircd else {
                    return Err(BenchError::Setup("ngIRCd is not available".into()));
                };
                start_ngircd(ngircd, kind == Kind::NgircdTls)
            }
            Kind::Inspircd => {
                let Some(inspircd) = &programs.inspircd else {
                    return Err(BenchError::Setup("InspIRCd is not available".into()));
                };
                start_inspircd(inspircd)
            }
        }
    }

    /// The last lines of the server's log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let name = match self.kind {
            Kind::Confab | Kind::ConfabTls => "server.log",
            Kind::Ngircd | Kind::NgircdTls => "ngircd.log",
            Kind::Inspircd => "inspircd.log",
        };
        let log = std::fs::read_to_string(self._dir.path().join(name)).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time used so far (user + system, all threads, in seconds), from /proc.
    pub fn cpu_secs(&self) -> Result<f64, BenchError> {
        proc_cpu_secs(&format!("/proc/{}/stat", self.pid()))
    }

    /// CPU time used so far by each of the server's threads, by thread id, in seconds.
    pub fn thread_cpu_secs(&self) -> Result<Vec<(u32, f64)>, BenchError> {
        let dir = format!("/proc/{}/task", self.pid());
        let entries = std::fs::read_dir(&dir).map_err(|e| BenchError::io(&dir, e))?;
        let mut threads = Vec::new();
        for entry in entries.flatten() {
            let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse().ok()) else {
                continue;
            };
            // A thread may end between the listing and the read.
            if let Ok(secs) = proc_cpu_secs(&format!("{dir}/{tid}/stat")) {
                threads.push((tid, secs));
            }
        }
        Ok(threads)
    }

    /// Resident memory now, in bytes, from /proc.
    pub fn rss_bytes(&self) -> Result<u64, BenchError> {
        let path = format!("/proc/{}/status", self.pid());
        let status = std::fs::read_to_string(&path).map_err(|e| BenchError::io(&path, e))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .ok_or_else(|| BenchError::Setup(format!("no VmRSS in {path}")))
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Stops the server: SIGTERM, then SIGKILL if it has not exited within a few seconds.
    pub fn stop(mut self) {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if !self.alive() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.alive() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn start_confab(program: &Path, template: &Template, tls: bool) -> Result<Server, BenchError> {
    let dir = ScratchDir::new("confab")?;
    let db = dir.path().join("confab.db");
    std::fs::copy(&template.db, &db).map_err(|e| BenchError::io("copying the database", e))?;
    let log = std::fs::File::create(dir.path().join("server.log"))
        .map_err(|e| BenchError::io("creating the server log", e))?;
    let mut child = Command::new(program)
        .args(["--listen", "127.0.0.1:0", "--idle-timeout-secs", "3600"])
        .args(if tls { &[][..] } else { &["--plaintext"][..] })
        // As deep as the IRC servers' send queues are set: a fan-out keeps every member's
        // window of messages outstanding at once.
        .args(["--session-queue", "1000000"])
        // Every client comes from loopback, as fast as the server takes it: the abuse limits
        // (per address, per user) would measure themselves, not the relay.
        .args(["--exempt", "127.0.0.0/8", "--no-user-rates", "--db"])
        .arg(&db)
        .env_remove("CONFAB_OPEN_REGISTRATION")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .map_err(|e| BenchError::io(&format!("starting {}", program.display()), e))?;
    // The server prints `confab-server listening on ADDR` once it is ready.
    let stdout = child.stdout.take().ok_or_else(|| BenchError::Setup("no stdout".into()))?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let addr = lines.find_map(|l| {
            l.ok()?.strip_prefix("confab-server listening on ")?.trim().parse::<SocketAddr>().ok()
        });
        let _ = tx.send(addr);
        // Keep draining so the server never blocks on a full pipe.
        for _ in lines {}
    });
    let addr = match rx.recv_timeout(START_TIMEOUT) {
        Ok(Some(addr)) => addr,
        _ => {
            let _ = child.kill();
            let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
            return Err(BenchError::Setup(format!("confab-server did not start: {log}")));
        }
    };
    let kind = if tls { Kind::ConfabTls } else { Kind::Confab };
    Ok(Server { kind, addr, child, _dir: dir })
}

/// ngIRCd; with `tls`, the clients' port speaks only TLS (its `[SSL]` ports), with a
/// self-signed certificate, and the plain port is another one that nobody uses.
fn start_ngircd(program: &Path, tls: bool) -> Result<Server, BenchError> {
    let dir = ScratchDir::new("ngircd")?;
    let port = free_port()?;
    let conf = dir.path().join("ngircd.conf");
    let (plain_port, ssl) = if tls {
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
            .map_err(|e| BenchError::Setup(format!("making a certificate: {e}")))?;
        std::fs::write(&cert, made.cert.pem()).map_err(|e| BenchError::io("writing", e))?;
        std::fs::write(&key, made.signing_key.serialize_pem())
            .map_err(|e| BenchError::io("writing", e))?;
        let ssl = format!(
            "[SSL]\nCertFile = {}\nKeyFile = {}\nPorts = {port}\n",
            cert.display(),
            key.display()
        );
        (free_port()?, ssl)
    } else {
        (port, String::new())
    };
    let text = format!(
        "[Global]\n\
         Name = bench.confab.local\n\
         Info = confab-bench\n\
         Listen = 127.0.0.1\n\
         Ports = {plain_port}\n\
         MotdPhrase = bench\n\
         PidFile = {pid}\n\
         [Limits]\n\
         MaxConnections = 0\n\
         MaxConnectionsIP = 0\n\
         MaxJoins = 0\n\
         MaxNickLength = 16\n\
         MaxPenaltyTime = 0\n\
         PingTimeout = 3600\n\
         PongTimeout = 600\n\
         IdleTimeout = 0\n\
         [Options]\n\
         DNS = no\n\
         Ident = no\n\
         PAM = no\n\
         {ssl}",
        pid = dir.path().join("ngircd.pid").display(),
    );
    std::fs::write(&conf, text).map_err(|e| BenchError::io("writing ngircd.conf", e))?;
    let log = std::fs::File::create(dir.path().join("ngircd.log"))
        .map_err(|e| BenchError::io("creating the ngircd log", e))?;
    let log2 = log.try_clone().map_err(|e| BenchError::io("ngircd log", e))?;
    let child = Command::new(program)
        .arg("-n")
        .arg("-f")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .spawn()
        .map_err(|e| BenchError::io(&format!("starting {}", program.display()), e))?;
    let kind = if tls { Kind::NgircdTls } else { Kind::Ngircd };
    wait_listening(kind, child, port, dir, "ngircd.log")
}

/// InspIRCd with one connect class that lets everything in: no per-IP or global limit, no
/// fake lag or command rate, send and receive queues far above what the benchmark queues, no
/// DNS or ident lookups, no ping timeouts within a run. `--runasroot`: it refuses root
/// otherwise, and the benchmark often runs as root.
fn start_inspircd(program: &Path) -> Result<Server, BenchError> {
    let dir = ScratchDir::new("inspircd")?;
    let port = free_port()?;
    let conf = dir.path().join("inspircd.conf");
    let text = format!(
        "<server name=\"bench.confab.local\" description=\"confab-bench\" network=\"bench\">\n\
         <admin name=\"bench\" nick=\"bench\" email=\"bench@localhost\">\n\
         <bind address=\"127.0.0.1\" port=\"{port}\" type=\"clients\">\n\
         <connect name=\"bench\" allow=\"*\" timeout=\"60\" pingfreq=\"3600\" \
         hardsendq=\"1073741824\" softsendq=\"1073741824\" recvq=\"1073741824\" \
         threshold=\"1000000\" commandrate=\"4000000\" fakelag=\"no\" localmax=\"1000000\" \
         globalmax=\"1000000\" maxconnwarn=\"no\" resolvehostnames=\"no\" useident=\"no\" \
         limit=\"1000000\">\n\
         <channels users=\"1000000\" opers=\"1000000\">\n\
         <limits maxnick=\"16\">\n\
         <performance somaxconn=\"4096\" softlimit=\"100000\" clonesonconnect=\"no\" \
         quietbursts=\"yes\" nouserdns=\"yes\">\n\
         <security maxtargets=\"20\">\n\
         <options syntaxhints=\"no\">\n\
         <dns server=\"127.0.0.1\" timeout=\"1\">\n\
         <files motd=\"{motd}\">\n\
         <pid file=\"{pid}\">\n\
         <log method=\"file\" type=\"* -USERINPUT -USEROUTPUT\" level=\"default\" target=\"{log}\">\n",
        pid = dir.path().join("inspircd.pid").display(),
        log = dir.path().join("inspircd.log").display(),
        motd = dir.path().join("motd.txt").display(),
    );
    std::fs::write(dir.path().join("motd.txt"), "bench\n")
        .map_err(|e| BenchError::io("writing the motd", e))?;
    std::fs::write(&conf, text).map_err(|e| BenchError::io("writing inspircd.conf", e))?;
    let out = std::fs::File::create(dir.path().join("inspircd.out"))
        .map_err(|e| BenchError::io("creating the inspircd output file", e))?;
    let err = out.try_clone().map_err(|e| BenchError::io("inspircd output", e))?;
    let child = Command::new(program)
        .args(["--nofork", "--runasroot"])
        .arg(format!("--config={}", conf.display()))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| BenchError::io(&format!("starting {}", program.display()), e))?;
    wait_listening(Kind::Inspircd, child, port, dir, "inspircd.log")
}

/// Waits until the child listens on `port` of loopback; on failure kills it and returns the
/// end of `log` (in `dir`) as the error.
fn wait_listening(
    kind: Kind,
    mut child: Child,
    port: u16,
    dir: ScratchDir,
    log: &str,
) -> Result<Server, BenchError> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            break;
        }
        if Instant::now() > deadline || matches!(child.try_wait(), Ok(Some(_))) {
            let _ = child.kill();
            let text = std::fs::read_to_string(dir.path().join(log)).unwrap_or_default();
            return Err(BenchError::Setup(format!("{} did not start: {text}", kind.name())));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Server { kind, addr, child, _dir: dir })
}

/// User + system CPU seconds from a `/proc/.../stat` file (a process's or a thread's).
pub fn proc_cpu_secs(path: &str) -> Result<f64, BenchError> {
    let stat = std::fs::read_to_string(path).map_err(|e| BenchError::io(path, e))?;
    // The command name may contain spaces: fields are counted after its closing ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let tick = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    match (tick(11), tick(12)) {
        (Some(utime), Some(stime)) => Ok((utime + stime) as f64 / TICKS_PER_SEC as f64),
        _ => Err(BenchError::Setup(format!("cannot parse {path}"))),
    }
}

fn free_port() -> Result<u16, BenchError> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| BenchError::io("finding a free port", e))?;
    listener.local_addr().map(|a| a.port()).map_err(|e| BenchError::io("finding a free port", e))
}

/// Raises this process's open-file limit to its hard limit (children inherit it); returns the
/// new soft limit.
pub fn raise_fd_limit() -> Result<u64, BenchError> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) =
        getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| BenchError::io("getrlimit", e.into()))?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
        .map_err(|e| BenchError::io("setrlimit", e.into()))?;
    Ok(hard)
}
