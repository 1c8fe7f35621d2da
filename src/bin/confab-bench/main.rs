//! `confab-bench`: the relay benchmark, Confab against ngIRCd and InspIRCd. Parses flags, runs
//! [`run::run`], prints each measurement as it comes and a table of medians.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
mod load;
mod run;
mod target;

use run::{Figures, Options, Workload};
use target::Programs;

/// Relay benchmark: the same workloads against confab-server, ngIRCd and InspIRCd, side by side.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Repetitions of every measurement; the table shows the median.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Seconds of load before each measurement window.
    #[arg(long, default_value_t = 1.0)]
    warmup_secs: f64,
    /// Seconds in each measurement window.
    #[arg(long, default_value_t = 3.0)]
    measure_secs: f64,
    /// Workloads to run: any of direct, paced, fanout, idle.
    #[arg(long, value_delimiter = ',', default_value = "direct,paced,fanout,idle")]
    only: Vec<String>,
    /// Client counts of the direct and paced workloads.
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    clients: Vec<usize>,
    /// Offered load of the paced workload, messages per second.
    #[arg(long, default_value_t = 10_000)]
    rate: u32,
    /// Members of the fan-out group.
    #[arg(long, default_value_t = 100)]
    members: usize,
    /// Clients of the idle workload.
    #[arg(long, default_value_t = 10_000)]
    idle_clients: usize,
    /// Direct messages each client keeps outstanding.
    #[arg(long, default_value_t = 8)]
    window: u32,
    /// Group messages each member keeps outstanding in the fan-out.
    ///
    /// Enough for every server to be the bottleneck: with 2, ngIRCd and InspIRCd sat at 10
    /// to 20 % of a core, waiting for the generator (their main loops batch, so each message
    /// takes them milliseconds).
    #[arg(long, default_value_t = 16)]
    fanout_window: u32,
    /// The confab-server binary (default: next to this one).
    #[arg(long)]
    confab_server: Option<PathBuf>,
    /// The ngircd binary (default: `ngircd` on the PATH or in /usr/sbin).
    #[arg(long)]
    ngircd: Option<PathBuf>,
    /// The inspircd binary (default: `inspircd` on the PATH or in /usr/sbin).
    #[arg(long)]
    inspircd: Option<PathBuf>,
    /// Leave ngIRCd out.
    #[arg(long)]
    no_ngircd: bool,
    /// Leave InspIRCd out.
    #[arg(long)]
    no_inspircd: bool,
    /// A run of a second or two with a few clients, to check that everything works.
    #[arg(long)]
    smoke: bool,
    /// Also measure Confab over TLS (the `Confab TLS` column), beside plaintext Confab.
    #[arg(long)]
    tls: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();

    let confab_server = match args.confab_server.clone() {
        Some(path) => path,
        None => std::env::current_exe()?
            .parent()
            .context("locating this binary's directory")?
            .join("confab-server"),
    };
    let ngircd = if args.no_ngircd { None } else { args.ngircd.clone().or_else(|| find("ngircd")) };
    if ngircd.is_none() && !args.no_ngircd {
        eprintln!("ngircd not found: leaving ngIRCd out (apt-get install ngircd)");
    }
    let inspircd =
        if args.no_inspircd { None } else { args.inspircd.clone().or_else(|| find("inspircd")) };
    if inspircd.is_none() && !args.no_inspircd {
        eprintln!("inspircd not found: leaving InspIRCd out (apt-get install inspircd)");
    }
    let programs = Programs { confab_server, ngircd, inspircd };
    let mut options = if args.smoke { smoke(programs) } else { options(&args, programs)? };
    options.tls = args.tls;

    let results = run::run(&options, |run, workload, kind, f| {
        eprintln!("run {run}: {workload}: {}: {}", kind.name(), describe(f));
    })?;
    println!("{}", run::table(&results));
    Ok(())
}

fn options(args: &Args, programs: Programs) -> anyhow::Result<Options> {
    let mut workloads = Vec::new();
    for name in &args.only {
        match name.as_str() {
            "direct" => {
                workloads.extend(args.clients.iter().map(|&clients| Workload::Direct { clients }))
            }
            "paced" => workloads.extend(
                args.clients.iter().map(|&clients| Workload::Paced { clients, rate: args.rate }),
            ),
            "fanout" => workloads.push(Workload::Fanout { members: args.members }),
            "idle" => workloads.push(Workload::Idle { clients: args.idle_clients }),
            other => anyhow::bail!("unknown workload {other:?} (direct, paced, fanout, idle)"),
        }
    }
    Ok(Options {
        programs,
        workloads,
        runs: args.runs.max(1),
        warmup: Duration::from_secs_f64(args.warmup_secs),
        measure: Duration::from_secs_f64(args.measure_secs),
        window: args.window.max(1),
        fanout_window: args.fanout_window.max(1),
        setup_limit: Duration::from_secs(300),
        tls: args.tls,
    })
}

/// A few clients for a fraction of a second each: checks the benchmark, measures nothing.
fn smoke(programs: Programs) -> Options {
    Options {
        programs,
        workloads: vec![
            Workload::Direct { clients: 10 },
            Workload::Paced { clients: 10, rate: 1000 },
            Workload::Fanout { members: 5 },
            Workload::Idle { clients: 20 },
        ],
        runs: 1,
        warmup: Duration::from_millis(100),
        measure: Duration::from_millis(200),
        window: 4,
        fanout_window: 2,
        setup_limit: Duration::from_secs(30),
        tls: false,
    }
}

/// `program` on the PATH or in /usr/sbin.
fn find(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

fn describe(f: &Figures) -> String {
    let mut parts = Vec::new();
    let mut put = |label: &str, v: Option<f64>, scale: f64, unit: &str| {
        if let Some(v) = v {
            parts.push(format!("{label} {}{unit}", run::fmt_num(v * scale)));
        }
    };
    put("", f.rate, 1.0, " deliveries/s");
    put("cpu", f.cpu_us, 1.0, " µs/delivery");
    put("p50", f.p50_us, 1e-3, " ms");
    put("p99", f.p99_us, 1e-3, " ms");
    put("p99.9", f.p999_us, 1e-3, " ms");
    put("rss", f.rss_per_conn, 1.0 / 1024.0, " KB/conn");
    put("server cpu", f.server_pct, 1.0, " %");
    put("busiest thread", f.busiest_pct, 1.0, " %");
    put("generator cpu", f.generator_pct, 1.0, " %");
    if f.saturated == Some(false) {
        parts.push("NOT SATURATED: this throughput is invalid".into());
    }
    format!("{} (setup {:.1} s)", parts.join(", ").trim_start(), f.setup_secs)
}
