//! Crash test (its own harness): this binary re-runs itself as a child that writes under
//! load from several threads and prints every acknowledged id; the parent SIGKILLs it
//! mid-run, then checks that every acknowledged event is on disk and the chain verifies.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use audit_store::{verify_chain, AuditStore};

const CHILD_ENV: &str = "AUDIT_STORE_CRASH_CHILD_DIR";

fn main() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        child(std::path::Path::new(&dir));
    }
    // libtest-style arguments (e.g. --list from cargo's discovery) are ignored.
    if std::env::args().any(|a| a == "--list") {
        println!("sigkill_mid_write_loses_no_acknowledged_event: test");
        return;
    }
    parent();
    println!("test sigkill_mid_write_loses_no_acknowledged_event ... ok");
}

fn config(dir: &std::path::Path) -> audit_store::StoreConfig {
    let mut c = common::cfg(dir);
    c.checkpoint_interval = Duration::from_millis(100);
    c
}

fn child(dir: &std::path::Path) -> ! {
    let store = AuditStore::open(config(dir)).expect("child: open");
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let w = store.writer();
            std::thread::spawn(move || {
                for i in 0.. {
                    let ids = if i % 10 == 0 {
                        w.record_many_blocking(
                            (0..5)
                                .map(|k| common::sample(t * 1_000_000 + i * 10 + k, 0))
                                .collect(),
                        )
                    } else {
                        w.record_blocking(common::sample(t * 1_000_000 + i, 0))
                            .map(|id| vec![id])
                    }
                    .expect("child: record");
                    let mut out = std::io::stdout().lock();
                    for id in ids {
                        writeln!(out, "{id}").expect("child: stdout");
                    }
                    out.flush().expect("child: flush");
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    std::process::exit(0)
}

fn parent() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(CHILD_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<i64>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // A line cut by the kill is not an acknowledgement we can rely on.
            if let Ok(id) = line.trim().parse() {
                let _ = tx.send(id);
            }
        }
    });
    let start = Instant::now();
    let mut acked = Vec::new();
    // Kill once it is clearly under way (several checkpoints written), mid-stream.
    while acked.len() < 20_000 && start.elapsed() < Duration::from_secs(10) {
        if let Ok(id) = rx.recv_timeout(Duration::from_millis(50)) {
            acked.push(id);
        }
        if acked.len() > 2_000 && start.elapsed() > Duration::from_millis(600) {
            break;
        }
    }
    child.kill().unwrap(); // SIGKILL on Unix
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "child must have been killed, not finished"
    );
    reader.join().unwrap();
    acked.extend(rx.try_iter());
    assert!(
        acked.len() > 500,
        "child made too little progress before the kill: {}",
        acked.len()
    );

    let cfg = config(dir.path());
    // First on the raw post-crash files, as an auditor would.
    let report = verify_chain(&cfg).unwrap();
    assert!(report.is_ok(), "after SIGKILL: {report}");
    assert!(report.checkpoints_checked >= 1);

    let store = AuditStore::open(cfg.clone()).unwrap();
    let conn = rusqlite::Connection::open(&cfg.db_path).unwrap();
    let mut st = conn
        .prepare("SELECT count(*) FROM events WHERE id = ?1")
        .unwrap();
    for id in &acked {
        let n: i64 = st.query_row([id], |r| r.get(0)).unwrap();
        assert_eq!(n, 1, "acknowledged event {id} is missing after the crash");
    }
    // The reopened store continues the chain.
    let next = store
        .writer()
        .record_blocking(common::sample(1, 0))
        .unwrap();
    assert!(next > *acked.iter().max().unwrap());
    store.shutdown().unwrap();
    let report = verify_chain(&cfg).unwrap();
    assert!(report.is_ok(), "after restart: {report}");
    eprintln!(
        "crash test: {} acknowledged events all present; {report}",
        acked.len()
    );
}
