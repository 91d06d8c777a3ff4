//! Writer, schema, queries, alerts, retention and export against real database files.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use audit_store::*;
use rusqlite::Connection;

use common::{cfg, sample, DAY_US, HOUR_US};

fn schema_of(path: &std::path::Path) -> Vec<String> {
    let c = Connection::open(path).unwrap();
    let mut st = c.prepare("SELECT type || ' ' || name || ': ' || coalesce(sql, '') FROM sqlite_master ORDER BY type, name").unwrap();
    // Compare without whitespace: the frozen v1 text is formatted differently.
    st.query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|s| s.unwrap().split_whitespace().collect::<String>())
        .collect()
}

fn user_version(path: &std::path::Path) -> i64 {
    Connection::open(path)
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn fresh_database_is_migrated_to_the_current_version_in_wal_mode() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    AuditStore::open(c.clone()).unwrap().shutdown().unwrap();
    assert_eq!(user_version(&c.db_path), SCHEMA_VERSION);
    let mode: String = Connection::open(&c.db_path)
        .unwrap()
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&c.key_dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    for f in std::fs::read_dir(&c.key_dir).unwrap() {
        assert_eq!(
            f.unwrap().metadata().unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    assert!(c.checkpoint_dir.join("checkpoint-ed25519.pub").exists());
}

/// The version-1 schema as shipped, frozen here so the upgrade path is tested for real.
const FROZEN_V1: &str = "
CREATE TABLE events (id INTEGER PRIMARY KEY, time_us INTEGER NOT NULL, kind TEXT NOT NULL,
    outcome TEXT NOT NULL CHECK (outcome IN ('success', 'failure')), reason TEXT, subject TEXT, username TEXT,
    client_ip TEXT, user_agent TEXT, method TEXT, path TEXT, jti TEXT, kid TEXT, alg TEXT, token_fp TEXT,
    source TEXT NOT NULL, detail TEXT NOT NULL, content_mac BLOB NOT NULL, hash BLOB NOT NULL);
CREATE TABLE alerts (id INTEGER PRIMARY KEY, time_us INTEGER NOT NULL, updated_at_us INTEGER NOT NULL,
    detector TEXT NOT NULL, rule TEXT NOT NULL, severity TEXT NOT NULL, subject TEXT, client_ip TEXT,
    summary TEXT NOT NULL, group_key TEXT NOT NULL, evidence TEXT NOT NULL, count INTEGER NOT NULL DEFAULT 1,
    status TEXT NOT NULL DEFAULT 'open', status_by TEXT, status_at_us INTEGER, status_note TEXT);
CREATE UNIQUE INDEX alerts_open_incident ON alerts(detector, group_key) WHERE status = 'open';
CREATE TABLE chain_anchor (singleton INTEGER PRIMARY KEY CHECK (singleton = 1), last_pruned_id INTEGER NOT NULL,
    last_pruned_hash BLOB NOT NULL, pruned_total INTEGER NOT NULL, updated_us INTEGER NOT NULL);
PRAGMA user_version = 1;
";

#[test]
fn version_1_database_is_upgraded_in_place_keeping_its_rows() {
    // A genuine v1 database: written by the current code, then rolled back to the frozen
    // v1 schema with its rows copied over, as a v1 binary would have left it.
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let store = AuditStore::open(c.clone()).unwrap();
    let t0 = 1_700_000_000_000_000;
    store
        .writer()
        .record_many_blocking((0..30).map(|i| sample(i, t0 + i * 60_000_000)).collect())
        .unwrap();
    store.shutdown().unwrap();
    let v1_path = dir.path().join("v1.db");
    {
        let v1 = Connection::open(&v1_path).unwrap();
        v1.execute_batch(FROZEN_V1).unwrap();
        v1.execute("ATTACH ?1 AS cur", [c.db_path.to_str().unwrap()])
            .unwrap();
        v1.execute_batch("INSERT INTO events SELECT * FROM cur.events; DETACH cur;")
            .unwrap();
    }
    std::fs::remove_file(&c.db_path).unwrap();
    let _ = std::fs::remove_file(c.db_path.with_extension("db-wal"));
    let _ = std::fs::remove_file(c.db_path.with_extension("db-shm"));
    std::fs::rename(&v1_path, &c.db_path).unwrap();
    assert_eq!(user_version(&c.db_path), 1);

    let store = AuditStore::open(c.clone()).unwrap();
    assert_eq!(user_version(&c.db_path), SCHEMA_VERSION);
    let r = store.reader().unwrap();
    // The rollup introduced in v2 was back-filled from the v1 rows.
    let counts = r
        .counts_over_time(TimeRange::new(0, i64::MAX / 2), Bucket::Day)
        .unwrap();
    assert_eq!(counts.iter().map(|(_, s, f)| s + f).sum::<u64>(), 30);
    assert_eq!(store.writer().record_blocking(sample(99, 0)).unwrap(), 31);
    store.shutdown().unwrap();
    assert!(verify_chain(&c).unwrap().is_ok());

    // Same schema as a database created fresh at the current version.
    let fresh = tempfile::tempdir().unwrap();
    let fc = cfg(fresh.path());
    AuditStore::open(fc.clone()).unwrap().shutdown().unwrap();
    assert_eq!(schema_of(&c.db_path), schema_of(&fc.db_path));
}

#[test]
fn a_newer_database_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    AuditStore::open(c.clone()).unwrap().shutdown().unwrap();
    Connection::open(&c.db_path)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    let before = schema_of(&c.db_path);
    let err = AuditStore::open(c.clone())
        .err()
        .expect("a newer database must be refused");
    assert!(matches!(err, StoreError::SchemaTooNew { found: 99, .. }));
    assert_eq!(
        err.to_string(),
        format!("audit database schema version 99 is newer than this tokenwatch (knows up to {SCHEMA_VERSION}); upgrade tokenwatch")
    );
    assert_eq!(user_version(&c.db_path), 99);
    assert_eq!(schema_of(&c.db_path), before);
}

#[test]
fn an_acknowledged_event_is_already_visible_to_another_connection() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let store = AuditStore::open(c.clone()).unwrap();
    let w = store.writer();
    let other = Connection::open(&c.db_path).unwrap();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let w = w.clone();
            let path = c.db_path.clone();
            std::thread::spawn(move || {
                let other = Connection::open(path).unwrap();
                for i in 0..50 {
                    let id = w
                        .record_blocking(
                            sample(t * 100 + i, 0).with_detail(serde_json::json!({"t": t})),
                        )
                        .unwrap();
                    let n: i64 = other
                        .query_row("SELECT count(*) FROM events WHERE id = ?1", [id], |r| {
                            r.get(0)
                        })
                        .unwrap();
                    assert_eq!(n, 1, "acked id {id} not visible");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let n: i64 = other
        .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 200);
    let h = store.health();
    assert!(h.writable && h.last_error.is_none());
    assert_eq!(h.events_committed, 200);
    store.shutdown().unwrap();
    assert!(verify_chain(&c).unwrap().is_ok());
}

/// Minimal executor so the async API is exercised without pulling in a runtime.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    struct W(std::thread::Thread);
    impl std::task::Wake for W {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.unpark()
        }
    }
    let waker = std::sync::Arc::new(W(std::thread::current())).into();
    let mut cx = std::task::Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

#[test]
fn async_record_resolves_after_commit_and_wakes_the_commit_watch() {
    let dir = tempfile::tempdir().unwrap();
    let store = AuditStore::open(cfg(dir.path())).unwrap();
    let watch = store.committed_watch();
    let waiter =
        std::thread::spawn(move || watch.wait_for_commit_after(0, Duration::from_secs(10)));
    let w = store.writer();
    let id =
        block_on(w.record(NewEvent::new(kinds::TOKEN_ISSUED, Outcome::Success).with_jti("j1")))
            .unwrap();
    assert_eq!(id, 1);
    assert_eq!(waiter.join().unwrap(), 1);
    assert_eq!(
        store
            .committed_watch()
            .wait_for_commit_after(1, Duration::from_millis(20)),
        1
    );
    let ev = store.reader().unwrap().get_event(1).unwrap().unwrap();
    assert_eq!(ev.jti.as_deref(), Some("j1"));
    assert_eq!(ev.hash.len(), 64);
    store.shutdown().unwrap();
}

#[test]
fn a_locked_database_fails_loudly_and_the_store_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let store = AuditStore::open(c.clone()).unwrap();
    let w = store.writer();
    assert_eq!(w.record_blocking(sample(1, 0)).unwrap(), 1);

    let locker = Connection::open(&c.db_path).unwrap();
    locker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let err = w.record_blocking(sample(2, 0)).unwrap_err();
    assert!(matches!(err, StoreError::Unwritable(_)), "{err}");
    assert!(err.to_string().contains("NOT committed"));
    let h = store.health();
    assert!(!h.writable);
    assert!(h.last_error.unwrap().contains("locked"));
    let alert_err = w.insert_alert(NewAlert {
        time_us: 0,
        detector: "d".into(),
        rule: "r".into(),
        severity: Severity::Low,
        subject: None,
        client_ip: None,
        summary: "s".into(),
        group_key: "g".into(),
        evidence: vec![],
    });
    assert!(matches!(alert_err, Err(StoreError::Unwritable(_))));

    locker.execute_batch("ROLLBACK").unwrap();
    // The failed event was not committed; the next one takes its id and the chain holds.
    assert_eq!(w.record_blocking(sample(3, 0)).unwrap(), 2);
    assert!(store.health().writable);
    store.shutdown().unwrap();
    let r = verify_chain(&c).unwrap();
    assert!(r.is_ok(), "{r}");
    assert_eq!(r.rows_checked, 2);
}

#[test]
fn submissions_after_shutdown_are_refused_not_lost() {
    let dir = tempfile::tempdir().unwrap();
    let store = AuditStore::open(cfg(dir.path())).unwrap();
    let w = store.writer();
    let pending: Vec<_> = (0..100).map(|i| w.submit(sample(i, 0)).unwrap()).collect();
    store.shutdown().unwrap();
    // Everything queued before shutdown was committed.
    for (i, a) in pending.into_iter().enumerate() {
        assert_eq!(a.wait().unwrap(), i as i64 + 1);
    }
    assert!(matches!(
        w.record_blocking(sample(0, 0)),
        Err(StoreError::WriterGone)
    ));
}

#[test]
fn alerts_are_one_per_open_incident() {
    let dir = tempfile::tempdir().unwrap();
    let store = AuditStore::open(cfg(dir.path())).unwrap();
    let w = store.writer();
    let alert = |ev: Vec<i64>, sev| NewAlert {
        time_us: 0,
        detector: "bruteforce".into(),
        rule: "5-failures-per-minute".into(),
        severity: sev,
        subject: None,
        client_ip: Some("10.0.0.7".into()),
        summary: "many failures".into(),
        group_key: "ip:10.0.0.7".into(),
        evidence: ev,
    };
    let a = w.insert_alert(alert(vec![1, 2], Severity::Medium)).unwrap();
    let b = w.insert_alert(alert(vec![2, 3], Severity::High)).unwrap();
    assert_eq!(a, b);
    let other = w
        .insert_alert(NewAlert {
            group_key: "ip:10.0.0.8".into(),
            ..alert(vec![9], Severity::Low)
        })
        .unwrap();
    assert_ne!(other, a);
    let r = store.reader().unwrap();
    let got = r.get_alert(a).unwrap().unwrap();
    assert_eq!(
        (got.count, got.evidence.clone(), got.severity, got.status),
        (2, vec![1, 2, 3], Severity::High, AlertStatus::Open)
    );

    w.update_alert_status(
        a,
        AlertStatus::Closed,
        "analyst@example",
        Some("blocked at firewall"),
    )
    .unwrap();
    let closed = r.get_alert(a).unwrap().unwrap();
    assert_eq!(closed.status, AlertStatus::Closed);
    assert_eq!(closed.status_by.as_deref(), Some("analyst@example"));
    assert!(closed.status_at_us.is_some());
    // A closed incident does not absorb new evidence: a new alert opens.
    let c = w.insert_alert(alert(vec![4], Severity::Low)).unwrap();
    assert_ne!(c, a);
    let reopen = w
        .update_alert_status(a, AlertStatus::Open, "analyst", None)
        .unwrap_err();
    assert!(reopen.to_string().contains("already open"), "{reopen}");
    assert!(matches!(
        w.update_alert_status(999, AlertStatus::Closed, "x", None),
        Err(StoreError::AlertNotFound(999))
    ));
    // The refused request did not poison the writer.
    assert!(store.health().writable);

    let open = r
        .list_alerts(
            &AlertFilter {
                status: Some(AlertStatus::Open),
                ..Default::default()
            },
            None,
            10,
        )
        .unwrap();
    assert_eq!(
        open.items.iter().map(|a| a.id).collect::<Vec<_>>(),
        vec![c, other]
    );
    let high = r
        .list_alerts(
            &AlertFilter {
                min_severity: Some(Severity::High),
                ..Default::default()
            },
            None,
            10,
        )
        .unwrap();
    assert_eq!(high.items.iter().map(|a| a.id).collect::<Vec<_>>(), vec![a]);
    let p1 = r.list_alerts(&AlertFilter::default(), None, 2).unwrap();
    let p2 = r.list_alerts(&AlertFilter::default(), p1.next, 2).unwrap();
    assert_eq!(p1.items.len() + p2.items.len(), 3);
    assert!(p2.next.is_none());
    store.shutdown().unwrap();
}

fn all_events(r: &AuditReader) -> Vec<StoredEvent> {
    r.events_after(0, 10_000).unwrap()
}

#[test]
fn keyset_pages_cover_each_filter_exactly_once_newest_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    // The indexer only runs when asked, so the index state below is exactly as set up.
    c.index_refresh = Duration::from_secs(3600);
    let store = AuditStore::open(c).unwrap();
    let t0 = 1_700_000_000_000_000;
    // Duplicate timestamps on purpose: the cursor must break ties by id.
    let w = store.writer();
    w.record_many_blocking((0..130).map(|i| sample(i, t0 + (i / 3) * 1_000)).collect())
        .unwrap();
    store.index_now().unwrap();
    w.record_many_blocking(
        (130..250)
            .map(|i| sample(i, t0 + (i / 3) * 1_000))
            .collect(),
    )
    .unwrap();
    // Half the rows are in the index, half only in the record: pages must cross over.
    assert_eq!(store.health().index_lag, 120);
    let r = store.reader().unwrap();
    check_keyset_pages(&r, t0);
    store.index_now().unwrap();
    assert_eq!(store.health().index_lag, 0);
    check_keyset_pages(&r, t0);
    store.shutdown().unwrap();
}

fn check_keyset_pages(r: &AuditReader, t0: i64) {
    let all = all_events(r);
    type Case = (EventFilter, Box<dyn Fn(&StoredEvent) -> bool>);
    let filters: Vec<Case> = vec![
        (EventFilter::default(), Box::new(|_| true)),
        (
            EventFilter {
                kind: Some("auth.login.failure".into()),
                ..Default::default()
            },
            Box::new(|e| e.kind == "auth.login.failure"),
        ),
        (
            EventFilter {
                outcome: Some(Outcome::Success),
                ..Default::default()
            },
            Box::new(|e| e.outcome == Outcome::Success),
        ),
        (
            EventFilter {
                reason: Some("expired".into()),
                ..Default::default()
            },
            Box::new(|e| e.reason.as_deref() == Some("expired")),
        ),
        (
            EventFilter {
                subject_or_username: Some("user1".into()),
                ..Default::default()
            },
            Box::new(|e| {
                e.subject.as_deref() == Some("user1") || e.username.as_deref() == Some("user1")
            }),
        ),
        (
            EventFilter {
                client_ip: Some("10.0.0.3".into()),
                ..Default::default()
            },
            Box::new(|e| e.client_ip.as_deref() == Some("10.0.0.3")),
        ),
        (
            EventFilter {
                jti: Some("jti-42".into()),
                ..Default::default()
            },
            Box::new(|e| e.jti.as_deref() == Some("jti-42")),
        ),
        (
            EventFilter {
                source: Some("elsewhere".into()),
                ..Default::default()
            },
            Box::new(|_| false),
        ),
        (
            EventFilter {
                from_us: Some(t0 + 10_000),
                to_us: Some(t0 + 50_000),
                outcome: Some(Outcome::Failure),
                ..Default::default()
            },
            Box::new(move |e| {
                e.time_us >= t0 + 10_000 && e.time_us < t0 + 50_000 && e.outcome == Outcome::Failure
            }),
        ),
    ];
    for (f, pred) in filters {
        let mut want: Vec<i64> = all.iter().filter(|e| pred(e)).map(|e| e.id).collect();
        want.reverse(); // times ascend with id here, so newest first = id descending
        let mut got = Vec::new();
        let mut cursor = None;
        loop {
            let page = r.query_events(&f, cursor, 7).unwrap();
            assert!(page.items.len() <= 7);
            got.extend(page.items.iter().map(|e| e.id));
            match page.next {
                Some(c) => {
                    // Cursors survive a round trip through a query string.
                    cursor = Some(c.to_string().parse().unwrap());
                }
                None => break,
            }
        }
        assert_eq!(got, want, "filter {f:?}");
    }
}

fn brute_top(
    all: &[StoredEvent],
    range: TimeRange,
    key: impl Fn(&StoredEvent) -> Option<String>,
) -> HashMap<String, u64> {
    let mut m = HashMap::new();
    for e in all
        .iter()
        .filter(|e| e.time_us >= range.from_us && e.time_us < range.to_us)
    {
        if let Some(k) = key(e) {
            *m.entry(k).or_insert(0) += 1;
        }
    }
    m
}

fn check_aggregates(r: &AuditReader, range: TimeRange) {
    let all = all_events(r);
    let ips = r.top_client_ips(range, None, 100).unwrap();
    assert_eq!(
        ips.into_iter().collect::<HashMap<_, _>>(),
        brute_top(&all, range, |e| e.client_ip.clone()),
        "{range:?}"
    );
    let fails = r
        .top_client_ips(range, Some(Outcome::Failure), 100)
        .unwrap();
    assert_eq!(
        fails.into_iter().collect::<HashMap<_, _>>(),
        brute_top(&all, range, |e| (e.outcome == Outcome::Failure)
            .then(|| e.client_ip.clone())
            .flatten())
    );
    let users = r.top_users(range, None, 100).unwrap();
    assert_eq!(
        users.into_iter().collect::<HashMap<_, _>>(),
        brute_top(&all, range, |e| e.username.clone().or(e.subject.clone()))
    );
    let reasons = r.failure_reasons(range, 100).unwrap();
    assert_eq!(
        reasons.iter().cloned().collect::<HashMap<_, _>>(),
        brute_top(&all, range, |e| e.reason.clone())
    );
    assert!(
        reasons.windows(2).all(|w| w[0].1 >= w[1].1),
        "sorted by count"
    );
    for b in [Bucket::Minute, Bucket::Hour, Bucket::Day] {
        let got = r.counts_over_time(range, b).unwrap();
        let mut want: HashMap<i64, (u64, u64)> = HashMap::new();
        for e in all
            .iter()
            .filter(|e| e.time_us >= range.from_us && e.time_us < range.to_us)
        {
            let k = e.time_us - e.time_us.rem_euclid(b.micros());
            let v = want.entry(k).or_default();
            if e.outcome == Outcome::Success {
                v.0 += 1
            } else {
                v.1 += 1
            }
        }
        assert_eq!(got.len(), want.len(), "{b:?} {range:?}");
        for (k, s, f) in got {
            assert_eq!(want[&k], (s, f), "{b:?} bucket {k}");
        }
    }
}

#[test]
fn aggregates_match_a_brute_force_count_below_and_above_the_index_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    c.index_refresh = Duration::from_secs(3600);
    let t0 = 1_700_006_400_000_000; // a UTC midnight
    let store = AuditStore::open(c.clone()).unwrap();
    // ~5 days of events, every 17 minutes and a bit, so ranges cut buckets at every level.
    store
        .writer()
        .record_many_blocking(
            (0..420)
                .map(|i| sample(i, t0 + i * 1_021_000_000 + 7))
                .collect(),
        )
        .unwrap();
    store.shutdown().unwrap(); // indexes everything, rollup included
    let store = AuditStore::open(c).unwrap();
    store.index_now().unwrap();
    // And some that are only in the record, above the index watermark.
    store
        .writer()
        .record_many_blocking(
            (420..460)
                .map(|i| sample(i, t0 + (i - 400) * 3_333_000_000))
                .collect(),
        )
        .unwrap();
    assert_eq!(store.health().index_lag, 40);
    let r = store.reader().unwrap();
    let ranges = [
        TimeRange::new(0, i64::MAX / 2),
        TimeRange::new(
            t0 + 90 * 60_000_000 + 123,
            t0 + 3 * DAY_US + 5 * HOUR_US + 17,
        ),
        TimeRange::new(t0 + DAY_US, t0 + 2 * DAY_US),
        TimeRange::new(t0 + 5 * 60_000_000, t0 + 5 * 60_000_000 + 1),
    ];
    for range in ranges {
        check_aggregates(&r, range);
    }
    store.index_now().unwrap();
    assert_eq!(store.health().index_lag, 0);
    for range in ranges {
        check_aggregates(&r, range);
    }
    store.shutdown().unwrap();
}

#[test]
fn retention_prunes_old_rows_and_what_remains_still_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    c.retention = Some(Duration::from_secs(86_400));
    c.retention_interval = Duration::from_secs(3600);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64;
    // Written without retention, then reopened with it: the writer prunes on its own
    // shortly after start; prune_now makes sure that has happened.
    let mut no_retention = c.clone();
    no_retention.retention = None;
    let store = AuditStore::open(no_retention).unwrap();
    let w = store.writer();
    w.record_many_blocking(
        (0..30)
            .map(|i| sample(i, now - 10 * DAY_US + i * HOUR_US))
            .collect(),
    )
    .unwrap();
    w.record_many_blocking((30..40).map(|i| sample(i, now - HOUR_US + i)).collect())
        .unwrap();
    store.shutdown().unwrap();
    let store = AuditStore::open(c.clone()).unwrap();
    let w = store.writer();
    store.prune_now().unwrap();
    assert_eq!(store.prune_now().unwrap(), 0, "nothing more is old enough");
    let pruned: i64 = Connection::open(&c.db_path)
        .unwrap()
        .query_row("SELECT pruned_total FROM chain_anchor", [], |r| r.get(0))
        .unwrap();
    assert_eq!(pruned, 30);
    w.record_many_blocking((40..45).map(|i| sample(i, 0)).collect())
        .unwrap();
    let r = store.reader().unwrap();
    let left = all_events(&r);
    assert_eq!(left.first().map(|e| e.id), Some(31));
    // 10 kept, the prune's own record of what it deleted, 5 new.
    assert_eq!(left.len(), 16);
    let pruned = left.iter().find(|e| e.kind == kinds::AUDIT_PRUNED).unwrap();
    assert_eq!(pruned.detail["first_id"], 1);
    assert_eq!(pruned.detail["last_id"], 30);
    assert_eq!(pruned.detail["rows"], 30);
    assert_eq!(pruned.detail["oldest_event"], rfc3339_us(now - 10 * DAY_US));
    // The rollup lost exactly the pruned rows' counts.
    check_aggregates(&r, TimeRange::new(0, i64::MAX / 2));
    store.shutdown().unwrap();
    let rep = verify_chain(&c).unwrap();
    assert!(rep.is_ok(), "{rep}");
    assert_eq!(rep.rows_checked, 16);

    // Deleting more old rows and moving the anchor to hide it is not retention.
    let conn = Connection::open(&c.db_path).unwrap();
    conn.execute_batch(
        "DELETE FROM events WHERE id <= 33;
         UPDATE chain_anchor SET last_pruned_id = 33, last_pruned_hash = (SELECT hash FROM events WHERE id = 34);",
    )
    .unwrap();
    let p = verify_chain(&c).unwrap().first_problem.unwrap();
    assert_eq!((p.kind, p.row_id), (ProblemKind::Deleted, 31));
}

#[test]
fn csv_export_round_trips_awkward_values_and_defuses_formulas() {
    let dir = tempfile::tempdir().unwrap();
    let store = AuditStore::open(cfg(dir.path())).unwrap();
    // (stored value, what a spreadsheet must be given)
    let cases = [
        ("plain", "plain"),
        ("comma, inside", "comma, inside"),
        ("quote \" inside", "quote \" inside"),
        ("new\nline and\r\nCRLF", "new\nline and\r\nCRLF"),
        ("naïve 用户 😀", "naïve 用户 😀"),
        (
            "=HYPERLINK(\"http://evil\",\"x\")",
            "'=HYPERLINK(\"http://evil\",\"x\")",
        ),
        ("+1", "'+1"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tTAB", "'\tTAB"),
        ("\rCR", "'\rCR"),
        ("", ""),
        // Safe for a `,` reader, a formula where the list separator is `;`.
        (
            "x;=HYPERLINK(\"http://evil\")",
            "x;'=HYPERLINK(\"http://evil\")",
        ),
        ("a, -1;@b", "a, '-1;'@b"),
    ];
    let w = store.writer();
    for (i, (v, _)) in cases.iter().enumerate() {
        w.record_blocking(
            NewEvent::new(kinds::AUTH_LOGIN_FAILURE, Outcome::Failure)
                .with_time_us(1_714_564_800_000_123 + i as i64)
                .with_username(*v)
                .with_client_ip(*v)
                .with_user_agent(*v)
                .with_path(*v)
                .with_detail(serde_json::json!({ "note": v })),
        )
        .unwrap();
    }
    let r = store.reader().unwrap();
    let mut out = Vec::new();
    let n = r
        .export_events_csv(&EventFilter::default(), &mut out)
        .unwrap()
        .rows;
    assert_eq!(n, cases.len() as u64);
    let mut rd = csv::Reader::from_reader(out.as_slice());
    assert_eq!(
        rd.headers().unwrap().iter().collect::<Vec<_>>(),
        CSV_EVENT_COLUMNS
    );
    let col = |name: &str| CSV_EVENT_COLUMNS.iter().position(|c| *c == name).unwrap();
    let rows: Vec<csv::StringRecord> = rd.records().map(Result::unwrap).collect();
    for (row, (v, want)) in rows.iter().zip(cases) {
        for c in ["username", "user_agent", "path"] {
            assert_eq!(&row[col(c)], want, "column {c}");
        }
        // Inside the detail JSON the value does not start the cell; a part after a
        // `;` or `,` still gets its quote.
        let inner = if want.starts_with('\'') { v } else { want };
        let detail: serde_json::Value = serde_json::from_str(&row[col("detail")]).unwrap();
        assert_eq!(detail["note"], inner);
        assert_eq!(&row[col("outcome")], "failure");
        assert_eq!(row[col("hash")].len(), 64);
    }
    assert_eq!(&rows[0][col("time")], "2024-05-01T12:00:00.000123Z");
    // Every field quoted, so no reader splits or trims one.
    let first_line = std::str::from_utf8(&out).unwrap().lines().nth(1).unwrap();
    assert!(
        first_line.starts_with("\"") && first_line.contains("\",\"plain\",\""),
        "{first_line}"
    );

    // The per-user and per-IP report downloads are defused the same way.
    let mut users = Vec::new();
    r.export_user_summary_csv(&EventFilter::default(), &mut users)
        .unwrap();
    let mut ips = Vec::new();
    r.export_ip_summary_csv(&EventFilter::default(), &mut ips)
        .unwrap();
    for text in [users, ips] {
        let text = String::from_utf8(text).unwrap();
        assert!(text.starts_with('"'), "{text}");
        let keys: Vec<String> = csv::Reader::from_reader(text.as_bytes())
            .records()
            .map(|r| r.unwrap()[0].to_string())
            .collect();
        for (_, want) in cases.iter().filter(|(v, _)| !v.is_empty()) {
            assert!(keys.iter().any(|k| k == want), "{want:?} not in {keys:?}");
        }
    }

    // A filter applies to the export too.
    let mut out = Vec::new();
    let n = r
        .export_events_csv(
            &EventFilter {
                subject_or_username: Some("plain".into()),
                ..Default::default()
            },
            &mut out,
        )
        .unwrap()
        .rows;
    assert_eq!(n, 1);

    w.insert_alert(NewAlert {
        time_us: 1_714_564_800_000_000,
        detector: "bruteforce".into(),
        rule: "r1".into(),
        severity: Severity::High,
        subject: Some("=cmd|' /C calc'!A0".into()),
        client_ip: Some("10.0.0.1;=1".into()),
        summary: "5 failures, \"quoted\"\nnext line".into(),
        group_key: "ip:10.0.0.1".into(),
        evidence: vec![1, 2, 3],
    })
    .unwrap();
    let mut out = Vec::new();
    assert_eq!(
        r.export_alerts_csv(&AlertFilter::default(), &mut out)
            .unwrap()
            .rows,
        1
    );
    let mut rd = csv::Reader::from_reader(out.as_slice());
    assert_eq!(
        rd.headers().unwrap().iter().collect::<Vec<_>>(),
        CSV_ALERT_COLUMNS
    );
    let row = rd.records().next().unwrap().unwrap();
    let acol = |name: &str| CSV_ALERT_COLUMNS.iter().position(|c| *c == name).unwrap();
    assert_eq!(&row[acol("subject")], "'=cmd|' /C calc'!A0");
    assert_eq!(&row[acol("client_ip")], "10.0.0.1;'=1");
    assert_eq!(&row[acol("summary")], "5 failures, \"quoted\"\nnext line");
    assert_eq!(&row[acol("evidence")], "1 2 3");
    assert_eq!(&row[acol("time")], "2024-05-01T12:00:00.000000Z");
    store.shutdown().unwrap();
}

#[test]
fn security_log_has_one_ecs_line_per_committed_event() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    let logdir = dir.path().join("seclog");
    c.security_log_dir = Some(logdir.clone());
    let store = AuditStore::open(c).unwrap();
    let w = store.writer();
    w.record_blocking(
        NewEvent::new(kinds::TOKEN_REJECTED, Outcome::Failure)
            .with_time_us(1_714_564_800_000_123)
            .with_reason("bad_signature")
            .with_username("alice")
            .with_subject("u-1")
            .with_client_ip("192.0.2.1")
            .with_user_agent("curl/8")
            .with_method("GET")
            .with_path("/api/v1/me")
            .with_jti("j-9")
            .with_alg("HS256")
            .with_token_fp("ab12"),
    )
    .unwrap();
    w.record_blocking(NewEvent::new(kinds::ADMIN_LOGIN, Outcome::Success))
        .unwrap();
    store.shutdown().unwrap();
    let files: Vec<_> = std::fs::read_dir(&logdir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1);
    let name = files[0].file_name().unwrap().to_str().unwrap().to_owned();
    assert!(
        name.starts_with("security.") && name.ends_with(".log"),
        "{name}"
    );
    let text = std::fs::read_to_string(&files[0]).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    let l = &lines[0];
    assert_eq!(l["@timestamp"], "2024-05-01T12:00:00.000123Z");
    assert_eq!(l["event"]["action"], "token.rejected");
    assert_eq!(l["event"]["outcome"], "failure");
    assert_eq!(l["event"]["reason"], "bad_signature");
    assert_eq!(l["event"]["category"][0], "authentication");
    assert_eq!(l["user"]["name"], "alice");
    assert_eq!(l["user"]["id"], "u-1");
    assert_eq!(l["source"]["ip"], "192.0.2.1");
    assert_eq!(l["user_agent"]["original"], "curl/8");
    assert_eq!(l["http"]["request"]["method"], "GET");
    assert_eq!(l["url"]["path"], "/api/v1/me");
    assert_eq!(l["tokenwatch"]["jti"], "j-9");
    assert_eq!(l["tokenwatch"]["token_fp"], "ab12");
    assert_eq!(lines[1]["event"]["category"][0], "authentication");
    assert_eq!(lines[1]["event"]["type"][0], "start");
    assert!(lines[1].get("user").is_none());
}
