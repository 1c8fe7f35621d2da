//! `confab-server`: parses flags, opens the store, imports credentials, serves until a signal.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use confab::protocol::DEFAULT_MAX_FRAME;
use confab::server::hub::log::Mailbox;
use confab::server::limits::{AddrLimits, Cidr, Limit};
use confab::server::rate::UserRates;
use confab::server::rendezvous::RelayCaps;
use confab::server::{self, credentials, fdlimit, Config};
use confab::store::lock::DbLock;
use confab::store::{SqliteStore, StoreHandle};
use confab::tls::{ServerIdentity, ServerTls};

/// The Confab relay server. Every flag can also be set through the environment variable shown.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "CONFAB_LISTEN", default_value = "127.0.0.1:4000")]
    listen: String,
    /// UDP address for address discovery and the relay of direct links (NAT traversal).
    /// Default: the TCP listener's address and port; `off` for none.
    #[arg(long, env = "CONFAB_UDP_LISTEN")]
    udp_listen: Option<String>,
    /// Most a relayed link may carry, in Mbit/s (both ways together; 0: no cap).
    #[arg(long, env = "CONFAB_RELAY_LINK_MBIT", default_value_t = 100)]
    relay_link_mbit: u64,
    /// Most one user's relayed links may carry together, in Mbit/s (0: no cap).
    #[arg(long, env = "CONFAB_RELAY_USER_MBIT", default_value_t = 200)]
    relay_user_mbit: u64,
    /// SQLite database file (`:memory:` for a throwaway one). Default: the user's data dir.
    #[arg(long, env = "CONFAB_DB")]
    db: Option<PathBuf>,
    /// Credentials file to import, one `username password` per line.
    #[arg(long, env = "CONFAB_CREDENTIALS")]
    credentials: Option<PathBuf>,
    /// Let an unknown username create an account by logging in.
    #[arg(long, env = "CONFAB_OPEN_REGISTRATION",
          value_parser = clap::builder::BoolishValueParser::new())]
    open_registration: bool,
    /// Consecutive failed logins that lock a username (0: never lock).
    #[arg(long, env = "CONFAB_MAX_FAILED_LOGINS", default_value_t = 3)]
    max_failed_logins: u32,
    /// Seconds a locked username stays locked.
    #[arg(long, env = "CONFAB_LOCKOUT_SECS", default_value = "10", value_parser = seconds)]
    lockout_secs: Duration,
    /// Seconds without a command after which a user is logged out.
    #[arg(long, env = "CONFAB_IDLE_TIMEOUT_SECS", default_value = "600", value_parser = seconds)]
    idle_timeout_secs: Duration,
    /// Largest frame accepted from a client, in bytes.
    #[arg(long, env = "CONFAB_MAX_FRAME_BYTES", default_value_t = DEFAULT_MAX_FRAME)]
    max_frame_bytes: usize,
    /// Longest message, in characters.
    #[arg(long, env = "CONFAB_MAX_MESSAGE_CHARS", default_value_t = 4000)]
    max_message_chars: usize,
    /// Most simultaneous connections.
    #[arg(long, env = "CONFAB_MAX_CONNECTIONS", default_value_t = 20_000)]
    max_connections: usize,
    /// Seconds a private chat request waits for an answer before it expires.
    #[arg(long, env = "CONFAB_PRIVATE_REQUEST_TIMEOUT_SECS", default_value = "60", value_parser = seconds)]
    private_request_timeout_secs: Duration,
    /// Frames queued for one session before it counts as too slow to read and is
    /// disconnected (what it missed comes again at its next login).
    #[arg(long, env = "CONFAB_SESSION_QUEUE", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    session_queue: u32,
    /// When commits reach the disk: `never` (the default) leaves it to the OS, which survives a
    /// killed server but a power cut may take back the last moments; `always` syncs every
    /// commit (slower, survives a power cut).
    #[arg(long, env = "CONFAB_FSYNC", default_value = "never", value_parser = ["never", "always"])]
    fsync: String,
    /// Most messages waiting for one recipient before senders get "mailbox full" (0: no limit).
    #[arg(long, env = "CONFAB_MAILBOX_MESSAGES", default_value_t = 10_000)]
    mailbox_messages: u64,
    /// Most bytes of message text waiting for one recipient (0: no limit).
    #[arg(long, env = "CONFAB_MAILBOX_BYTES", default_value_t = 64 << 20)]
    mailbox_bytes: u64,
    /// Delete messages older than this many days once every recipient has had them
    /// (default: keep them for ever).
    #[arg(long, env = "CONFAB_RETENTION_DAYS", value_parser = days)]
    retention_days: Option<Duration>,
    /// Also write the log as plain text in this directory: messagelog.txt,
    /// GROUP_messagelog.txt and userlog.txt (the Tessenger course spec's formats).
    #[arg(long, env = "CONFAB_TEXT_LOGS")]
    text_logs: Option<PathBuf>,
    /// Connections one address may hold at once (IPv6: one /64; 0: no limit).
    #[arg(long, env = "CONFAB_MAX_CONNS_PER_ADDR", default_value_t = 16)]
    max_conns_per_addr: usize,
    /// New connections from one address: PER_SECOND,BURST (0: no limit).
    #[arg(long, env = "CONFAB_CONN_RATE", default_value = "4,16", value_parser = Limit::parse_flag)]
    conn_rate: RateFlag,
    /// Login attempts from one address: PER_SECOND,BURST (0: no limit).
    #[arg(long, env = "CONFAB_LOGIN_RATE", default_value = "0.5,10", value_parser = Limit::parse_flag)]
    login_rate: RateFlag,
    /// A network the per-address limits do not apply to, e.g. a campus NAT's 10.0.0.0/8
    /// (repeatable; loopback is limited like any address unless listed).
    #[arg(long, env = "CONFAB_EXEMPT", value_delimiter = ',')]
    exempt: Vec<Cidr>,
    /// Seconds a new connection has to log in before it is closed.
    #[arg(long, env = "CONFAB_LOGIN_DEADLINE_SECS", default_value = "30", value_parser = seconds)]
    login_deadline_secs: Duration,
    /// Seconds a frame may take to arrive whole once its first byte has.
    #[arg(long, env = "CONFAB_FRAME_TIMEOUT_SECS", default_value = "10", value_parser = seconds)]
    frame_timeout_secs: Duration,
    /// Each user's /msg requests: PER_SECOND,BURST (0: no limit).
    #[arg(long, env = "CONFAB_RATE_MSG", default_value = "5,30", value_parser = Limit::parse_flag)]
    rate_msg: RateFlag,
    /// Each user's /groupmsg requests: PER_SECOND,BURST (0: no limit).
    #[arg(long, env = "CONFAB_RATE_GROUPMSG", default_value = "5,30", value_parser = Limit::parse_flag)]
    rate_groupmsg: RateFlag,
    /// Each user's /broadcast requests: PER_SECOND,BURST (0: no limit).
    #[arg(long, env = "CONFAB_RATE_BROADCAST", default_value = "1,10", value_parser = Limit::parse_flag)]
    rate_broadcast: RateFlag,
    /// Each user's /history requests: PER_SECOND,BURST (0: no limit).
    #[arg(long, env = "CONFAB_RATE_HISTORY", default_value = "2,10", value_parser = Limit::parse_flag)]
    rate_history: RateFlag,
    /// Each user's other requests (lists, blocks, groups, pings...): PER_SECOND,BURST.
    #[arg(long, env = "CONFAB_RATE_OTHER", default_value = "10,50", value_parser = Limit::parse_flag)]
    rate_other: RateFlag,
    /// Refused requests a user may make: past PER_SECOND,BURST they are disconnected as
    /// flooding (0: never).
    #[arg(long, env = "CONFAB_RATE_REFUSALS", default_value = "1,20", value_parser = Limit::parse_flag)]
    rate_refusals: RateFlag,
    /// Turn every per-user rate limit off (the relay benchmark does).
    #[arg(long, env = "CONFAB_NO_USER_RATES",
          value_parser = clap::builder::BoolishValueParser::new())]
    no_user_rates: bool,
    /// Largest the database may grow, in MiB: past it new messages are refused with
    /// "storage full" while logins and reading go on (default: no limit but the disk's).
    #[arg(long, env = "CONFAB_MAX_DB_MIB")]
    max_db_mib: Option<u64>,
    /// Threads serving connections. One event loop is the cheapest per message; more spread
    /// the relay over cores. The database and password hashing have threads of their own.
    #[arg(long, env = "CONFAB_THREADS", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: u16,
    /// TLS certificate chain (PEM, leaf first). Default: a self-signed certificate the server
    /// makes on first start and keeps next to the database (confab-server.crt, .key).
    #[arg(long, env = "CONFAB_TLS_CERT", requires = "tls_key", conflicts_with = "plaintext")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "CONFAB_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve without TLS, for benchmarks and debugging; refused unless the listen address is
    /// a loopback one.
    #[arg(long, env = "CONFAB_PLAINTEXT")]
    plaintext: bool,
}

/// A rate flag's value, `None` for no limit (an alias, so that clap does not take the
/// `Option` to mean an optional flag).
type RateFlag = Option<Limit>;

fn seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s.parse().map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if !(secs.is_finite() && secs > 0.0 && secs < 1e9) {
        return Err(format!("'{s}' must be a positive number of seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn days(s: &str) -> Result<Duration, String> {
    let days: f64 = s.parse().map_err(|_| format!("'{s}' is not a number of days"))?;
    if !(days.is_finite() && days > 0.0 && days < 1e6) {
        return Err(format!("'{s}' must be a positive number of days"));
    }
    Ok(Duration::from_secs_f64(days * 86_400.0))
}

fn default_db() -> PathBuf {
    directories::ProjectDirs::from("", "", "confab")
        .map(|dirs| dirs.data_dir().join("confab.db"))
        .unwrap_or_else(|| PathBuf::from("confab.db"))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();

    let db = args.db.clone().unwrap_or_else(default_db);
    // Held until the process ends: one server per database.
    let _lock = if db.as_os_str() == ":memory:" {
        None
    } else {
        if let Some(dir) = db.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating the database directory {}", dir.display()))?;
        }
        Some(DbLock::acquire(&db)?)
    };
    let mut store = SqliteStore::open_with(&db, args.fsync == "always")
        .with_context(|| format!("opening the database {}", db.display()))?;
    tracing::info!("database: {}", db.display());
    if let Some(mib) = args.max_db_mib {
        store.limit_size(mib.saturating_mul(1 << 20)).context("setting --max-db-mib")?;
    }
    match fdlimit::raise() {
        Ok(limit) => tracing::info!(limit, "file descriptors"),
        Err(e) => tracing::warn!("cannot raise the file descriptor limit: {e}"),
    }
    if let Some(path) = &args.credentials {
        let summary = credentials::import(&mut store, path)?;
        tracing::info!(?summary, "imported {}", path.display());
    }
    let tls = tls(&args, &db)?;
    let config = Config {
        open_registration: args.open_registration,
        max_failed_logins: args.max_failed_logins,
        lockout: args.lockout_secs,
        idle_timeout: args.idle_timeout_secs,
        max_frame: args.max_frame_bytes,
        max_message_chars: args.max_message_chars,
        max_connections: args.max_connections,
        addr_limits: AddrLimits {
            max_conns: args.max_conns_per_addr,
            conn_rate: args.conn_rate,
            login_rate: args.login_rate,
            exempt: args.exempt.clone(),
        },
        user_rates: if args.no_user_rates {
            UserRates::off()
        } else {
            UserRates {
                direct: args.rate_msg,
                group: args.rate_groupmsg,
                broadcast: args.rate_broadcast,
                history: args.rate_history,
                other: args.rate_other,
                refusals: args.rate_refusals,
            }
        },
        login_deadline: args.login_deadline_secs,
        frame_timeout: args.frame_timeout_secs,
        private_request_timeout: args.private_request_timeout_secs,
        session_queue: args.session_queue as usize,
        mailbox: Mailbox { messages: args.mailbox_messages, bytes: args.mailbox_bytes },
        retention: args.retention_days,
        text_logs: args.text_logs.clone(),
        tls: tls.clone(),
        relay: RelayCaps {
            link: args.relay_link_mbit.saturating_mul(125_000),
            user: args.relay_user_mbit.saturating_mul(125_000),
        },
        ..Config::default()
    };

    tracing::info!(?config, "settings");

    // One thread by default: the relay's own work per message is small next to the syscalls,
    // and a single event loop saves the hand-offs between workers (about a fifth of the CPU
    // per delivered message in the relay benchmark, docs/BENCHMARKS.md).
    let runtime = match args.threads {
        1 => tokio::runtime::Builder::new_current_thread().enable_all().build()?,
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n.into())
            .enable_all()
            .build()?,
    };
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let addr = listener.local_addr()?;
        if tls.is_none() && !addr.ip().to_canonical().is_loopback() {
            anyhow::bail!(
                "--plaintext is only for loopback addresses, not {addr}: passwords and \
                 messages would cross the network in the clear"
            );
        }
        match &tls {
            // Before the address: scripts may stop reading at that line.
            Some(tls) => {
                let _ =
                    writeln!(std::io::stdout(), "confab-server certificate {}", tls.fingerprint());
            }
            None => tracing::warn!("serving plaintext (--plaintext): loopback only"),
        }
        let udp = match args.udp_listen.as_deref() {
            Some("off") => None,
            Some(udp) => Some(
                tokio::net::UdpSocket::bind(udp)
                    .await
                    .with_context(|| format!("cannot listen on UDP {udp}"))?,
            ),
            None => Some(
                tokio::net::UdpSocket::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on UDP {addr} (--udp-listen)"))?,
            ),
        };
        if let Some(udp) = &udp {
            tracing::info!("address discovery and relay on UDP {}", udp.local_addr()?);
        }
        // Scripts and tests read this line to learn the port (with --listen 127.0.0.1:0).
        println!("confab-server listening on {addr}");
        let listeners = server::Listeners { tcp: listener, udp };
        server::run(listeners, StoreHandle::spawn(store), config, shutdown_signal()).await?;
        anyhow::Ok(())
    })?;
    Ok(())
}

/// The certificate to serve: --tls-cert and --tls-key, else the one kept next to the
/// database (made now if there is none); `None` with --plaintext.
fn tls(args: &Args, db: &Path) -> anyhow::Result<Option<ServerTls>> {
    if args.plaintext {
        return Ok(None);
    }
    let identity = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => ServerIdentity::from_pem_files(cert, key)?,
        _ if db.as_os_str() == ":memory:" => {
            tracing::warn!(
                "a throwaway certificate for the throwaway database: it changes at every \
                 start, and clients that remember it will refuse the next one"
            );
            ServerIdentity::self_signed()?
        }
        _ => {
            let dir = db.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
            let (identity, created) = ServerIdentity::load_or_create(dir)?;
            if created {
                tracing::info!("made a self-signed certificate in {}", dir.display());
            }
            identity
        }
    };
    Ok(Some(identity.into_server_tls()?))
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        _ = term.recv() => tracing::info!("SIGTERM received"),
    }
}

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
