//! `/api/v1/me` requests per second through the bearer middleware (token
//! verification + an audit event committed before the answer), as a ratio
//! against the same actix route with no authentication, in the same run.
//!
//! cargo bench -p tokenwatch --bench me_throughput -- [seconds] [connections,...] [signing alg]
//!
//! `connections` is a comma-separated list (default `32,256`): every request waits
//! for its event's group commit, so with few connections in flight the audited side
//! is bound by commit latency (one WAL fsync per batch under `synchronous=full`),
//! not by CPU; the sweep shows where it stops being so. Each client connection is a
//! blocking thread on the same machine, for both sides alike.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpServer};
use tokenwatch::config::FileConfig;

#[path = "support/app.rs"]
mod app;
#[path = "support/cpu.rs"]
mod cpu;
#[path = "support/http.rs"]
mod http;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let seconds: u64 = args.first().and_then(|s| s.parse().ok()).unwrap_or(5);
    let sweep: Vec<usize> = args
        .get(1)
        .map(|s| s.split(',').filter_map(|c| c.parse().ok()).collect())
        .unwrap_or_else(|| vec![32, 256]);
    // The server's default is ES256, whose verification alone costs more CPU per
    // request than the whole bare route; HS256 shows the audit cost more directly.
    let alg = args.get(2).cloned().unwrap_or_else(|| "ES256".into());

    for sync in ["full", "normal"] {
        let mut file = FileConfig::default();
        file.audit.synchronous = Some(sync.into());
        file.signing_alg = Some(alg.clone());
        let (_dir, data) = app::open(file);
        let token = app::access_token(&data);

        let (audited, bare) = start_servers(data.clone());
        for &connections in &sweep {
            let before = data.store.health();
            // Interleaved rounds, so drift on a noisy machine hits both alike; each
            // round's ratio pairs two measurements seconds apart.
            let mut rounds = Vec::new();
            let mut index_us_per_event = Vec::new();
            for _ in 0..ROUNDS {
                let b = load(bare, &token, seconds, connections);
                let a = load(audited, &token, seconds, connections);
                // The query index stands aside during a burst of commits. Catching it
                // up here keeps that work out of the next bare round, and measures
                // what the audited round left to do.
                let cpu_before = cpu::process_us();
                data.store.index_now().expect("index catch-up");
                index_us_per_event.push((cpu::process_us() - cpu_before) / a.requests);
                rounds.push((a, b));
            }
            // The round with the median ratio is the one reported, whole.
            rounds.sort_by(|x, y| (x.0.rate / x.1.rate).total_cmp(&(y.0.rate / y.1.rate)));
            let (lo, hi) = (
                rounds[0].0.rate / rounds[0].1.rate,
                rounds[ROUNDS - 1].0.rate / rounds[ROUNDS - 1].1.rate,
            );
            let (a, b) = &rounds[ROUNDS / 2];
            println!(
                "{alg} synchronous={sync:<6} connections={connections:<4} audited={:>7.0} req/s  bare={:>7.0} req/s  ratio={:.2} (rounds {lo:.2}..{hi:.2})  CPU per request: bare {:.1} µs, audited {:.1} µs (bare/audited {:.2}), then index catch-up {:.1} µs/event  ({} events committed, {:.0} per commit)",
                a.rate,
                b.rate,
                a.rate / b.rate,
                b.cpu_per_request,
                a.cpu_per_request,
                b.cpu_per_request / a.cpu_per_request,
                median(&mut index_us_per_event),
                data.store.health().events_committed - before.events_committed,
                {
                    let now = data.store.health();
                    (now.events_committed - before.events_committed) as f64 / (now.commits - before.commits).max(1) as f64
                }
            );
            println!("    µs per request by thread  bare: {}", b.threads);
            println!("                           audited: {}", a.threads);
        }
    }
}

/// Rounds per connection count; medians are reported.
const ROUNDS: usize = 3;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn start_servers(data: web::Data<tokenwatch::app::AppState>) -> (SocketAddr, SocketAddr) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let sys = actix_web::rt::System::new();
        sys.block_on(async move {
            let d = data.clone();
            let audited = HttpServer::new(move || {
                App::new().configure(|cfg| tokenwatch::routes::configure(cfg, &d))
            })
            .workers(2)
            .bind("127.0.0.1:0")
            .expect("bind");
            let audited_addr = audited.addrs()[0];
            let bare =
                HttpServer::new(|| App::new().route("/api/v1/me", web::get().to(app::bare_me)))
                    .workers(2)
                    .bind("127.0.0.1:0")
                    .expect("bind");
            let bare_addr = bare.addrs()[0];
            tx.send((audited_addr, bare_addr)).expect("send addrs");
            let _ = futures_util::future::join(audited.run(), bare.run()).await;
        });
    });
    rx.recv().expect("servers started")
}

/// Keep-alive HTTP/1.1 clients, one thread per connection, for `seconds`.
/// Requests per second, and CPU time of the whole process (server, audit threads and
/// client threads) per request over the same window: on a machine shared with other
/// work the second moves far less than the first, and with the CPU saturated the
/// throughput ratio tends to the inverse ratio of CPU per request.
///
/// Both sides get the same request bytes, token included (the bare route ignores it),
/// so the ratio is the cost of authenticating and auditing, not of a longer request.
struct Round {
    requests: f64,
    rate: f64,
    cpu_per_request: f64,
    /// CPU per request by thread group, as text.
    threads: String,
}

fn load(addr: SocketAddr, token: &str, seconds: u64, connections: usize) -> Round {
    let request = format!("GET /api/v1/me HTTP/1.1\r\nHost: bench\r\nUser-Agent: bench\r\nAuthorization: Bearer {token}\r\n\r\n");
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..connections)
        .map(|_| {
            let (stop, done, request) = (stop.clone(), done.clone(), request.clone());
            std::thread::Builder::new()
                .name("bench-client".into())
                .spawn(move || {
                    let mut connection = http::Connection::open(addr);
                    while !stop.load(Ordering::Relaxed) {
                        connection.exchange(request.as_bytes());
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                })
                .expect("spawn client")
        })
        .collect();
    // Warm up, then count.
    std::thread::sleep(Duration::from_millis(500));
    let start_count = done.load(Ordering::Relaxed);
    let start = Instant::now();
    let (start_cpu, start_threads) = (cpu::process_us(), cpu::Threads::now());
    std::thread::sleep(Duration::from_secs(seconds));
    let n = (done.load(Ordering::Relaxed) - start_count) as f64;
    let (used, threads) = (
        cpu::process_us() - start_cpu,
        cpu::Threads::now().since(&start_threads),
    );
    let rate = n / start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.join();
    }
    Round {
        requests: n,
        rate,
        cpu_per_request: used / n,
        threads: cpu::per_request(&threads, n),
    }
}
