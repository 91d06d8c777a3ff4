//! The token service as a user meets it: a real `tokenwatch serve` on
//! 127.0.0.1 with a fresh data directory, driven over HTTP and the CLI.

use serde_json::Value;
use tokenwatch_e2e::{
    all_file_bytes, cli, contains, data_dir, export_events, http, wait_for, Server,
};

const PASSWORD: &str = "correct horse battery staple";

fn add_user(dir: &std::path::Path, name: &str, role: &str) {
    let out = cli(
        dir,
        &["users", "add", name, "--role", role, "--password-stdin"],
        PASSWORD,
    );
    assert_eq!(out.status, 0, "users add failed: {}", out.stderr);
}

fn password_login(s: &Server, user: &str, password: &str) -> reqwest::blocking::Response {
    http()
        .post(s.url("/oauth/token"))
        .form(&[
            ("grant_type", "password"),
            ("username", user),
            ("password", password),
        ])
        .send()
        .expect("POST /oauth/token")
}

fn me(s: &Server, token: &str) -> reqwest::blocking::Response {
    http()
        .get(s.url("/api/v1/me"))
        .bearer_auth(token)
        .send()
        .expect("GET /api/v1/me")
}

fn kinds_of(events: &[std::collections::HashMap<String, String>]) -> Vec<String> {
    events.iter().map(|e| e["kind"].clone()).collect()
}

#[test]
fn first_start_login_me_tamper_and_audit_trail() {
    let (_tmp, dir) = data_dir();
    let s = Server::start(&dir);
    let admin_password = s
        .admin_password
        .clone()
        .expect("first start prints a one-time admin password");
    assert!(
        admin_password.len() >= 20,
        "admin password is long: {admin_password:?}"
    );

    // Log in as the bootstrap admin and call the protected API.
    let resp = password_login(&s, "admin", &admin_password);
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let body: Value = resp.json().unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(
        body["expires_in"], 900,
        "access tokens live 15 minutes by default"
    );
    let access = body["access_token"].as_str().unwrap().to_string();
    let refresh = body["refresh_token"].as_str().unwrap().to_string();

    let resp = me(&s, &access);
    assert_eq!(resp.status(), 200);
    let who: Value = resp.json().unwrap();
    assert_eq!(who["username"], "admin");
    assert_eq!(who["roles"], serde_json::json!(["admin"]));

    // A tampered payload is refused with an RFC 6750 challenge naming the reason.
    let mut parts: Vec<String> = access.split('.').map(str::to_string).collect();
    parts[1] = parts[1].chars().rev().collect();
    let tampered = parts.join(".");
    let resp = me(&s, &tampered);
    assert_eq!(resp.status(), 401);
    let challenge = resp.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(challenge.starts_with("Bearer "), "{challenge}");
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");

    // No token at all: a challenge without an error code (RFC 6750 §3.1).
    let resp = http().get(s.url("/api/v1/me")).send().unwrap();
    assert_eq!(resp.status(), 401);
    let challenge = resp.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(!challenge.contains("error="), "{challenge}");

    // JWKS publishes the signing key and no private or symmetric material.
    let jwks: Value = http()
        .get(s.url("/.well-known/jwks.json"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let keys = jwks["keys"].as_array().unwrap();
    assert!(!keys.is_empty());
    for k in keys {
        assert!(
            k.get("d").is_none() && k.get("k").is_none(),
            "private material in JWKS: {k}"
        );
    }

    let health: Value = http()
        .get(s.url("/healthz"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(health["status"], "ok");
    let metrics = http()
        .get(s.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        metrics.contains(
            "tokenwatch_decisions_total{kind=\"access.granted\",outcome=\"success\",reason=\"\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("tokenwatch_audit_store_writable 1"),
        "{metrics}"
    );
    // Group commits: every transaction here carried at least one event.
    let counter = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{metrics}"))
    };
    let (commits, events) = (
        counter("tokenwatch_audit_commits_total "),
        counter("tokenwatch_audit_events_committed_total "),
    );
    assert!(
        commits >= 1 && commits <= events,
        "{commits} commits for {events} events"
    );
    // The query index catches up on its own within a moment of the last request.
    assert!(
        metrics.contains("tokenwatch_audit_index_healthy 1"),
        "{metrics}"
    );
    wait_for("the audit index to catch up", || {
        let h: Value = http().get(s.url("/healthz")).send().ok()?.json().ok()?;
        (h["audit_store"]["index_lag"] == 0 && h["audit_store"]["index_error"].is_null())
            .then_some(())
    });
    s.stop();

    // Every decision is in the audit trail, in order, with who and how.
    let events = export_events(&dir);
    let kinds = kinds_of(&events);
    for expected in [
        "auth.login.success",
        "token.issued",
        "access.granted",
        "access.denied",
    ] {
        assert!(
            kinds.iter().any(|k| k == expected),
            "no {expected} in {kinds:?}"
        );
    }
    let denied: Vec<_> = events
        .iter()
        .filter(|e| e["kind"] == "access.denied")
        .collect();
    assert_eq!(denied.len(), 2);
    let reasons: Vec<&str> = denied.iter().map(|e| e["reason"].as_str()).collect();
    assert!(reasons.contains(&"missing_token"), "{reasons:?}");
    assert!(
        reasons
            .iter()
            .any(|r| *r == "bad_signature" || *r == "malformed"),
        "{reasons:?}"
    );
    let granted = events
        .iter()
        .find(|e| e["kind"] == "access.granted")
        .unwrap();
    assert_eq!(granted["username"], "admin");
    assert_eq!(granted["client_ip"], "127.0.0.1");
    assert_eq!(granted["user_agent"], "tokenwatch-e2e/1");
    assert_eq!(granted["path"], "/api/v1/me");
    assert!(
        !granted["jti"].is_empty() && !granted["kid"].is_empty() && !granted["token_fp"].is_empty()
    );

    // Nothing secret reached the disk: not the tokens, not the passwords.
    for (path, bytes) in all_file_bytes(&dir) {
        for secret in [&access, &refresh, &admin_password, &tampered] {
            assert!(
                !contains(&bytes, secret.as_bytes()),
                "a secret was written to {}",
                path.display()
            );
        }
    }

    // The chain verifies after a clean run.
    let out = cli(&dir, &["audit", "verify"], "");
    assert_eq!(out.status, 0, "audit verify: {}{}", out.stdout, out.stderr);
}

#[test]
fn failed_logins_do_not_reveal_whether_the_user_exists_but_are_audited() {
    let (_tmp, dir) = data_dir();
    std::fs::create_dir_all(&dir).unwrap();
    add_user(&dir, "alice", "user");
    let s = Server::start(&dir);
    let unknown = password_login(&s, "mallory", "guess-guess-guess");
    let wrong = password_login(&s, "alice", "guess-guess-guess");
    assert_eq!(unknown.status(), 400);
    assert_eq!(wrong.status(), 400);
    let unknown: Value = unknown.json().unwrap();
    let wrong: Value = wrong.json().unwrap();
    assert_eq!(
        unknown, wrong,
        "the answer must not tell an unknown user from a wrong password"
    );
    assert_eq!(unknown["error"], "invalid_grant");
    s.stop();

    let events = export_events(&dir);
    let failures: Vec<_> = events
        .iter()
        .filter(|e| e["kind"] == "auth.login.failure")
        .collect();
    assert_eq!(failures.len(), 2);
    assert_eq!(failures[0]["username"], "mallory");
    assert_eq!(failures[0]["reason"], "unknown_user");
    assert_eq!(failures[1]["username"], "alice");
    assert_eq!(failures[1]["reason"], "bad_password");
    assert!(failures
        .iter()
        .all(|e| e["client_ip"] == "127.0.0.1" && e["outcome"] == "failure"));
}

#[test]
fn refresh_rotation_and_reuse_revokes_the_family() {
    let (_tmp, dir) = data_dir();
    std::fs::create_dir_all(&dir).unwrap();
    add_user(&dir, "bob", "user");
    let s = Server::start(&dir);
    let first: Value = password_login(&s, "bob", PASSWORD).json().unwrap();
    let r1 = first["refresh_token"].as_str().unwrap().to_string();

    let refresh = |token: &str| {
        http()
            .post(s.url("/oauth/token"))
            .form(&[("grant_type", "refresh_token"), ("refresh_token", token)])
            .send()
            .unwrap()
    };
    let resp = refresh(&r1);
    assert_eq!(resp.status(), 200);
    let second: Value = resp.json().unwrap();
    let r2 = second["refresh_token"].as_str().unwrap().to_string();
    let a2 = second["access_token"].as_str().unwrap().to_string();
    assert_ne!(r1, r2, "refresh tokens rotate on every use");
    assert_eq!(me(&s, &a2).status(), 200);

    // The old refresh token comes back: theft. Refused, and the whole family dies.
    let resp = refresh(&r1);
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.json::<Value>().unwrap()["error"], "invalid_grant");
    assert_eq!(
        refresh(&r2).status(),
        400,
        "the newest refresh token of the family is revoked too"
    );
    let resp = me(&s, &a2);
    assert_eq!(
        resp.status(),
        401,
        "access tokens of the revoked family stop working"
    );
    assert!(resp.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("revoked"));
    s.stop();

    let events = export_events(&dir);
    let reuse: Vec<_> = events
        .iter()
        .filter(|e| e["kind"] == "refresh.reuse_detected")
        .collect();
    assert_eq!(reuse.len(), 1, "{:?}", kinds_of(&events));
    assert_eq!(reuse[0]["outcome"], "failure");
    assert!(!reuse[0]["subject"].is_empty());
    assert!(events.iter().any(|e| e["kind"] == "token.refreshed"));
    assert!(events
        .iter()
        .any(|e| e["kind"] == "access.denied" && e["reason"] == "revoked"));
}

#[test]
fn introspection_revocation_and_client_credentials() {
    let (_tmp, dir) = data_dir();
    std::fs::create_dir_all(&dir).unwrap();
    add_user(&dir, "carol", "user");
    let out = cli(
        &dir,
        &["clients", "add", "orders-api", "--kind", "resource-server"],
        "",
    );
    assert_eq!(out.status, 0, "{}", out.stderr);
    let rs_secret = secret_from(&out.stdout);
    let out = cli(
        &dir,
        &["clients", "add", "batch-job", "--kind", "confidential"],
        "",
    );
    assert_eq!(out.status, 0, "{}", out.stderr);
    let job_secret = secret_from(&out.stdout);

    let s = Server::start(&dir);
    // Through the confidential client, so the token is that client's to revoke.
    let login: Value = http()
        .post(s.url("/oauth/token"))
        .basic_auth("batch-job", Some(&job_secret))
        .form(&[
            ("grant_type", "password"),
            ("username", "carol"),
            ("password", PASSWORD),
        ])
        .send()
        .unwrap()
        .json()
        .unwrap();
    let access = login["access_token"].as_str().unwrap().to_string();

    let introspect = |token: &str, auth: Option<(&str, &str)>| {
        let mut req = http()
            .post(s.url("/oauth/introspect"))
            .form(&[("token", token)]);
        if let Some((id, secret)) = auth {
            req = req.basic_auth(id, Some(secret));
        }
        req.send().unwrap()
    };
    assert_eq!(
        introspect(&access, None).status(),
        401,
        "introspection requires a client credential"
    );
    assert_eq!(
        introspect(&access, Some(("orders-api", "wrong"))).status(),
        401
    );
    let active: Value = introspect(&access, Some(("orders-api", &rs_secret)))
        .json()
        .unwrap();
    assert_eq!(active["active"], true);
    assert_eq!(active["username"], "carol");
    let garbage: Value = introspect("not-a-token", Some(("orders-api", &rs_secret)))
        .json()
        .unwrap();
    assert_eq!(
        garbage,
        serde_json::json!({ "active": false }),
        "an inactive token is exactly {{\"active\": false}}"
    );

    // RFC 7009 revocation: the client authenticates (401 without), then 200, and
    // the token stops working everywhere.
    let revoke = |auth: Option<(&str, &str)>| {
        let mut req = http().post(s.url("/oauth/revoke")).form(&[
            ("token", access.as_str()),
            ("token_type_hint", "access_token"),
        ]);
        if let Some((id, secret)) = auth {
            req = req.basic_auth(id, Some(secret));
        }
        req.send().unwrap()
    };
    assert_eq!(revoke(None).status(), 401);
    assert_eq!(me(&s, &access).status(), 200);
    assert_eq!(revoke(Some(("batch-job", &job_secret))).status(), 200);
    assert_eq!(me(&s, &access).status(), 401);
    let after: Value = introspect(&access, Some(("orders-api", &rs_secret)))
        .json()
        .unwrap();
    assert_eq!(after, serde_json::json!({ "active": false }));

    // client_credentials: a confidential client gets a token for itself, no refresh token.
    let resp = http()
        .post(s.url("/oauth/token"))
        .basic_auth("batch-job", Some(&job_secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let cc: Value = resp.json().unwrap();
    assert!(cc.get("refresh_token").is_none());
    let who: Value = me(&s, cc["access_token"].as_str().unwrap()).json().unwrap();
    assert_eq!(who["sub"], "batch-job");
    // A resource server may not mint tokens.
    let resp = http()
        .post(s.url("/oauth/token"))
        .basic_auth("orders-api", Some(&rs_secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(
        resp.json::<Value>().unwrap()["error"],
        "unauthorized_client"
    );
    s.stop();

    let events = export_events(&dir);
    assert!(events
        .iter()
        .any(|e| e["kind"] == "token.revoked" && e["outcome"] == "success"));
    assert!(events
        .iter()
        .any(|e| e["kind"] == "access.denied" && e["reason"] == "revoked"));
    assert!(events.iter().any(|e| e["kind"] == "token.rejected"
        && e["path"] == "/oauth/introspect"
        && e["reason"] == "malformed"));
    assert!(events.iter().any(|e| e["kind"] == "auth.login.failure"
        && e["reason"] == "invalid_client"
        && e["username"] == "orders-api"));
}

fn secret_from(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("client_secret: "))
        .expect("clients add prints the secret")
        .trim()
        .to_string()
}

#[test]
fn bad_input_gets_clear_errors_and_the_server_keeps_serving() {
    let (_tmp, dir) = data_dir();
    let s = Server::start(&dir);
    // A 10 MB body is refused without being read into memory.
    let big = vec![b'a'; 10 * 1024 * 1024];
    let resp = http()
        .post(s.url("/oauth/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(big)
        .send();
    if let Ok(resp) = resp {
        assert_eq!(resp.status(), 413);
    }
    // A repeated parameter, an unknown grant, a missing parameter: RFC 6749 errors.
    let resp = http()
        .post(s.url("/oauth/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=password&grant_type=client_credentials")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.json::<Value>().unwrap()["error"], "invalid_request");
    let resp = http()
        .post(s.url("/oauth/token"))
        .form(&[("grant_type", "magic")])
        .send()
        .unwrap();
    assert_eq!(
        resp.json::<Value>().unwrap()["error"],
        "unsupported_grant_type"
    );
    // A huge bearer token is refused as too large.
    let huge = format!(
        "{}.{}.{}",
        "a".repeat(6000),
        "b".repeat(6000),
        "c".repeat(100)
    );
    let resp = me(&s, &huge);
    assert_eq!(resp.status(), 401);
    assert!(resp.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("too_large"));
    // Still serving.
    assert_eq!(http().get(s.url("/healthz")).send().unwrap().status(), 200);
}

#[test]
fn audit_store_failure_fails_auth_closed_and_shows_in_healthz() {
    let (_tmp, dir) = data_dir();
    let s = Server::start(&dir);
    let password = s.admin_password.clone().unwrap();
    assert_eq!(password_login(&s, "admin", &password).status(), 200);

    // Another process takes an exclusive lock on the audit database: the writer
    // cannot commit, so logins must be refused rather than go unrecorded.
    let db = rusqlite::Connection::open(dir.join("audit.db")).unwrap();
    db.execute_batch("PRAGMA busy_timeout = 0; BEGIN EXCLUSIVE;")
        .unwrap();
    let resp = password_login(&s, "admin", &password);
    assert_eq!(resp.status(), 503, "an unrecordable login must fail closed");
    assert_eq!(
        resp.json::<Value>().unwrap()["error"],
        "temporarily_unavailable"
    );
    let resp = http().get(s.url("/healthz")).send().unwrap();
    assert_eq!(resp.status(), 503);
    let health: Value = resp.json().unwrap();
    assert_eq!(health["audit_store"]["writable"], false);
    assert!(
        health["audit_store"]["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("lock"),
        "{health}"
    );

    // The lock goes away: the store recovers and nothing that was acknowledged is lost.
    db.execute_batch("ROLLBACK;").unwrap();
    drop(db);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if password_login(&s, "admin", &password).status() == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "store did not recover after the lock was released"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(http().get(s.url("/healthz")).send().unwrap().status(), 200);
    s.stop();
    let events = export_events(&dir);
    assert!(
        events
            .iter()
            .filter(|e| e["kind"] == "auth.login.success")
            .count()
            >= 2
    );
    let out = cli(&dir, &["audit", "verify"], "");
    assert_eq!(out.status, 0, "{}{}", out.stdout, out.stderr);
}
