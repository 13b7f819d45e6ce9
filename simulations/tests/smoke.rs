//! The simulator end to end: 32 hosts in one `distribus-sim` process with
//! 10,000 peers, churn, finds, messages and publishes, which must all
//! succeed (`--check`). Speed is not checked here (docs/PERFORMANCE.md).
//!
//! Being a test of this package also makes `cargo test --release` build
//! `distribus-sim` and `distribus-fleet` with the same features as the
//! tests, so CI's fleet runs need no second build of the library.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

/// Upper bound of the run (it takes about 20 s on 2 cores).
const LIMIT: Duration = Duration::from_secs(300);

#[test]
fn thirty_two_hosts_lose_nothing_under_churn() {
    let child = Command::new(env!("CARGO_BIN_EXE_distribus-sim"))
        .args([
            "--hosts",
            "32",
            "--peers",
            "10000",
            "--messages",
            "10000",
            "--finds",
            "1000",
            "--publishes",
            "100",
            "--churn",
            "2",
            "--check",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start distribus-sim");
    // Read the output on a thread (a full pipe would stall the child) and
    // wait at most LIMIT for it.
    let pid = child.id();
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    let Ok(out) = finished.recv_timeout(LIMIT) else {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        panic!("distribus-sim did not finish within {LIMIT:?}");
    };
    let out = out.expect("read distribus-sim's output");
    let status = out.status;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        status.success(),
        "distribus-sim failed ({status}):\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The report names every phase it checked.
    for phase in ["find", "message", "publish"] {
        assert!(stdout.contains(phase), "no {phase} figures in:\n{stdout}");
    }
}

/// The committed sweep's charts can be drawn again from its results
/// alone: one SVG per chart, each with a line per series (peer counts).
#[test]
fn a_sweeps_charts_are_drawn_from_its_results() {
    let out = tempfile::tempdir().expect("a temporary directory");
    let sweep = concat!(env!("CARGO_MANIFEST_DIR"), "/results/sweep.json");
    let status = Command::new(env!("CARGO_BIN_EXE_distribus-sim"))
        .arg("--charts-from")
        .arg(sweep)
        .arg("--out")
        .arg(out.path())
        .status()
        .expect("run distribus-sim");
    assert!(
        status.success(),
        "distribus-sim --charts-from failed: {status}"
    );
    for chart in [
        "register.svg",
        "find.svg",
        "memory.svg",
        "register-hosts.svg",
        "memory-hosts.svg",
        "join.svg",
        "idle.svg",
    ] {
        let svg = std::fs::read_to_string(out.path().join(chart))
            .unwrap_or_else(|e| panic!("{chart} was not drawn: {e}"));
        // Each series is a polyline and is named in the legend.
        assert!(
            svg.matches("<polyline").count() >= 3,
            "{chart}: too few lines"
        );
        assert!(
            svg.contains("peers") || svg.contains("hosts"),
            "{chart}: no legend"
        );
    }
}
