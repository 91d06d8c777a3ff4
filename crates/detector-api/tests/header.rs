//! The committed C header must match what cbindgen generates from the Rust
//! definitions, so C plugin authors never build against a stale ABI.

use std::path::PathBuf;

#[test]
fn committed_header_is_up_to_date() {
    // Read at run time: a test binary reused from a build of another checkout
    // (a shared CARGO_TARGET_DIR) must still check the checkout being tested.
    let dir = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
    );
    let dir = dir.as_path();
    let config =
        cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("read cbindgen.toml");
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_config(config)
        .with_src(dir.join("src/lib.rs"))
        .generate()
        .expect("cbindgen generates the header")
        .write(&mut generated);
    let generated = String::from_utf8(generated).expect("header is UTF-8");
    let path = dir.join("include/tokenwatch_detector.h");
    if std::env::var_os("TW_BLESS_HEADER").is_some() {
        std::fs::write(&path, &generated).expect("write header");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} is out of date with src/lib.rs; regenerate it with \
         `TW_BLESS_HEADER=1 cargo test -p detector-api --test header` and commit it",
        path.display()
    );
}
