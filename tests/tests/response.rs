//! What alerts do: analyst exceptions silence a detector for a user, a
//! brute-force alert locks the targeted account, a spraying alert throttles
//! the client IP, and an operator can lift a lockout. All of it audited.

use std::time::Duration;

use audit_store::AlertFilter;
use tokenwatch_e2e::{audit_reader, cli, data_dir, events_of, http, wait_for, Server};

const PASSWORD: &str = "correct horse battery staple";

fn alerts_by(s: &Server, detector: &str) -> Vec<audit_store::Alert> {
    let f = AlertFilter {
        detector: Some(detector.into()),
        ..Default::default()
    };
    audit_reader(s).list_alerts(&f, None, 100).unwrap().items
}

fn login(s: &Server, user: &str, password: &str) -> reqwest::blocking::Response {
    http()
        .post(s.url("/oauth/token"))
        .form(&[
            ("grant_type", "password"),
            ("username", user),
            ("password", password),
        ])
        .send()
        .unwrap()
}

/// Events the brute-force plugin has been fed, from /metrics.
fn brute_force_seen(s: &Server) -> u64 {
    let m = http()
        .get(s.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    m.lines()
        .find(|l| l.starts_with("tokenwatch_plugin_events_total{plugin=\"brute-force\""))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

fn add_user(dir: &std::path::Path, name: &str) {
    let out = cli(
        dir,
        &["users", "add", name, "--role", "user", "--password-stdin"],
        PASSWORD,
    );
    assert_eq!(out.status, 0, "{}", out.stderr);
}

#[test]
fn exceptions_silence_alerts_and_brute_force_locks_the_account_until_lifted() {
    let (_tmp, dir) = data_dir();
    // First start creates the data dir, admin and plugins; then set up users
    // and an exception for a known noisy service account.
    Server::start(&dir).stop();
    add_user(&dir, "alice");
    add_user(&dir, "svc-batch");
    let out = cli(
        &dir,
        &[
            "exceptions",
            "add",
            "--detector",
            "brute-force",
            "--user",
            "svc-batch",
            "--reason",
            "batch job retries with a stale password until INC-42 is fixed",
            "--expires-in",
            "7d",
        ],
        "",
    );
    assert_eq!(out.status, 0, "{}", out.stderr);
    let bad = cli(
        &dir,
        &[
            "exceptions",
            "add",
            "--detector",
            "brute-force",
            "--ip",
            "not-an-ip",
            "--reason",
            "x",
        ],
        "",
    );
    assert_ne!(bad.status, 0);
    assert!(bad.stderr.contains("CIDR"), "{}", bad.stderr);

    let s = Server::start(&dir);
    wait_for("detectors", || (brute_force_seen(&s) > 0).then_some(()));
    let before = brute_force_seen(&s);
    for _ in 0..15 {
        assert_eq!(login(&s, "svc-batch", "stale").status(), 400);
    }
    wait_for("brute-force to see the failures", || {
        (brute_force_seen(&s) >= before + 15).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        alerts_by(&s, "brute-force").is_empty(),
        "the exception must silence the svc-batch incident"
    );

    // alice is not excepted: the brute force raises an alert and locks her account.
    for _ in 0..15 {
        assert_eq!(login(&s, "alice", "guess").status(), 400);
    }
    let alert = wait_for("the brute-force alert", || {
        alerts_by(&s, "brute-force").into_iter().next()
    });
    assert_eq!(alert.subject.as_deref(), Some("alice"));
    let lock = wait_for("the lockout event", || {
        events_of(&s, "lockout.applied").into_iter().next()
    });
    assert_eq!(lock.username.as_deref(), Some("alice"));
    assert_eq!(lock.detail["lock"], "user");

    // Even the right password is refused now, with the same answer as a wrong one.
    let resp = login(&s, "alice", PASSWORD);
    assert_eq!(resp.status(), 400);
    assert_eq!(
        resp.json::<serde_json::Value>().unwrap()["error"],
        "invalid_grant"
    );
    let refused = events_of(&s, "auth.login.failure");
    assert_eq!(refused[0].reason.as_deref(), Some("account_locked"));
    // Other users are unaffected.
    assert_eq!(login(&s, "admin", "wrong").status(), 400);
    s.stop();

    let out = cli(&dir, &["lockouts", "list"], "");
    assert!(out.stdout.contains("user alice"), "{}", out.stdout);
    let out = cli(&dir, &["lockouts", "lift", "--user", "alice"], "");
    assert_eq!(out.status, 0, "{}", out.stderr);
    let out = cli(
        &dir,
        &[
            "exceptions",
            "edit",
            "1",
            "--reason",
            "INC-42 fix ships Friday",
            "--expires-in",
            "3d",
        ],
        "",
    );
    assert_eq!(out.status, 0, "{}", out.stderr);
    let out = cli(&dir, &["exceptions", "list"], "");
    assert!(
        out.stdout.contains("active") && out.stdout.contains("svc-batch"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("INC-42 fix ships Friday"),
        "{}",
        out.stdout
    );

    let s = Server::start(&dir);
    assert_eq!(login(&s, "alice", PASSWORD).status(), 200);
    let lifted = events_of(&s, "lockout.lifted");
    assert_eq!(lifted.len(), 1);
    assert_eq!(lifted[0].username.as_deref(), Some("alice"));
    let actions = events_of(&s, "admin.action");
    assert!(actions
        .iter()
        .any(|e| e.path.as_deref() == Some("exceptions add")));
}

#[test]
fn password_spraying_throttles_the_client_ip() {
    let (_tmp, dir) = data_dir();
    let s = Server::start(&dir);
    wait_for("detectors", || (brute_force_seen(&s) > 0).then_some(()));
    let mut throttled = None;
    for i in 0..40 {
        let resp = login(&s, &format!("user{i:02}"), "Winter2026!");
        if resp.status() == 429 {
            throttled = Some(resp);
            break;
        }
        assert_eq!(resp.status(), 400);
        // Give the detector time to act between attempts, as a real spray paces itself.
        std::thread::sleep(Duration::from_millis(50));
    }
    let resp = match throttled {
        Some(r) => r,
        None => wait_for("the throttle", || {
            let r = login(&s, "late", "Winter2026!");
            (r.status() == 429).then_some(r)
        }),
    };
    let retry: i64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    let spray = alerts_by(&s, "password-spray");
    assert_eq!(spray.len(), 1, "{spray:?}");
    assert_eq!(spray[0].client_ip.as_deref(), Some("127.0.0.1"));
    let lock = events_of(&s, "lockout.applied");
    assert_eq!(lock[0].client_ip.as_deref(), Some("127.0.0.1"));
    let refused = events_of(&s, "auth.login.failure");
    assert_eq!(refused[0].reason.as_deref(), Some("ip_throttled"));
    // Health and the rest of the API are unaffected.
    assert_eq!(http().get(s.url("/healthz")).send().unwrap().status(), 200);
}
