//! In-process CPU cost of one `/api/v1/me` request, audited vs bare, with no socket:
//! actix's test service drives the same App as the server. What this isolates is the
//! work the bearer middleware and the audit store add, without the TCP stack's
//! (equal, and noisy) share.
//!
//! cargo bench -p tokenwatch --bench me_overhead -- [requests] [in flight]
//!
//! Requests are driven `in flight` at a time from one task, so the audit writer commits
//! them in groups of that size, as it would under load. `audited` is the routes alone;
//! `timed` adds the request timer `serve` wraps the app in (the latency histograms of
//! `/metrics`), so the two rows of a round are its cost measured side by side.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use actix_web::{test, web, App};
use futures_util::future::join_all;
use tokenwatch::config::FileConfig;

#[path = "support/app.rs"]
mod app;
#[path = "support/cpu.rs"]
mod cpu;

struct Counting;
static ALLOCS: AtomicU64 = AtomicU64::new(0);
// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: std::alloc::Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { std::alloc::System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: std::alloc::Layout) {
        unsafe { std::alloc::System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: std::alloc::Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { std::alloc::System.realloc(p, l, n) }
    }
}
#[global_allocator]
static GLOBAL: Counting = Counting;

#[actix_web::main]
async fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    // SAFETY: PR_SET_NAME reads a NUL-terminated name of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"request-thread".as_ptr()) };
    let requests: usize = args.first().and_then(|s| s.parse().ok()).unwrap_or(200_000);
    let in_flight: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(128);
    let mut file = FileConfig::default();
    file.audit.synchronous = Some("normal".into());
    let (_dir, data) = app::open(file);
    let token = app::access_token(&data);
    let d = data.clone();
    let audited =
        test::init_service(App::new().configure(|cfg| tokenwatch::routes::configure(cfg, &d)))
            .await;
    let d = data.clone();
    let timed = test::init_service(
        App::new()
            .wrap(tokenwatch::request_timer::RequestTimer::new(d.clone()))
            .configure(|cfg| tokenwatch::routes::configure(cfg, &d)),
    )
    .await;
    let bare =
        test::init_service(App::new().route("/api/v1/me", web::get().to(app::bare_me))).await;
    let req = || {
        test::TestRequest::get()
            .uri("/api/v1/me")
            .peer_addr("127.0.0.1:40000".parse().unwrap())
            .insert_header(("User-Agent", "bench"))
            .insert_header(("Authorization", format!("Bearer {token}")))
            .to_request()
    };
    for round in 0..3 {
        for name in ["bare", "audited", "timed"] {
            let (allocs, used, threads, t0) = (
                ALLOCS.load(Ordering::Relaxed),
                cpu::process_us(),
                cpu::Threads::now(),
                Instant::now(),
            );
            let mut done = 0;
            while done < requests {
                let n = in_flight.min(requests - done);
                let reqs: Vec<_> = (0..n).map(|_| req()).collect();
                let ok = match name {
                    "audited" => {
                        join_all(reqs.into_iter().map(|r| test::call_service(&audited, r)))
                            .await
                            .iter()
                            .all(|r| r.status().is_success())
                    }
                    "timed" => join_all(reqs.into_iter().map(|r| test::call_service(&timed, r)))
                        .await
                        .iter()
                        .all(|r| r.status().is_success()),
                    _ => join_all(reqs.into_iter().map(|r| test::call_service(&bare, r)))
                        .await
                        .iter()
                        .all(|r| r.status().is_success()),
                };
                assert!(ok, "a request was refused");
                done += n;
            }
            let elapsed = t0.elapsed().as_secs_f64();
            let n = requests as f64;
            let by_thread = cpu::Threads::now().since(&threads);
            println!(
                "round {round} {name:<8} {:>8.0} req/s  {:.2} µs CPU/request ({})  {:.1} allocations/request",
                n / elapsed,
                (cpu::process_us() - used) / n,
                cpu::per_request(&by_thread, n),
                (ALLOCS.load(Ordering::Relaxed) - allocs) as f64 / n,
            );
            if name != "bare" {
                // Outside the window: the next bare round must not pay for it.
                data.store.index_now().expect("index catch-up");
            }
        }
    }
}
