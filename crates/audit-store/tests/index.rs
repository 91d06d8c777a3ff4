//! The derived query index: rebuilt from the record whenever it cannot be trusted,
//! and never needed for a correct answer.

mod common;

use std::time::Duration;

use audit_store::*;
use common::{cfg, sample};

const T0: i64 = 1_700_000_000_000_000;

/// Failure ids, ids from one IP, top IPs and a CSV export.
type Answers = (Vec<i64>, Vec<i64>, Vec<(String, u64)>, String);

/// What a user sees through the filtered queries, the charts and the CSV export.
fn answers(r: &AuditReader) -> Answers {
    let ids = |f: EventFilter| {
        r.query_events(&f, None, 10_000)
            .unwrap()
            .items
            .iter()
            .map(|e| e.id)
            .collect::<Vec<_>>()
    };
    let failures = ids(EventFilter {
        outcome: Some(Outcome::Failure),
        ..Default::default()
    });
    let from_ip = ids(EventFilter {
        client_ip: Some("10.0.0.3".into()),
        ..Default::default()
    });
    let top = r
        .top_client_ips(TimeRange::new(0, i64::MAX / 2), None, 10)
        .unwrap();
    let mut csv = Vec::new();
    r.export_events_csv(
        &EventFilter {
            kind: Some("auth.login.failure".into()),
            ..Default::default()
        },
        &mut csv,
    )
    .unwrap();
    (failures, from_ip, top, String::from_utf8(csv).unwrap())
}

fn write(store: &AuditStore, range: std::ops::Range<i64>) {
    store
        .writer()
        .record_many_blocking(range.map(|i| sample(i, T0 + i * 1_000)).collect())
        .unwrap();
}

/// Writes 300 events, indexes them, does `harm` to the index with the store closed,
/// and checks that the reopened store rebuilds it to the very same answers.
fn survives(harm: impl FnOnce(&StoreConfig)) {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let store = AuditStore::open(c.clone()).unwrap();
    write(&store, 0..300);
    store.index_now().unwrap();
    let before = answers(&store.reader().unwrap());
    assert!(!before.0.is_empty() && !before.1.is_empty() && !before.2.is_empty());
    store.shutdown().unwrap();

    harm(&c);
    let store = AuditStore::open(c.clone()).unwrap();
    assert_eq!(store.index_now().unwrap(), 300);
    assert_eq!(answers(&store.reader().unwrap()), before);
    store.shutdown().unwrap();
}

#[test]
fn a_deleted_index_is_rebuilt_from_the_record_with_the_same_answers() {
    survives(|c| {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", c.index_path().display()));
        }
    });
}

#[test]
fn a_damaged_index_file_is_rebuilt_and_the_store_still_opens() {
    survives(|c| {
        std::fs::write(
            c.index_path(),
            b"not a database, just bytes on disk".repeat(200),
        )
        .unwrap();
    });
}

#[test]
fn an_index_of_another_record_is_rebuilt_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let store = AuditStore::open(c.clone()).unwrap();
    write(&store, 0..300);
    store.shutdown().unwrap();

    // A different record (say, restored from another backup) under the same index.
    let other = tempfile::tempdir().unwrap();
    let mut oc = cfg(other.path());
    oc.key_dir = c.key_dir.clone();
    // Keys without a record look like a deleted record; say it is a new one.
    let (store, _) =
        AuditStore::open_accepting_loss(oc.clone(), "a second record for this test", "test")
            .unwrap();
    write(&store, 1000..1200);
    store.shutdown().unwrap();
    let expected = {
        let store = AuditStore::open(oc.clone()).unwrap();
        let a = answers(&store.reader().unwrap());
        store.shutdown().unwrap();
        a
    };
    // A closed store leaves no WAL behind: the .db file alone is the whole record.
    assert!(!std::path::Path::new(&format!("{}-wal", oc.db_path.display())).exists());
    std::fs::copy(&oc.db_path, &c.db_path).unwrap();
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", c.db_path.display()));
    }
    // Restored with its own checkpoints: a record that does not extend the checkpoints
    // beside it is refused (tests/evidence.rs), which is not what this test is about.
    std::fs::remove_dir_all(&c.checkpoint_dir).unwrap();
    std::fs::create_dir_all(&c.checkpoint_dir).unwrap();
    for f in std::fs::read_dir(&oc.checkpoint_dir).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), c.checkpoint_dir.join(f.file_name())).unwrap();
    }

    let store = AuditStore::open(c.clone()).unwrap();
    store.index_now().unwrap();
    assert_eq!(answers(&store.reader().unwrap()), expected);
    store.shutdown().unwrap();
}

#[test]
fn queries_are_exact_while_the_index_lags_and_health_shows_the_lag() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    c.index_refresh = Duration::from_secs(3600);
    let store = AuditStore::open(c.clone()).unwrap();
    write(&store, 0..100);
    store.index_now().unwrap();
    write(&store, 100..300);
    let r = store.reader().unwrap();
    let lagging = answers(&r);
    assert_eq!(store.health().index_lag, 200);
    store.index_now().unwrap();
    assert_eq!(store.health().index_lag, 0);
    assert_eq!(answers(&r), lagging);
    store.shutdown().unwrap();
}

/// Every report the record can produce for `f`: events, per-user and per-IP CSVs.
fn reports(r: &AuditReader, f: &EventFilter) -> [(String, Exported); 3] {
    let mut out = [Vec::new(), Vec::new(), Vec::new()];
    let ev = r.export_events_csv(f, &mut out[0]).unwrap();
    let users = r.export_user_summary_csv(f, &mut out[1]).unwrap();
    let ips = r.export_ip_summary_csv(f, &mut out[2]).unwrap();
    let [a, b, c] = out.map(|v| String::from_utf8(v).unwrap());
    [(a, ev), (b, users), (c, ips)]
}

#[test]
fn an_edited_index_never_changes_a_report_or_what_the_explorer_shows() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let store = AuditStore::open(c.clone()).unwrap();
    write(&store, 0..300);
    store.index_now().unwrap();
    store.shutdown().unwrap();

    let filters = [
        EventFilter::default(),
        EventFilter {
            subject_or_username: Some("user2".into()),
            ..Default::default()
        },
        EventFilter {
            from_us: Some(T0 + 100 * 1_000),
            to_us: Some(T0 + 200 * 1_000),
            ..Default::default()
        },
        EventFilter {
            client_ip: Some("10.0.0.3".into()),
            outcome: Some(Outcome::Failure),
            ..Default::default()
        },
    ];
    let r = AuditReader::open(&c.db_path).unwrap();
    let before: Vec<_> = filters.iter().map(|f| reports(&r, f)).collect();
    drop(r);

    // Pick the rows to edit by what the index says, so the edits surely touch rows
    // the filters select.
    let ix = rusqlite::Connection::open(c.index_path()).unwrap();
    let user2: i64 = ix
        .query_row(
            "SELECT min(id) FROM ev WHERE username = 'user2' OR subject = 'user2'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let in_range: i64 = ix
        .query_row(
            "SELECT min(id) FROM ev WHERE time_us >= ?1 AND id <> ?2",
            rusqlite::params![T0 + 150 * 1_000, user2],
            |r| r.get(0),
        )
        .unwrap();
    ix.execute_batch(&format!(
            // Hide user2's row from its user, move a row out of the time range, drop
            // every failure from 10.0.0.3, and forge a row the record never had.
            "UPDATE ev SET username = 'someone-else', subject = 'someone-else' WHERE id = {user2};
             UPDATE ev SET time_us = 0 WHERE id = {in_range};
             DELETE FROM ev WHERE client_ip = '10.0.0.3' AND outcome = 'failure';
             INSERT INTO ev (id, time_us, kind, outcome, username, client_ip, source)
                 VALUES (999999, {t}, 'auth.login.failure', 'failure', 'user2', '10.0.0.3', 'tokenwatch');",
        t = T0 + 150 * 1_000
    ))
    .unwrap();
    drop(ix);

    let r = AuditReader::open(&c.db_path).unwrap();
    let after: Vec<_> = filters.iter().map(|f| reports(&r, f)).collect();
    assert_eq!(after, before, "a report followed the edited index");
    let [(_, all), ..] = &after[0];
    assert_eq!(all.rows, 300);
    let range = all.record.clone().unwrap();
    assert_eq!((range.first_id, range.last_id), (1, 300));
    assert_eq!(range.last_hash.len(), 64);

    // The explorer pages through the index, but shows only rows the record confirms:
    // the forged row and the row whose user was edited into the index are not shown.
    let shown = r
        .query_events(
            &EventFilter {
                subject_or_username: Some("user2".into()),
                ..Default::default()
            },
            None,
            1000,
        )
        .unwrap();
    assert!(shown.items.iter().all(|e| e.id != 999_999));
    assert!(shown
        .items
        .iter()
        .all(|e| e.username.as_deref() == Some("user2") || e.subject.as_deref() == Some("user2")));
    let edited_in = r
        .query_events(
            &EventFilter {
                subject_or_username: Some("someone-else".into()),
                ..Default::default()
            },
            None,
            1000,
        )
        .unwrap();
    assert!(edited_in.items.is_empty(), "{:?}", edited_in.items);
}
