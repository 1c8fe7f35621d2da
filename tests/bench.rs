//! A smoke run of `confab-bench`: a few clients for a fraction of a second per workload, to
//! show the benchmark still runs end to end (Confab plaintext and over TLS, and ngIRCd too
//! when it is installed). It
//! checks that figures come out, never what they are: timing belongs to the benchmark.

use std::process::Command;

#[test]
fn the_benchmark_runs_every_workload() {
    let out = Command::new(env!("CARGO_BIN_EXE_confab-bench"))
        .args(["--smoke", "--tls", "--confab-server", env!("CARGO_BIN_EXE_confab-server")])
        .output()
        .expect("running confab-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "confab-bench failed:\n{stderr}");
    for workload in ["direct, N = 10", "1000 msg/s, N = 10", "fan-out, group of 5", "idle, N = 20"]
    {
        assert!(stdout.contains(&format!("| {workload} |")), "no {workload} in:\n{stdout}");
    }
    assert!(stdout.contains("| server CPU µs per delivery |"), "{stdout}");
    assert!(stdout.contains("| RSS per connection KB |"), "{stdout}");
    assert!(stdout.contains("| Confab | Confab TLS |"), "no TLS column in:\n{stdout}");
    let tls_rate = stdout.lines().find(|l| l.starts_with("| 1000 msg/s, N = 10 | deliveries/s |"));
    let cells: Vec<&str> = tls_rate.expect("the paced row").split('|').map(str::trim).collect();
    assert!(cells[4].parse::<f64>().is_ok_and(|r| r > 0.0), "Confab TLS delivered: {cells:?}");
}
