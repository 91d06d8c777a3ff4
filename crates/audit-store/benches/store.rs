//! Audit store benchmarks (plain binary: each figure is a ratio against a baseline
//! measured in the same run, because these machines are noisy).
//!
//! ```text
//! cargo bench -p audit-store --bench store -- insert   # writer vs raw batched INSERT
//! cargo bench -p audit-store --bench store -- export   # 1M rows to CSV, peak RSS
//! cargo bench -p audit-store --bench store -- query    # latencies at 10M events
//! ```
//! The 10M-event database is generated once under `$AUDIT_BENCH_DIR` (default
//! `$HOME/.cache/tokenwatch-audit-bench-10m`) and reused by later runs.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use audit_store::*;
use rusqlite::{params, Connection};

/// Counts live heap bytes and their peak while `TRACK` is on (the export figures):
/// a direct measure of "flat memory" that page-cache and allocator reuse cannot blur.
struct Counting;
static TRACK: AtomicBool = AtomicBool::new(false);
static LIVE: AtomicI64 = AtomicI64::new(0);
static PEAK: AtomicI64 = AtomicI64::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if TRACK.load(Ordering::Relaxed) {
            let now = LIVE.fetch_add(l.size() as i64, Ordering::Relaxed) + l.size() as i64;
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        if TRACK.load(Ordering::Relaxed) {
            LIVE.fetch_sub(l.size() as i64, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        if TRACK.load(Ordering::Relaxed) {
            let d = new as i64 - l.size() as i64;
            let now = LIVE.fetch_add(d, Ordering::Relaxed) + d;
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f` with heap counting on; returns its result and the peak of Rust heap bytes
/// live at once above the level when it started (net of frees). SQLite allocates with
/// its own malloc, outside this count: its page cache is bounded by `cache_size`, and
/// the process-wide VmHWM figure printed beside this one covers it.
fn peak_heap<T>(f: impl FnOnce() -> T) -> (T, u64) {
    LIVE.store(0, Ordering::Relaxed);
    PEAK.store(0, Ordering::Relaxed);
    TRACK.store(true, Ordering::Relaxed);
    let v = f();
    TRACK.store(false, Ordering::Relaxed);
    (v, PEAK.load(Ordering::Relaxed).max(0) as u64)
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let want = |s: &str| args.is_empty() || args.iter().any(|a| a == s || a == "all");
    if want("insert") {
        insert();
    }
    if want("export") {
        export();
    }
    if want("query") {
        query();
    }
}

const T0: i64 = 1_700_006_400_000_000; // 2023-11-15T00:00:00Z

fn event(i: i64) -> NewEvent {
    let fail = i % 5 == 0;
    let kinds = [
        kinds::TOKEN_VERIFIED,
        kinds::ACCESS_GRANTED,
        kinds::TOKEN_ISSUED,
        kinds::AUTH_LOGIN_SUCCESS,
    ];
    let mut e = NewEvent::new(
        if fail {
            kinds::AUTH_LOGIN_FAILURE
        } else {
            kinds[(i % 4) as usize]
        },
        if fail {
            Outcome::Failure
        } else {
            Outcome::Success
        },
    )
    .with_client_ip(ip(i))
    .with_username(user(i))
    .with_subject(format!("sub-{}", (i * 7919) % 20_000))
    .with_user_agent("Mozilla/5.0 (X11; Linux x86_64) python-requests/2.31")
    .with_method("POST")
    .with_path("/oauth/token")
    .with_jti(format!(
        "{:016x}",
        (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
    ))
    .with_kid("k-2024-01")
    .with_alg("ES256")
    .with_token_fp(format!(
        "{:012x}",
        (i as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F) >> 16
    ));
    if fail {
        e = e.with_reason(REASONS[(i / 5 % REASONS.len() as i64) as usize]);
    }
    e
}

const REASONS: &[&str] = &[
    "bad_password",
    "expired",
    "bad_signature",
    "unknown_kid",
    "alg_not_allowed",
    "revoked",
    "malformed",
    "audience_mismatch",
];

/// Half of the traffic from 500 hot IPs, the rest spread over 50 000.
fn ip(i: i64) -> String {
    let h = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 20;
    let n = if h.is_multiple_of(2) {
        h % 500
    } else {
        h % 50_000
    };
    format!("10.{}.{}.{}", n >> 16 & 255, n >> 8 & 255, n & 255)
}

fn user(i: i64) -> String {
    let h = (i as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F) >> 24;
    format!(
        "user{}",
        if h.is_multiple_of(3) {
            h % 200
        } else {
            h % 20_000
        }
    )
}

fn cfg(dir: &Path) -> StoreConfig {
    let mut c = StoreConfig::in_data_dir(dir);
    c.checkpoint_interval = Duration::from_secs(3600);
    // Benches load rows raw, with placeholder MACs: the running chain check would
    // (rightly) record them as damage, and its event would change what is measured.
    c.integrity_interval = None;
    c
}

// ---------------------------------------------------------------- insert

const RAW_INSERT: &str =
    "INSERT INTO events (id, time_us, kind, outcome, reason, subject, username, client_ip,
    user_agent, method, path, jti, kid, alg, token_fp, source, detail, content_mac, hash)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)";

fn raw_insert(conn: &mut Connection, evs: &[NewEvent], first_id: i64, batch: usize) {
    let zero = [0u8; 32];
    for (c, chunk) in evs.chunks(batch).enumerate() {
        let tx = conn.transaction().unwrap();
        {
            let mut st = tx.prepare_cached(RAW_INSERT).unwrap();
            for (k, e) in chunk.iter().enumerate() {
                let id = first_id + (c * batch + k) as i64;
                st.execute(params![
                    id,
                    if e.time_us == 0 {
                        T0 + id * 1000
                    } else {
                        e.time_us
                    },
                    e.kind,
                    e.outcome.as_str(),
                    e.reason,
                    e.subject,
                    e.username,
                    e.client_ip,
                    e.user_agent,
                    e.method,
                    e.path,
                    e.jti,
                    e.kid,
                    e.alg,
                    e.token_fp,
                    e.source,
                    "null",
                    &zero[..],
                    &zero[..]
                ])
                .unwrap();
            }
        }
        tx.commit().unwrap();
    }
}

/// The secondary indexes the record carried inline before schema version 3 (they now
/// live in the derived index): the "before" layout, for comparison.
const INLINE_INDEXES: &str = "
CREATE INDEX events_time ON events(time_us);
CREATE INDEX events_kind_time ON events(kind, time_us);
CREATE INDEX events_outcome_time ON events(outcome, time_us);
CREATE INDEX events_reason_time ON events(reason, time_us) WHERE reason IS NOT NULL;
CREATE INDEX events_subject_time ON events(subject, time_us) WHERE subject IS NOT NULL;
CREATE INDEX events_username_time ON events(username, time_us) WHERE username IS NOT NULL;
CREATE INDEX events_ip_time ON events(client_ip, time_us) WHERE client_ip IS NOT NULL;
CREATE INDEX events_jti ON events(jti) WHERE jti IS NOT NULL;";

fn raw_rate(evs: &[NewEvent], inline_indexes: bool) -> f64 {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let c = cfg(dir.path());
    AuditStore::open(c.clone()).unwrap().shutdown().unwrap();
    let mut conn = Connection::open(&c.db_path).unwrap();
    if inline_indexes {
        conn.execute_batch(INLINE_INDEXES).unwrap();
    }
    conn.pragma_update(None, "synchronous", "FULL").unwrap();
    conn.pragma_update(None, "cache_size", -65_536).unwrap();
    let t = Instant::now();
    raw_insert(&mut conn, evs, 1, 1000);
    evs.len() as f64 / t.elapsed().as_secs_f64()
}

fn insert() {
    const N: i64 = 200_000;
    const PRODUCERS: i64 = 4;
    println!("== insert: {N} events, synchronous=FULL ==");
    let evs: Vec<NewEvent> = (0..N).map(event).collect();

    // Baseline: one connection, batched INSERTs of 1000 into the record table, no
    // hashing, no queue, no index.
    let raw = raw_rate(&evs, false);
    println!("raw batched INSERT (1000/tx):        {raw:>10.0} events/s");
    // The layout before version 3: the same loop with the 8 query indexes inline.
    let inline = raw_rate(&evs, true);
    println!(
        "  (same, with the 8 query indexes inline as before v3: {inline:.0} events/s = {:.2} of raw)",
        inline / raw
    );

    // The writer: 4 producer threads, each keeping up to IN_FLIGHT acks in flight (like
    // concurrent requests each waiting for its commit).
    // The indexer runs beside it at a lower CPU priority.
    let (writer, indexed) = writer_rate(&evs, PRODUCERS, Synchronous::Full, false);
    println!(
        "writer, {PRODUCERS} producers x {IN_FLIGHT} in flight:  {writer:>10.0} events/s  = {:.2} of raw",
        writer / raw
    );
    println!(
        "  written and indexed (until index_now returns): {indexed:>10.0} events/s  = {:.2} of raw",
        indexed / raw
    );
    // The writer's own capacity: the indexer waits until asked. Five runs, because on a
    // small VM the kernel's writeback of the previous run's pages moves a single one a lot.
    let mut runs: Vec<(f64, f64)> = (0..5)
        .map(|_| writer_rate(&evs, PRODUCERS, Synchronous::Full, true))
        .collect();
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (alone, _) = runs[2];
    println!(
        "writer, same, index deferred, median of 5: {alone:>10.0} events/s  = {:.2} of raw  (runs {:.0}..{:.0})",
        alone / raw,
        runs[0].0,
        runs[4].0
    );
    let mut idx: Vec<f64> = runs.iter().map(|r| r.1).collect();
    idx.sort_by(f64::total_cmp);
    println!(
        "  then the indexer alone, median:      {:>10.0} events/s  = {:.2} of raw",
        idx[2],
        idx[2] / raw
    );
    // The same with synchronous=NORMAL: WAL commits without an fsync each (an
    // acknowledged event survives a tokenwatch crash, not a power loss).
    let (normal, _) = writer_rate(&evs, PRODUCERS, Synchronous::Normal, false);
    println!(
        "writer, same, synchronous=NORMAL:      {normal:>10.0} events/s  = {:.2} of raw (FULL)",
        normal / raw
    );

    // Many callers, one event each, each blocking for its own commit (the server shape).
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let store = AuditStore::open(cfg(dir.path())).unwrap();
    let per = 200;
    let threads = 256;
    let t = Instant::now();
    let hs: Vec<_> = (0..threads)
        .map(|p| {
            let w = store.writer();
            std::thread::spawn(move || {
                for i in 0..per {
                    w.record_blocking(event(p * per + i)).unwrap();
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    let blocking = (threads * per) as f64 / t.elapsed().as_secs_f64();
    store.shutdown().unwrap();
    println!(
        "writer, {threads} threads record_blocking:   {blocking:>10.0} events/s  = {:.2} of raw",
        blocking / raw
    );
}

/// Acknowledgements each producer waits for at most: 4 × 4096 is the writer queue's
/// capacity, so the writer can commit one batch while the next one fills.
const IN_FLIGHT: usize = 4096;

/// Events/s acknowledged by the writer, and events/s indexed: from the start until the
/// index is current, or, with `defer_index` (the indexer waits until asked), of the
/// indexer alone once the writer is done.
fn writer_rate(
    evs: &[NewEvent],
    producers: i64,
    sync: Synchronous,
    defer_index: bool,
) -> (f64, f64) {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let mut c = cfg(dir.path());
    c.synchronous = sync;
    if defer_index {
        c.index_refresh = Duration::from_secs(3600);
    }
    let store = AuditStore::open(c).unwrap();
    let t = Instant::now();
    let hs: Vec<_> = (0..producers)
        .map(|p| {
            let w = store.writer();
            let mine: Vec<NewEvent> = evs
                .iter()
                .skip(p as usize)
                .step_by(producers as usize)
                .cloned()
                .collect();
            std::thread::spawn(move || {
                let mut inflight = VecDeque::new();
                for e in mine {
                    if inflight.len() >= IN_FLIGHT {
                        let a: Ack<i64> = inflight.pop_front().unwrap();
                        a.wait().unwrap();
                    }
                    inflight.push_back(w.submit(e).unwrap());
                }
                for a in inflight {
                    a.wait().unwrap();
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    let rate = evs.len() as f64 / t.elapsed().as_secs_f64();
    static LAG_SHOWN: std::sync::Once = std::sync::Once::new();
    if defer_index && !LAG_SHOWN.is_completed() {
        LAG_SHOWN.call_once(|| {});
        // What a lagging index costs a reader: every event is above the watermark.
        let r = store.reader().unwrap();
        let f = EventFilter {
            client_ip: Some(ip(2)),
            ..Default::default()
        };
        let (page, _) = time_it(|| r.query_events(&f, None, 50).unwrap());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros() as i64;
        let day = TimeRange::new(now - 86_400_000_000, now + 60_000_000);
        let (top, _) = time_it(|| r.top_client_ips(day, None, 10).unwrap());
        println!(
            "  with all {} events unindexed: client-IP page {:.1} ms, top IPs 24 h {:.1} ms",
            evs.len(),
            ms(page),
            ms(top)
        );
    }
    let ti = Instant::now();
    store.index_now().unwrap();
    let indexed = if defer_index {
        evs.len() as f64 / ti.elapsed().as_secs_f64()
    } else {
        evs.len() as f64 / t.elapsed().as_secs_f64()
    };
    store.shutdown().unwrap();
    (rate, indexed)
}

// ---------------------------------------------------------------- export

fn rss_kb(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn export() {
    const N: i64 = 1_000_000;
    println!("== export: {N} rows to CSV ==");
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let c = cfg(dir.path());
    AuditStore::open(c.clone()).unwrap().shutdown().unwrap();
    {
        let mut conn = Connection::open(&c.db_path).unwrap();
        conn.pragma_update(None, "synchronous", "OFF").unwrap();
        for chunk in 0..N / 100_000 {
            let evs: Vec<NewEvent> = (chunk * 100_000..(chunk + 1) * 100_000)
                .map(|i| event(i).with_time_us(T0 + i * 1000))
                .collect();
            raw_insert(&mut conn, &evs, chunk * 100_000 + 1, 10_000);
        }
    }
    // Opening the store indexes the loaded rows (untimed, like the load).
    {
        let store = AuditStore::open(c.clone()).unwrap();
        store.index_now().unwrap();
        store.shutdown().unwrap();
    }
    let r = AuditReader::open(&c.db_path).unwrap();
    // Baseline: just stepping through the same rows (no CSV, no formatting).
    let t = Instant::now();
    let conn = Connection::open(&c.db_path).unwrap();
    let mut n = 0u64;
    let mut st = conn.prepare("SELECT id, time_us, kind, outcome, reason, subject, username, client_ip, user_agent, method, path, jti, kid, alg, token_fp, source, detail, hash FROM events ORDER BY id").unwrap();
    let mut rows = st.query([]).unwrap();
    while let Some(row) = rows.next().unwrap() {
        n += row.get_ref(0).unwrap().as_i64().unwrap() as u64 & 1;
    }
    let scan = t.elapsed();
    drop(rows);
    drop(st);
    // One export of the first `rows` rows to a file: time, Rust heap peak, and the
    // process peak RSS (VmHWM, reset first where the kernel allows it).
    let export_n = |rows: i64, ranged: bool, name: &str| {
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        let hwm_before = rss_kb("VmHWM:");
        let path: PathBuf = dir.path().join(name);
        let out = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        let f = EventFilter {
            to_us: ranged.then_some(T0 + rows * 1000),
            ..Default::default()
        };
        // Sample VmRSS every 5 ms while exporting (VmHWM cannot be reset everywhere).
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let sampler = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut max = 0;
                while !stop.load(Ordering::Relaxed) {
                    max = max.max(rss_kb("VmRSS:"));
                    std::thread::sleep(Duration::from_millis(5));
                }
                max
            })
        };
        let t = Instant::now();
        let (n, heap) = peak_heap(|| r.export_events_csv(&f, out).unwrap().rows);
        let took = t.elapsed();
        stop.store(true, Ordering::Relaxed);
        let rss_peak = sampler.join().unwrap();
        let hwm = rss_kb("VmHWM:");
        let size = std::fs::metadata(&path).unwrap().len();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(n, rows as u64);
        (took, heap, hwm_before, hwm, size, rss_peak)
    };
    // Small export first, so a growing RSS on the big one would show. The headline is the
    // unfiltered 1M export; the time-ranged pair shows whether a filter changes the plan.
    let small = export_n(N / 10, true, "small.csv");
    let big_ranged = export_n(N, true, "big-ranged.csv");
    let big = export_n(N, false, "big.csv");
    println!(
        "raw row scan (no CSV):  {:>7.2} s   export_events_csv: {:>5.2} s ({:.0} rows/s, {:.0} MB) = {:.2}x the scan  [{n}]",
        scan.as_secs_f64(),
        big.0.as_secs_f64(),
        N as f64 / big.0.as_secs_f64(),
        big.4 as f64 / 1e6,
        big.0.as_secs_f64() / scan.as_secs_f64()
    );
    for (what, rows, (took, heap, hwm0, hwm, size, rss)) in [
        ("time range", N / 10, small),
        ("time range", N, big_ranged),
        ("no filter ", N, big),
    ] {
        println!(
            "export {what} {rows:>8} rows: {:>6.2} s, {:>5.0} MB CSV, Rust heap peak {:>6.0} KB, sampled VmRSS peak {rss} KB (VmHWM {hwm0} -> {hwm} KB)",
            took.as_secs_f64(),
            size as f64 / 1e6,
            heap as f64 / 1024.0
        );
    }
    println!(
        "memory 1M vs 100k rows: heap peak ratio {:.2} (ranged {:.2}), sampled RSS peak ratio {:.2} (ranged {:.2}) (flat = ~1.0)",
        big.1 as f64 / small.1.max(1) as f64,
        big_ranged.1 as f64 / small.1.max(1) as f64,
        big.5 as f64 / small.5.max(1) as f64,
        big_ranged.5 as f64 / small.5.max(1) as f64
    );
}

// ---------------------------------------------------------------- query

const BIG: i64 = 10_000_000;
const SPAN: i64 = 30 * 86_400_000_000;

fn big_time(i: i64) -> i64 {
    T0 + i * (SPAN / BIG)
}

fn big_db() -> StoreConfig {
    let dir = std::env::var("AUDIT_BENCH_DIR").unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap_or_else(|_| "/tmp".into());
        format!("{home}/.cache/tokenwatch-audit-bench-10m")
    });
    let c = cfg(Path::new(&dir));
    if c.db_path.exists() {
        let n: i64 = Connection::open(&c.db_path)
            .unwrap()
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .unwrap_or(0);
        if n == BIG {
            return c;
        }
        panic!(
            "{} exists but has {n} events; remove {dir} to regenerate",
            c.db_path.display()
        );
    }
    println!("generating {BIG} events into {dir} (once; reused by later runs)...");
    let t = Instant::now();
    AuditStore::open(c.clone()).unwrap().shutdown().unwrap();
    {
        let mut conn = Connection::open(&c.db_path).unwrap();
        conn.pragma_update(None, "synchronous", "OFF").unwrap();
        conn.pragma_update(None, "cache_size", -1_000_000).unwrap();
        for chunk in 0..BIG / 200_000 {
            let evs: Vec<NewEvent> = (chunk * 200_000..(chunk + 1) * 200_000)
                .map(|i| event(i).with_time_us(big_time(i)))
                .collect();
            raw_insert(&mut conn, &evs, chunk * 200_000 + 1, 50_000);
        }
        println!("  rows loaded in {:.0} s", t.elapsed().as_secs_f64());
    }
    c
}

/// Opens the store on the big record until its index is current: a bulk build the
/// first time (or after the layout changed), nearly nothing later.
fn index_big(c: &StoreConfig) {
    let t = Instant::now();
    let store = AuditStore::open(c.clone()).unwrap();
    store.index_now().unwrap();
    store.shutdown().unwrap();
    println!("  index current after {:.1} s", t.elapsed().as_secs_f64());
}

fn time_it<T>(f: impl Fn() -> T) -> (Duration, T) {
    let mut best = Duration::MAX;
    let mut out = None;
    for _ in 0..5 {
        let t = Instant::now();
        let v = f();
        best = best.min(t.elapsed());
        out = Some(v);
    }
    (best, out.unwrap())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn query() {
    let c = big_db();
    index_big(&c);
    println!("== query latencies at {BIG} events over 30 days (best of 5) ==");
    let r = AuditReader::open(&c.db_path).unwrap();
    // Baselines run on the index's copy of the columns, which has the same indexes.
    let raw = Connection::open(c.index_path()).unwrap();
    let end = big_time(BIG);
    let cases: Vec<(&str, EventFilter, &str)> = vec![
        ("no filter", EventFilter::default(), "1"),
        (
            "kind",
            EventFilter {
                kind: Some("token.issued".into()),
                ..Default::default()
            },
            "kind = 'token.issued'",
        ),
        (
            "outcome",
            EventFilter {
                outcome: Some(Outcome::Failure),
                ..Default::default()
            },
            "outcome = 'failure'",
        ),
        (
            "reason",
            EventFilter {
                reason: Some("expired".into()),
                ..Default::default()
            },
            "reason = 'expired'",
        ),
        (
            "subject_or_username",
            EventFilter {
                subject_or_username: Some("user7".into()),
                ..Default::default()
            },
            "(subject = 'user7' OR username = 'user7')",
        ),
        (
            "client_ip",
            EventFilter {
                client_ip: Some(ip(2)),
                ..Default::default()
            },
            "",
        ),
        (
            "jti",
            EventFilter {
                jti: event(123_456).jti,
                ..Default::default()
            },
            "",
        ),
        (
            "time range (1 day, 10 days ago)",
            EventFilter {
                from_us: Some(end - 11 * 86_400_000_000),
                to_us: Some(end - 10 * 86_400_000_000),
                ..Default::default()
            },
            "",
        ),
        (
            "kind + time range",
            EventFilter {
                kind: Some("auth.login.failure".into()),
                from_us: Some(end - 11 * 86_400_000_000),
                to_us: Some(end - 10 * 86_400_000_000),
                ..Default::default()
            },
            "",
        ),
        (
            "source (unindexed)",
            EventFilter {
                source: Some("tokenwatch".into()),
                ..Default::default()
            },
            "1",
        ),
    ];
    println!(
        "{:<34} {:>10} {:>14} {:>16}",
        "filter (50 per page)", "page 1 ms", "page 10000 ms", "OFFSET p10000 ms"
    );
    for (name, f, where_sql) in &cases {
        let (p1, page) = time_it(|| r.query_events(f, None, 50).unwrap());
        assert!(!page.items.is_empty(), "{name}: no rows");
        // Page 10 000 = rows 499 950.. : find its cursor once (untimed), then time keyset vs OFFSET.
        let deep = if where_sql.is_empty() {
            None
        } else {
            let sql = format!("SELECT time_us, id FROM ev WHERE {where_sql} ORDER BY time_us DESC, id DESC LIMIT 1 OFFSET 499949");
            raw.query_row(&sql, [], |x| Ok(Cursor { time_us: x.get(0)?, id: x.get(1)? })).ok().map(|cur| {
                let (keyset, pg) = time_it(|| r.query_events(f, Some(cur), 50).unwrap());
                assert_eq!(pg.items.len(), 50);
                let off_sql = format!(
                    "SELECT id FROM ev WHERE {where_sql} ORDER BY time_us DESC, id DESC LIMIT 50 OFFSET 499950"
                );
                let t = Instant::now();
                let _: Vec<i64> =
                    raw.prepare(&off_sql).unwrap().query_map([], |x| x.get(0)).unwrap().map(Result::unwrap).collect();
                (keyset, t.elapsed())
            })
        };
        match deep {
            Some((k, o)) => println!(
                "{name:<34} {:>10.2} {:>14.2} {:>16.1}",
                ms(p1),
                ms(k),
                ms(o)
            ),
            None => println!("{name:<34} {:>10.2} {:>14} {:>16}", ms(p1), "-", "-"),
        }
    }
    // Unaligned ranges, so every level of the rollup and the raw edges take part.
    let month = TimeRange::new(T0 + 17 * 60_000_000 + 3, end - 3 * 60_000_000);
    let week = TimeRange::new(end - 7 * 86_400_000_000 + 3_600_000_123, end);
    let day = TimeRange::new(end - 86_400_000_000 - 1_234_567, end);
    println!("{:<48} {:>10}", "aggregate", "ms");
    let show = |name: &str, d: Duration| println!("{name:<48} {:>10.2}", ms(d));
    show(
        "counts_over_time 24h by minute",
        time_it(|| r.counts_over_time(day, Bucket::Minute).unwrap()).0,
    );
    show(
        "counts_over_time 30d by hour",
        time_it(|| r.counts_over_time(month, Bucket::Hour).unwrap()).0,
    );
    show(
        "counts_over_time 30d by day",
        time_it(|| r.counts_over_time(month, Bucket::Day).unwrap()).0,
    );
    let (d, top) = time_it(|| r.top_client_ips(month, None, 10).unwrap());
    show("top_client_ips 30d top 10", d);
    show(
        "top_client_ips 30d failures top 10",
        time_it(|| r.top_client_ips(month, Some(Outcome::Failure), 10).unwrap()).0,
    );
    show(
        "top_client_ips 24h top 10",
        time_it(|| r.top_client_ips(day, None, 10).unwrap()).0,
    );
    show(
        "top_users 7d top 10",
        time_it(|| r.top_users(week, None, 10).unwrap()).0,
    );
    show(
        "top_users 30d top 10",
        time_it(|| r.top_users(month, None, 10).unwrap()).0,
    );
    let (d, reasons) = time_it(|| r.failure_reasons(month, 10).unwrap());
    show("failure_reasons 30d", d);
    // Baseline: the same top-IP answer by GROUP BY over the events table.
    let t = Instant::now();
    let base: Vec<(String, i64)> = raw
        .prepare("SELECT client_ip, count(*) c FROM ev WHERE time_us >= ?1 AND time_us < ?2 GROUP BY client_ip ORDER BY c DESC, client_ip LIMIT 10")
        .unwrap()
        .query_map([month.from_us, month.to_us], |x| Ok((x.get(0)?, x.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let base_t = t.elapsed();
    assert_eq!(
        top.iter()
            .map(|(k, v)| (k.clone(), *v as i64))
            .collect::<Vec<_>>(),
        base,
        "rollup answer must equal the raw count"
    );
    println!(
        "baseline: top_client_ips 30d by GROUP BY over events: {:.0} ms  (rollup answer is {:.0}x faster, identical)",
        ms(base_t),
        ms(base_t) / ms(time_it(|| r.top_client_ips(month, None, 10).unwrap()).0)
    );
    println!("failure reasons: {reasons:?}");
}
