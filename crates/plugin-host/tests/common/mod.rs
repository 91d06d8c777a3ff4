//! Helpers shared by the plugin-host integration tests: building real
//! plugin libraries (Rust via cargo, C via the system compiler) and a sink
//! that records what the host reports.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use plugin_host::{AlertRecord, EventRecord, HostSink, Lifecycle};

pub fn manifest_dir() -> PathBuf {
    // Read at run time: a test binary reused from a build of another checkout
    // (a shared CARGO_TARGET_DIR) must still look at the checkout being tested.
    PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
    )
}

/// The target dir cargo is using for this test run, so nested builds reuse
/// what is already compiled.
pub fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    // <target>/<profile>/deps/<test-binary>
    let exe = std::env::current_exe().expect("current_exe");
    exe.ancestors()
        .nth(3)
        .expect("target dir above the test binary")
        .to_owned()
}

fn cargo_build(args: &[&str], release: bool) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--quiet")
        .args(args)
        .env("CARGO_TARGET_DIR", target_dir());
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("run cargo");
    assert!(status.success(), "cargo build {args:?} failed");
}

fn artefact(lib_name: &str, release: bool) -> PathBuf {
    let profile = if release { "release" } else { "debug" };
    let file = format!(
        "{}{lib_name}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    let p = target_dir().join(profile).join(file);
    assert!(p.is_file(), "{} was not built", p.display());
    p
}

/// The test-only Rust probe plugin (tests/fixtures/probe), built once per run.
pub fn probe_so() -> PathBuf {
    static ONCE: OnceLock<PathBuf> = OnceLock::new();
    ONCE.get_or_init(|| {
        let manifest = manifest_dir().join("tests/fixtures/probe/Cargo.toml");
        cargo_build(
            &["--manifest-path", manifest.to_str().expect("utf-8 path")],
            false,
        );
        artefact("tw_probe_detector", false)
    })
    .clone()
}

/// The template plugin from plugins/example-threshold, built once per run.
pub fn threshold_so() -> PathBuf {
    static ONCE: OnceLock<PathBuf> = OnceLock::new();
    ONCE.get_or_init(|| {
        cargo_build(&["-p", "example-threshold"], false);
        artefact("example_threshold", false)
    })
    .clone()
}

/// Compile a C file from tests/fixtures/c into a shared library at `out`.
pub fn compile_c(source: &str, defines: &[&str], out: &Path) {
    let include = manifest_dir().join("../detector-api/include");
    let src = manifest_dir().join("tests/fixtures/c").join(source);
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let output = Command::new(cc)
        .args(["-shared", "-fPIC", "-O1", "-Wall", "-Werror", "-std=c99"])
        .arg("-I")
        .arg(&include)
        .args(defines)
        .arg("-o")
        .arg(out)
        .arg(&src)
        .output()
        .expect("run the C compiler");
    assert!(
        output.status.success(),
        "cc failed for {source}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Put a file into place the way deploy tools do: write a temp file in the
/// same folder, then rename it over the target.
pub fn atomic_install(from: &Path, to: &Path) {
    let tmp = to.with_file_name(format!(
        ".{}.tmp",
        to.file_name().unwrap().to_string_lossy()
    ));
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

#[derive(Default)]
pub struct Recorder {
    pub alerts: Mutex<Vec<AlertRecord>>,
    pub lifecycle: Mutex<Vec<Lifecycle>>,
}

impl HostSink for Recorder {
    fn alert(&self, alert: AlertRecord) {
        self.alerts.lock().unwrap().push(alert);
    }
    fn lifecycle(&self, event: Lifecycle) {
        self.lifecycle.lock().unwrap().push(event);
    }
}

impl Recorder {
    pub fn new() -> Arc<Recorder> {
        Arc::new(Recorder::default())
    }
    pub fn alerts(&self) -> Vec<AlertRecord> {
        self.alerts.lock().unwrap().clone()
    }
    pub fn events(&self) -> Vec<Lifecycle> {
        self.lifecycle.lock().unwrap().clone()
    }
    /// The reason of the Failed event for `file`, if any.
    pub fn failure_for(&self, file: &Path) -> Option<String> {
        self.events().into_iter().rev().find_map(|e| match e {
            Lifecycle::Failed {
                file: f, reason, ..
            } if f == file => Some(reason),
            _ => None,
        })
    }
}

/// Poll `cond` until it holds; panic with `what` after 10 s.
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn ev(id: i64, kind: &str, outcome: &str, ip: &str) -> EventRecord {
    EventRecord {
        id,
        time_us: 1_700_000_000_000_000 + id * 1_000_000,
        kind: kind.into(),
        outcome: outcome.into(),
        client_ip: Some(ip.into()),
        subject: Some("alice".into()),
        source: "test".into(),
        ..EventRecord::default()
    }
}

pub fn batch(events: Vec<EventRecord>) -> Arc<[EventRecord]> {
    Arc::from(events)
}
