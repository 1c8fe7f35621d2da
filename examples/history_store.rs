//! Store micro-benchmark: the cost of appending relayed messages to the log (the history),
//! and of the `/history` queries, as the log grows.
//!
//! ```sh
//! cargo run --release --example history_store -- [MESSAGES] [BATCH] [USERS]
//! ```
//!
//! Appends MESSAGES (default 1,000,000) direct messages between random pairs of USERS
//! (default 100) to a fresh SQLite database in a scratch directory, BATCH (default 4096) per
//! transaction, the way the store thread writes them (4096 is a full batch; 200 is what
//! 10,000 msg/s gives in the 20 ms batch window). Prints the time per message for every
//! fifth of the run, then the time of a `/history` of 50 messages for a busy conversation
//! and for one with no messages at all (which has to look through the whole index).

use std::time::Instant;

use confab::store::{LogEntry, SqliteStore, Store, To};

fn arg(n: usize, default: usize) -> usize {
    std::env::args().nth(n).map_or(default, |a| a.parse().expect("a whole number"))
}

fn main() {
    let (total, batch, users) = (arg(1, 1_000_000), arg(2, 4096).max(1), arg(3, 100).max(2));
    let dir = tempfile::tempdir().expect("a scratch directory");
    let mut store = SqliteStore::open(dir.path().join("history.db")).expect("a database");
    // xorshift64: the same pairs on every run.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut random = move |below: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % below as u64) as usize
    };
    let names: Vec<String> = (0..users).map(|i| format!("u{i}")).collect();
    let lap_len = (total / 5).max(1);
    let (mut done, mut lap_start) = (0, 0);
    let (mut spent, mut lap) = (0.0, 0.0);
    while done < total {
        let messages: Vec<LogEntry> = (done..done + batch.min(total - done))
            .map(|i| LogEntry {
                id: i as u64 + 1,
                send_id: None,
                sender: names[random(users)].clone(),
                to: To::User(names[random(users)].clone()),
                body: "a message of about the usual length".into(),
                sent_at: 1_700_000_000_000,
            })
            .collect();
        let started = Instant::now();
        store.append_log(&messages, &[]).expect("appending");
        let secs = started.elapsed().as_secs_f64();
        spent += secs;
        lap += secs;
        done += messages.len();
        if done >= lap_start + lap_len || done == total {
            let per = lap * 1e6 / (done - lap_start) as f64;
            println!("messages {lap_start}..{done}: {per:.2} µs per message");
            (lap, lap_start) = (0.0, done);
        }
    }
    println!("all {total}: {:.2} µs per message (batches of {batch})", spent * 1e6 / total as f64);
    for (a, b) in [("u1", "u2"), ("u1", "nobody")] {
        let started = Instant::now();
        let found = store.direct_history(a, b, 50).expect("a query").len();
        let ms = started.elapsed().as_secs_f64() * 1e3;
        println!("/history {a} {b}: {found} messages in {ms:.2} ms");
    }
}
