//! HTTPS on the listener, checked from outside with Python's `ssl` module
//! against a test CA: the certificate is verified, TLS 1.2 and 1.3 are served
//! and nothing older, plain HTTP and an untrusting client get nothing, and a
//! certificate replaced on disk is served to new connections within seconds
//! (a bad replacement is refused, audited, and the old certificate kept).
//! `serve` refuses to start on half a pair, a mismatched key or a key that
//! others can read.
//!
//! Needs python3 (standard library only); CI sets TOKENWATCH_REQUIRE_PYTHON=1
//! so a missing interpreter fails instead of skipping.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use audit_store::AuditReader;
use serde_json::Value;
use tokenwatch_e2e::{data_dir, serve_refused, Server};

fn python_ssl() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import ssl, http.client"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        assert!(
            std::env::var("TOKENWATCH_REQUIRE_PYTHON").is_err(),
            "python3 is required for the TLS tests"
        );
        eprintln!("SKIP: python3 not found");
    }
    ok
}

/// One TLS client, several ways of knocking. Prints one JSON object.
const CLIENT: &str = r#"
import http.client, json, socket, ssl, sys
mode, host, port, cafile = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
name = sys.argv[5] if len(sys.argv) > 5 else host

def context(max_version=None, min_version=None):
    c = ssl.create_default_context(cafile=cafile)
    if min_version or max_version:
        # Let this client offer old versions, so that a refusal is the server's.
        c.set_ciphers("DEFAULT:@SECLEVEL=0")
        c.minimum_version = min_version or ssl.TLSVersion.MINIMUM_SUPPORTED
        c.maximum_version = max_version or ssl.TLSVersion.MAXIMUM_SUPPORTED
    return c

def get(c):
    conn = http.client.HTTPSConnection(host, port, context=c, timeout=10)
    if name != host:
        # Connect to 127.0.0.1 but check the certificate against `name`.
        conn.sock = c.wrap_socket(socket.create_connection((host, port), timeout=10), server_hostname=name)
    conn.request("GET", "/healthz")
    r = conn.getresponse()
    body = r.read()
    cert = conn.sock.getpeercert()
    cn = dict(x[0] for x in cert["subject"])["commonName"]
    out = {"ok": True, "status": r.status, "version": conn.sock.version(), "cn": cn,
           "hsts": r.getheader("Strict-Transport-Security"), "body": body.decode()}
    conn.close()
    return out

try:
    if mode == "get":
        print(json.dumps(get(context())))
    elif mode == "tls12":
        print(json.dumps(get(context(max_version=ssl.TLSVersion.TLSv1_2))))
    elif mode == "tls11":
        print(json.dumps(get(context(max_version=ssl.TLSVersion.TLSv1_1))))
    elif mode == "plain":
        s = socket.create_connection((host, port), timeout=5)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        except (socket.timeout, ConnectionResetError):
            pass
        print(json.dumps({"ok": data.startswith(b"HTTP/"), "head": data[:40].hex()}))
except (ssl.SSLError, ssl.CertificateError, OSError) as e:
    print(json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}"}))
"#;

fn client(mode: &str, s: &Server, ca: &Path, name: Option<&str>) -> Value {
    let port = s.base.rsplit(':').next().expect("port");
    let mut args = vec![mode, "127.0.0.1", port, ca.to_str().unwrap()];
    args.extend(name);
    let out = Command::new("python3")
        .arg("-c")
        .arg(CLIENT)
        .args(&args)
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "python said {stdout:?} ({e}); stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Replaces `path` the way deployment tools do: a new file renamed over it.
fn replace(path: &Path, contents: &str, private: bool) {
    let tmp = path.with_extension("new");
    if private {
        test_pki::write_private(&tmp, contents);
    } else {
        std::fs::write(&tmp, contents).unwrap();
    }
    std::fs::rename(&tmp, path).unwrap();
}

fn tls_reload_events(data: &Path) -> Vec<audit_store::StoredEvent> {
    AuditReader::open(&data.join("audit.db"))
        .unwrap()
        .events_after(0, 100_000)
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "tls.reload")
        .collect()
}

#[test]
fn https_is_verified_by_python_and_a_renewed_certificate_is_served_without_restart() {
    if !python_ssl() {
        return;
    }
    let (tmp, dir) = data_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let pki = tmp.path().join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    let ca = test_pki::Ca::new("tokenwatch test CA");
    let ca_file = ca.write(&pki, "ca");
    let other_ca = test_pki::Ca::new("someone else's CA").write(&pki, "other-ca");
    let (cert, key) = ca
        .issue("server-1", &["localhost", "127.0.0.1"])
        .write(&pki, "server");
    let s = Server::start_with(
        &dir,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    assert!(s.base.starts_with("https://127.0.0.1:"), "{}", s.base);

    let r = client("get", &s, &ca_file, None);
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["status"], 200, "{r}");
    assert_eq!(r["version"], "TLSv1.3", "{r}");
    assert_eq!(r["cn"], "server-1", "{r}");
    assert_eq!(r["hsts"], "max-age=31536000", "{r}");
    // The certificate names localhost too.
    assert_eq!(client("get", &s, &ca_file, Some("localhost"))["ok"], true);
    let r = client("get", &s, &ca_file, Some("elsewhere.example"));
    assert_eq!(r["ok"], false, "a certificate for another name: {r}");

    let r = client("tls12", &s, &ca_file, None);
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["version"], "TLSv1.2", "{r}");
    let r = client("tls11", &s, &ca_file, None);
    assert_eq!(r["ok"], false, "TLS 1.1 must be refused: {r}");

    let r = client("plain", &s, &ca_file, None);
    assert_eq!(r["ok"], false, "plain HTTP got an HTTP answer: {r}");
    let r = client("get", &s, &other_ca, None);
    assert_eq!(
        r["ok"], false,
        "a client trusting another CA connected: {r}"
    );
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("CERTIFICATE_VERIFY_FAILED"),
        "{r}"
    );

    // Renewed on disk (key first, then the certificate, as two renames): new
    // connections get the new certificate within seconds, no restart.
    let renewed = ca.issue("server-2", &["localhost", "127.0.0.1"]);
    let started = Instant::now();
    replace(&key, &renewed.key_pem, true);
    replace(&cert, &renewed.cert_pem, false);
    let cn = |s: &Server| client("get", s, &ca_file, None)["cn"].clone();
    while cn(&s) != "server-2" {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the renewed certificate was not served within 10 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("renewed certificate served after {:?}", started.elapsed());
    let events = tls_reload_events(&dir);
    let ok = events
        .iter()
        .find(|e| e.outcome.as_str() == "success")
        .unwrap_or_else(|| panic!("no successful tls.reload event: {events:#?}"));
    assert_eq!(ok.detail["cert_sha256"].as_str().map(str::len), Some(64));

    // A certificate whose key is not beside it: refused, audited, the old one kept.
    let stray = ca.issue("server-3", &["localhost", "127.0.0.1"]);
    replace(&cert, &stray.cert_pem, false);
    let failed = wait_for_failure(&dir, "key_mismatch");
    assert!(
        failed.detail["error"]
            .as_str()
            .unwrap()
            .contains("does not belong"),
        "{failed:?}"
    );
    assert_eq!(cn(&s), "server-2", "a refused pair must not be served");
    // Its key arrives: the pair is complete and served.
    replace(&key, &stray.key_pem, true);
    let started = Instant::now();
    while cn(&s) != "server-3" {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "server-3 not served"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // A key that others may read is refused while running too.
    let loose = ca.issue("server-4", &["127.0.0.1"]);
    let loose_key = pki.join("loose.key");
    std::fs::write(&loose_key, &loose.key_pem).unwrap();
    std::fs::rename(&loose_key, &key).unwrap();
    replace(&cert, &loose.cert_pem, false);
    wait_for_failure(&dir, "key_permissions");
    assert_eq!(cn(&s), "server-3");
    s.stop();
}

fn wait_for_failure(dir: &Path, reason: &str) -> audit_store::StoredEvent {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let found = tls_reload_events(dir)
            .into_iter()
            .find(|e| e.outcome.as_str() == "failure" && e.reason.as_deref() == Some(reason));
        if let Some(e) = found {
            return e;
        }
        assert!(
            Instant::now() < deadline,
            "no tls.reload failure ({reason}) recorded"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn serve_refuses_half_a_pair_a_mismatched_key_and_a_readable_key() {
    let (tmp, dir) = data_dir();
    let pki = tmp.path().join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    let ca = test_pki::Ca::new("tokenwatch test CA");
    let (cert, key) = ca.issue("server", &["127.0.0.1"]).write(&pki, "server");
    let (_, other_key) = ca.issue("other", &["127.0.0.1"]).write(&pki, "other");
    let p = |p: &PathBuf| p.to_str().unwrap().to_string();

    let err = serve_refused(&dir, &["--tls-cert", &p(&cert)], &[]);
    assert!(
        err.contains("tls_key") && err.contains("--tls-key"),
        "{err}"
    );
    let err = serve_refused(&dir, &[], &[("TOKENWATCH_TLS_KEY", &key)]);
    assert!(err.contains("tls_cert is not"), "{err}");

    let err = serve_refused(
        &dir,
        &["--tls-cert", &p(&cert), "--tls-key", &p(&other_key)],
        &[],
    );
    assert!(err.contains("does not belong to the certificate"), "{err}");
    let err = serve_refused(
        &dir,
        &[],
        &[
            ("TOKENWATCH_TLS_CERT", &cert),
            ("TOKENWATCH_TLS_KEY", &key.with_file_name("none.key")),
        ],
    );
    assert!(err.contains("none.key"), "{err}");

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = serve_refused(&dir, &["--tls-cert", &p(&cert), "--tls-key", &p(&key)], &[]);
        assert!(err.contains("chmod 600"), "{err}");
    }
    // Refused before anything was created.
    assert!(!dir.exists(), "the data directory was created");
}
