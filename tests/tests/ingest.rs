//! Ingest: other services report their token decisions with a per-source API
//! key, the events land in the audit trail (hash-chained, seen by detectors);
//! `tokenwatch ingest FILE` imports security logs and resumes where it stopped.
//! The Python client that reports to the API has its own suite
//! (clients/python/tests, run by tests/tests/python_client.rs).

use std::path::Path;

use audit_store::{AlertFilter, AuditReader, EventFilter, StoredEvent};
use serde_json::{json, Value};
use tokenwatch_e2e::{all_file_bytes, cli, contains, data_dir, http, wait_for, Server};

fn add_source(dir: &Path, name: &str) -> String {
    let out = cli(dir, &["sources", "add", name], "");
    assert_eq!(out.status, 0, "{}", out.stderr);
    out.stdout
        .lines()
        .find_map(|l| l.strip_prefix("api_key: "))
        .expect("api_key line")
        .trim()
        .to_string()
}

fn post(
    s: &Server,
    auth: Option<(&str, &str)>,
    body: impl Into<String>,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut req = http()
        .post(s.url("/api/v1/events"))
        .header("Content-Type", "application/x-ndjson")
        .body(body.into());
    if let Some((h, v)) = auth {
        req = req.header(h, v);
    }
    let r = req.send().unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, r.json().unwrap_or(Value::Null), headers)
}

fn bearer(key: &str) -> (&'static str, String) {
    ("Authorization", format!("Bearer {key}"))
}

fn events(dir: &Path, f: EventFilter) -> Vec<StoredEvent> {
    AuditReader::open(&dir.join("audit.db"))
        .unwrap()
        .query_events(&f, None, 10_000)
        .unwrap()
        .items
}

fn of_source(dir: &Path, source: &str) -> Vec<StoredEvent> {
    events(
        dir,
        EventFilter {
            source: Some(source.into()),
            ..Default::default()
        },
    )
}

fn of_kind(dir: &Path, kind: &str) -> Vec<StoredEvent> {
    events(
        dir,
        EventFilter {
            kind: Some(kind.into()),
            ..Default::default()
        },
    )
}

const LIMITS: &str = r#"
[ingest]
max_batch_events = 50
max_body_bytes = 65536
rate_limit_per_sec = 100
rate_limit_burst = 100
"#;

#[test]
fn sources_report_events_with_per_line_errors_limits_and_revocation() {
    let (tmp, dir) = data_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let config = tmp.path().join("tokenwatch.toml");
    std::fs::write(&config, LIMITS).unwrap();
    let key = add_source(&dir, "orders-api");
    let noisy_key = add_source(&dir, "noisy");
    assert!(key.starts_with("twk_") && key.len() > 40, "{key}");
    let dup = cli(&dir, &["sources", "add", "orders-api"], "");
    assert_ne!(dup.status, 0);
    assert!(dup.stderr.contains("already exists"), "{}", dup.stderr);
    let list = cli(&dir, &["sources", "list"], "");
    assert!(
        list.stdout.contains("orders-api") && list.stdout.contains("active"),
        "{}",
        list.stdout
    );
    assert!(!list.stdout.contains(&key), "a listing never shows a key");

    let s = Server::start_with(&dir, &["--config", config.to_str().unwrap()]);
    let (h, v) = bearer(&key);

    // NDJSON: good lines kept, bad ones refused with their line numbers.
    let body = [
        r#"{"kind":"token.rejected","outcome":"failure","reason":"expired","username":"alice","client_ip":"203.0.113.9","jti":"j-1"}"#,
        r#"{"kind":"token.verified","outcome":"success","client_ip":"nope"}"#,
        r#"{"kind":"token.verified","outcome":"success","source":"tokenwatch"}"#,
        "",
        r#"{"kind":"access.granted","outcome":"success","subject":"u-42","path":"/orders","time":"2026-01-02T03:04:05Z"}"#,
        r#"{"kind":"admin.action","outcome":"success"}"#,
        "{not json",
    ]
    .join("\n");
    let (status, resp, _) = post(&s, Some((h, &v)), body);
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["accepted"], 2, "{resp}");
    assert_eq!(resp["rejected"], 4, "{resp}");
    assert_eq!(resp["ids"].as_array().unwrap().len(), 2);
    let errors = resp["errors"].as_array().unwrap();
    let lines: Vec<u64> = errors.iter().map(|e| e["line"].as_u64().unwrap()).collect();
    assert_eq!(lines, [2, 3, 6, 7]);
    assert!(
        errors[0]["error"].as_str().unwrap().contains("client_ip"),
        "{resp}"
    );
    assert!(
        errors[1]["error"]
            .as_str()
            .unwrap()
            .contains("set from the API key"),
        "{resp}"
    );
    assert!(
        errors[2]["error"]
            .as_str()
            .unwrap()
            .contains("not accepted here"),
        "{resp}"
    );
    assert!(
        errors[3]["error"]
            .as_str()
            .unwrap()
            .contains("invalid JSON"),
        "{resp}"
    );

    // A JSON array through the other header; errors name the index.
    let array = json!([
        {"kind": "auth.login.success", "outcome": "success", "username": "bob"},
        {"kind": "auth.login.success", "outcome": "failure"},
    ]);
    let (status, resp, _) = post(&s, Some(("X-Tokenwatch-Key", &key)), array.to_string());
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["accepted"], 1);
    assert_eq!(resp["errors"][0]["index"], 1, "{resp}");

    // Everything refused: 422, nothing stored but the record of the request.
    let (status, resp, _) = post(&s, Some((h, &v)), r#"{"kind":"nope","outcome":"success"}"#);
    assert_eq!(status, 422, "{resp}");

    // Keys: missing, an access token instead, unknown.
    let (status, resp, headers) = post(&s, None, "{}");
    assert_eq!(status, 401, "{resp}");
    assert!(headers.get("www-authenticate").is_some());
    assert_eq!(
        post(&s, Some(("Authorization", "Bearer eyJhbGciOi.x.y")), "{}").0,
        401
    );
    assert_eq!(
        post(&s, Some(("Authorization", "Bearer twk_guessed")), "{}").0,
        401
    );

    // Limits: batch size, body size, rate.
    let line = r#"{"kind":"token.verified","outcome":"success"}"#;
    let (status, resp, _) = post(&s, Some((h, &v)), vec![line; 51].join("\n"));
    assert_eq!(status, 413, "{resp}");
    assert!(
        resp["message"].as_str().unwrap().contains("at most 50"),
        "{resp}"
    );
    let (status, _, _) = post(&s, Some((h, &v)), " ".repeat(70_000));
    assert_eq!(status, 413);
    let (nh, nv) = bearer(&noisy_key);
    let fifty = vec![line; 50].join("\n");
    assert_eq!(post(&s, Some((nh, &nv)), fifty.clone()).0, 200);
    assert_eq!(post(&s, Some((nh, &nv)), fifty.clone()).0, 200);
    let (status, resp, headers) = post(&s, Some((nh, &nv)), fifty.clone());
    assert_eq!(status, 429, "{resp}");
    assert!(headers.get("retry-after").is_some());
    for _ in 0..5 {
        assert_eq!(post(&s, Some((nh, &nv)), fifty.clone()).0, 429);
    }

    // Ingested events reach the detectors: failed logins reported by a
    // service raise a brute-force alert like the server's own would.
    let failures: Vec<String> = (0..12)
        .map(|_| r#"{"kind":"auth.login.failure","outcome":"failure","reason":"bad_password","username":"victim","client_ip":"198.51.100.7"}"#.to_string())
        .collect();
    assert_eq!(post(&s, Some((h, &v)), failures.join("\n")).0, 200);
    let reader = AuditReader::open(&dir.join("audit.db")).unwrap();
    let alert = wait_for("a brute-force alert from ingested events", || {
        let f = AlertFilter {
            detector: Some("brute-force".into()),
            ..Default::default()
        };
        reader
            .list_alerts(&f, None, 10)
            .unwrap()
            .items
            .into_iter()
            .next()
    });
    let evidence = reader.get_event(alert.evidence[0]).unwrap().unwrap();
    assert_eq!(evidence.source, "orders-api");
    s.stop();

    // What a user checks in the trail.
    let mine = of_source(&dir, "orders-api");
    assert_eq!(mine.len(), 2 + 1 + 12, "{mine:?}");
    let rejected = mine.iter().find(|e| e.kind == "token.rejected").unwrap();
    assert_eq!(rejected.reason.as_deref(), Some("expired"));
    assert_eq!(rejected.jti.as_deref(), Some("j-1"));
    let granted = mine.iter().find(|e| e.kind == "access.granted").unwrap();
    assert_eq!(granted.time_us, 1_767_323_045_000_000);
    let batches = of_kind(&dir, "ingest.batch");
    assert!(batches.iter().all(|b| b.source == "tokenwatch"));
    assert!(batches
        .iter()
        .any(|b| b.reason.as_deref() == Some("too_large")));
    let limited: Vec<_> = batches
        .iter()
        .filter(|b| b.reason.as_deref() == Some("rate_limited"))
        .collect();
    assert_eq!(limited.len(), 1, "six refusals in a row are audited once");
    let denied = of_kind(&dir, "access.denied");
    for reason in ["missing_api_key", "not_an_ingest_key", "unknown_api_key"] {
        assert!(
            denied.iter().any(|e| e.reason.as_deref() == Some(reason)),
            "{reason}"
        );
    }
    let verify = cli(&dir, &["audit", "verify"], "");
    assert_eq!(verify.status, 0, "{}{}", verify.stdout, verify.stderr);
    for (path, bytes) in all_file_bytes(tmp.path()) {
        assert!(
            !contains(&bytes, key.as_bytes()),
            "the API key is in {}",
            path.display()
        );
    }

    // Revoked: refused from then on.
    let out = cli(&dir, &["sources", "revoke", "orders-api"], "");
    assert_eq!(out.status, 0, "{}", out.stderr);
    let s = Server::start_with(&dir, &["--config", config.to_str().unwrap()]);
    assert_eq!(post(&s, Some((h, &v)), line).0, 401);
    s.stop();
}

#[test]
fn ingest_file_imports_ecs_and_generic_lines_and_resumes() {
    // A security log written by a real server.
    let (tmp, dir) = data_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let config = tmp.path().join("tokenwatch.toml");
    std::fs::write(&config, "[audit]\nsecurity_log = true\n").unwrap();
    let s = Server::start_with(&dir, &["--config", config.to_str().unwrap()]);
    for _ in 0..3 {
        let r = http()
            .post(s.url("/oauth/token"))
            .form(&[
                ("grant_type", "password"),
                ("username", "mallory"),
                ("password", "x"),
            ])
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 400);
    }
    s.stop();
    let log_dir = dir.join("security-log");
    let log = std::fs::read_dir(&log_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .next()
        .expect("a security log file");
    let written = std::fs::read_to_string(&log).unwrap().lines().count();
    let copy = tmp.path().join("security.jsonl");
    std::fs::copy(&log, &copy).unwrap();

    // Imported into another data directory.
    let (_tmp2, other) = data_dir();
    std::fs::create_dir_all(&other).unwrap();
    let out = cli(&other, &["ingest", copy.to_str().unwrap()], "");
    assert_eq!(out.status, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains(&format!("imported {written} events")),
        "{}",
        out.stdout
    );
    let imported = of_source(&other, "import");
    assert_eq!(imported.len(), written);
    let failures: Vec<_> = imported
        .iter()
        .filter(|e| e.kind == "auth.login.failure")
        .collect();
    assert_eq!(failures.len(), 3);
    assert_eq!(failures[0].username.as_deref(), Some("mallory"));
    assert_eq!(failures[0].detail["origin"]["provider"], "tokenwatch");

    // Rerun: nothing new.
    let out = cli(&other, &["ingest", copy.to_str().unwrap()], "");
    assert_eq!(out.status, 0, "{}", out.stderr);
    assert!(out.stdout.contains("nothing new"), "{}", out.stdout);

    // Appended generic lines, one bad: only the new ones, the bad one named by line.
    let mut text = std::fs::read_to_string(&copy).unwrap();
    text.push_str(r#"{"ts":"2026-03-04T05:06:07Z","event":"token.rejected","result":"failure","error":"expired","user":"dave","ip":"10.9.8.7","access_token":"eyJsecret","region":"eu"}"#);
    text.push('\n');
    text.push_str("{\"event\":\"token.rejected\",\"result\":\"failure\",\"ip\":\"not-an-ip\"}\n");
    text.push_str(r#"{"event":"access.granted","result":"success","sub":"u-1"}"#);
    text.push('\n');
    std::fs::write(&copy, text).unwrap();
    let out = cli(
        &other,
        &["ingest", copy.to_str().unwrap(), "--source", "legacy-api"],
        "",
    );
    assert_eq!(out.status, 0, "{}", out.stderr);
    assert!(out.stdout.contains("imported 2 events"), "{}", out.stdout);
    assert!(out.stdout.contains("refused 1"), "{}", out.stdout);
    assert!(
        out.stderr.contains(&format!(
            "security.jsonl:{}: field `client_ip`",
            written + 2
        )),
        "{}",
        out.stderr
    );
    let legacy = of_source(&other, "legacy-api");
    assert_eq!(legacy.len(), 2);
    let dave = legacy.iter().find(|e| e.kind == "token.rejected").unwrap();
    assert_eq!(dave.username.as_deref(), Some("dave"));
    assert_eq!(dave.reason.as_deref(), Some("expired"));
    assert_eq!(dave.detail["extra"]["region"], "eu");
    for (path, bytes) in all_file_bytes(&other) {
        assert!(
            !contains(&bytes, b"eyJsecret"),
            "a raw token reached {}",
            path.display()
        );
    }
    let verify = cli(&other, &["audit", "verify"], "");
    assert_eq!(verify.status, 0, "{}{}", verify.stdout, verify.stderr);
}
