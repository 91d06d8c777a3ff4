//! Detectors run apart from the token server: real `.so` files built here
//! that abort, dereference NULL, loop forever, sleep, fail now and then,
//! hand over padded or oversized strings, or are truncated or built for
//! another machine. Through all of it a load generator keeps asking the
//! token server for tokens and sees no failed request; the culprit is named
//! and quarantined; the other plugins keep alerting; and every committed
//! event is analysed exactly once by the well-behaved plugin.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use audit_store::{Alert, AlertFilter, StoredEvent};
use tokenwatch_e2e::{
    audit_reader, cli, data_dir, events_of, http, wait_for, wait_for_secs, workspace_root, Server,
};

/// Builds the faulty C plugin with the strictest flags: the shipped header
/// must compile cleanly as C11 under -Wall -Wextra -Werror -pedantic.
fn build(out: &Path, name: &str, fault: u32, trigger: &str, extra: &[&str]) {
    let root = workspace_root();
    let status = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args([
            "-shared",
            "-fPIC",
            "-O1",
            "-std=c11",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pedantic",
        ])
        .arg("-I")
        .arg(root.join("crates/detector-api/include"))
        .arg(format!("-DTW_NAME=\"{name}\""))
        .arg(format!("-DTW_FAULT={fault}"))
        .arg(format!("-DTW_TRIGGER=\"{trigger}\""))
        .args(extra)
        .arg("-o")
        .arg(out)
        .arg(root.join("crates/plugin-host/tests/fixtures/c/faulty_plugin.c"))
        .status()
        .expect("run the C compiler");
    assert!(status.success(), "compiling {name} failed");
}

fn install(from: &Path, plugin_dir: &Path, name: &str) {
    let tmp = plugin_dir.join(format!(".{name}.tmp"));
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, plugin_dir.join(name)).unwrap();
}

fn metrics(s: &Server) -> String {
    http()
        .get(s.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap()
}

fn metric(s: &Server, line_prefix: &str) -> Option<String> {
    metrics(s)
        .lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next().map(str::to_owned))
}

fn plugin_up(s: &Server, name: &str) -> Option<bool> {
    metric(s, &format!("tokenwatch_plugin_up{{plugin=\"{name}\",")).map(|v| v == "1")
}

fn failed_login(s: &Server, user: &str) {
    let r = http()
        .post(s.url("/oauth/token"))
        .form(&[
            ("grant_type", "password"),
            ("username", user),
            ("password", "not-the-password"),
        ])
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
}

fn detail<'a>(e: &'a StoredEvent, key: &str) -> &'a str {
    e.detail[key].as_str().unwrap_or_default()
}

fn failure_of(s: &Server, plugin: &str) -> Option<StoredEvent> {
    events_of(s, "plugin.failed")
        .into_iter()
        .find(|e| detail(e, "plugin") == plugin && e.detail["quarantined"] == true)
}

fn refusal_of(s: &Server, file: &str) -> Option<String> {
    events_of(s, "plugin.failed")
        .into_iter()
        .find(|e| detail(e, "file") == file)
        .map(|e| detail(&e, "error").to_owned())
}

fn alerts_of(s: &Server, detector: &str) -> Vec<Alert> {
    let f = AlertFilter {
        detector: Some(detector.into()),
        ..Default::default()
    };
    let mut all = Vec::new();
    let mut cursor = None;
    loop {
        let page = audit_reader(s).list_alerts(&f, cursor, 1000).unwrap();
        let done = page.next.is_none();
        all.extend(page.items);
        if done {
            return all;
        }
        cursor = page.next;
    }
}

/// Ids of every committed failed login.
fn failed_login_ids(s: &Server) -> Vec<i64> {
    let r = audit_reader(s);
    let (mut after, mut ids) = (0, Vec::new());
    loop {
        let batch = r.events_after(after, 5000).unwrap();
        let Some(last) = batch.last().map(|e| e.id) else {
            return ids;
        };
        ids.extend(
            batch
                .iter()
                .filter(|e| e.kind == "auth.login.failure")
                .map(|e| e.id),
        );
        after = last;
    }
}

/// Every failed login has exactly one alert of `plugin`, raised once.
fn analysed_exactly_once(s: &Server, plugin: &str) -> Option<()> {
    let ids = failed_login_ids(s);
    let alerts: Vec<Alert> = alerts_of(s, plugin)
        .into_iter()
        .filter(|a| a.rule == "seen")
        .collect();
    let mut by_event: HashMap<i64, u64> = HashMap::new();
    for a in &alerts {
        assert_eq!(
            a.count, 1,
            "{plugin} raised the alert for {:?} twice",
            a.evidence
        );
        for id in &a.evidence {
            *by_event.entry(*id).or_default() += 1;
        }
    }
    if by_event.values().any(|n| *n > 1) {
        panic!("{plugin}: an event has two alerts");
    }
    ids.iter().all(|id| by_event.contains_key(id)).then_some(())
}

/// Asks the token server for tokens, and for its health, until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<Vec<String>>>,
}

impl Load {
    fn start(s: &Server) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let base = s.base.clone();
        let password = s
            .admin_password
            .clone()
            .expect("first start prints a password");
        let thread = std::thread::spawn({
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            move || {
                let client = http();
                let mut problems = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let token = client
                        .post(format!("{base}/oauth/token"))
                        .form(&[
                            ("grant_type", "password"),
                            ("username", "admin"),
                            ("password", password.as_str()),
                        ])
                        .timeout(Duration::from_secs(5))
                        .send();
                    let health = client
                        .get(format!("{base}/healthz"))
                        .timeout(Duration::from_secs(5))
                        .send();
                    for (what, r) in [("token", token), ("healthz", health)] {
                        match r {
                            Ok(r) if r.status() == 200 => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(r) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                problems.push(format!("{what}: {}", r.status()));
                            }
                            Err(e) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                problems.push(format!("{what}: {e}"));
                            }
                        }
                    }
                    std::thread::sleep(Duration::from_millis(25));
                }
                problems
            }
        });
        Load {
            stop,
            ok,
            failed,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let problems = self.thread.take().unwrap().join().unwrap();
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            problems,
        )
    }
}

fn config(dir: &Path) -> PathBuf {
    let path = dir.join("tokenwatch.toml");
    std::fs::write(
        &path,
        "[response]\nlock_accounts = false\nthrottle_ips = false\n\n\
         [detection]\ncall_budget_ms = 400\ncall_limit_ms = 2500\nmax_crashes = 2\n\
         max_errors = 3\nerror_window_secs = 300\n",
    )
    .unwrap();
    path
}

#[test]
fn faulty_plugins_never_take_the_token_server_down() {
    let (tmp, dir) = data_dir();
    let cfg = config(tmp.path());
    let s = Server::start_with(&dir, &["--config", cfg.to_str().unwrap()]);
    let plugins = dir.join("plugins");
    wait_for("built-ins", || plugin_up(&s, "brute-force").filter(|u| *u));
    let load = Load::start(&s);

    let so = |n: &str| tmp.path().join(format!("lib{n}.so"));
    build(&so("c_good"), "c-good", 0, "-", &[]);
    let faulty = [
        ("c_abort", "c-abort", 1, "boom-abort"),
        ("c_segv", "c-segv", 2, "boom-segv"),
        ("c_loop", "c-loop", 3, "boom-loop"),
        ("c_sleep", "c-sleep", 4, "boom-sleep"),
        ("c_errors", "c-errors", 5, "boom-errors"),
        ("c_strings", "c-strings", 6, "boom-strings"),
    ];
    for (file, name, fault, trigger) in faulty {
        build(&so(file), name, fault, trigger, &["-DTW_SLEEP_MS=1000"]);
    }
    // A truncated copy, and one whose header says ARM: both real ELF files
    // that must be refused without ever being mapped.
    let good = std::fs::read(so("c_good")).unwrap();
    std::fs::write(so("truncated"), &good[..good.len() / 2]).unwrap();
    let mut arm = good.clone();
    arm[18..20].copy_from_slice(&40u16.to_le_bytes());
    std::fs::write(so("wrong_arch"), &arm).unwrap();

    install(&so("c_good"), &plugins, "libc_good.so");
    for (file, ..) in faulty {
        install(&so(file), &plugins, &format!("lib{file}.so"));
    }
    install(&so("truncated"), &plugins, "libtruncated.so");
    install(&so("wrong_arch"), &plugins, "libwrong_arch.so");
    for name in [
        "c-good",
        "c-abort",
        "c-segv",
        "c-loop",
        "c-sleep",
        "c-errors",
        "c-strings",
    ] {
        wait_for(name, || plugin_up(&s, name).filter(|u| *u));
    }
    let why = wait_for("truncated refused", || refusal_of(&s, "libtruncated.so"));
    assert!(why.contains("truncated"), "{why}");
    let why = wait_for("wrong arch refused", || refusal_of(&s, "libwrong_arch.so"));
    assert!(why.contains("built for ARM"), "{why}");

    // Ordinary failures, then each fault; sparse errors are spread out
    // with good events between them.
    for i in 0..5 {
        failed_login(&s, &format!("user{i}"));
    }
    for trigger in ["boom-strings", "boom-sleep"] {
        failed_login(&s, trigger);
    }
    for _ in 0..3 {
        failed_login(&s, "boom-errors");
        failed_login(&s, "between");
        std::thread::sleep(Duration::from_millis(700));
    }
    for trigger in ["boom-segv", "boom-abort", "boom-loop"] {
        failed_login(&s, trigger);
        failed_login(&s, "after");
    }

    let segv = wait_for("c-segv quarantined", || failure_of(&s, "c-segv"));
    assert!(
        detail(&segv, "error").contains("SIGSEGV"),
        "{:?}",
        segv.detail
    );
    assert!(
        detail(&segv, "error").contains("2 crashes"),
        "{:?}",
        segv.detail
    );
    let abort = wait_for("c-abort quarantined", || failure_of(&s, "c-abort"));
    assert!(
        detail(&abort, "error").contains("SIGABRT"),
        "{:?}",
        abort.detail
    );
    let hung = wait_for("c-loop quarantined", || failure_of(&s, "c-loop"));
    assert!(
        detail(&hung, "error").contains("2500 ms limit"),
        "{:?}",
        hung.detail
    );
    let errors = wait_for("c-errors quarantined", || failure_of(&s, "c-errors"));
    let why = detail(&errors, "error");
    assert!(why.contains("3 errors within 300 s"), "{why}");
    assert!(
        why.contains("sparse failure") && !why.contains("past the stated"),
        "{why}"
    );
    for name in ["c-segv", "c-abort", "c-loop", "c-errors"] {
        assert_eq!(plugin_up(&s, name), Some(false), "{name}");
        assert_eq!(
            metric(
                &s,
                &format!("tokenwatch_plugin_quarantined{{plugin=\"{name}\",")
            )
            .as_deref(),
            Some("1"),
            "{name}"
        );
    }

    // A slow call is reported, not punished.
    let slow = wait_for("c-sleep over budget", || {
        events_of(&s, "plugin.over_budget")
            .into_iter()
            .find(|e| detail(e, "plugin") == "c-sleep")
    });
    assert_eq!(detail(&slow, "call"), "process");
    // (It may be restarting with the others after a crash a moment ago.)
    wait_for("c-sleep running", || {
        plugin_up(&s, "c-sleep").filter(|u| *u)
    });
    assert!(failure_of(&s, "c-sleep").is_none());

    // Strings: cut at the first NUL; one over the limit is refused.
    let padded = wait_for("the padded alert", || {
        alerts_of(&s, "c-strings")
            .into_iter()
            .find(|a| a.rule == "nul-padded")
    });
    assert_eq!(padded.summary, "padded summary");
    assert!(alerts_of(&s, "c-strings")
        .iter()
        .all(|a| a.rule != "oversized"));

    // The overwrite of a loaded file, in place (cp truncates, then writes).
    build(
        &so("c_good2"),
        "c-good",
        0,
        "-",
        &["-DTW_VERSION=\"2.0.0\""],
    );
    std::fs::copy(so("c_good2"), plugins.join("libc_good.so")).unwrap();
    wait_for("c-good 2.0.0", || {
        events_of(&s, "plugin.loaded")
            .iter()
            .any(|e| detail(e, "plugin") == "c-good" && detail(e, "version") == "2.0.0")
            .then_some(())
    });
    for i in 0..5 {
        failed_login(&s, &format!("late{i}"));
    }

    // Removing a hanging plugin's file takes effect at once: the process is
    // restarted without it, well before the hard limit.
    build(&so("c_hang"), "c-hang", 3, "boom-hang", &[]);
    install(&so("c_hang"), &plugins, "libc_hang.so");
    wait_for("c-hang", || plugin_up(&s, "c-hang").filter(|u| *u));
    let restarts = |s: &Server| {
        metric(s, "tokenwatch_detection_restarts_total ")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let before = restarts(&s);
    failed_login(&s, "boom-hang");
    std::thread::sleep(Duration::from_millis(300));
    let removed = Instant::now();
    std::fs::remove_file(plugins.join("libc_hang.so")).unwrap();
    wait_for_secs("restart without c-hang", 10, || {
        (restarts(&s) > before && plugin_up(&s, "c-hang").is_none()).then_some(())
    });
    assert!(
        removed.elapsed() < Duration::from_millis(2500),
        "removal took {:?}",
        removed.elapsed()
    );
    assert!(failure_of(&s, "c-hang").is_none());
    failed_login(&s, "after-hang");

    // The others kept alerting, and analysed every committed event once.
    let (ok, failed, problems) = load.finish();
    wait_for("c-good analysed everything", || {
        analysed_exactly_once(&s, "c-good")
    });
    wait_for("c-sleep analysed everything", || {
        analysed_exactly_once(&s, "c-sleep")
    });
    assert!(plugin_up(&s, "brute-force") == Some(true));
    assert!(ok > 50, "the load generator got only {ok} answers");
    assert_eq!(failed, 0, "failed requests: {problems:?}");
    let health: serde_json::Value = http()
        .get(s.url("/healthz"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["detection"]["up"], true, "{health}");
    assert!(
        health["detection"]["plugins_quarantined"].as_u64() >= Some(4),
        "{health}"
    );
    s.stop();

    // The quarantine holds across restarts and shows in `plugins list`.
    let out = cli(&dir, &["plugins", "list"], "");
    for file in [
        "libc_segv.so",
        "libc_abort.so",
        "libc_loop.so",
        "libc_errors.so",
    ] {
        assert!(
            out.stdout
                .lines()
                .any(|l| l.starts_with("quarantined: ") && l.contains(file)),
            "{file}: {}",
            out.stdout
        );
    }
    assert!(out.stdout.contains("truncated"), "{}", out.stdout);
    // `plugins check` refuses the bad files with the reason, without mapping them.
    let out = cli(
        &dir,
        &["plugins", "check", so("truncated").to_str().unwrap()],
        "",
    );
    assert_eq!(out.status, 1);
    assert!(out.stdout.contains("truncated"), "{}", out.stdout);
    let out = cli(
        &dir,
        &["plugins", "check", so("wrong_arch").to_str().unwrap()],
        "",
    );
    assert_eq!(out.status, 1);
    assert!(out.stdout.contains("built for ARM"), "{}", out.stdout);
}
