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

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpResponse, HttpServer};
use token_core::AccessRequest;
use tokenwatch::config::{FileConfig, Overrides, Settings};

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
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut file = FileConfig::default();
        file.audit.synchronous = Some(sync.into());
        file.signing_alg = Some(alg.clone());
        let settings = Settings::resolve(
            file,
            &Overrides {
                listen: Some("127.0.0.1:0".into()),
                data_dir: Some(tmp.path().join("data")),
                plugin_dir: None,
            },
        )
        .expect("settings");
        tokenwatch::datadir::ensure(&settings.data_dir).expect("data dir");
        let data = tokenwatch::serve::open_app_state(&settings).expect("app state");
        let token = data
            .tokens
            .issue_access(&AccessRequest {
                subject: "bench-user".into(),
                username: Some("bench".into()),
                roles: vec!["user".into()],
                client_id: None,
                scope: None,
                session_id: None,
                ttl: None,
                extra: serde_json::Map::new(),
            })
            .expect("issue");
        let token = token.token.expose().to_string();

        let (audited, bare) = start_servers(data.clone());
        for &connections in &sweep {
            let mut audited_rates = Vec::new();
            let mut bare_rates = Vec::new();
            let before = data.store.health().events_committed;
            // Interleaved rounds, so drift on a noisy machine hits both alike; each
            // round's ratio pairs two measurements seconds apart.
            let mut ratios = Vec::new();
            let mut cpu_ratios = Vec::new();
            for _ in 0..ROUNDS {
                let (b, b_cpu) = load(bare, &token, seconds, connections);
                let (a, a_cpu) = load(audited, &token, seconds, connections);
                bare_rates.push(b);
                audited_rates.push(a);
                ratios.push(a / b);
                cpu_ratios.push(b_cpu / a_cpu);
            }
            let a = median(&mut audited_rates);
            let b = median(&mut bare_rates);
            let ratio = median(&mut ratios); // sorts: first and last are the extremes
            println!(
                "{alg} synchronous={sync:<6} connections={connections:<4} audited={a:>9.0} req/s  bare={b:>9.0} req/s  ratio={ratio:.2} (rounds {:.2}..{:.2})  CPU per request bare/audited={:.2}  (events committed: {})",
                ratios[0],
                ratios[ROUNDS - 1],
                median(&mut cpu_ratios),
                data.store.health().events_committed - before
            );
        }
    }
}

/// Rounds per connection count; medians are reported.
const ROUNDS: usize = 3;

/// CPU time (user + system) this whole process has used: server and clients alike.
fn process_cpu_us() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let us = |t: libc::timeval| t.tv_sec as f64 * 1e6 + t.tv_usec as f64;
    us(u.ru_utime) + us(u.ru_stime)
}

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
            let audited = HttpServer::new(move || App::new().configure(|cfg| tokenwatch::routes::configure(cfg, &d)))
                .workers(2)
                .bind("127.0.0.1:0")
                .expect("bind");
            let audited_addr = audited.addrs()[0];
            let bare = HttpServer::new(|| {
                App::new().route(
                    "/api/v1/me",
                    web::get().to(|| async {
                        HttpResponse::Ok().json(serde_json::json!({
                            "sub": "bench-user", "username": "bench", "roles": ["user"], "scope": null, "client_id": null, "exp": 0
                        }))
                    }),
                )
            })
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
fn load(addr: SocketAddr, token: &str, seconds: u64, connections: usize) -> (f64, f64) {
    let request = format!("GET /api/v1/me HTTP/1.1\r\nHost: bench\r\nUser-Agent: bench\r\nAuthorization: Bearer {token}\r\n\r\n");
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..connections)
        .map(|_| {
            let (stop, done, request) = (stop.clone(), done.clone(), request.clone());
            std::thread::spawn(move || {
                let stream = TcpStream::connect(addr).expect("connect");
                stream.set_nodelay(true).ok();
                let mut writer = stream.try_clone().expect("clone");
                let mut reader = BufReader::new(stream);
                let mut line = String::new();
                while !stop.load(Ordering::Relaxed) {
                    writer.write_all(request.as_bytes()).expect("write");
                    let mut content_length = 0usize;
                    let mut status_ok = false;
                    loop {
                        line.clear();
                        reader.read_line(&mut line).expect("read");
                        if line.starts_with("HTTP/1.1 ") {
                            status_ok = line.starts_with("HTTP/1.1 200");
                        }
                        let lower = line.to_ascii_lowercase();
                        if let Some(v) = lower.strip_prefix("content-length:") {
                            content_length = v.trim().parse().unwrap_or(0);
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let mut body = vec![0u8; content_length];
                    reader.read_exact(&mut body).expect("body");
                    assert!(status_ok, "non-200 response during the benchmark");
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    // Warm up, then count.
    std::thread::sleep(Duration::from_millis(500));
    let start_count = done.load(Ordering::Relaxed);
    let start = Instant::now();
    let start_cpu = process_cpu_us();
    std::thread::sleep(Duration::from_secs(seconds));
    let n = done.load(Ordering::Relaxed) - start_count;
    let cpu = process_cpu_us() - start_cpu;
    let rate = n as f64 / start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    (rate, cpu / n as f64)
}
