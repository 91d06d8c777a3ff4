//! The built-in detectors: events per second through all seven, loaded as
//! real `.so` files by plugin-host, as a ratio against baselines measured
//! in the same run, and memory held per 1000 tracked IPs / users / tokens.
//!
//! Run: `cargo bench -p tokenwatch-e2e --bench detectors`
//! (builds the seven detector plugins and the do-nothing probe plugin in
//! release first).
//!
//! Input: three days of the SDK's realistic benign traffic
//! (`detector_sdk::testing::traffic`, 300 users, seed 2024) with attacks
//! mixed in (a brute force, a spray, forged tokens), cut in batches of 1024.
//!
//! - **host, 7 detectors**: `PluginHost::feed` of every batch -> queue ->
//!   worker thread -> ABI views -> each of the seven `.so` in turn; timed
//!   from the first feed until every plugin has seen every event.
//! - **host, do-nothing probe**: the same through one plugin that only
//!   counts (the cost of the host itself).
//! - **direct FFI, 7 detectors**: the same seven `.so` files loaded here
//!   with libloading and their `process` called in a loop on this thread
//!   (ABI views built once per batch): no host queue, no worker thread. (The
//!   detectors cannot also be linked in as Rust: each crate exports the same
//!   C entry symbol.)
//!
//! Memory: each `.so` is fed, through the same direct FFI path, events
//! that each bring a new key (IP, username, jti...), below the cap; the
//! heap the process holds afterwards (glibc `mallinfo2`, which sees the
//! plugin's allocations too) minus before, per 1000 keys.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use detector_api::{
    AlertView, DetectorDescriptor, EntryFn, ErrorBuf, EventBatch, EventView, HostContext, Status,
    StrView, ENTRY_SYMBOL_NUL, STATUS_OK,
};
use detector_sdk::testing::traffic::{self, Rng, Traffic, ATTACK_ID_BASE, SEC};
use detector_sdk::testing::EventData;
use plugin_host::{AlertRecord, EventRecord, HostConfig, HostSink, Lifecycle, PluginHost};

#[repr(C)]
#[derive(Default)]
struct Mallinfo2 {
    arena: usize,
    ordblks: usize,
    smblks: usize,
    hblks: usize,
    hblkhd: usize,
    usmblks: usize,
    fsmblks: usize,
    uordblks: usize,
    fordblks: usize,
    keepcost: usize,
}

extern "C" {
    fn mallinfo2() -> Mallinfo2;
}

/// Bytes of heap in use by the whole process (glibc).
fn heap_in_use() -> usize {
    // SAFETY: plain glibc call without arguments.
    let m = unsafe { mallinfo2() };
    m.uordblks + m.hblkhd
}

const BATCH: usize = 1024;
const ROUNDS: usize = 5;
const PLUGINS: [&str; 7] = [
    "brute-force",
    "password-spray",
    "token-replay",
    "refresh-theft",
    "forged-token",
    "expired-storm",
    "account-anomaly",
];

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

fn record(e: &EventData) -> EventRecord {
    EventRecord {
        id: e.id,
        time_us: e.time_us,
        kind: e.kind.clone(),
        outcome: e.outcome.clone(),
        reason: e.reason.clone(),
        subject: e.subject.clone(),
        username: e.username.clone(),
        client_ip: e.client_ip.clone(),
        user_agent: e.user_agent.clone(),
        method: e.method.clone(),
        path: e.path.clone(),
        jti: e.jti.clone(),
        kid: e.kid.clone(),
        alg: e.alg.clone(),
        token_fp: e.token_fp.clone(),
        source: e.source.clone(),
    }
}

/// Three benign days with a few attacks mixed in.
fn workload() -> Vec<EventData> {
    let days = Traffic {
        days: 3,
        ..Traffic::default()
    }
    .generate();
    let t0 = traffic::START_US + 30 * 3600 * SEC;
    let mut attack = Vec::new();
    for i in 0..200i64 {
        let (kind, reason, ip, user) = match i % 3 {
            0 => (
                "auth.login.failure",
                "bad_password",
                "45.155.205.17",
                "admin".to_string(),
            ),
            1 => (
                "auth.login.failure",
                "unknown_user",
                "185.220.101.33",
                format!("user{i}"),
            ),
            _ => (
                "access.denied",
                "bad_signature",
                "5.188.10.9",
                String::new(),
            ),
        };
        let mut e = traffic::event(ATTACK_ID_BASE + i, t0 + i * SEC, kind, ip, "curl/8.5.0");
        e.reason = Some(reason.into());
        e.username = (!user.is_empty()).then_some(user);
        attack.push(e);
    }
    traffic::mix(&days, &attack)
}

fn host_ns_per_event(dir: &Path, batches: &[Arc<[EventRecord]>], total: u64) -> f64 {
    let tmp = tempfile::tempdir().expect("tempdir");
    let host = PluginHost::start(
        HostConfig {
            plugin_dir: dir.to_owned(),
            private_copy_dir: tmp.path().join("copies"),
            plugin_config: HashMap::new(),
            max_consecutive_errors: 5,
            tick_interval: Duration::from_secs(1),
            watch: false,
        },
        Arc::new(Quiet),
    )
    .expect("start host");
    let done = || {
        let p = host.plugins();
        !p.is_empty() && p.iter().all(|p| p.events_seen >= total)
    };
    let start = Instant::now();
    for b in batches {
        host.feed(Arc::clone(b));
    }
    while !done() {
        std::thread::sleep(Duration::from_micros(200));
    }
    let elapsed = start.elapsed();
    assert!(host
        .metrics_text()
        .contains("tokenwatch_plugin_host_dropped_batches_total 0"));
    host.shutdown();
    elapsed.as_nanos() as f64 / total as f64
}

unsafe extern "C" fn count_alert(_: *const HostContext, _: *const AlertView) -> Status {
    STATUS_OK
}

/// One plugin loaded and created by hand: the host's job without the host.
struct Direct {
    _lib: libloading::Library,
    desc: &'static DetectorDescriptor,
    state: *mut core::ffi::c_void,
}

impl Direct {
    fn load(path: &Path) -> Direct {
        // SAFETY: our own plugin, built just now; the entry returns a static
        // descriptor (checked by the plugin-host tests in depth).
        unsafe {
            let lib = libloading::Library::new(path).expect("load plugin");
            let entry: libloading::Symbol<'_, EntryFn> =
                lib.get(ENTRY_SYMBOL_NUL).expect("entry symbol");
            let desc: &'static DetectorDescriptor = &*entry();
            let mut state = core::ptr::null_mut();
            let mut buf = [0u8; 256];
            let mut err = ErrorBuf {
                ptr: buf.as_mut_ptr(),
                cap: buf.len(),
                len: 0,
            };
            let create = desc.create.expect("create");
            let st = create(StrView::new("{}"), &mut state, &mut err);
            assert_eq!(st, STATUS_OK, "create failed");
            Direct {
                _lib: lib,
                desc,
                state,
            }
        }
    }

    fn process(&mut self, views: &[EventView]) {
        let batch = EventBatch {
            events: views.as_ptr(),
            len: views.len(),
            event_size: core::mem::size_of::<EventView>(),
        };
        let ctx = HostContext {
            struct_size: core::mem::size_of::<HostContext>(),
            host: core::ptr::null_mut(),
            emit_alert: Some(count_alert),
        };
        // SAFETY: views borrow live EventData; state came from create.
        let st = unsafe { (self.desc.process.expect("process"))(self.state, &batch, &ctx) };
        assert_eq!(st, STATUS_OK, "process failed");
    }
}

impl Drop for Direct {
    fn drop(&mut self) {
        // SAFETY: created once, destroyed once.
        unsafe { (self.desc.destroy.expect("destroy"))(self.state) }
    }
}

fn direct_ns_per_event(paths: &[PathBuf], data: &[EventData], total: u64) -> f64 {
    let mut detectors: Vec<Direct> = paths.iter().map(|p| Direct::load(p)).collect();
    let start = Instant::now();
    let mut views = Vec::with_capacity(BATCH);
    for chunk in data.chunks(BATCH) {
        views.clear();
        views.extend(chunk.iter().map(EventData::view));
        for d in &mut detectors {
            d.process(&views);
        }
    }
    start.elapsed().as_nanos() as f64 / total as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Heap held per 1000 keys after `n` events that each bring a new key.
fn bytes_per_1000(path: &Path, n: usize, make: &dyn Fn(usize, &mut Rng) -> EventData) -> f64 {
    let mut rng = Rng::new(7);
    let mut d = Direct::load(path);
    let mut fed = 0;
    let mut held = 0isize;
    let mut views = Vec::with_capacity(4096);
    while fed < n {
        let events: Vec<EventData> = (fed..(fed + 4096).min(n))
            .map(|i| make(i, &mut rng))
            .collect();
        fed += events.len();
        views.clear();
        views.extend(events.iter().map(EventData::view));
        let start = heap_in_use() as isize;
        d.process(&views);
        held += heap_in_use() as isize - start;
    }
    drop(d);
    held as f64 / n as f64 * 1000.0
}

fn ev(i: usize, kind: &str, ip: &str) -> EventData {
    let mut e = traffic::event(
        i as i64,
        traffic::START_US + i as i64 * 1000,
        kind,
        ip,
        "Mozilla/5.0 (X11; Linux x86_64; rv:123.0) Gecko/20100101 Firefox/123.0",
    );
    e.source = "server".into();
    e
}

type Make = Box<dyn Fn(usize, &mut Rng) -> EventData>;

fn memory() {
    const N: usize = 50_000;
    println!("\nheap held per 1000 distinct keys tracked ({N} new keys fed to each, default config, below the cap):");
    let rows: Vec<(&str, &str, Make)> = vec![
        (
            "brute-force",
            "usernames (1 failed login each)",
            Box::new(|i, r| {
                let mut e = ev(i, "auth.login.failure", &traffic::random_ip(r));
                e.reason = Some("bad_password".into());
                e.username = Some(format!("user-{}", r.hex(10)));
                e
            }),
        ),
        (
            "password-spray",
            "client IPs (1 failed login each)",
            Box::new(|i, r| {
                let mut e = ev(i, "auth.login.failure", &traffic::random_ip(r));
                e.reason = Some("bad_password".into());
                e.username = Some("admin".into());
                e
            }),
        ),
        (
            "token-replay",
            "tokens (jti, 1 use each)",
            Box::new(|i, r| {
                let mut e = ev(i, "access.granted", &traffic::random_ip(r));
                e.jti = Some(r.hex(24));
                e.subject = Some("usr_1".into());
                e
            }),
        ),
        (
            "refresh-theft",
            "subjects (1 reuse each: an open incident)",
            Box::new(|i, r| {
                let mut e = ev(i, "refresh.reuse_detected", &traffic::random_ip(r));
                e.outcome = "failure".into();
                e.subject = Some(format!("usr_{}", r.hex(8)));
                e
            }),
        ),
        (
            "forged-token",
            "client IPs (1 malformed token each)",
            Box::new(|i, r| {
                let mut e = ev(i, "access.denied", &traffic::random_ip(r));
                e.reason = Some("malformed".into());
                e
            }),
        ),
        (
            "expired-storm",
            "IPs, each with 1 expired token (2 keys)",
            Box::new(|i, r| {
                let mut e = ev(i, "access.denied", &traffic::random_ip(r));
                e.reason = Some("expired".into());
                e.token_fp = Some(r.hex(16));
                e
            }),
        ),
        (
            "account-anomaly",
            "user profiles (1 login each)",
            Box::new(|i, r| {
                let mut e = ev(i, "auth.login.success", &traffic::random_ip(r));
                e.username = Some(format!("user-{}", r.hex(10)));
                e
            }),
        ),
    ];
    for (name, what, make) in rows {
        let bytes = bytes_per_1000(&so(&name.replace('-', "_")), N, &*make);
        println!("{name:<16} {:>7.1} KiB per 1000 {what}", bytes / 1024.0);
    }
}

fn main() {
    if cfg!(debug_assertions) {
        println!("detectors bench: skipped in a debug build (run `cargo bench -p tokenwatch-e2e --bench detectors`)");
        return;
    }
    let mut args = Vec::new();
    for p in PLUGINS {
        args.push("-p");
        args.push(p);
    }
    build(&args);
    build(&[
        "--manifest-path",
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../crates/plugin-host/tests/fixtures/probe/Cargo.toml"
        ),
    ]);
    let tmp = tempfile::tempdir().expect("tempdir");
    let all_dir = tmp.path().join("all");
    let probe_dir = tmp.path().join("probe");
    std::fs::create_dir(&all_dir).expect("mkdir");
    std::fs::create_dir(&probe_dir).expect("mkdir");
    for p in PLUGINS {
        let f = so(&p.replace('-', "_"));
        std::fs::copy(&f, all_dir.join(f.file_name().expect("name"))).expect("copy plugin");
    }
    let probe = so("tw_probe_detector");
    std::fs::copy(&probe, probe_dir.join(probe.file_name().expect("name"))).expect("copy probe");

    let data = workload();
    let total = data.len() as u64;
    let records: Vec<EventRecord> = data.iter().map(record).collect();
    let batches: Vec<Arc<[EventRecord]>> = records.chunks(BATCH).map(Arc::from).collect();
    drop(records);
    let paths: Vec<PathBuf> = PLUGINS.iter().map(|p| so(&p.replace('-', "_"))).collect();

    println!(
        "{total} events (3 days of benign traffic, 300 users, with attacks mixed in), batches of {BATCH}, median of {ROUNDS} interleaved rounds"
    );
    let (mut all, mut probe_v, mut direct) = (vec![], vec![], vec![]);
    for _ in 0..ROUNDS {
        all.push(host_ns_per_event(&all_dir, &batches, total));
        probe_v.push(host_ns_per_event(&probe_dir, &batches, total));
        direct.push(direct_ns_per_event(&paths, &data, total));
    }
    let (a, p, d) = (median(all), median(probe_v), median(direct));
    println!(
        "host, 7 detectors (.so)   {a:7.1} ns/event  {:6.2} M events/s",
        1e3 / a
    );
    println!(
        "host, do-nothing probe    {p:7.1} ns/event  {:6.2} M events/s",
        1e3 / p
    );
    println!(
        "direct FFI, 7 detectors   {d:7.1} ns/event  {:6.2} M events/s",
        1e3 / d
    );
    println!(
        "ratios: 7 detectors / probe through the host {:.2}x; host / direct FFI for the 7 detectors {:.2}x; host overhead {:.1} ns/event",
        a / p,
        a / d,
        a - d
    );
    println!("\nper detector, direct FFI (median of {ROUNDS}):");
    for (name, path) in PLUGINS.iter().zip(&paths) {
        let v: Vec<f64> = (0..ROUNDS)
            .map(|_| direct_ns_per_event(std::slice::from_ref(path), &data, total))
            .collect();
        let ns = median(v);
        println!("{name:<16} {ns:7.1} ns/event  {:6.2} M events/s", 1e3 / ns);
    }
    memory();
}
