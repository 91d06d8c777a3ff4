//! A soak: a real `tokenwatch serve` on 127.0.0.1 under sustained audited
//! traffic for a bounded time, its resident memory sampled from `/proc` as it
//! goes. What matters is that RSS levels off; the rate is only context (the
//! client threads share the machine with the server).
//!
//! `cargo run --release -p tokenwatch-e2e --example soak -- [SECONDS] [THREADS]`
//!
//! The traffic: per thread and round, 16 `GET /api/v1/me` with a valid token
//! (each one an audited `access.granted`), 2 with a token never seen before
//! (`token.rejected`: a new cache key and a new fingerprint every time), and
//! every 64th round one ingest batch of 20 events (each with a new username, IP
//! and reason: values an ingest source chooses) and one failed password login.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokenwatch_e2e::{cli, data_dir, http, Server};

/// Seconds between RSS samples.
const SAMPLE_EVERY: u64 = 10;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1).filter(|a| !a.starts_with("--"));
    let secs: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(600);
    let threads: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(8);
    let (_tmp, dir) = data_dir();
    let key = add_source(&dir)?;
    let s = Server::start(&dir);
    let password = s
        .admin_password
        .clone()
        .ok_or("no one-time admin password")?;
    let token = login(&s, &password)?;

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let (base, token, key) = (s.base.clone(), token.clone(), key.clone());
            let (stop, done, failed) = (stop.clone(), done.clone(), failed.clone());
            std::thread::spawn(move || {
                traffic(t, &base, &token, &key, &stop, &done, &failed);
            })
        })
        .collect();

    println!("| time (s) | RSS (MiB) | requests | requests/s | failed |");
    println!("|---:|---:|---:|---:|---:|");
    let start = Instant::now();
    let mut last = (0u64, start);
    loop {
        let now = Instant::now();
        let n = done.load(Ordering::Relaxed);
        let rate = (n - last.0) as f64 / now.duration_since(last.1).as_secs_f64().max(1e-9);
        println!(
            "| {} | {:.1} | {n} | {rate:.0} | {} |",
            now.duration_since(start).as_secs(),
            rss_kib(s.pid())? as f64 / 1024.0,
            failed.load(Ordering::Relaxed)
        );
        last = (n, now);
        if now.duration_since(start) >= Duration::from_secs(secs) {
            break;
        }
        std::thread::sleep(Duration::from_secs(SAMPLE_EVERY));
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.join();
    }
    s.stop();
    Ok(())
}

fn add_source(dir: &std::path::Path) -> Result<String, Box<dyn std::error::Error>> {
    let out = cli(dir, &["sources", "add", "soak"], "");
    let key = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("api_key: "))
        .ok_or_else(|| format!("sources add failed: {}", out.stderr))?;
    Ok(key.trim().to_string())
}

fn login(s: &Server, password: &str) -> Result<String, Box<dyn std::error::Error>> {
    let body: Value = http()
        .post(s.url("/oauth/token"))
        .form(&[
            ("grant_type", "password"),
            ("username", "admin"),
            ("password", password),
        ])
        .send()?
        .json()?;
    Ok(body["access_token"]
        .as_str()
        .ok_or("no access token")?
        .to_string())
}

fn traffic(
    thread: usize,
    base: &str,
    token: &str,
    key: &str,
    stop: &AtomicBool,
    done: &AtomicU64,
    failed: &AtomicU64,
) {
    let client = http();
    let me = format!("{base}/api/v1/me");
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        let ok = |r: reqwest::Result<reqwest::blocking::Response>, want: &[u16]| {
            done.fetch_add(1, Ordering::Relaxed);
            if !r.is_ok_and(|r| want.contains(&r.status().as_u16())) {
                failed.fetch_add(1, Ordering::Relaxed);
            }
        };
        for _ in 0..16 {
            ok(client.get(&me).bearer_auth(token).send(), &[200]);
        }
        for i in 0..2 {
            let forged = format!("{token}x{thread}.{round}.{i}");
            ok(client.get(&me).bearer_auth(forged).send(), &[401]);
        }
        if round.is_multiple_of(64) {
            let lines: String = (0..20)
                .map(|i| {
                    format!(
                        "{{\"kind\":\"token.rejected\",\"outcome\":\"failure\",\"reason\":\"r-{thread}-{round}-{i}\",\"username\":\"soak-{thread}-{round}-{i}\",\"client_ip\":\"10.{}.{}.{}\"}}\n",
                        thread, round % 250, i
                    )
                })
                .collect();
            let r = client
                .post(format!("{base}/api/v1/events"))
                .bearer_auth(key)
                .header("Content-Type", "application/x-ndjson")
                .body(lines)
                .send();
            ok(r, &[200]);
            let r = client
                .post(format!("{base}/oauth/token"))
                .form(&[
                    ("grant_type", "password"),
                    ("username", &format!("nobody-{thread}-{round}")),
                    ("password", "wrong"),
                ])
                .send();
            // 429 once the password-spray detector throttles the address: as designed.
            ok(r, &[400, 429]);
        }
    }
}

/// Resident set size of `pid` in KiB, from `/proc/<pid>/status`.
fn rss_kib(pid: u32) -> Result<u64, Box<dyn std::error::Error>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or("no VmRSS line")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .ok_or("malformed VmRSS line")?
        .parse()?)
}
