//! The running store against its own files: deleted, replaced or edited underneath
//! it, with real database files.

mod common;

use std::time::{Duration, Instant};

use audit_store::*;
use rusqlite::{Connection, OpenFlags};

use common::{cfg, sample};

fn ids_in(path: &std::path::Path) -> Vec<i64> {
    let c = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let mut st = c.prepare("SELECT id FROM events ORDER BY id").unwrap();
    let ids = st.query_map([], |r| r.get(0)).unwrap();
    ids.map(Result::unwrap).collect()
}

fn rescue_copy(dir: &std::path::Path) -> std::path::PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("audit.db.rescued-"))
        .expect("a rescue copy beside audit.db")
}

/// Deleted or replaced: the next write is refused (not acknowledged), health says
/// why, every acknowledged event is in the rescue copy, and no empty `audit.db` is
/// created in its place.
fn fails_closed_when(change: impl FnOnce(&std::path::Path), says: &str) {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let store = AuditStore::open(c.clone()).unwrap();
    let w = store.writer();
    let acked = w
        .record_many_blocking((0..50).map(|i| sample(i, 0)).collect())
        .unwrap();
    change(&c.db_path);
    let refused = w.record_blocking(sample(99, 0)).unwrap_err().to_string();
    assert!(
        refused.contains("NOT committed") && refused.contains(says),
        "{refused}"
    );
    let h = store.health();
    assert!(!h.writable);
    let err = h.last_error.unwrap();
    assert!(err.contains(says) && err.contains("restart"), "{err}");
    // Stays refused: the store does not recover onto a file it did not open.
    assert!(w.record_blocking(sample(100, 0)).is_err());
    store.shutdown().unwrap();
    let wal = dir.path().join("audit.db-wal");
    assert!(
        !wal.exists(),
        "the lost file's WAL is moved aside, never replayed onto another"
    );

    let rescued = ids_in(&rescue_copy(dir.path()));
    for id in &acked {
        assert!(
            rescued.contains(id),
            "acknowledged event {id} is in the rescue copy"
        );
    }
}

#[test]
fn a_deleted_database_fails_closed_and_keeps_every_acknowledged_event() {
    fails_closed_when(|db| std::fs::remove_file(db).unwrap(), "was deleted");
}

#[test]
fn a_deleted_database_is_not_recreated_empty_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let store = AuditStore::open(c.clone()).unwrap();
    store.writer().record_blocking(sample(1, 0)).unwrap();
    std::fs::remove_file(&c.db_path).unwrap();
    assert!(store.writer().record_blocking(sample(2, 0)).is_err());
    store.shutdown().unwrap();
    assert!(
        !c.db_path.exists(),
        "an empty audit.db would hide the deletion"
    );
}

#[test]
fn a_replaced_database_fails_closed_and_keeps_every_acknowledged_event() {
    fails_closed_when(
        |db| {
            let other = db.with_file_name("other.db");
            Connection::open(&other)
                .unwrap()
                .execute_batch("CREATE TABLE t (x)")
                .unwrap();
            std::fs::rename(&other, db).unwrap();
        },
        "replaced by another file",
    );
}

#[test]
fn an_idle_store_notices_the_deletion_within_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let store = AuditStore::open(c.clone()).unwrap();
    store.writer().record_blocking(sample(1, 0)).unwrap();
    std::fs::remove_file(&c.db_path).unwrap();
    let start = Instant::now();
    while store.health().writable {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "not noticed in 5 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(store.health().last_error.unwrap().contains("was deleted"));
}

#[test]
fn an_edited_row_after_the_newest_checkpoint_is_named_by_the_running_check() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let store = AuditStore::open(c.clone()).unwrap();
    let w = store.writer();
    w.record_many_blocking((0..20).map(|i| sample(i, 0)).collect())
        .unwrap();
    assert_eq!(store.checkpoint_now().unwrap(), 20);
    w.record_many_blocking((20..30).map(|i| sample(i, 0)).collect())
        .unwrap();
    let ok = store.check_integrity_now().unwrap();
    assert_eq!((ok.status, ok.verified_id, ok.failures), ("ok", 30, 0));

    Connection::open(&c.db_path)
        .unwrap()
        .execute("UPDATE events SET username = 'mallory' WHERE id = 25", [])
        .unwrap();
    // Rows up to 30 were verified already; the check goes on from there, so the edit
    // is seen by the full verification, and by the running check for new rows only.
    w.record_blocking(sample(30, 0)).unwrap();
    Connection::open(&c.db_path)
        .unwrap()
        .execute("UPDATE events SET username = 'mallory' WHERE id = 31", [])
        .unwrap();
    let bad = store.check_integrity_now().unwrap();
    assert_eq!(bad.status, "failing");
    assert_eq!(bad.failures, 1);
    let f = bad.failure.unwrap();
    assert_eq!((f.check, f.row_id), ("chain", Some(31)));
    assert!(f.message.contains("row 31 was edited"), "{}", f.message);
    // The same problem is reported once, not at every pass.
    assert_eq!(store.check_integrity_now().unwrap().failures, 1);

    let ev = store
        .reader()
        .unwrap()
        .query_events(
            &EventFilter {
                kind: Some(kinds::AUDIT_INTEGRITY_FAILED.into()),
                ..Default::default()
            },
            None,
            10,
        )
        .unwrap()
        .items;
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].detail["first_bad_row"], 31);
    assert_eq!(ev[0].detail["check"], "chain");
    store.shutdown().unwrap();
    let rep = verify_chain(&c).unwrap();
    assert_eq!(
        rep.first_problem.unwrap().row_id,
        25,
        "the full verify finds the older edit"
    );
}

#[test]
fn the_running_check_starts_from_the_newest_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let store = AuditStore::open(c.clone()).unwrap();
    store
        .writer()
        .record_many_blocking((0..40).map(|i| sample(i, 0)).collect())
        .unwrap();
    store.shutdown().unwrap();
    // Row 10 is older than the shutdown checkpoint (row 40): the start-up pass does
    // not re-read history (that is `audit verify`), so its cost stays bounded.
    Connection::open(&c.db_path)
        .unwrap()
        .execute("UPDATE events SET username = 'mallory' WHERE id = 10", [])
        .unwrap();
    let store = AuditStore::open(c.clone()).unwrap();
    store
        .writer()
        .record_many_blocking((40..45).map(|i| sample(i, 0)).collect())
        .unwrap();
    let h = store.check_integrity_now().unwrap();
    assert_eq!((h.status, h.verified_id), ("ok", 45));
}

#[test]
fn a_zero_retention_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    c.retention = Some(Duration::ZERO);
    let err = AuditStore::open(c).err().unwrap().to_string();
    assert!(err.contains("retention of zero"), "{err}");
}
