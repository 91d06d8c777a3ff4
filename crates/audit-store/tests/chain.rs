//! Tamper evidence: verify_chain names the first edited, inserted or deleted row and a
//! truncated tail, on real database files.

mod common;

use audit_store::{verify_chain, AuditStore, NewEvent, Outcome, ProblemKind};
use rusqlite::Connection;

/// Writes 20 events (ids 1..=20) and shuts down, which writes a signed checkpoint.
fn store_with_20(dir: &std::path::Path) -> audit_store::StoreConfig {
    let cfg = common::cfg(dir);
    let store = AuditStore::open(cfg.clone()).unwrap();
    let w = store.writer();
    for i in 1..=20 {
        let id = w
            .record_blocking(common::sample(i, 1_700_000_000_000_000 + i))
            .unwrap();
        assert_eq!(id, i);
    }
    store.shutdown().unwrap();
    cfg
}

fn check(name: &str, tamper: &str, kind: ProblemKind, row_id: i64) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = store_with_20(dir.path());
    let before = verify_chain(&cfg).unwrap();
    assert!(
        before.is_ok(),
        "{name}: untouched store must verify: {before}"
    );
    assert_eq!(before.rows_checked, 20);
    Connection::open(&cfg.db_path)
        .unwrap()
        .execute_batch(tamper)
        .unwrap();
    let report = verify_chain(&cfg).unwrap();
    let p = report
        .first_problem
        .clone()
        .unwrap_or_else(|| panic!("{name}: tampering not detected"));
    assert_eq!((p.kind, p.row_id), (kind, row_id), "{name}: {report}");
    assert!(report.to_string().contains("TAMPERED"), "{name}: {report}");
}

#[test]
fn each_kind_of_tampering_is_named_with_its_first_row() {
    let cases: &[(&str, &str, ProblemKind, i64)] = &[
        ("edit a field", "UPDATE events SET username = 'mallory' WHERE id = 7", ProblemKind::Edited, 7),
        ("flip an outcome", "UPDATE events SET outcome = 'success' WHERE id = 3", ProblemKind::Edited, 3),
        ("edit detail JSON", "UPDATE events SET detail = '{\"x\":1}' WHERE id = 12", ProblemKind::Edited, 12),
        ("edit the time", "UPDATE events SET time_us = time_us + 1 WHERE id = 1", ProblemKind::Edited, 1),
        ("delete one row", "DELETE FROM events WHERE id = 7", ProblemKind::Deleted, 7),
        ("delete a range", "DELETE FROM events WHERE id BETWEEN 5 AND 9", ProblemKind::Deleted, 5),
        ("delete the first row", "DELETE FROM events WHERE id = 1", ProblemKind::Deleted, 1),
        (
            "insert a forged row at the end",
            "INSERT INTO events (id, time_us, kind, outcome, source, detail, content_mac, hash)
             SELECT 21, time_us, 'auth.login.success', 'success', 'tokenwatch', 'null', content_mac, hash FROM events WHERE id = 20",
            ProblemKind::Inserted,
            21,
        ),
        (
            "replace a row with a forged one",
            "DELETE FROM events WHERE id = 10;
             INSERT INTO events (id, time_us, kind, outcome, username, source, detail, content_mac, hash)
             VALUES (10, 1, 'auth.login.success', 'success', 'mallory', 'tokenwatch', 'null', zeroblob(32), zeroblob(32))",
            ProblemKind::Inserted,
            10,
        ),
        (
            "replay a genuine row under a new id",
            "INSERT INTO events SELECT 21, time_us, kind, outcome, reason, subject, username, client_ip, user_agent, method,
               path, jti, kid, alg, token_fp, source, detail, content_mac, hash FROM events WHERE id = 4",
            ProblemKind::Edited,
            21,
        ),
        ("swap two hashes", "UPDATE events SET hash = (SELECT hash FROM events WHERE id = 6) WHERE id = 5", ProblemKind::Edited, 5),
        ("truncate the tail", "DELETE FROM events WHERE id > 15", ProblemKind::Truncated, 16),
        ("truncate everything", "DELETE FROM events", ProblemKind::Truncated, 1),
    ];
    for (name, sql, kind, row) in cases {
        check(name, sql, *kind, *row);
    }
}

#[test]
fn a_forged_or_missing_checkpoint_file_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = store_with_20(dir.path());
    let store = AuditStore::open(cfg.clone()).unwrap();
    store
        .writer()
        .record_blocking(NewEvent::new("token.issued", Outcome::Success))
        .unwrap();
    store.shutdown().unwrap();
    assert!(verify_chain(&cfg).unwrap().is_ok());

    let mut files: Vec<_> = std::fs::read_dir(&cfg.checkpoint_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 2, "one checkpoint per shutdown with new rows");

    // Lowering the recorded head (to hide a truncation) breaks the signature.
    let newest = &files[1];
    let text = std::fs::read_to_string(newest).unwrap();
    std::fs::write(newest, text.replace("\"last_id\": 21", "\"last_id\": 20")).unwrap();
    let r = verify_chain(&cfg).unwrap();
    assert_eq!(r.first_problem.unwrap().kind, ProblemKind::BadCheckpoint);

    // Removing an older checkpoint breaks the sequence.
    std::fs::write(newest, text).unwrap();
    std::fs::remove_file(&files[0]).unwrap();
    let r = verify_chain(&cfg).unwrap();
    assert_eq!(r.first_problem.unwrap().kind, ProblemKind::BadCheckpoint);
}

#[test]
fn verify_needs_the_key_and_never_creates_one() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = store_with_20(dir.path());
    std::fs::remove_dir_all(&cfg.key_dir).unwrap();
    let err = verify_chain(&cfg).unwrap_err().to_string();
    assert!(err.contains("chain-hmac.key"), "{err}");
    assert!(!cfg.key_dir.exists());
}

#[test]
fn chain_continues_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = store_with_20(dir.path());
    for round in 0..2 {
        let store = AuditStore::open(cfg.clone()).unwrap();
        let ids = store
            .writer()
            .record_many_blocking(
                (0..5)
                    .map(|i| common::sample(i, 1_700_000_000_000_000 + i))
                    .collect(),
            )
            .unwrap();
        assert_eq!(ids, (21 + round * 5..26 + round * 5).collect::<Vec<i64>>());
        store.shutdown().unwrap();
    }
    let r = verify_chain(&cfg).unwrap();
    assert!(r.is_ok(), "{r}");
    assert_eq!((r.rows_checked, r.checkpoints_checked), (30, 3));
}
