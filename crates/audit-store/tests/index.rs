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
