//! Running tokenwatch as a service: the systemd unit in `deploy/systemd`
//! passes `systemd-analyze verify` (and its offline security review), the
//! detector plugins load under MemoryDenyWriteExecute's kernel equivalent,
//! SIGTERM stops the server cleanly, and its logs carry no colour codes off a
//! terminal and are JSON lines when asked.
//!
//! `systemd-analyze` comes with Debian's `systemd` package; without it the unit
//! checks are skipped with a message, unless TOKENWATCH_REQUIRE_SYSTEMD=1 (CI).

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;
use tokenwatch_e2e::{binary, cli, data_dir, http, wait_for, workspace_root, Server};

fn systemd_analyze() -> bool {
    let found = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        if std::env::var("TOKENWATCH_REQUIRE_SYSTEMD").as_deref() == Ok("1") {
            panic!("systemd-analyze is required (TOKENWATCH_REQUIRE_SYSTEMD=1) but not installed: apt-get install systemd");
        }
        eprintln!(
            "SKIPPED systemd unit checks: systemd-analyze not found (Debian package `systemd`)"
        );
    }
    found
}

/// The shipped unit with its ExecStart pointing at the binary under test
/// (verify refuses a unit whose program does not exist).
fn unit_under_test(dir: &Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(workspace_root().join("deploy/systemd/tokenwatch.service"))
        .unwrap();
    assert!(text.contains("ExecStart=/opt/tokenwatch/tokenwatch "));
    let text = text.replace(
        "ExecStart=/opt/tokenwatch/tokenwatch ",
        &format!("ExecStart={} ", binary().display()),
    );
    let path = dir.join("tokenwatch.service");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn the_systemd_unit_verifies_cleanly_and_is_rated_hardened() {
    if !systemd_analyze() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let unit = unit_under_test(tmp.path());
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // verify exits 0 on a misspelt value and only warns: any line naming the
    // unit is a problem in it.
    let own: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("tokenwatch.service"))
        .collect();
    assert!(
        out.status.success() && own.is_empty(),
        "systemd-analyze verify:\n{stderr}"
    );

    // The same check catches a broken directive: it would not pass vacuously.
    let broken = tmp.path().join("broken");
    std::fs::create_dir(&broken).unwrap();
    let text = std::fs::read_to_string(&unit)
        .unwrap()
        .replace("ProtectSystem=strict", "ProtectSystem=stricter");
    std::fs::write(broken.join("tokenwatch.service"), text).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(broken.join("tokenwatch.service"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("tokenwatch.service"));

    // systemd's own exposure rating (0 safest .. 10): "OK" is below 2 on that scale.
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&unit)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| {
            panic!(
                "no rating in:\n{text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let score: f64 = line
        .split(':')
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read {line}"));
    assert!(score <= 2.0, "exposure {score} (want at most 2.0): {line}");
}

/// PR_SET_MDWE (Linux 6.3+) is what systemd applies for
/// MemoryDenyWriteExecute=yes: no mapping may become writable and executable.
#[cfg(target_os = "linux")]
#[test]
fn every_builtin_detector_loads_under_memory_deny_write_execute() {
    use std::os::unix::process::CommandExt;
    const PR_SET_MDWE: libc::c_int = 65;
    const PR_GET_MDWE: libc::c_int = 66;
    const PR_MDWE_REFUSE_EXEC_GAIN: libc::c_ulong = 1;
    // SAFETY: PR_GET_MDWE only reads this process's flags.
    if unsafe { libc::prctl(PR_GET_MDWE, 0, 0, 0, 0) } < 0 {
        eprintln!("SKIPPED: this kernel has no PR_SET_MDWE (Linux 6.3+)");
        return;
    }
    let (_tmp, dir) = data_dir();
    let s = Server::start_customized(&dir, &[], |cmd| {
        // SAFETY: prctl is async-signal-safe; nothing else runs in the child.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    });
    // The hook refuses to start the program if the flag cannot be set, so a
    // server that answers runs under it.
    let builtin = [
        "brute-force",
        "password-spray",
        "token-replay",
        "refresh-theft",
        "forged-token",
        "expired-storm",
        "account-anomaly",
    ];
    let metrics = wait_for("every built-in detector running", || {
        let m = http().get(s.url("/metrics")).send().ok()?.text().ok()?;
        builtin
            .iter()
            .all(|p| m.contains(&format!("tokenwatch_plugin_up{{plugin=\"{p}\"")))
            .then_some(m)
    });
    for p in builtin {
        let line = metrics
            .lines()
            .find(|l| l.starts_with(&format!("tokenwatch_plugin_up{{plugin=\"{p}\"")))
            .unwrap();
        assert!(line.ends_with(" 1"), "{p} did not load under MDWE: {line}");
    }
    if let Ok(status) = std::fs::read_to_string(format!("/proc/{}/status", s.pid())) {
        // Shown by kernels that report it; the start itself already proves it.
        if let Some(l) = status.lines().find(|l| l.starts_with("MDWE")) {
            assert!(!l.ends_with('0'), "{l}");
        }
    }
    s.stop();
}

/// Starts the server with stderr in a file, makes a request, stops it with
/// SIGTERM; returns (exit success, stderr text, text of data/logs/*).
fn run_and_stop(dir: &Path, env: &[(&str, &str)]) -> (bool, String, String) {
    let err_path = dir
        .parent()
        .unwrap()
        .join(format!("stderr-{}.txt", env.len()));
    let err_file = std::fs::File::create(&err_path).unwrap();
    let s = Server::start_customized(dir, &[], |cmd| {
        cmd.stderr(Stdio::from(err_file));
        for (k, v) in env {
            cmd.env(k, v);
        }
    });
    assert_eq!(
        http().get(s.url("/api/v1/me")).send().unwrap().status(),
        401
    );
    let status = s.stop_with_status();
    let stderr = std::fs::read_to_string(&err_path).unwrap();
    let mut files = String::new();
    for e in std::fs::read_dir(dir.join("logs")).unwrap() {
        files.push_str(&std::fs::read_to_string(e.unwrap().path()).unwrap());
    }
    (status.success(), stderr, files)
}

#[test]
fn sigterm_stops_cleanly_and_logs_have_no_colour_off_a_terminal_or_are_json() {
    let (_tmp, dir) = data_dir();
    let (ok, stderr, files) = run_and_stop(&dir, &[("TOKENWATCH_LOG_FORMAT", "json")]);
    assert!(ok, "SIGTERM is a clean stop (exit 0):\n{stderr}");
    for (what, text) in [("stderr", &stderr), ("log file", &files)] {
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines.iter().any(|l| l.contains("tokenwatch serving")),
            "{what}:\n{text}"
        );
        for l in lines {
            let v: Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{what} line is not JSON ({e}): {l}"));
            assert!(v["level"].is_string() && v["timestamp"].is_string(), "{l}");
            assert!(v["fields"]["message"].is_string(), "{l}");
        }
    }
    // Stopped cleanly means the record is whole and signed to its end.
    let verify = cli(&dir, &["audit", "verify"], "");
    assert_eq!(verify.status, 0, "{}{}", verify.stdout, verify.stderr);

    // Text, to a file rather than a terminal: no escape codes anywhere.
    let (ok, stderr, files) = run_and_stop(&dir, &[]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("tokenwatch serving"), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "colour codes in piped stderr:\n{stderr:?}"
    );
    assert!(!files.contains('\u{1b}'), "colour codes in the log file");
    assert!(
        stderr
            .lines()
            .all(|l| serde_json::from_str::<Value>(l).is_err()),
        "text is the default"
    );
}
