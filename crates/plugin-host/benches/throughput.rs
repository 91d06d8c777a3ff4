//! Events per second through the plugin host, and the host's cost per event
//! as a ratio against calling the same detector as a plain Rust function,
//! both measured in this run (rounds interleaved, median reported).
//!
//! Run: `cargo bench -p plugin-host --bench throughput`
//! (builds the probe and example-threshold plugins in release first).
//!
//! Host path: `PluginHost::feed` of 1024-event batches -> queue -> worker
//! thread -> ABI views -> FFI call into the .so -> counters; timed from the
//! first feed until the plugin has seen every event.
//! Baseline: `Detector::process` on the same events through the SDK's
//! in-process path (views built once), no host, no FFI.

#[path = "../tests/fixtures/probe/src/logic.rs"]
mod logic;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use detector_sdk::testing::{collect, BatchBuf, EventData};
use detector_sdk::Detector;
use plugin_host::{AlertRecord, EventRecord, HostConfig, HostSink, Lifecycle, PluginHost};

const BATCH: usize = 1024;
const BATCHES: usize = 2000;
const ROUNDS: usize = 5;

struct Quiet;
impl HostSink for Quiet {
    fn alert(&self, _: AlertRecord) {}
    fn lifecycle(&self, e: Lifecycle) {
        if let Lifecycle::Failed { reason, .. } = e {
            panic!("plugin refused in benchmark: {reason}");
        }
    }
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let exe = std::env::current_exe().expect("current_exe");
            exe.ancestors().nth(3).expect("target dir").to_owned()
        })
}

fn build(args: &[&str], lib: &str) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let ok = Command::new(cargo)
        .args(["build", "--quiet", "--release"])
        .args(args)
        .env("CARGO_TARGET_DIR", target_dir())
        .status()
        .expect("run cargo")
        .success();
    assert!(ok, "building {lib} failed");
    target_dir().join("release").join(format!(
        "{}{lib}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ))
}

fn events() -> Vec<EventRecord> {
    (0..BATCH as i64)
        .map(|i| EventRecord {
            id: i,
            time_us: 1_700_000_000_000_000 + i,
            kind: if i % 4 == 0 {
                "auth.login.failure"
            } else {
                "access.granted"
            }
            .into(),
            outcome: if i % 4 == 0 { "failure" } else { "success" }.into(),
            reason: (i % 4 == 0).then(|| "bad_password".into()),
            subject: Some(format!("user{}", i % 97)),
            username: Some(format!("user{}", i % 97)),
            client_ip: Some(format!("10.0.{}.{}", i % 7, i % 251)),
            user_agent: Some("python-requests/2.31".into()),
            method: Some("GET".into()),
            path: Some("/api/v1/me".into()),
            jti: Some(format!("jti-{i:08}")),
            kid: Some("k1".into()),
            alg: Some("RS256".into()),
            token_fp: Some("ab12cd34ef56".into()),
            source: "server".into(),
        })
        .collect()
}

fn as_data(r: &EventRecord) -> EventData {
    EventData {
        id: r.id,
        time_us: r.time_us,
        kind: r.kind.clone(),
        outcome: r.outcome.clone(),
        reason: r.reason.clone(),
        subject: r.subject.clone(),
        username: r.username.clone(),
        client_ip: r.client_ip.clone(),
        user_agent: r.user_agent.clone(),
        method: r.method.clone(),
        path: r.path.clone(),
        jti: r.jti.clone(),
        kid: r.kid.clone(),
        alg: r.alg.clone(),
        token_fp: r.token_fp.clone(),
        source: r.source.clone(),
    }
}

/// Nanoseconds per event through a running host.
fn host_ns_per_event(
    so: &Path,
    config: serde_json::Value,
    name: &str,
    batch: &Arc<[EventRecord]>,
) -> f64 {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("plugins");
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::copy(so, dir.join(so.file_name().expect("file name"))).expect("copy plugin");
    let host = PluginHost::start(
        HostConfig {
            plugin_dir: dir,
            private_copy_dir: tmp.path().join("copies"),
            plugin_config: HashMap::from([(name.to_owned(), config)]),
            max_consecutive_errors: 5,
            tick_interval: Duration::from_secs(3600),
            watch: false,
        },
        Arc::new(Quiet),
    )
    .expect("start host");
    let total = (BATCH * BATCHES) as u64;
    let seen = || host.plugins().first().map_or(0, |p| p.events_seen);
    let start = Instant::now();
    for _ in 0..BATCHES {
        host.feed(Arc::clone(batch));
    }
    while seen() < total {
        std::thread::sleep(Duration::from_micros(200));
    }
    let elapsed = start.elapsed();
    assert!(host
        .metrics_text()
        .contains("tokenwatch_plugin_host_dropped_batches_total 0"));
    host.shutdown();
    elapsed.as_nanos() as f64 / total as f64
}

/// Nanoseconds per event calling the detector directly.
fn direct_ns_per_event<D: Detector>(config: &str, data: &[EventData]) -> f64 {
    let mut d = D::new(config).expect("detector config");
    let buf = BatchBuf::new(data);
    let start = Instant::now();
    for _ in 0..BATCHES {
        let (r, alerts) = collect(|out| d.process(&buf.batch(), out));
        r.expect("process");
        std::hint::black_box(alerts);
    }
    start.elapsed().as_nanos() as f64 / (BATCH * BATCHES) as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn report(label: &str, host: Vec<f64>, direct: Vec<f64>) {
    let (h, d) = (median(host), median(direct));
    println!(
        "{label:<18} host {h:7.1} ns/event ({:6.2} M events/s) | direct {d:7.1} ns/event ({:7.2} M events/s) | host/direct {:6.2}x | host overhead {:5.1} ns/event",
        1e3 / h,
        1e3 / d,
        h / d,
        h - d
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing
    // useful either way, and this bench is only meaningful in release.
    if cfg!(debug_assertions) {
        println!("throughput bench: skipped in a debug build (run `cargo bench -p plugin-host`)");
        return;
    }
    let probe = build(
        &[
            "--manifest-path",
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/probe/Cargo.toml"
            ),
        ],
        "tw_probe_detector",
    );
    let threshold = build(&["-p", "example-threshold"], "example_threshold");
    let records = events();
    let batch: Arc<[EventRecord]> = Arc::from(records.clone());
    let data: Vec<EventData> = records.iter().map(as_data).collect();
    // High threshold: the detector does its full per-event work (hash map
    // per failing IP) without the alert path dominating.
    let tcfg = serde_json::json!({"threshold": 1_000_000, "window_secs": 60});

    println!("batches of {BATCH} events, {BATCHES} batches per measurement, median of {ROUNDS} interleaved rounds");
    let (mut hp, mut dp, mut ht, mut dt) = (vec![], vec![], vec![], vec![]);
    for _ in 0..ROUNDS {
        hp.push(host_ns_per_event(
            &probe,
            serde_json::json!({}),
            "rust-probe",
            &batch,
        ));
        dp.push(direct_ns_per_event::<logic::Probe>("{}", &data));
        ht.push(host_ns_per_event(
            &threshold,
            tcfg.clone(),
            "example-threshold",
            &batch,
        ));
        dt.push(direct_ns_per_event::<example_threshold::Threshold>(
            &tcfg.to_string(),
            &data,
        ));
    }
    report("do-nothing probe", hp, dp);
    report("example-threshold", ht, dt);
}
