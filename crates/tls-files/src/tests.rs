use super::*;

struct Files {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    other_key: PathBuf,
}

fn files() -> Files {
    let dir = tempfile::tempdir().unwrap();
    let ca = test_pki::Ca::new("unit CA");
    let ca_path = ca.write(dir.path(), "ca");
    let (cert, key) = ca.issue("one", &["localhost"]).write(dir.path(), "one");
    let (_, other_key) = ca.issue("two", &["localhost"]).write(dir.path(), "two");
    Files {
        _dir: dir,
        ca: ca_path,
        cert,
        key,
        other_key,
    }
}

#[test]
fn a_matching_pair_loads_and_has_a_fingerprint() {
    let f = files();
    let key = load_certified_key(&f.cert, &f.key).unwrap();
    let fp = cert_sha256_hex(&key);
    assert_eq!(fp.len(), 64);
    assert!(fp.chars().all(|c| c.is_ascii_hexdigit()));
    client_config(&f.ca, Some((&f.cert, &f.key))).unwrap();
    client_config(&f.ca, None).unwrap();
}

#[test]
fn the_key_of_another_certificate_is_refused_naming_both_files() {
    let f = files();
    let err = load_certified_key(&f.cert, &f.other_key).unwrap_err();
    assert_eq!(err.reason(), "key_mismatch");
    let msg = err.to_string();
    assert!(
        msg.contains("two.key") && msg.contains("one.pem") && msg.contains("does not belong"),
        "{msg}"
    );
    let err = client_config(&f.ca, Some((&f.cert, &f.other_key))).unwrap_err();
    assert_eq!(err.reason(), "key_mismatch");
}

#[cfg(unix)]
#[test]
fn a_key_readable_by_group_or_others_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let f = files();
    for mode in [0o640, 0o604, 0o660] {
        std::fs::set_permissions(&f.key, std::fs::Permissions::from_mode(mode)).unwrap();
        let err = load_certified_key(&f.cert, &f.key).unwrap_err();
        assert_eq!(err.reason(), "key_permissions", "{mode:o}");
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
    std::fs::set_permissions(&f.key, std::fs::Permissions::from_mode(0o400)).unwrap();
    load_certified_key(&f.cert, &f.key).unwrap();
}

#[test]
fn files_without_the_expected_pem_are_named() {
    let f = files();
    // A key file given as the certificate, and the other way round.
    let err = load_certified_key(&f.key, &f.key).unwrap_err();
    assert_eq!(err.reason(), "no_certificate", "{err}");
    let err = load_certified_key(&f.cert, &f.cert).unwrap_err();
    assert!(
        matches!(err.reason(), "no_key" | "key_permissions"),
        "{err}"
    );
    let empty = f.cert.with_file_name("empty.pem");
    test_pki::write_private(&empty, "");
    assert_eq!(load_private_key(&empty).unwrap_err().reason(), "no_key");
    let missing = f.cert.with_file_name("missing.pem");
    let err = load_roots(&missing).unwrap_err();
    assert_eq!(err.reason(), "unreadable");
    assert!(err.to_string().contains("missing.pem"), "{err}");
}
