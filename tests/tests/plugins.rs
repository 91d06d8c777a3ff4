//! Detector plugins as an operator meets them: a plain `tokenwatch serve` with
//! the built-in detectors, and plugin files dropped into, replaced in and
//! removed from the folder of the running server.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use audit_store::{Alert, AlertFilter, StoredEvent};
use tokenwatch_e2e::{
    audit_reader, cli, data_dir, events_of, http, wait_for, workspace_root, Server,
};

fn alerts(s: &Server) -> Vec<Alert> {
    audit_reader(s)
        .list_alerts(&AlertFilter::default(), None, 1000)
        .unwrap()
        .items
}

fn metrics(s: &Server) -> String {
    http()
        .get(s.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap()
}

fn plugin_up(s: &Server, name: &str) -> Option<bool> {
    let prefix = format!("tokenwatch_plugin_up{{plugin=\"{name}\",");
    metrics(s)
        .lines()
        .find(|l| l.starts_with(&prefix))
        .map(|l| l.ends_with(" 1"))
}

fn running(s: &Server, name: &str) -> Option<()> {
    (plugin_up(s, name) == Some(true)).then_some(())
}

fn failed_login(s: &Server, user: &str) -> reqwest::blocking::Response {
    http()
        .post(s.url("/oauth/token"))
        .form(&[
            ("grant_type", "password"),
            ("username", user),
            ("password", "not-the-password"),
        ])
        .send()
        .unwrap()
}

fn detail_str<'a>(e: &'a StoredEvent, key: &str) -> &'a str {
    e.detail[key].as_str().unwrap_or_default()
}

/// Builds the C test plugin of plugin-host with `defines` into `out`.
fn compile_c_plugin(defines: &[&str], out: &Path) {
    let root = workspace_root();
    let status = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-shared", "-fPIC", "-O1", "-std=c99", "-I"])
        .arg(root.join("crates/detector-api/include"))
        .args(defines)
        .arg("-o")
        .arg(out)
        .arg(root.join("crates/plugin-host/tests/fixtures/c/test_plugin.c"))
        .status()
        .expect("run the C compiler");
    assert!(status.success(), "compiling the C test plugin failed");
}

/// Puts a file into the plugin folder the way deploy tools do: copy beside
/// it under a temporary name, then rename over the target.
fn install(from: &Path, plugin_dir: &Path, name: &str) -> PathBuf {
    let to = plugin_dir.join(name);
    let tmp = plugin_dir.join(format!(".{name}.tmp"));
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, &to).unwrap();
    to
}

fn failure_for(s: &Server, file: &str) -> Option<String> {
    events_of(s, "plugin.failed")
        .into_iter()
        .find(|e| detail_str(e, "file") == file)
        .map(|e| detail_str(&e, "error").to_string())
}

#[test]
fn builtin_detectors_run_after_a_plain_serve_and_alert_once_per_incident() {
    let (_tmp, dir) = data_dir();
    let s = Server::start(&dir);
    let builtin = [
        "brute-force",
        "password-spray",
        "token-replay",
        "refresh-theft",
        "forged-token",
        "expired-storm",
        "account-anomaly",
    ];
    for name in builtin {
        wait_for(name, || running(&s, name));
    }
    // The plugin.loaded events are queued by the host and committed shortly after.
    for name in builtin {
        wait_for(&format!("plugin.loaded for {name}"), || {
            events_of(&s, "plugin.loaded")
                .iter()
                .any(|e| detail_str(e, "plugin") == name)
                .then_some(())
        });
    }

    // A brute-force run against one account: far more failures than any
    // sane threshold, from one client.
    let mut failure_ids = Vec::new();
    for _ in 0..40 {
        assert_eq!(failed_login(&s, "admin").status(), 400);
    }
    for e in events_of(&s, "auth.login.failure") {
        failure_ids.push(e.id);
    }
    assert_eq!(failure_ids.len(), 40);
    let alert = wait_for("a brute-force alert", || {
        alerts(&s).into_iter().find(|a| a.detector == "brute-force")
    });
    assert_eq!(alert.subject.as_deref(), Some("admin"));
    assert!(alert.severity >= audit_store::Severity::Medium);
    assert!(!alert.evidence.is_empty());
    assert!(
        alert.evidence.iter().all(|id| failure_ids.contains(id)),
        "evidence must be the failed logins: {:?}",
        alert.evidence
    );
    // One incident, one alert: more failures update it instead of adding alerts.
    for _ in 0..10 {
        failed_login(&s, "admin");
    }
    std::thread::sleep(Duration::from_secs(2));
    let brute: Vec<_> = alerts(&s)
        .into_iter()
        .filter(|a| a.detector == "brute-force")
        .collect();
    assert_eq!(brute.len(), 1, "one alert per incident: {brute:?}");

    let m = metrics(&s);
    let seen = m
        .lines()
        .find(|l| l.starts_with("tokenwatch_plugin_events_total{plugin=\"brute-force\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<u64>().ok())
        .expect("events counter for brute-force");
    assert!(seen >= 50, "brute-force saw {seen} events");
}

#[test]
fn plugins_are_added_replaced_and_removed_while_the_server_runs() {
    let (tmp, dir) = data_dir();
    let s = Server::start(&dir);
    let plugin_dir = dir.join("plugins");
    wait_for("built-ins", || running(&s, "brute-force"));

    // Add: a plugin written in C appears, and sees the server's own events.
    let v1 = tmp.path().join("c-v1.so");
    compile_c_plugin(&[], &v1);
    install(&v1, &plugin_dir, "libc_probe.so");
    wait_for("c-probe running", || running(&s, "c-probe"));
    failed_login(&s, "mallory");
    let failure = events_of(&s, "auth.login.failure")
        .into_iter()
        .find(|e| e.username.as_deref() == Some("mallory"))
        .expect("the failed login is audited");
    let alert = wait_for("the C plugin's alert", || {
        alerts(&s).into_iter().find(|a| a.detector == "c-probe")
    });
    assert_eq!(alert.rule, "c-failure");
    assert_eq!(alert.evidence, vec![failure.id]);

    // Replace (atomic rename): the new version runs.
    let v2 = tmp.path().join("c-v2.so");
    compile_c_plugin(&["-DTW_VERSION=\"2.0.0\""], &v2);
    install(&v2, &plugin_dir, "libc_probe.so");
    wait_for("c-probe 2.0.0 loaded", || {
        events_of(&s, "plugin.loaded")
            .iter()
            .any(|e| detail_str(e, "plugin") == "c-probe" && detail_str(e, "version") == "2.0.0")
            .then_some(())
    });

    // A bad replacement (another ABI major) is refused; 2.0.0 keeps running.
    let abi2 = tmp.path().join("c-abi2.so");
    compile_c_plugin(&["-DTW_MAJOR=2"], &abi2);
    install(&abi2, &plugin_dir, "libc_probe.so");
    let why = wait_for("refusal of the ABI 2 replacement", || {
        failure_for(&s, "libc_probe.so")
    });
    assert!(why.contains("ABI 2"), "{why}");
    assert_eq!(plugin_up(&s, "c-probe"), Some(true));

    // Remove: the plugin is unloaded.
    std::fs::remove_file(plugin_dir.join("libc_probe.so")).unwrap();
    wait_for("c-probe unloaded", || {
        events_of(&s, "plugin.unloaded")
            .iter()
            .any(|e| detail_str(e, "plugin") == "c-probe")
            .then_some(())
    });
    wait_for("c-probe gone from /metrics", || {
        plugin_up(&s, "c-probe").is_none().then_some(())
    });

    // Each kind of bad file is refused with a reason, and nothing else stops.
    std::fs::write(tmp.path().join("junk"), b"#!/bin/sh\necho not a library\n").unwrap();
    install(&tmp.path().join("junk"), &plugin_dir, "libjunk.so");
    let nosym_src = tmp.path().join("nosym.c");
    std::fs::write(&nosym_src, "int some_other_symbol(void) { return 1; }\n").unwrap();
    let nosym = tmp.path().join("nosym.so");
    let ok = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&nosym)
        .arg(&nosym_src)
        .status()
        .unwrap();
    assert!(ok.success());
    install(&nosym, &plugin_dir, "libnosym.so");
    let builtin = plugin_dir.join("libbrute_force.so");
    install(&builtin, &plugin_dir, "libbrute_force_copy.so");
    let failing = tmp.path().join("c-fail.so");
    compile_c_plugin(&["-DTW_NAME=\"c-fail\""], &failing);
    std::fs::write(plugin_dir.join("libc_fail.toml"), "mode = \"fail\"\n").unwrap();
    install(&failing, &plugin_dir, "libc_fail.so");

    let expectations = [
        ("libjunk.so", "not a shared library"),
        ("libnosym.so", "tokenwatch_detector_v1"),
        ("libbrute_force_copy.so", "already loaded"),
        ("libc_fail.so", "refused its config"),
    ];
    for (file, needle) in expectations {
        let why = wait_for(file, || failure_for(&s, file));
        assert!(why.contains(needle), "{file}: {why}");
    }
    assert_eq!(plugin_up(&s, "brute-force"), Some(true));
    // A refused file is listed as failed, not running.
    assert_eq!(plugin_up(&s, "c-fail"), Some(false));
    assert_eq!(
        http().get(s.url("/healthz")).send().unwrap().status(),
        200,
        "the server keeps serving"
    );
    // The failed logins keep being audited and answered.
    assert_eq!(failed_login(&s, "mallory").status(), 400);
}

#[test]
fn check_and_backtest_from_the_command_line() {
    let (tmp, dir) = data_dir();
    let s = Server::start(&dir);
    wait_for("built-ins", || running(&s, "brute-force"));
    for _ in 0..40 {
        failed_login(&s, "carol");
    }
    s.stop();

    let plugin = dir.join("plugins/libbrute_force.so");
    let out = cli(&dir, &["plugins", "check", plugin.to_str().unwrap()], "");
    assert_eq!(out.status, 0, "{}", out.stderr);
    assert!(out.stdout.starts_with("ok: brute-force "), "{}", out.stdout);

    let junk = tmp.path().join("libjunk.so");
    std::fs::write(&junk, b"not a library").unwrap();
    let out = cli(&dir, &["plugins", "check", junk.to_str().unwrap()], "");
    assert_eq!(out.status, 1);
    assert!(
        out.stdout.contains("not a shared library"),
        "{}",
        out.stdout
    );

    let out = cli(&dir, &["plugins", "list"], "");
    assert_eq!(out.status, 0, "{}", out.stderr);
    assert_eq!(
        out.stdout.lines().filter(|l| l.starts_with("ok: ")).count(),
        7
    );

    let out = cli(&dir, &["plugins", "backtest", plugin.to_str().unwrap()], "");
    assert_eq!(out.status, 0, "{}", out.stderr);
    let lines: Vec<_> = out.stdout.lines().collect();
    assert!(
        !lines.is_empty() && lines.iter().all(|l| l.contains("brute-force/")),
        "{}",
        out.stdout
    );
    assert!(lines.iter().any(|l| l.contains("carol")), "{}", out.stdout);
    assert!(out.stderr.contains("nothing was stored"), "{}", out.stderr);

    // A backtest over a range with no events raises nothing.
    let out = cli(
        &dir,
        &[
            "plugins",
            "backtest",
            plugin.to_str().unwrap(),
            "--from",
            "2001-01-01T00:00:00Z",
            "--to",
            "2001-01-02T00:00:00Z",
        ],
        "",
    );
    assert_eq!(out.status, 0, "{}", out.stderr);
    assert!(out.stdout.trim().is_empty(), "{}", out.stdout);
}
