//! Detection through the process boundary against detection in process,
//! measured in the same run on the same record.
//!
//! Run: `cargo bench -p tokenwatch-e2e --bench isolation`
//! (builds the seven detector plugins and the `tokenwatch` binary in release first).
//!
//! Input: ten days of the SDK's realistic benign traffic (300 users) written
//! into a real `audit.db`. Both paths read that record in id order and hand
//! every event to all seven built-in detectors; each is timed until every
//! detector has analysed every event.
//!
//! - **in process** (what `serve` did before detection moved out): a feeder
//!   reads `events_after` in batches of 4096 and hands them to plugin-host's
//!   `PluginHost` in this process.
//! - **detection process**: `tokenwatch detect-worker` (what `serve` starts),
//!   each detector's cursor set to 0 in the record; one reader thread reads
//!   the record and offers each batch to the seven plugin threads, which
//!   report their results as JSON lines on stdout. Timed from its first
//!   `loaded` report to the last result that reaches the newest event.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use audit_store::{AuditReader, AuditStore, DetectionCommit, NewEvent, Outcome, StoreConfig};
use detector_sdk::testing::traffic::Traffic;
use plugin_host::{AlertRecord, EventRecord, HostConfig, HostSink, Lifecycle, PluginHost};

const ROUNDS: usize = 3;
const PLUGINS: [&str; 7] = [
    "brute-force",
    "password-spray",
    "token-replay",
    "refresh-theft",
    "forged-token",
    "expired-storm",
    "account-anomaly",
];

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let exe = std::env::current_exe().expect("current_exe");
            exe.ancestors().nth(3).expect("target dir").to_owned()
        })
}

fn build(args: &[&str]) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let ok = Command::new(cargo)
        .args(["build", "--quiet", "--release"])
        .args(args)
        .env("CARGO_TARGET_DIR", target_dir())
        .status()
        .expect("run cargo")
        .success();
    assert!(ok, "building {args:?} failed");
}

fn so(lib: &str) -> PathBuf {
    target_dir().join("release").join(format!(
        "{}{lib}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ))
}

struct Quiet;
impl HostSink for Quiet {
    fn alert(&self, _: AlertRecord) {}
    fn lifecycle(&self, e: Lifecycle) {
        if let Lifecycle::Failed { reason, .. } = e {
            panic!("plugin refused in benchmark: {reason}");
        }
    }
}

fn record(e: audit_store::StoredEvent) -> EventRecord {
    EventRecord {
        id: e.id,
        time_us: e.time_us,
        kind: e.kind,
        outcome: e.outcome.as_str().to_string(),
        reason: e.reason,
        subject: e.subject,
        username: e.username,
        client_ip: e.client_ip,
        user_agent: e.user_agent,
        method: e.method,
        path: e.path,
        jti: e.jti,
        kid: e.kid,
        alg: e.alg,
        token_fp: e.token_fp,
        source: e.source,
    }
}

/// Writes the workload into a fresh record; returns its config and the newest id.
fn fill(dir: &Path) -> (StoreConfig, i64) {
    let mut cfg = StoreConfig::in_data_dir(dir);
    cfg.synchronous = audit_store::Synchronous::Normal;
    cfg.integrity_interval = None;
    let store = AuditStore::open(cfg.clone()).expect("open store");
    let w = store.writer();
    let data = Traffic {
        days: 10,
        ..Traffic::default()
    }
    .generate();
    for chunk in data.chunks(4096) {
        let evs = chunk
            .iter()
            .map(|e| {
                let outcome = if e.outcome == "failure" {
                    Outcome::Failure
                } else {
                    Outcome::Success
                };
                let mut ev = NewEvent::new(&e.kind, outcome);
                ev.time_us = e.time_us;
                ev.reason.clone_from(&e.reason);
                ev.subject.clone_from(&e.subject);
                ev.username.clone_from(&e.username);
                ev.client_ip.clone_from(&e.client_ip);
                ev.user_agent.clone_from(&e.user_agent);
                ev.method.clone_from(&e.method);
                ev.path.clone_from(&e.path);
                ev.jti.clone_from(&e.jti);
                ev.kid.clone_from(&e.kid);
                ev.alg.clone_from(&e.alg);
                ev.token_fp.clone_from(&e.token_fp);
                ev.source.clone_from(&e.source);
                ev
            })
            .collect();
        w.record_many_blocking(evs).expect("insert events");
    }
    for p in PLUGINS {
        w.submit_detection(DetectionCommit {
            detector: p.into(),
            last_event_id: 0,
            alerts: Vec::new(),
        })
        .expect("queue")
        .wait()
        .expect("cursor");
    }
    let head = store
        .reader()
        .expect("reader")
        .max_event_id()
        .expect("head");
    store.shutdown().expect("close store");
    (cfg, head)
}

fn in_process(plugin_dir: &Path, db: &Path, total: u64) -> f64 {
    let tmp = tempfile::tempdir().expect("tempdir");
    let host = PluginHost::start(
        HostConfig {
            plugin_dir: plugin_dir.to_owned(),
            private_copy_dir: tmp.path().join("copies"),
            plugin_config: HashMap::new(),
            max_consecutive_errors: 5,
            tick_interval: Duration::from_secs(1),
            watch: false,
        },
        Arc::new(Quiet),
    )
    .expect("start host");
    let reader = AuditReader::open(db).expect("reader");
    let start = Instant::now();
    let mut cursor = 0;
    loop {
        let events = reader.events_after(cursor, 4096).expect("read");
        let Some(last) = events.last().map(|e| e.id) else {
            break;
        };
        let batch: Arc<[EventRecord]> = events.into_iter().map(record).collect();
        while !host.feed_wait(batch.clone(), Duration::from_millis(250)) {}
        cursor = last;
    }
    while !host.plugins().iter().all(|p| p.events_seen >= total) {
        std::thread::sleep(Duration::from_micros(200));
    }
    let elapsed = start.elapsed();
    host.shutdown();
    elapsed.as_nanos() as f64 / total as f64
}

fn detection_process(exe: &Path, plugin_dir: &Path, db: &Path, head: i64, total: u64) -> f64 {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(exe)
        .arg("detect-worker")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start detect-worker");
    let mut stdin = child.stdin.take().expect("stdin");
    let init = serde_json::json!({
        "op": "init", "audit_db": db, "private_copy_dir": tmp.path().join("copies"),
        "plugin_config": {}, "tick_ms": 1000, "budget_ms": 1000, "limit_ms": 5000,
    });
    writeln!(stdin, "{init}").expect("init");
    for (slot, p) in PLUGINS.iter().enumerate() {
        let file = plugin_dir.join(so(&p.replace('-', "_")).file_name().expect("name"));
        let load = serde_json::json!({ "op": "load", "slot": slot, "file": file });
        writeln!(stdin, "{load}").expect("load");
    }
    stdin.flush().expect("flush");
    let out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut start = None;
    let mut done = std::collections::HashSet::new();
    let mut events = 0u64;
    for line in out.lines() {
        let v: serde_json::Value = serde_json::from_str(&line.expect("line")).expect("json");
        match v["t"].as_str() {
            Some("loaded") => {
                start.get_or_insert_with(Instant::now);
            }
            Some("refused") => panic!("refused: {v}"),
            Some("result") => {
                events += v["events"].as_u64().unwrap_or(0);
                if v["cursor"].as_i64() >= Some(head) {
                    done.insert(v["slot"].as_u64());
                }
            }
            _ => {}
        }
        if done.len() == PLUGINS.len() {
            break;
        }
    }
    let elapsed = start.expect("a plugin loaded").elapsed();
    drop(stdin);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        events,
        total * PLUGINS.len() as u64,
        "every plugin saw every event"
    );
    elapsed.as_nanos() as f64 / total as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    if cfg!(debug_assertions) {
        println!("isolation bench: skipped in a debug build (run `cargo bench -p tokenwatch-e2e --bench isolation`)");
        return;
    }
    let mut args = vec!["-p", "tokenwatch"];
    for p in PLUGINS {
        args.push("-p");
        args.push(p);
    }
    build(&args);
    let exe = target_dir().join("release").join("tokenwatch");
    let tmp = tempfile::tempdir().expect("tempdir");
    let plugin_dir = tmp.path().join("plugins");
    std::fs::create_dir(&plugin_dir).expect("mkdir");
    for p in PLUGINS {
        let f = so(&p.replace('-', "_"));
        std::fs::copy(&f, plugin_dir.join(f.file_name().expect("name"))).expect("copy plugin");
    }
    let data = tmp.path().join("data");
    let (cfg, head) = fill(&data);
    // Ids run from 1 without gaps in a fresh record.
    let total = head as u64;
    println!(
        "{total} events in audit.db, 7 built-in detectors, median of {ROUNDS} interleaved rounds"
    );
    let (mut inproc, mut outproc) = (vec![], vec![]);
    for _ in 0..ROUNDS {
        inproc.push(in_process(&plugin_dir, &cfg.db_path, total));
        outproc.push(detection_process(
            &exe,
            &plugin_dir,
            &cfg.db_path,
            head,
            total,
        ));
    }
    let (i, o) = (median(inproc), median(outproc));
    println!(
        "in process (feeder + plugin-host) {i:7.1} ns/event  {:6.2} M events/s",
        1e3 / i
    );
    println!(
        "detection process (detect-worker) {o:7.1} ns/event  {:6.2} M events/s",
        1e3 / o
    );
    println!(
        "ratio: the detection process runs at {:.2}x the in-process rate (goal: at least 0.5)",
        i / o
    );
}
