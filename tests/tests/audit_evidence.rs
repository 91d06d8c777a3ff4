//! Checkpoints are evidence, with a real server process and real files: a record cut
//! short, put back from an older copy or deleted is refused at start with the missing
//! range named, until an operator records the loss; the keys live outside the data
//! directory and every checkpoint is mirrored as a signed note that an auditor checks
//! with the public key alone (scripts/verify-checkpoint.py).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokenwatch_e2e::{binary, cli, data_dir, export_events, http, workspace_root, Server};

/// A data dir whose audit keys and checkpoint mirror live beside it, set by a
/// `tokenwatch.toml` in the working directory every invocation uses.
struct Setup {
    _tmp: tempfile::TempDir,
    data: PathBuf,
    keys: PathBuf,
    mirror: PathBuf,
}

fn setup() -> Setup {
    let (tmp, data) = data_dir();
    let keys = tmp.path().join("secret-mount").join("audit-keys");
    let mirror = tmp.path().join("other-disk").join("checkpoints");
    std::fs::write(
        tmp.path().join("tokenwatch.toml"),
        format!(
            "[audit]\nkey_dir = {:?}\ncheckpoint_mirrors = [{:?}]\n",
            keys.display().to_string(),
            mirror.display().to_string()
        ),
    )
    .unwrap();
    Setup {
        _tmp: tmp,
        data,
        keys,
        mirror,
    }
}

/// Starts the server, has it record `n` refused-token events (each answered only after
/// its commit), stops it; returns the newest event id.
fn serve_some(data: &Path, n: usize) -> i64 {
    let s = Server::start(data);
    let c = http();
    for i in 0..n {
        let r = c
            .get(s.url("/api/v1/me"))
            .header("Authorization", format!("Bearer not.a.token{i}"))
            .send()
            .unwrap();
        assert_eq!(r.status(), 401);
    }
    s.stop();
    newest_id(data)
}

fn newest_id(data: &Path) -> i64 {
    let conn = rusqlite::Connection::open(data.join("audit.db")).unwrap();
    conn.query_row("SELECT max(id) FROM events", [], |r| r.get(0))
        .unwrap()
}

/// Runs `serve` expecting it to refuse: returns its stderr. Fails if it keeps running.
fn serve_refused(data: &Path) -> String {
    let mut child = Command::new(binary())
        .arg("--data-dir")
        .arg(data)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env_remove("TOKENWATCH_CONFIG")
        .current_dir(data.parent().unwrap())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(
                !status.success(),
                "serve exited 0 on a record that lost rows"
            );
            let out = child.wait_with_output().unwrap();
            return String::from_utf8_lossy(&out.stderr).into_owned();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve started on a record that lost rows");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_cut_record_is_refused_until_the_loss_is_recorded_and_an_auditor_can_check_the_mirror() {
    let s = setup();
    let last = serve_some(&s.data, 20);
    assert!(
        !s.data.join("keys").join("audit").exists(),
        "the audit keys live where configured, not in the data dir"
    );
    assert!(s.keys.join("chain-hmac.key").exists());

    // An intruder removes the newest five rows.
    let conn = rusqlite::Connection::open(s.data.join("audit.db")).unwrap();
    conn.execute("DELETE FROM events WHERE id > ?1", [last - 5])
        .unwrap();
    drop(conn);

    let err = serve_refused(&s.data);
    let range = format!("rows {}..={} are missing", last - 4, last);
    assert!(err.contains(&range), "{err}");
    assert!(err.contains("accept-loss"), "{err}");
    // Writing commands refuse too, and verify names the cut.
    let add = cli(&s.data, &["sources", "add", "svc"], "");
    assert_ne!(add.status, 0);
    assert!(add.stderr.contains(&range), "{}", add.stderr);
    let verify = cli(&s.data, &["audit", "verify"], "");
    assert_eq!(verify.status, 1, "{}", verify.stdout);
    assert!(verify.stdout.contains("Truncated"), "{}", verify.stdout);

    let accept = cli(
        &s.data,
        &[
            "audit",
            "accept-loss",
            "--reason",
            "rows removed during the incident of 7 Dec",
        ],
        "",
    );
    assert_eq!(accept.status, 0, "{}", accept.stderr);
    assert!(accept.stdout.contains(&range), "{}", accept.stdout);

    // The server runs again, and the loss is in the record for good.
    serve_some(&s.data, 3);
    let verify = cli(&s.data, &["audit", "verify"], "");
    assert_eq!(verify.status, 0, "{}", verify.stdout);
    assert!(
        verify.stdout.contains("1 recorded loss"),
        "{}",
        verify.stdout
    );
    let events = export_events(&s.data);
    let loss = events
        .iter()
        .find(|e| e["kind"] == "audit.loss_accepted")
        .expect("the loss is an audit event");
    assert!(loss["detail"].contains("rows removed during the incident"));
    assert!(loss["username"].starts_with("os:"), "names who ran it");

    auditor_checks_the_mirror_offline(&s);
}

/// What an auditor does with a copy of the mirror folder and an export, off the
/// machine, with nothing of tokenwatch but the public key.
fn auditor_checks_the_mirror_offline(s: &Setup) {
    let python_ok = Command::new("python3")
        .args(["-c", "import cryptography"])
        .status()
        .is_ok_and(|st| st.success());
    if !python_ok {
        assert!(
            std::env::var_os("TOKENWATCH_REQUIRE_PYTHON").is_none(),
            "python3 with cryptography is required"
        );
        eprintln!("skipping the offline auditor check: no python3 with cryptography");
        return;
    }
    let mut notes: Vec<PathBuf> = std::fs::read_dir(&s.mirror)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "note"))
        .collect();
    notes.sort();
    let newest = notes.last().expect("the mirror holds signed notes");
    let csv = s.data.parent().unwrap().join("events.csv");
    let out = cli(
        &s.data,
        &["export", "events", "--out", csv.to_str().unwrap()],
        "",
    );
    assert_eq!(out.status, 0, "{}", out.stderr);
    let script = workspace_root()
        .join("scripts")
        .join("verify-checkpoint.py");
    let run = |note: &Path, csv: &Path| {
        Command::new("python3")
            .arg(&script)
            .arg(s.mirror.join("checkpoint.vkey"))
            .arg(note)
            .arg(csv)
            .output()
            .unwrap()
    };
    let ok = run(newest, &csv);
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(stdout.contains("exactly as signed"), "{stdout}");

    // A forged note and an export edited at the signed row are both caught.
    let forged = s.data.parent().unwrap().join("forged.note");
    let text = std::fs::read_to_string(newest).unwrap();
    std::fs::write(&forged, text.replacen("kind head", "kind prune", 1)).unwrap();
    assert!(!run(&forged, &csv).status.success());
    let last_hash = text
        .lines()
        .find_map(|l| l.strip_prefix("last_hash "))
        .unwrap()
        .to_owned();
    let edited = s.data.parent().unwrap().join("edited.csv");
    let csv_text = std::fs::read_to_string(&csv).unwrap();
    std::fs::write(&edited, csv_text.replace(&last_hash, &"0".repeat(64))).unwrap();
    let bad = run(newest, &edited);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stdout).contains("differs from the signed checkpoint"));
}

#[test]
fn an_older_copy_put_back_or_a_deleted_record_is_refused() {
    let s = setup();
    serve_some(&s.data, 5);
    let backup = s.data.parent().unwrap().join("audit-backup.db");
    std::fs::copy(s.data.join("audit.db"), &backup).unwrap();
    let before = newest_id(&s.data);
    let last = serve_some(&s.data, 5);
    assert!(last > before);

    std::fs::copy(&backup, s.data.join("audit.db")).unwrap();
    let err = serve_refused(&s.data);
    assert!(
        err.contains(&format!("rows {}..={last} are missing", before + 1)),
        "{err}"
    );

    std::fs::remove_file(s.data.join("audit.db")).unwrap();
    let err = serve_refused(&s.data);
    assert!(
        err.contains("is missing") && err.contains("accept-loss"),
        "{err}"
    );
    assert!(
        !s.data.join("audit.db").exists(),
        "a refused start must not create an empty record"
    );
}

#[test]
fn an_audit_key_others_can_read_is_refused_with_the_fix() {
    use std::os::unix::fs::PermissionsExt;
    let s = setup();
    serve_some(&s.data, 1);
    let key = s.keys.join("chain-hmac.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = serve_refused(&s.data);
    assert!(err.contains("chmod 600"), "{err}");
}
