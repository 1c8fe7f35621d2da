//! The measurements of `confab-bench`: the same workloads against `confab-server` and
//! ngIRCd, in the same run, so that every figure can be read as a ratio.
//!
//! Each measurement starts a fresh server process ([`crate::target`]), connects and logs in the
//! clients from a single-threaded load generator ([`crate::load`]), lets the load run for a warm-up,
//! then measures for a fixed time: deliveries received, the latency of every message sent in
//! the window (from the send time carried in its text), and the server's CPU time from
//! `/proc/PID/stat` over the window. CPU time per delivered message is the fair figure when
//! the generator and the server share the machine's cores. The workloads:
//!
//! - **direct** (N clients): every client sends direct messages to random others, keeping a
//!   window of messages outstanding (sent, not yet received);
//! - **paced** (N clients, a rate): one pacer sends from random clients to random others at a
//!   fixed offered load, stamping each message with its scheduled time;
//! - **fan-out** (a group of M): every member sends to the group (an IRC channel), each
//!   message delivered to the M-1 others, and outstanding until every copy has arrived;
//! - **idle** (N clients): connected and logged in, doing nothing; the server's resident
//!   memory after minus before, divided by N.
//!
//! Every phase is bounded in time and stops by itself.

use std::time::{Duration, Instant};

use crate::load::{Generator, Pattern, Proto, Window};
use crate::target::{Kind, Programs, Server, Template};

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A system call or file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Preparing the database failed.
    #[error(transparent)]
    Store(#[from] confab::store::StoreError),
    /// A server did not start, or a client could not log in, or the server dropped clients.
    #[error("{0}")]
    Setup(String),
}

impl BenchError {
    pub fn io(context: &str, source: std::io::Error) -> Self {
        BenchError::Io { context: context.to_owned(), source }
    }
}

/// One workload.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Workload {
    /// `clients` clients sending direct messages as fast as the server takes them.
    Direct {
        /// Logged-in clients, all sending.
        clients: usize,
    },
    /// Direct messages at a fixed offered load.
    Paced {
        /// Logged-in clients.
        clients: usize,
        /// Messages per second, all clients together.
        rate: u32,
    },
    /// Every member of one group sending to it as fast as the server takes it.
    Fanout {
        /// Group members (and clients).
        members: usize,
    },
    /// Logged-in clients doing nothing.
    Idle {
        /// Logged-in clients.
        clients: usize,
    },
}

impl std::fmt::Display for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Workload::Direct { clients } => write!(f, "direct, N = {clients}"),
            Workload::Paced { clients, rate } => write!(f, "{rate} msg/s, N = {clients}"),
            Workload::Fanout { members } => write!(f, "fan-out, group of {members}"),
            Workload::Idle { clients } => write!(f, "idle, N = {clients}"),
        }
    }
}

impl Workload {
    /// The most clients this workload logs in.
    pub fn clients(&self) -> usize {
        match *self {
            Workload::Direct { clients }
            | Workload::Paced { clients, .. }
            | Workload::Idle { clients } => clients,
            Workload::Fanout { members } => members,
        }
    }
}

/// How the benchmark runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// The server binaries.
    pub programs: Programs,
    /// The workloads, in order.
    pub workloads: Vec<Workload>,
    /// Repetitions of every measurement (the report gives the median).
    pub runs: usize,
    /// Load before the measurement window starts.
    pub warmup: Duration,
    /// Length of the measurement window.
    pub measure: Duration,
    /// Direct messages each client keeps outstanding in the direct workloads.
    pub window: u32,
    /// Group messages each member keeps outstanding (until every copy has arrived) in the
    /// fan-out workload.
    pub fanout_window: u32,
    /// Longest time logging in the clients of one workload may take.
    pub setup_limit: Duration,
    /// Also measure Confab over TLS.
    pub tls: bool,
}

/// What one measurement found; absent figures do not apply to the workload.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    /// Deliveries per second in the window.
    pub rate: Option<f64>,
    /// Server CPU time per delivery, in microseconds.
    pub cpu_us: Option<f64>,
    /// Latency percentiles, in microseconds.
    pub p50_us: Option<f64>,
    /// 99th percentile.
    pub p99_us: Option<f64>,
    /// 99.9th percentile.
    pub p999_us: Option<f64>,
    /// Resident memory per idle connection, in bytes.
    pub rss_per_conn: Option<f64>,
    /// Seconds it took to connect and log in the clients.
    pub setup_secs: f64,
    /// The server's CPU use in the window, all threads, in per cent of one core.
    pub server_pct: Option<f64>,
    /// The server's busiest thread in the window, in per cent of one core.
    pub busiest_pct: Option<f64>,
    /// The load generator's CPU use in the window, in per cent of one core.
    pub generator_pct: Option<f64>,
    /// For workloads that run as fast as the server goes: whether the server's busiest
    /// thread was saturated ([`SATURATED_PCT`]). A throughput figure without it measured
    /// the generator, not the server, and is invalid.
    pub saturated: Option<bool>,
}

/// The servers to measure: Confab, and ngIRCd and InspIRCd where they are available; with
/// `tls`, Confab and ngIRCd over TLS too.
pub fn kinds(programs: &Programs, tls: bool) -> Vec<Kind> {
    let mut kinds = vec![Kind::Confab];
    if tls {
        kinds.push(Kind::ConfabTls);
    }
    if programs.ngircd.is_some() {
        kinds.push(Kind::Ngircd);
        if tls {
            kinds.push(Kind::NgircdTls);
        }
    }
    if programs.inspircd.is_some() {
        kinds.push(Kind::Inspircd);
    }
    kinds
}

/// Runs every workload `runs` times against each server, interleaved (run 1 of every
/// workload on both servers, then run 2, ...), calling `report` after each measurement.
pub fn run(
    options: &Options,
    mut report: impl FnMut(usize, Workload, Kind, &Figures),
) -> Result<Vec<(Workload, Kind, Vec<Figures>)>, BenchError> {
    crate::target::raise_fd_limit()?;
    let users = options.workloads.iter().map(Workload::clients).max().unwrap_or(0);
    let template = Template::create(users)?;
    let kinds = kinds(&options.programs, options.tls);
    let mut results: Vec<(Workload, Kind, Vec<Figures>)> = Vec::new();
    for run in 1..=options.runs {
        for &workload in &options.workloads {
            for &kind in &kinds {
                let figures = measure(options, &template, workload, kind)?;
                report(run, workload, kind, &figures);
                match results.iter_mut().find(|(w, k, _)| *w == workload && *k == kind) {
                    Some((_, _, all)) => all.push(figures),
                    None => results.push((workload, kind, vec![figures])),
                }
            }
        }
    }
    Ok(results)
}

/// One measurement of `workload` on a fresh server of `kind`.
pub fn measure(
    options: &Options,
    template: &Template,
    workload: Workload,
    kind: Kind,
) -> Result<Figures, BenchError> {
    let server = Server::start(kind, &options.programs, template)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| BenchError::io("building the runtime", e))?;
    let local = tokio::task::LocalSet::new();
    let result = local.block_on(&runtime, drive(options, &server, workload));
    // Dropping the tasks closes the connections before the server is stopped.
    drop(local);
    drop(runtime);
    server.stop();
    result
}

async fn drive(
    options: &Options,
    server: &Server,
    workload: Workload,
) -> Result<Figures, BenchError> {
    let proto = match server.kind {
        Kind::Confab | Kind::ConfabTls => Proto::Confab,
        Kind::Ngircd | Kind::NgircdTls | Kind::Inspircd => Proto::Irc,
    };
    let (clients, pattern) = match workload {
        Workload::Fanout { members } => (members, Pattern::Group),
        other => (other.clients(), Pattern::Direct),
    };
    let idle = matches!(workload, Workload::Idle { .. });
    // Let the server finish starting before memory is read.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = server.rss_bytes()?;
    let began = Instant::now();
    let tls = matches!(server.kind, Kind::ConfabTls | Kind::NgircdTls);
    let gen = Generator::connect(proto, server.addr, clients, pattern, options.setup_limit, tls)
        .await
        .map_err(|e| BenchError::Setup(format!("{e}; server log:\n{}", server.log_tail(10))))?;
    let setup_secs = began.elapsed().as_secs_f64();
    // Logins announce themselves to everyone online: wait until that has been read.
    let quiet = if idle { Duration::from_secs(1) } else { Duration::from_millis(200) };
    gen.settle(quiet, options.setup_limit).await;
    let mut figures = Figures { setup_secs, ..Figures::default() };
    let window = match workload {
        Workload::Idle { clients } => {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let rss_after = server.rss_bytes()?;
            figures.rss_per_conn = Some((rss_after as f64 - rss_before as f64) / clients as f64);
            None
        }
        Workload::Paced { rate, .. } => {
            let stop = Instant::now() + options.warmup + options.measure;
            let ((), measured) =
                tokio::join!(gen.pace(f64::from(rate), stop), timed(options, server, &gen));
            Some(measured?)
        }
        Workload::Direct { .. } | Workload::Fanout { .. } => {
            let window = match pattern {
                Pattern::Direct => options.window,
                Pattern::Group => options.fanout_window,
            };
            gen.start_sending(window);
            let measured = timed(options, server, &gen).await;
            gen.stop_sending();
            Some(measured?)
        }
    };
    if let Some((cpu, mut w)) = window {
        let secs = w.elapsed.as_secs_f64();
        figures.rate = Some(w.delivered as f64 / secs);
        figures.cpu_us = (w.delivered > 0).then(|| cpu.server_secs * 1e6 / w.delivered as f64);
        figures.server_pct = Some(cpu.server);
        figures.busiest_pct = Some(cpu.busiest);
        figures.generator_pct = Some(cpu.generator);
        // Closed-loop workloads measure how fast the server goes: that only holds if the
        // server, not the generator, was the bottleneck.
        figures.saturated =
            (!matches!(workload, Workload::Paced { .. })).then_some(cpu.busiest >= SATURATED_PCT);
        figures.p50_us = w.quantile_us(0.5);
        figures.p99_us = w.quantile_us(0.99);
        figures.p999_us = w.quantile_us(0.999);
    }
    if gen.closed() > 0 {
        return Err(BenchError::Setup(format!(
            "{} closed {} of the {clients} connections during {workload}; server log:\n{}",
            server.kind.name(),
            gen.closed(),
            server.log_tail(10)
        )));
    }
    Ok(figures)
}

/// CPU use over a measurement window, in per cent of one core.
#[derive(Debug, Clone, Copy)]
struct CpuUse {
    /// The server process, all threads.
    server: f64,
    /// The server's busiest thread: a single event loop at 100 % is the bottleneck.
    busiest: f64,
    /// The load generator (this thread).
    generator: f64,
    /// The server's CPU seconds in the window.
    server_secs: f64,
}

/// A server's event loop is taken as saturated from this share of a core.
pub const SATURATED_PCT: f64 = 90.0;

/// Warm-up, then the measurement window; returns the CPU use in the window and what the
/// clients saw.
async fn timed(
    options: &Options,
    server: &Server,
    gen: &Generator,
) -> Result<(CpuUse, Window), BenchError> {
    tokio::time::sleep(options.warmup).await;
    let before = (server.cpu_secs()?, server.thread_cpu_secs()?, generator_cpu_secs()?);
    let began = Instant::now();
    gen.begin_window();
    tokio::time::sleep(options.measure).await;
    gen.end_window();
    let after = (server.cpu_secs()?, server.thread_cpu_secs()?, generator_cpu_secs()?);
    let secs = began.elapsed().as_secs_f64();
    let busiest = after
        .1
        .iter()
        .map(|(tid, t)| t - before.1.iter().find(|(b, _)| b == tid).map_or(0.0, |(_, t0)| *t0))
        .fold(0.0, f64::max);
    let pct = |cpu: f64| cpu * 100.0 / secs;
    let cpu = CpuUse {
        server: pct(after.0 - before.0),
        busiest: pct(busiest),
        generator: pct(after.2 - before.2),
        server_secs: after.0 - before.0,
    };
    gen.stop_sending();
    let window = gen.finish(Duration::from_secs(5)).await;
    Ok((cpu, window))
}

/// CPU seconds of the thread driving the load generator.
fn generator_cpu_secs() -> Result<f64, BenchError> {
    crate::target::proc_cpu_secs("/proc/thread-self/stat")
}

/// The median of the figures that are present.
pub fn median(values: impl IntoIterator<Item = Option<f64>>) -> Option<f64> {
    let mut v: Vec<f64> = values.into_iter().flatten().collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 { v[mid] } else { (v[mid - 1] + v[mid]) / 2.0 })
}

/// A Markdown table of the medians: one row per workload and figure, every server side by
/// side with Confab's ratio to each, and each server's CPU use beside them. A throughput figure from
/// a run whose server was not saturated is marked, and its ratio is invalid.
pub fn table(results: &[(Workload, Kind, Vec<Figures>)]) -> String {
    type Pick = fn(&Figures) -> Option<f64>;
    let figures: [(&str, Pick, f64); 10] = [
        ("deliveries/s", |f| f.rate, 1.0),
        ("server CPU µs per delivery", |f| f.cpu_us, 1.0),
        ("server CPU % (all threads)", |f| f.server_pct, 1.0),
        ("server busiest thread CPU %", |f| f.busiest_pct, 1.0),
        ("generator CPU %", |f| f.generator_pct, 1.0),
        ("latency p50 ms", |f| f.p50_us, 1e-3),
        ("latency p99 ms", |f| f.p99_us, 1e-3),
        ("latency p99.9 ms", |f| f.p999_us, 1e-3),
        ("RSS per connection KB", |f| f.rss_per_conn, 1.0 / 1024.0),
        ("connect and log in all, s", |f| Some(f.setup_secs), 1.0),
    ];
    let mut kinds: Vec<Kind> = Vec::new();
    let mut workloads: Vec<Workload> = Vec::new();
    for (w, k, _) in results {
        if !workloads.contains(w) {
            workloads.push(*w);
        }
        if !kinds.contains(k) {
            kinds.push(*k);
        }
    }
    kinds.sort_by_key(|k| *k as u8);
    // The ratios: Confab against each other server, Confab TLS against ngIRCd TLS, and
    // Confab TLS against plaintext Confab (the TLS cost).
    let tls = kinds.contains(&Kind::ConfabTls);
    let mut ratios: Vec<(Kind, Kind)> = kinds
        .iter()
        .filter(|k| !matches!(k, Kind::Confab | Kind::ConfabTls))
        .map(|&k| (if k == Kind::NgircdTls && tls { Kind::ConfabTls } else { Kind::Confab }, k))
        .collect();
    if tls && kinds.contains(&Kind::Confab) {
        ratios.push((Kind::ConfabTls, Kind::Confab));
    }
    let mut out = String::from("| workload | figure |");
    for k in &kinds {
        out.push_str(&format!(" {} |", k.name()));
    }
    for (a, b) in &ratios {
        out.push_str(&format!(" {} / {} |", a.name(), b.name()));
    }
    out.push_str("\n| --- | --- |");
    out.push_str(&" ---: |".repeat(kinds.len() + ratios.len()));
    out.push('\n');
    for w in workloads {
        let runs = |kind: Kind| {
            results.iter().find(|(rw, rk, _)| *rw == w && *rk == kind).map(|(_, _, all)| all)
        };
        let of = |kind: Kind, pick: Pick| runs(kind).and_then(|all| median(all.iter().map(pick)));
        // Unsaturated if any run of the workload was.
        let unsaturated = |kind: Kind| {
            runs(kind).is_some_and(|all| all.iter().any(|f| f.saturated == Some(false)))
        };
        for (label, pick, scale) in figures {
            let values: Vec<Option<f64>> = kinds.iter().map(|&k| of(k, pick)).collect();
            if values.iter().all(Option::is_none) {
                continue;
            }
            let throughput = label == "deliveries/s";
            out.push_str(&format!("| {w} | {label} |"));
            for (&kind, v) in kinds.iter().zip(&values) {
                let mark = if throughput && unsaturated(kind) { " (not saturated)" } else { "" };
                let shown = v.map_or("-".into(), |v| format!("{}{mark}", fmt_num(v * scale)));
                out.push_str(&format!(" {shown} |"));
            }
            for &(mine, other) in &ratios {
                let ratio = match (of(mine, pick), of(other, pick)) {
                    _ if throughput && (unsaturated(mine) || unsaturated(other)) => {
                        "invalid".into()
                    }
                    (Some(c), Some(n)) if n != 0.0 => format!("{:.2}", c / n),
                    _ => "-".into(),
                };
                out.push_str(&format!(" {ratio} |"));
            }
            out.push('\n');
        }
    }
    out
}

/// A number with three significant digits (whole numbers as they are).
pub fn fmt_num(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_present_values() {
        assert_eq!(median([Some(3.0), None, Some(1.0), Some(2.0)]), Some(2.0));
        assert_eq!(median([Some(1.0), Some(4.0)]), Some(2.5));
        assert_eq!(median([None]), None);
    }
}
