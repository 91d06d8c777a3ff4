//! Checkpoints are evidence: a record cut short, rolled back to an older copy, replaced,
//! or deleted is refused at open with the missing range named, until the loss is
//! recorded; a mirror keeps that evidence when the checkpoint folder goes too.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use audit_store::*;
use common::{cfg, sample};

const T0: i64 = 1_700_000_000_000_000;

fn write(c: &StoreConfig, n: i64) {
    let store = AuditStore::open(c.clone()).unwrap();
    store
        .writer()
        .record_many_blocking((0..n).map(|i| sample(i, T0 + i)).collect())
        .unwrap();
    store.shutdown().unwrap();
}

fn delete_rows_from(db: &Path, first: i64) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.execute("DELETE FROM events WHERE id >= ?1", [first])
        .unwrap();
}

fn refusal(c: &StoreConfig) -> String {
    match AuditStore::open(c.clone()) {
        Ok(_) => panic!("the store opened on a record that lost rows"),
        Err(e) => {
            assert!(matches!(e, StoreError::LostHistory(_)), "{e}");
            e.to_string()
        }
    }
}

#[test]
fn cut_rows_are_refused_until_the_loss_is_recorded_and_verify_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    write(&c, 100);
    delete_rows_from(&c.db_path, 91);

    let msg = refusal(&c);
    assert!(msg.contains("rows 91..=100 are missing"), "{msg}");
    assert!(msg.contains("accept-loss"), "{msg}");
    // Opening read-only to look is still possible, and verify names the cut.
    let report = verify_chain(&c).unwrap();
    assert_eq!(report.first_problem.unwrap().kind, ProblemKind::Truncated);
    // Refusing changed nothing: still refused.
    refusal(&c);

    let (store, loss) =
        AuditStore::open_accepting_loss(c.clone(), "disk restored from a snapshot", "alice")
            .unwrap();
    let loss = loss.expect("a loss was there to record");
    assert!(loss.message.contains("rows 91..=100"));
    let ev = store
        .reader()
        .unwrap()
        .get_event(loss.event_id)
        .unwrap()
        .unwrap();
    assert_eq!(ev.kind, kinds::AUDIT_LOSS_ACCEPTED);
    assert_eq!(ev.detail["missing_from"], 91);
    assert_eq!(ev.detail["missing_to"], 100);
    assert_eq!(ev.detail["reason"], "disk restored from a snapshot");
    assert_eq!(ev.detail["actor"], "alice");
    store.writer().record_blocking(sample(7, T0 + 500)).unwrap();
    store.shutdown().unwrap();

    let report = verify_chain(&c).unwrap();
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.losses_accepted, 1);
    assert!(report.to_string().contains("loss"), "{report}");
    // And the store opens normally again.
    AuditStore::open(c.clone()).unwrap().shutdown().unwrap();
    // Nothing to accept the second time.
    let (s, none) = AuditStore::open_accepting_loss(c.clone(), "again", "alice").unwrap();
    assert!(none.is_none());
    s.shutdown().unwrap();
}

#[test]
fn an_older_copy_put_back_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    write(&c, 50);
    let backup = dir.path().join("backup.db");
    std::fs::copy(&c.db_path, &backup).unwrap();
    write(&c, 30);
    std::fs::copy(&backup, &c.db_path).unwrap();
    let msg = refusal(&c);
    assert!(msg.contains("rows 51..=80 are missing"), "{msg}");
}

#[test]
fn a_record_replaced_by_another_of_the_same_length_is_refused_as_diverging() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    write(&c, 40);
    // Same length, other content, chained with the same key: made by rewriting rows.
    let conn = rusqlite::Connection::open(&c.db_path).unwrap();
    conn.execute("UPDATE events SET hash = zeroblob(32) WHERE id = 40", [])
        .unwrap();
    drop(conn);
    let msg = refusal(&c);
    assert!(msg.contains("diverges") && msg.contains("row 40"), "{msg}");
}

#[test]
fn a_deleted_record_is_refused_not_started_afresh() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    write(&c, 10);
    std::fs::remove_file(&c.db_path).unwrap();
    let msg = refusal(&c);
    assert!(msg.contains("is missing"), "{msg}");
    assert!(msg.contains("keys") && msg.contains("checkpoints"), "{msg}");
    assert!(
        !c.db_path.exists(),
        "refusing must not create an empty record"
    );

    let (store, loss) =
        AuditStore::open_accepting_loss(c.clone(), "audit.db lost with the old disk", "ops")
            .unwrap();
    assert!(loss.is_some());
    store.shutdown().unwrap();
    let report = verify_chain(&c).unwrap();
    assert!(report.is_ok(), "{report}");
}

#[test]
fn a_mirror_keeps_the_evidence_when_the_checkpoint_folder_is_emptied_too() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    let mirror = dir.path().join("mirror");
    c.checkpoint_mirrors = vec![mirror.clone()];
    write(&c, 60);
    let notes: Vec<_> = std::fs::read_dir(&mirror)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".note"))
        .collect();
    assert!(!notes.is_empty(), "the mirror received the checkpoint");
    assert!(mirror.join("checkpoint.vkey").exists());

    // An intruder cuts the record and removes the local checkpoints.
    delete_rows_from(&c.db_path, 21);
    for f in std::fs::read_dir(&c.checkpoint_dir).unwrap().flatten() {
        std::fs::remove_file(f.path()).unwrap();
    }
    let msg = refusal(&c);
    assert!(msg.contains("rows 21..=60 are missing"), "{msg}");
    assert!(
        msg.contains("mirror"),
        "the refusal names the mirror copy: {msg}"
    );
}

#[test]
fn a_forged_checkpoint_copy_is_reported_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    write(&c, 5);
    let note = std::fs::read_dir(&c.checkpoint_dir)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with(".note"))
        .unwrap()
        .path();
    let text = std::fs::read_to_string(&note).unwrap();
    std::fs::write(&note, text.replace("last_id 5", "last_id 4")).unwrap();
    let e = AuditStore::open(c.clone()).err().expect("refused");
    assert!(e.to_string().contains("does not verify"), "{e}");

    // The operator is not stuck: accept-loss sets the damaged copy aside and says so.
    let (store, loss) =
        AuditStore::open_accepting_loss(c.clone(), "a checkpoint copy was damaged", "ops").unwrap();
    let loss = loss.expect("damaged evidence is a loss to record");
    assert!(loss.message.contains("damaged"), "{}", loss.message);
    store.shutdown().unwrap();
    assert!(PathBuf::from(format!("{}.damaged", note.display())).exists());
    AuditStore::open(c.clone()).unwrap().shutdown().unwrap();
    assert!(verify_chain(&c).unwrap().is_ok());
}

#[test]
fn a_damaged_checkpoint_file_does_not_strand_the_operator() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    write(&c, 5);
    write(&c, 5);
    let mut json: Vec<PathBuf> = std::fs::read_dir(&c.checkpoint_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    json.sort();
    std::fs::write(json.last().unwrap(), b"\0\0 garbage").unwrap();
    let e = AuditStore::open(c.clone()).err().expect("refused");
    assert!(e.to_string().contains("not a checkpoint file"), "{e}");
    let (store, loss) =
        AuditStore::open_accepting_loss(c.clone(), "disk error in checkpoints", "ops").unwrap();
    assert!(loss.is_some());
    store.shutdown().unwrap();
    let report = verify_chain(&c).unwrap();
    assert!(report.is_ok(), "{report}");
}

#[test]
fn a_key_file_others_can_read_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    write(&c, 3);
    let key = c.key_dir.join("chain-hmac.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = AuditStore::open(c.clone()).err().expect("refused");
    let msg = e.to_string();
    assert!(msg.contains("chmod 600") && msg.contains("644"), "{msg}");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    AuditStore::open(c).unwrap().shutdown().unwrap();
}

#[test]
fn rows_cut_under_a_running_store_are_never_signed_over() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let store = AuditStore::open(c.clone()).unwrap();
    let w = store.writer();
    w.record_many_blocking((0..30).map(|i| sample(i, T0 + i)).collect())
        .unwrap();
    assert_eq!(store.checkpoint_now().unwrap(), 30);
    delete_rows_from(&c.db_path, 25);
    w.record_blocking(sample(99, T0 + 99)).unwrap();
    let e = store
        .checkpoint_now()
        .expect_err("no checkpoint over a cut chain");
    assert!(matches!(e, StoreError::LostHistory(_)), "{e}");
    assert!(!store.health().writable, "health shows the failure");
    drop(store);
    let report = verify_chain(&c).unwrap();
    assert!(!report.is_ok(), "{report}");
}
