//! `confab-transfer-bench`: one side of a `/p2pvideo` transfer without a server, for the
//! file-transfer benchmark.
//!
//! `scripts/bench-transfer.sh` runs `recv` and `send` in two network namespaces (or both on
//! loopback) with the same token, playing the server's introduction by hand. Each side
//! prints one line: the bytes, the time from acceptance until the file was checked and in
//! place (`recv`) or acknowledged as saved (`send`), and the rate.
//!
//! The transfer is encrypted as any other. With no server to vouch for keys, both sides
//! derive the two benchmark identities from the token, so one token is all they share.

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use confab::p2p::identity::Identity;
use confab::p2p::transfer::{
    IncomingFile, OutgoingFile, SenderConfig, Transfer, TransferConfig, TransferEvent, Transfers,
};
use confab::protocol::{Introduction, Token};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

#[derive(Parser, Debug)]
#[command(about = "One side of a direct file transfer, for benchmarks")]
struct Args {
    #[command(subcommand)]
    side: Side,
    /// The transfer token, 32 hex digits, the same on both sides.
    #[arg(long, global = true, default_value = "00112233445566778899aabbccddeeff")]
    token: String,
}

#[derive(Subcommand, Debug)]
enum Side {
    /// Receive FILE's name and size from the sender at FROM into DIR.
    Recv {
        /// Local UDP address.
        #[arg(long)]
        bind: SocketAddr,
        /// The sender's UDP address.
        #[arg(long)]
        from: SocketAddr,
        /// The file that will be offered (for its name and size).
        #[arg(long)]
        expect: PathBuf,
        /// Download directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Send FILE to the receiver at TO.
    Send {
        /// Local UDP address.
        #[arg(long)]
        bind: SocketAddr,
        /// The receiver's UDP address.
        #[arg(long)]
        to: SocketAddr,
        /// The file.
        #[arg(long)]
        file: PathBuf,
        /// File bytes per datagram.
        #[arg(long, default_value_t = confab::p2p::transfer::wire::DEFAULT_CHUNK_SIZE)]
        chunk_size: u32,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("confab-transfer-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let token = parse_token(&args.token)?;
    let (tx, mut events) = mpsc::unbounded_channel();
    let on_event = move |e| {
        let _ = tx.send(e);
    };
    let sender_id = identity("sender", &token);
    let receiver_id = identity("receiver", &token);
    let (transfers, what) = match &args.side {
        Side::Recv { bind, from, expect, dir } => {
            let file = OutgoingFile::open(expect).context("--expect")?;
            let config = TransferConfig {
                download_dir: dir.clone(),
                auto_accept: true,
                ..Default::default()
            };
            let socket = UdpSocket::bind(bind)?;
            let transfers = Transfers::start(socket, "receiver", receiver_id, config, on_event)?;
            let intro = Introduction::direct("sender", *from, token, sender_id.public());
            transfers.expect(IncomingFile::new(&intro, &file.name, file.size));
            (transfers, "received")
        }
        Side::Send { bind, to, file, chunk_size } => {
            let sender = SenderConfig { chunk_size: *chunk_size, ..Default::default() };
            let config = TransferConfig { sender, ..Default::default() };
            let socket = UdpSocket::bind(bind)?;
            let intro = Introduction::direct("receiver", *to, token, receiver_id.public());
            let transfers = Transfers::start(socket, "sender", sender_id, config, on_event)?;
            transfers.send(&intro, OutgoingFile::open(file)?)?;
            (transfers, "sent")
        }
    };
    let mut started = None;
    while let Some(event) = events.recv().await {
        match event {
            TransferEvent::Started { .. } => started = Some(Instant::now()),
            TransferEvent::Sent { transfer, stats } => {
                report(what, &transfer, started, &transfers);
                println!(
                    "chunks of {} bytes after {} path MTU probes; {} datagrams, {} resent; \
                     {} tail probes, {} timeouts, {} black holes",
                    stats.chunk_size,
                    stats.probes,
                    stats.data_sent,
                    stats.retransmitted,
                    stats.tail_probes,
                    stats.timeouts,
                    stats.black_holes
                );
                return Ok(());
            }
            TransferEvent::Received { transfer, .. } => {
                report(what, &transfer, started, &transfers);
                return Ok(());
            }
            TransferEvent::Failed { error, .. } => bail!("transfer failed: {error}"),
            _ => {}
        }
    }
    bail!("the transfer engine stopped")
}

/// The benchmark identity of `name`, from the token both sides were given.
fn identity(name: &str, token: &Token) -> Identity {
    let secret: [u8; 32] = Sha256::new().chain_update(name).chain_update(token.0).finalize().into();
    Identity::from_secret(zeroize::Zeroizing::new(secret))
}

fn parse_token(hex: &str) -> anyhow::Result<Token> {
    if hex.len() != 32 {
        bail!("--token takes 32 hex digits");
    }
    let mut bytes = [0; 16];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).context("--token")?;
    }
    Ok(Token(bytes))
}

/// Prints how long the transfer took from its start and its rate.
fn report(what: &str, transfer: &Transfer, started: Option<Instant>, transfers: &Transfers) {
    let secs = started.map_or(0.0, |s| s.elapsed().as_secs_f64());
    let mbit = transfer.size as f64 * 8.0 / secs / 1e6;
    let dropped = transfers.stats();
    println!(
        "{what} {} bytes in {secs:.3} s: {mbit:.1} Mbit/s (dropped: {dropped:?})",
        transfer.size
    );
}
