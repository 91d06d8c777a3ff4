//! The Python package (`clients/python`): its own pytest suite, run against
//! this checkout's binary. The suite starts real servers itself (fresh data
//! directories, free ports), drives the Flask, FastAPI and Django integrations
//! and the example app, stops tokenwatch under them and rotates its key.
//!
//! Needs python3 with the package's test extras (`pip install
//! './clients/python[test]'`); without them it skips locally. CI installs them
//! and sets TOKENWATCH_REQUIRE_PYTHON=1, which makes a missing module here, or
//! a skipped test inside the suite, a failure.

use std::process::Command;

use tokenwatch_e2e::{binary, workspace_root};

const MODULES: &str = "jwt, cryptography, pytest, flask, fastapi, httpx, django, requests";

#[test]
fn python_package_test_suite() {
    let have = Command::new("python3")
        .args(["-c", &format!("import {MODULES}")])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !have {
        assert!(
            std::env::var("TOKENWATCH_REQUIRE_PYTHON").is_err(),
            "python3 with {MODULES} is required: pip install './clients/python[test]'"
        );
        eprintln!("SKIP: python3 with {MODULES} not found (pip install './clients/python[test]')");
        return;
    }
    let out = Command::new("python3")
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .current_dir(workspace_root().join("clients/python"))
        .env("TOKENWATCH_BIN", binary())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("running pytest");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(out.status.success(), "the Python package's tests failed");
    let summary = stdout.lines().last().unwrap_or_default();
    assert!(summary.contains(" passed"), "pytest ran no test: {summary}");
}
