//! Names the build for `tokenwatch_build_info`: the git commit (or
//! `TOKENWATCH_BUILD_COMMIT` when building outside a checkout, e.g. a package)
//! and the compiler's version. Either may be missing; the metric then omits it.

use std::path::Path;
use std::process::Command;

fn run(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    out.status.success().then(|| text.trim().to_string())
}

fn main() {
    println!("cargo:rerun-if-env-changed=TOKENWATCH_BUILD_COMMIT");
    let commit = std::env::var("TOKENWATCH_BUILD_COMMIT")
        .ok()
        .or_else(|| run("git", &["rev-parse", "--short=12", "HEAD"]));
    // Rebuilt when HEAD moves: HEAD itself (a checkout) and the branch it names (a commit).
    for file in ["HEAD", "refs/heads"] {
        let target = if file == "HEAD" {
            run("git", &["rev-parse", "--git-path", "HEAD"])
        } else {
            run("git", &["symbolic-ref", "-q", "HEAD"])
                .and_then(|r| run("git", &["rev-parse", "--git-path", r.as_str()]))
        };
        if let Some(path) = target.filter(|p| Path::new(p).exists()) {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    if let Some(c) = commit.filter(|c| c.chars().all(|ch| ch.is_ascii_alphanumeric())) {
        println!("cargo:rustc-env=TOKENWATCH_BUILD_COMMIT={c}");
    }
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    // "rustc 1.89.0 (29483883e 2025-08-04)" -> "1.89.0"
    if let Some(v) =
        run(&rustc, &["--version"]).and_then(|v| v.split_whitespace().nth(1).map(str::to_string))
    {
        println!("cargo:rustc-env=TOKENWATCH_BUILD_RUSTC={v}");
    }
}
