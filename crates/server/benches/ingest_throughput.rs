//! Events per second accepted by `POST /api/v1/events` end to end (HTTP,
//! API-key lookup, per-line validation, hash chain, group commit, answer with
//! the ids), in batches of 1000, as a ratio against the store alone: the same
//! batches handed to `AuditWriter::record_many_blocking` directly, from the
//! same number of threads, in the same run.
//!
//! cargo bench -p tokenwatch --bench ingest_throughput -- [seconds] [connections]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpServer};
use audit_store::{kinds, NewEvent, Outcome};
use tokenwatch::config::FileConfig;

#[path = "support/app.rs"]
mod app;
#[path = "support/http.rs"]
mod http;

const BATCH: usize = 1000;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let seconds: u64 = args.first().and_then(|s| s.parse().ok()).unwrap_or(5);
    let connections: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(4);

    for sync in ["full", "normal"] {
        let mut file = FileConfig::default();
        file.audit.synchronous = Some(sync.into());
        // The bench measures throughput, not the rate limiter.
        file.ingest.rate_limit_per_sec = Some(100_000_000);
        let (_dir, data) = app::open(file);
        let key = data.state.add_source("bench").expect("source");
        let addr = start_server(data.clone());
        let body = ndjson_batch();

        let mut ingest_rates = Vec::new();
        let mut store_rates = Vec::new();
        // Interleaved so drift on a noisy machine hits both alike.
        for _ in 0..2 {
            store_rates.push(store_load(&data.audit, seconds, connections));
            ingest_rates.push(http_load(addr, &key, &body, seconds, connections));
        }
        let i = median(&mut ingest_rates);
        let s = median(&mut store_rates);
        println!(
            "synchronous={sync:<6} connections={connections} batch={BATCH}  ingest={i:>9.0} events/s  store alone={s:>9.0} events/s  ratio={:.2}",
            i / s
        );
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// 1000 varied, valid events as NDJSON, like a busy API's verification log.
fn ndjson_batch() -> String {
    let mut s = String::new();
    for i in 0..BATCH {
        let (kind, outcome, reason) = if i % 10 == 0 {
            ("token.rejected", "failure", ",\"reason\":\"expired\"")
        } else {
            ("token.verified", "success", "")
        };
        s.push_str(&format!(
            "{{\"kind\":\"{kind}\",\"outcome\":\"{outcome}\"{reason},\"subject\":\"user-{}\",\"username\":\"user{}\",\"client_ip\":\"10.0.{}.{}\",\"jti\":\"{:032x}\",\"token_fp\":\"{:016x}\",\"method\":\"GET\",\"path\":\"/orders\"}}\n",
            i % 97, i % 97, i % 250, i % 200, i, i * 7919
        ));
    }
    s
}

fn store_batch() -> Vec<NewEvent> {
    (0..BATCH)
        .map(|i| {
            let mut ev = NewEvent::new(kinds::TOKEN_VERIFIED, Outcome::Success)
                .with_subject(format!("user-{}", i % 97))
                .with_username(format!("user{}", i % 97))
                .with_client_ip(format!("10.0.{}.{}", i % 250, i % 200))
                .with_jti(format!("{i:032x}"))
                .with_token_fp(format!("{:016x}", i * 7919))
                .with_method("GET")
                .with_path("/orders")
                .with_source("bench");
            if i % 10 == 0 {
                ev.kind = kinds::TOKEN_REJECTED.into();
                ev.outcome = Outcome::Failure;
                ev.reason = Some("expired".into());
            }
            ev
        })
        .collect()
}

fn start_server(data: web::Data<tokenwatch::app::AppState>) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let sys = actix_web::rt::System::new();
        sys.block_on(async move {
            let d = data.clone();
            let server = HttpServer::new(move || {
                App::new().configure(|cfg| tokenwatch::routes::configure(cfg, &d))
            })
            .workers(2)
            .bind("127.0.0.1:0")
            .expect("bind");
            tx.send(server.addrs()[0]).expect("send addr");
            let _ = server.run().await;
        });
    });
    rx.recv().expect("server started")
}

/// Runs `work` on `threads` threads for `seconds` after a warm-up; returns events/s.
fn measure(
    threads: usize,
    seconds: u64,
    work: impl Fn(&AtomicBool, &AtomicU64) + Send + Sync + 'static,
) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let work = Arc::new(work);
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (stop, done, work) = (stop.clone(), done.clone(), work.clone());
            std::thread::spawn(move || work(&stop, &done))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let start_count = done.load(Ordering::Relaxed);
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    let n = done.load(Ordering::Relaxed) - start_count;
    let rate = n as f64 / start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = h.join();
    }
    rate
}

fn store_load(writer: &audit_store::AuditWriter, seconds: u64, threads: usize) -> f64 {
    let writer = writer.clone();
    measure(threads, seconds, move |stop, done| {
        while !stop.load(Ordering::Relaxed) {
            let ids = writer.record_many_blocking(store_batch()).expect("commit");
            done.fetch_add(ids.len() as u64, Ordering::Relaxed);
        }
    })
}

/// Keep-alive HTTP/1.1 clients posting the batch; counts accepted events.
fn http_load(addr: SocketAddr, key: &str, body: &str, seconds: u64, threads: usize) -> f64 {
    let request = format!(
        "POST /api/v1/events HTTP/1.1\r\nHost: bench\r\nUser-Agent: bench\r\nAuthorization: Bearer {key}\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    measure(threads, seconds, move |stop, done| {
        let mut connection = http::Connection::open(addr);
        while !stop.load(Ordering::Relaxed) {
            let resp = connection.exchange(request.as_bytes());
            let v: serde_json::Value = serde_json::from_slice(&resp).expect("json answer");
            done.fetch_add(v["accepted"].as_u64().unwrap_or(0), Ordering::Relaxed);
        }
    })
}
