//! Helpers for the end-to-end tests: build the real `tokenwatch` binary once,
//! run it on 127.0.0.1 with a fresh data directory, and talk to it over HTTP.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub mod syslog;

/// Path of the `tokenwatch` binary, built on first use with the same cargo
/// (and target dir) that runs the tests.
pub fn binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = Command::new(cargo)
            .args([
                // The whole workspace, so the built-in detector plugins land
                // beside the binary exactly as after the README's command.
                "build",
                "--workspace",
                "--message-format=json",
            ])
            .current_dir(workspace_root())
            .stderr(Stdio::inherit())
            .output()
            .expect("running cargo build for the tokenwatch binary");
        assert!(out.status.success(), "building tokenwatch failed");
        let stdout = String::from_utf8_lossy(&out.stdout);
        stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "tokenwatch")
            .filter_map(|m| m["executable"].as_str().map(PathBuf::from))
            .next_back()
            .expect("cargo reported no tokenwatch executable")
    })
}

pub fn workspace_root() -> PathBuf {
    // Read at run time: a test binary reused from a build of another checkout
    // (a shared CARGO_TARGET_DIR) must still look at the checkout being tested.
    PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
    )
    .parent()
    .expect("tests/ has a parent")
    .to_path_buf()
}

/// Output of one CLI invocation.
pub struct CliOutput {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `tokenwatch --data-dir DIR ARGS...`, feeding `stdin`.
pub fn cli(data_dir: &Path, args: &[&str], stdin: &str) -> CliOutput {
    let mut child = Command::new(binary())
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env_remove("TOKENWATCH_CONFIG")
        .current_dir(data_dir.parent().unwrap_or(data_dir))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting tokenwatch");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(stdin.as_bytes())
        .expect("writing stdin");
    let out = child.wait_with_output().expect("waiting for tokenwatch");
    CliOutput {
        status: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A running `tokenwatch serve` on a free port of 127.0.0.1. Killed on drop.
pub struct Server {
    child: Child,
    pub base: String,
    pub data_dir: PathBuf,
    /// The one-time admin password printed on first start, if this start printed one.
    pub admin_password: Option<String>,
    stdout_lines: mpsc::Receiver<String>,
}

impl Server {
    pub fn start(data_dir: &Path) -> Server {
        Self::start_with(data_dir, &[])
    }

    pub fn start_with(data_dir: &Path, extra: &[&str]) -> Server {
        Self::start_customized(data_dir, extra, |_| {})
    }

    /// As [`Server::start_with`], with a last say over the command (environment,
    /// where stderr goes, a `pre_exec` hook) before it is spawned.
    pub fn start_customized(
        data_dir: &Path,
        extra: &[&str],
        customize: impl FnOnce(&mut Command),
    ) -> Server {
        let mut cmd = Command::new(binary());
        cmd.arg("--data-dir")
            .arg(data_dir)
            .arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .env_remove("TOKENWATCH_CONFIG")
            .env("TOKENWATCH_LOG", "info")
            .current_dir(data_dir.parent().unwrap_or(data_dir))
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        customize(&mut cmd);
        let mut child = cmd.spawn().expect("starting tokenwatch serve");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut admin_password = None;
        let mut expect_password = false;
        let base = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(l) => l,
                Err(_) => {
                    let _ = child.kill();
                    panic!("tokenwatch serve did not report its address within 60 s");
                }
            };
            if expect_password {
                admin_password = Some(line.trim().to_string());
                expect_password = false;
            }
            if line.contains("one-time password") {
                expect_password = true;
            }
            if let Some(url) = line.strip_prefix("tokenwatch listening on ") {
                break url.trim().to_string();
            }
        };
        Server {
            child,
            base,
            data_dir: data_dir.to_path_buf(),
            admin_password,
            stdout_lines: rx,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Stops the server with SIGTERM-like shutdown (kill on non-unix) and waits.
    pub fn stop(mut self) {
        terminate(&mut self.child);
    }

    /// As [`Server::stop`], and how the process exited (killed after 20 s if
    /// SIGTERM did not end it).
    pub fn stop_with_status(mut self) -> std::process::ExitStatus {
        terminate(&mut self.child);
        self.child.wait().expect("waiting for tokenwatch")
    }

    /// The server's process id, e.g. to sample its memory from `/proc`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn pending_stdout(&self) -> Vec<String> {
        self.stdout_lines.try_iter().collect()
    }
}

fn terminate(child: &mut Child) {
    #[cfg(unix)]
    {
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            terminate(&mut self.child);
        }
    }
}

pub fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .user_agent("tokenwatch-e2e/1")
        .build()
        .expect("http client")
}

/// A fresh data directory inside a temp dir that lives as long as the guard.
pub fn data_dir() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    (tmp, dir)
}

/// Exports all audit events as CSV rows (header-keyed maps), via the real CLI.
/// The server must be stopped first: export takes the data-dir lock.
pub fn export_events(data_dir: &Path) -> Vec<std::collections::HashMap<String, String>> {
    let out = cli(data_dir, &["export", "events"], "");
    assert_eq!(out.status, 0, "export failed: {}", out.stderr);
    let mut rdr = csv::Reader::from_reader(out.stdout.as_bytes());
    let headers = rdr.headers().expect("csv header").clone();
    rdr.records()
        .map(|r| {
            let r = r.expect("csv row");
            headers
                .iter()
                .zip(r.iter())
                .map(|(h, v)| (h.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

/// Every byte of every file under `dir`, for "this secret never reached disk" checks.
pub fn all_file_bytes(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                out.push((p, bytes));
            }
        }
    }
    out
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Polls `probe` every 100 ms until it returns `Some`, for up to 90 s (the
/// machines these tests run on can be busy), and panics naming `what`.
pub fn wait_for<T>(what: &str, probe: impl FnMut() -> Option<T>) -> T {
    wait_for_secs(what, 90, probe)
}

/// [`wait_for`] with an explicit limit in seconds.
pub fn wait_for_secs<T>(what: &str, secs: u64, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A read-only view of the server's audit store (WAL lets it read beside the writer).
pub fn audit_reader(s: &Server) -> audit_store::AuditReader {
    audit_store::AuditReader::open(&s.data_dir.join("audit.db"))
        .expect("open the audit store read-only")
}

/// The newest (up to 1000) stored events of `kind`, newest first.
pub fn events_of(s: &Server, kind: &str) -> Vec<audit_store::StoredEvent> {
    let f = audit_store::EventFilter {
        kind: Some(kind.into()),
        ..Default::default()
    };
    audit_reader(s).query_events(&f, None, 1000).unwrap().items
}

/// Runs `tokenwatch --data-dir DATA serve --listen 127.0.0.1:0 ARGS...` with `env`,
/// expecting it to refuse to start; returns its stderr. Panics if it is still
/// running after 30 s (it started instead of refusing).
pub fn serve_refused(data: &Path, args: &[&str], env: &[(&str, &Path)]) -> String {
    let mut child = Command::new(binary())
        .arg("--data-dir")
        .arg(data)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .env_remove("TOKENWATCH_CONFIG")
        .envs(env.iter().map(|(k, v)| (*k, *v)))
        .current_dir(data.parent().unwrap_or(data))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting tokenwatch serve");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("polling serve").is_none() {
        if Instant::now() > deadline {
            terminate(&mut child);
            panic!("serve {args:?} started instead of refusing");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("serve's output");
    assert!(!out.status.success(), "serve {args:?} exited with success");
    String::from_utf8_lossy(&out.stderr).into_owned()
}
