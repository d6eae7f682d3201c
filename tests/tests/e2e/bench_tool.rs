//! The load tool `relay-bench` against a real relay: every subcommand runs, and what it
//! reports (deliveries, latency samples, connections, requests) matches what was done.

use anyhow::{ensure, Context, Result};
use relay_tests::{demo_config, TestRelay};
use serde_json::Value;

/// Run relay-bench with `args`, appending its result to a fresh JSON file; returns the result.
async fn bench(args: &[String]) -> Result<Value> {
    let dir = tempfile::tempdir()?;
    let json = dir.path().join("out.jsonl");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_relay-bench"))
        .args(args)
        .arg("--json")
        .arg(&json)
        .args(["--timeout", "60", "--server-pid"])
        .arg(std::process::id().to_string())
        .output()
        .await?;
    ensure!(
        out.status.success(),
        "relay-bench {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&json)?;
    let line = text.lines().last().context("no JSON line")?;
    Ok(serde_json::from_str(line)?)
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_bench_measures_what_it_drives() -> Result<()> {
    let relay = TestRelay::start(&demo_config("outbound_queue = 4096")).await?;
    let (ws, http, udp) = (relay.addr("ws"), relay.addr("http"), relay.addr("udp"));

    // Fan-out over HTTP: 20 clients in 2 rooms, 200 pushes to random rooms (10 members each).
    let r = bench(&s(&[
        "fanout",
        "--url",
        &format!("ws://{ws}/?rooms={{room}}"),
        "--clients",
        "20",
        "--rooms",
        "2",
        "--push",
        &format!("http://{http}/push"),
        "--messages",
        "200",
        "--pushers",
        "4",
        "--sources",
        "2",
    ]))
    .await?;
    assert_eq!(r["pushes"], 200, "{r}");
    assert_eq!(r["expected"], 2000, "{r}");
    assert_eq!(r["delivered"], 2000, "{r}");
    assert_eq!(
        r["latency_ms"]["samples"], 2000,
        "every delivery timed: {r}"
    );
    assert!(r["latency_ms"]["p50"].as_f64().unwrap_or(-1.0) > 0.0, "{r}");
    assert_eq!(r["errors"]["connect"], 0, "{r}");
    assert_eq!(r["errors"]["push"], 0, "{r}");
    assert!(r["server"]["rss_kib_end"].as_u64().unwrap_or(0) > 0, "{r}");

    // A fixed rate: 50 pushes/s for 40 pushes takes most of a second.
    let r = bench(&s(&[
        "fanout",
        "--url",
        &format!("ws://{ws}/?rooms={{room}}"),
        "--clients",
        "5",
        "--push",
        &format!("http://{http}/push"),
        "--rate",
        "50",
        "--messages",
        "40",
        "--pushers",
        "2",
    ]))
    .await?;
    assert_eq!(r["delivered"], 200, "{r}");
    let elapsed = r["elapsed_s"].as_f64().unwrap_or(0.0);
    assert!((0.6..5.0).contains(&elapsed), "40 pushes at 50/s: {r}");

    // UDP pushes to one subscriber.
    let r = bench(&s(&[
        "fanout",
        "--url",
        &format!("ws://{ws}/?rooms={{room}}"),
        "--clients",
        "1",
        "--push",
        &format!("udp://{udp}"),
        "--pushers",
        "1",
        "--window",
        "8",
        "--messages",
        "100",
    ]))
    .await?;
    assert_eq!(r["delivered"], 100, "{r}");

    // Idle wss connections from two processes.
    let r = bench(
        &[
            s(&[
                "idle",
                "--url",
                &format!(
                    "wss://localhost:{}/?rooms={{room}}",
                    relay.addr("wss").port()
                ),
                "--clients",
                "30",
                "--procs",
                "2",
                "--settle",
                "0.2",
                "--ca",
            ]),
            vec![relay.ca_path().display().to_string()],
        ]
        .concat(),
    )
    .await?;
    assert_eq!(r["connected"], 30, "{r}");
    assert_eq!(r["failed"], 0, "{r}");

    // Handshake storm, and a refused one is counted as a failure with its reason.
    let r = bench(&s(&[
        "handshakes",
        "--addr",
        &ws.to_string(),
        "--count",
        "50",
        "--concurrency",
        "4",
    ]))
    .await?;
    assert_eq!(r["ok"], 50, "{r}");
    let r = bench(&s(&[
        "handshakes",
        "--addr",
        &http.to_string(),
        "--count",
        "3",
    ]))
    .await?;
    assert_eq!(r["failed"], 3, "the HTTP listener refuses upgrades: {r}");
    assert!(
        r["first_error"].as_str().unwrap_or("").contains("400"),
        "{r}"
    );

    // HTTP ingress requests.
    let r = bench(&s(&[
        "push",
        "--push",
        &format!("http://{http}/push"),
        "--count",
        "300",
        "--concurrency",
        "4",
    ]))
    .await?;
    assert_eq!(r["ok"], 300, "{r}");
    assert_eq!(r["failed"], 0, "{r}");
    Ok(())
}
