//! The audit record against what happens to its files while the server runs:
//! deleted, replaced, a page corrupted, and retention with backdated events. A
//! real `tokenwatch serve` on 127.0.0.1, real SQLite files, checked as a user
//! would: the status codes, `/healthz`, `/metrics`, the log, `audit verify`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use serde_json::Value;
use tokenwatch_e2e::{cli, data_dir, events_of, http, wait_for_secs, Server};

fn login(s: &Server) -> String {
    let password = s.admin_password.clone().expect("first start");
    let body: Value = http()
        .post(s.url("/oauth/token"))
        .form(&[
            ("grant_type", "password"),
            ("username", "admin"),
            ("password", &password),
        ])
        .send()
        .unwrap()
        .json()
        .unwrap();
    body["access_token"].as_str().unwrap().to_string()
}

fn healthz(s: &Server) -> (u16, Value) {
    let r = http().get(s.url("/healthz")).send().unwrap();
    (r.status().as_u16(), r.json().unwrap())
}

fn count_kind(db: &Path, kind: &str) -> usize {
    let c = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    c.query_row("SELECT count(*) FROM events WHERE kind = ?1", [kind], |r| {
        r.get::<_, i64>(0)
    })
    .unwrap() as usize
}

fn log_text(dir: &Path) -> String {
    let mut out = String::new();
    for e in std::fs::read_dir(dir.join("logs")).unwrap() {
        out += &std::fs::read_to_string(e.unwrap().path()).unwrap_or_default();
    }
    out
}

fn rescue_copy(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("audit.db.rescued-"))
        .expect("a rescue copy of the record beside audit.db")
}

/// Audited requests run in a loop while `change` happens to `audit.db`: within
/// seconds they are refused (503), no request succeeds after the first refusal,
/// `/healthz` and the log say what happened, and every request that was answered
/// 200 has its event in the rescue copy, which verifies once put back in place.
fn fails_closed_and_loses_nothing(change: impl FnOnce(&Path), says: &str) {
    let (_tmp, dir) = data_dir();
    let s = Server::start(&dir);
    let token = login(&s);
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (base, token, stop) = (s.base.clone(), token.clone(), stop.clone());
        std::thread::spawn(move || {
            let client = http();
            let mut statuses = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let r = client
                    .get(format!("{base}/api/v1/me"))
                    .bearer_auth(&token)
                    .send();
                statuses.push(r.map(|r| r.status().as_u16()).unwrap_or(0));
            }
            statuses
        })
    };
    wait_for_secs("some audited requests", 60, || {
        (count_kind(&dir.join("audit.db"), "access.granted") >= 20).then_some(())
    });
    change(&dir.join("audit.db"));
    let (code, h) = wait_for_secs("the server to notice", 10, || {
        let (code, h) = healthz(&s);
        (code == 503).then_some((code, h))
    });
    assert_eq!(code, 503);
    assert_eq!(h["status"], "failing");
    assert_eq!(h["audit_store"]["writable"], false);
    let err = h["audit_store"]["last_error"].as_str().unwrap().to_string();
    assert!(
        err.contains(says) && err.contains("refused until tokenwatch is restarted"),
        "{err}"
    );
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let statuses = load.join().unwrap();

    let first_refusal = statuses.iter().position(|&c| c == 503).expect("a 503");
    assert!(
        statuses[first_refusal..].iter().all(|&c| c == 503),
        "nothing is acknowledged after the first refusal: {:?}",
        &statuses[first_refusal..]
    );
    let answered_200 = statuses.iter().filter(|&&c| c == 200).count();
    assert!(answered_200 >= 20);
    // Other audited paths are refused too: a login cannot be recorded either.
    let r = http()
        .post(s.url("/oauth/token"))
        .form(&[
            ("grant_type", "password"),
            ("username", "admin"),
            ("password", "x"),
        ])
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    s.stop();
    assert!(log_text(&dir).contains(says), "the log names the change");

    // Every 200 (plus the login) has its event in the rescue copy.
    let rescued = rescue_copy(&dir);
    let granted = count_kind(&rescued, "access.granted");
    assert!(
        granted >= answered_200,
        "{granted} events for {answered_200} answers"
    );
    // The lost file's WAL was moved aside, so it cannot be replayed onto what is
    // put in place; the rescue copy, put back, is the record: chain and checkpoints agree.
    assert!(!dir.join("audit.db-wal").exists());
    let _ = std::fs::remove_file(dir.join("audit.db"));
    let _ = std::fs::remove_file(dir.join("audit-index.db"));
    std::fs::rename(&rescued, dir.join("audit.db")).unwrap();
    let out = cli(&dir, &["audit", "verify"], "");
    assert_eq!(out.status, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("audit chain OK"), "{}", out.stdout);
}

#[test]
fn deleting_the_database_while_serving_fails_closed_and_loses_nothing() {
    fails_closed_and_loses_nothing(|db| std::fs::remove_file(db).unwrap(), "was deleted");
}

#[test]
fn replacing_the_database_while_serving_fails_closed_and_loses_nothing() {
    fails_closed_and_loses_nothing(
        |db| {
            // An operator "restoring a backup" under a running server.
            let backup = db.with_file_name("backup.db");
            Connection::open(db)
                .unwrap()
                .execute("VACUUM INTO ?1", [backup.to_string_lossy()])
                .unwrap();
            std::fs::rename(&backup, db).unwrap();
        },
        "replaced by another file",
    );
}

const INTEGRITY_EVERY_SECOND: &str = "[audit]\nintegrity_check_interval_secs = 1\n";

fn write_config(dir: &Path, text: &str) {
    std::fs::write(dir.parent().unwrap().join("tokenwatch.toml"), text).unwrap();
}

fn add_source(dir: &Path) -> String {
    let out = cli(dir, &["sources", "add", "idp"], "");
    assert_eq!(out.status, 0, "{}", out.stderr);
    out.stdout
        .lines()
        .find_map(|l| l.strip_prefix("api_key: "))
        .unwrap()
        .trim()
        .to_string()
}

fn ingest(s: &Server, key: &str, lines: &str) -> Value {
    http()
        .post(s.url("/api/v1/events"))
        .bearer_auth(key)
        .header("Content-Type", "application/x-ndjson")
        .body(lines.to_string())
        .send()
        .unwrap()
        .json()
        .unwrap()
}

/// Overwrites the database page holding `needle` with garbage.
fn corrupt_page_with(db: &Path, needle: &[u8]) {
    let mut bytes = std::fs::read(db).unwrap();
    let page_size = 4096;
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("the row is in the database file");
    let page = at / page_size;
    assert!(page > 0, "never the header page");
    bytes[page * page_size..(page + 1) * page_size].fill(0xA5);
    std::fs::write(db, bytes).unwrap();
}

#[test]
fn a_corrupted_page_is_reported_by_the_running_server_naming_the_first_bad_row() {
    let (_tmp, dir) = data_dir();
    std::fs::create_dir_all(&dir).unwrap();
    write_config(&dir, INTEGRITY_EVERY_SECOND);
    let key = add_source(&dir);
    let s = Server::start(&dir);
    for batch in 0..10 {
        let lines: String = (0..50)
            .map(|i| {
                format!("{{\"kind\":\"auth.login.failure\",\"outcome\":\"failure\",\"reason\":\"bad_password\",\"username\":\"user-{batch}-{i}\",\"client_ip\":\"10.0.{batch}.{i}\"}}\n")
            })
            .collect();
        assert_eq!(ingest(&s, &key, &lines)["accepted"], 50);
    }
    let (code, h) = healthz(&s);
    assert_eq!(
        (code, h["integrity"]["status"].as_str()),
        (200, Some("ok")),
        "{h}"
    );
    s.stop();

    let marked = events_of_kind_user(&dir, "user-5-25");
    corrupt_page_with(&dir.join("audit.db"), b"user-5-25");

    let s = Server::start(&dir);
    let h = wait_for_secs("the integrity check to fail", 30, || {
        let (code, h) = healthz(&s);
        (code == 503).then_some(h)
    });
    assert_eq!(h["status"], "failing");
    assert_eq!(h["integrity"]["status"], "failing");
    // Still writable: the damage is to history; the token service keeps answering.
    assert_eq!(h["audit_store"]["writable"], true);
    let f = &h["integrity"]["failure"];
    assert_eq!(f["check"], "pages");
    let first_bad = f["row_id"].as_i64().expect("the first bad row is named");
    assert!(
        first_bad > 1 && first_bad <= marked,
        "row {first_bad} (marked {marked})"
    );
    let msg = f["message"].as_str().unwrap();
    assert!(
        msg.contains("page check failed") && msg.contains("malformed"),
        "{msg}"
    );
    let metrics = http()
        .get(s.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        metrics.contains("tokenwatch_audit_integrity_failures_total 1"),
        "{metrics}"
    );
    assert!(metrics.contains("tokenwatch_audit_integrity_ok 0"));
    let recorded = events_of(&s, "audit.integrity_failed");
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].detail["first_bad_row"], first_bad);
    s.stop();
    assert!(log_text(&dir).contains("AUDIT INTEGRITY CHECK FAILED"));
    // And the offline check agrees: the record is damaged.
    let out = cli(&dir, &["audit", "verify"], "");
    assert_ne!(out.status, 0, "{}", out.stdout);
}

fn events_of_kind_user(dir: &Path, user: &str) -> i64 {
    let c = Connection::open_with_flags(dir.join("audit.db"), OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    c.query_row("SELECT id FROM events WHERE username = ?1", [user], |r| {
        r.get(0)
    })
    .unwrap()
}

#[test]
fn retention_zero_is_refused_at_start_with_what_to_write_instead() {
    let (_tmp, dir) = data_dir();
    std::fs::create_dir_all(&dir).unwrap();
    write_config(&dir, "[audit]\nretention_days = 0\n");
    let out = cli(&dir, &["serve", "--listen", "127.0.0.1:0"], "");
    assert_ne!(out.status, 0);
    assert!(
        out.stderr.contains("retention_days") && out.stderr.contains("\"forever\""),
        "{}",
        out.stderr
    );
    assert!(
        !dir.join("audit.db").exists(),
        "nothing was opened, let alone pruned"
    );
}

#[test]
fn backdated_events_cannot_outlive_retention_and_each_prune_is_recorded() {
    let (_tmp, dir) = data_dir();
    let day = 86_400;
    // 40 events recorded three days ago (by a store with no retention then).
    let store = audit_store::AuditStore::open(audit_store::StoreConfig::in_data_dir(&dir)).unwrap();
    let old: Vec<_> = (0..40)
        .map(|i| {
            audit_store::NewEvent::new("token.rejected", audit_store::Outcome::Failure)
                .with_time_us(now_us() - 3 * day * 1_000_000 + i)
                .with_username(format!("old{i}"))
        })
        .collect();
    store.writer().record_many_blocking(old).unwrap();
    store.shutdown().unwrap();
    let key = add_source(&dir);

    // With a one-day window they go at start (the writer prunes at once), and the
    // prune records what it deleted.
    write_config(&dir, "[audit]\nretention_days = 1\n");
    let s = Server::start(&dir);
    let pruned = wait_for_secs("the prune", 30, || {
        let p = events_of(&s, "audit.pruned");
        (!p.is_empty()).then_some(p)
    });
    let d = &pruned[0].detail;
    assert_eq!(
        (
            d["first_id"].as_i64(),
            d["last_id"].as_i64(),
            d["rows"].as_i64()
        ),
        (Some(1), Some(40), Some(40)),
        "{d}"
    );
    assert!(
        d["oldest_event"].is_string() && d["newest_event"].is_string() && d["cutoff"].is_string(),
        "{d}"
    );

    // A backdated event older than the window is refused at ingest with a per-line
    // error that says why, instead of being recorded behind newer rows where
    // retention (which can only cut the chain's oldest end) could not reach it.
    let lines = format!(
        "{{\"time\":\"{}\",\"kind\":\"token.rejected\",\"outcome\":\"failure\",\"username\":\"backdated\"}}\n{{\"time\":\"{}\",\"kind\":\"token.rejected\",\"outcome\":\"failure\",\"username\":\"recent\"}}\n",
        rfc3339_secs_ago(2 * day),
        rfc3339_secs_ago(3600),
    );
    let resp = ingest(&s, &key, &lines);
    assert_eq!(resp["accepted"], 1, "{resp}");
    let e = resp["errors"][0]["error"].as_str().unwrap();
    assert!(e.contains("older than the audit retention window"), "{e}");
    // What is left is all within the window.
    let cutoff_us = now_us() - day * 1_000_000;
    let all = tokenwatch_e2e::audit_reader(&s)
        .query_events(&Default::default(), None, 10_000)
        .unwrap()
        .items;
    assert!(all.iter().any(|e| e.username.as_deref() == Some("recent")));
    assert!(
        all.iter().all(|e| e.time_us >= cutoff_us),
        "no event older than the window is left"
    );
    s.stop();
    let out = cli(&dir, &["audit", "verify"], "");
    assert_eq!(out.status, 0, "{}{}", out.stdout, out.stderr);
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

fn rfc3339_secs_ago(secs: i64) -> String {
    audit_store::rfc3339_us(now_us() - secs * 1_000_000)
}
