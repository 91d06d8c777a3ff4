//! `/metrics` of a real server as Prometheus reads it, and the Prometheus
//! rules and Grafana dashboard in `deploy/` against it: `promtool check
//! metrics` on the live output, `promtool check rules` and `promtool test
//! rules` on the rules, the dashboard's queries parsed by promtool, and every
//! metric either one names is one the server exposes.
//!
//! promtool comes with Debian's `prometheus` package. Without it the promtool
//! steps are skipped with a message, unless TOKENWATCH_REQUIRE_PROMTOOL=1 (CI).

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;
use tokenwatch_e2e::{data_dir, http, workspace_root, Server};

/// `Some(path)` when promtool can run; `None` (after saying so) when it is
/// missing and not required.
fn promtool() -> Option<PathBuf> {
    let found = Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return Some(PathBuf::from("promtool"));
    }
    if std::env::var("TOKENWATCH_REQUIRE_PROMTOOL").as_deref() == Ok("1") {
        panic!("promtool is required (TOKENWATCH_REQUIRE_PROMTOOL=1) but not installed: apt-get install prometheus");
    }
    eprintln!("SKIPPED promtool checks: promtool not found (Debian package `prometheus`)");
    None
}

fn run(cmd: &mut Command, stdin: &str) -> (bool, String) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// Metric names a PromQL expression uses: identifiers followed by `{` or `[`,
/// and any identifier that starts with `tokenwatch_`.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = BTreeSet::new();
    let mut i = 0;
    let mut in_string = false;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' {
            in_string = !in_string;
            i += 1;
            continue;
        }
        if in_string || !(c.is_ascii_alphabetic() || c == '_' || c == ':') {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len()
            && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
        {
            i += 1;
        }
        let word: String = chars[start..i].iter().collect();
        let mut j = i;
        while j < chars.len() && chars[j] == ' ' {
            j += 1;
        }
        let selector = j < chars.len() && (chars[j] == '{' || chars[j] == '[');
        // `by (family, le)`: label lists are followed by `)` or `,`, never `{`/`[`.
        if word.starts_with("tokenwatch_") || selector {
            out.insert(word);
        }
    }
    out
}

/// Names of the samples in a text exposition.
fn exposed(metrics: &str) -> BTreeSet<String> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect()
}

/// The value of the first sample whose line starts with `prefix`.
fn sample(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no sample {prefix} in:\n{metrics}"))
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Every `expr` of the dashboard's panels, with Grafana's variables replaced
/// by what Prometheus would see.
fn dashboard_queries() -> Vec<String> {
    let text =
        std::fs::read_to_string(workspace_root().join("deploy/grafana/tokenwatch.dashboard.json"))
            .unwrap();
    let dash: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut out = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            let e = t["expr"].as_str().unwrap();
            out.push(
                e.replace("$__rate_interval", "5m")
                    .replace("$instance", ".*"),
            );
        }
    }
    let var = dash["templating"]["list"][0]["query"]["query"]
        .as_str()
        .unwrap();
    // label_values(METRIC, label) is Grafana's, not PromQL: check its metric only.
    let inner = var
        .strip_prefix("label_values(")
        .and_then(|v| v.split(',').next())
        .unwrap();
    out.push(inner.to_string());
    out
}

fn rules_file() -> PathBuf {
    workspace_root().join("deploy/prometheus/tokenwatch.rules.yml")
}

/// The `expr:` values of the rules file (single-line or `|` blocks).
fn rule_exprs() -> Vec<String> {
    let text = std::fs::read_to_string(rules_file()).unwrap();
    let mut out = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(l) = lines.next() {
        let Some(rest) = l.trim_start().strip_prefix("expr:") else {
            continue;
        };
        if rest.trim() == "|" {
            let mut block = String::new();
            while lines
                .peek()
                .is_some_and(|n| n.starts_with("          ") || n.trim().is_empty())
            {
                block.push_str(lines.next().unwrap().trim());
                block.push(' ');
            }
            out.push(block);
        } else {
            out.push(rest.trim().to_string());
        }
    }
    assert!(out.len() >= 10, "found only {} rule expressions", out.len());
    out
}

fn write_config(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    // A forwarder, so the forwarding metrics are exposed too (UDP: nobody needs
    // to listen for the sends to succeed).
    let cfg = dir.join("tokenwatch.toml");
    std::fs::write(
        &cfg,
        "[[forward]]\ntarget = \"udp://127.0.0.1:9\"\nname = \"siem\"\nevents = true\n",
    )
    .unwrap();
    cfg
}

/// One request of every route family, so each histogram has an observation.
fn exercise(s: &Server) {
    let c = http();
    let pw = s
        .admin_password
        .clone()
        .expect("first start prints a password");
    let token: Value = c
        .post(s.url("/oauth/token"))
        .form(&[
            ("grant_type", "password"),
            ("username", "admin"),
            ("password", &pw),
        ])
        .send()
        .unwrap()
        .json()
        .unwrap();
    let access = token["access_token"].as_str().expect("a token").to_string();
    let me = c
        .get(s.url("/api/v1/me"))
        .bearer_auth(&access)
        .send()
        .unwrap();
    assert_eq!(me.status(), 200);
    let refused = c
        .get(s.url("/api/v1/me"))
        .bearer_auth("x.y.z")
        .send()
        .unwrap();
    assert_eq!(refused.status(), 401);
    let ingest = c.post(s.url("/api/v1/events")).body("[]").send().unwrap();
    assert_eq!(ingest.status(), 401, "no ingest key");
    c.get(s.url("/admin/")).send().unwrap();
    assert_eq!(
        c.get(s.url("/.well-known/jwks.json"))
            .send()
            .unwrap()
            .status(),
        200
    );
    assert_eq!(c.get(s.url("/healthz")).send().unwrap().status(), 200);
    assert_eq!(c.get(s.url("/no/such/page")).send().unwrap().status(), 404);
}

#[test]
fn live_metrics_pass_promtool_and_the_dashboard_and_rules_use_only_exposed_metrics() {
    let (_tmp, dir) = data_dir();
    let cfg = write_config(dir.parent().unwrap());
    let s = Server::start_with(&dir, &["--config", cfg.to_str().unwrap()]);
    // The plugins' series exist once the detection process has loaded them.
    tokenwatch_e2e::wait_for("the detectors to load", || {
        let body = http().get(s.url("/healthz")).send().ok()?.text().ok()?;
        let h: serde_json::Value = serde_json::from_str(&body).ok()?;
        (h["detection"]["plugins_running"].as_u64()? >= 1).then_some(())
    });
    exercise(&s);
    let resp = http().get(s.url("/metrics")).send().unwrap();
    assert_eq!(resp.status(), 200);
    let ctype = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
    let metrics = resp.text().unwrap();

    // What a dashboard needs is there, with what just happened in it.
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        metrics.contains(&format!("tokenwatch_build_info{{version=\"{version}\"")),
        "{metrics}"
    );
    for family in ["oauth", "api", "ingest", "console", "meta", "other"] {
        let n = sample(
            &metrics,
            &format!("tokenwatch_http_request_duration_seconds_count{{family=\"{family}\"}}"),
        );
        assert!(n >= 1.0, "no {family} request timed");
    }
    assert_eq!(
        sample(
            &metrics,
            "tokenwatch_http_responses_total{family=\"api\",code=\"2xx\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(
            &metrics,
            "tokenwatch_http_responses_total{family=\"api\",code=\"4xx\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(
            &metrics,
            "tokenwatch_http_responses_total{family=\"other\",code=\"4xx\"}"
        ),
        1.0
    );
    assert!(sample(&metrics, "tokenwatch_audit_commit_duration_seconds_count") >= 1.0);
    let inf = sample(
        &metrics,
        "tokenwatch_audit_commit_duration_seconds_bucket{le=\"+Inf\"}",
    );
    assert_eq!(
        inf,
        sample(&metrics, "tokenwatch_audit_commit_duration_seconds_count")
    );
    sample(&metrics, "tokenwatch_detection_lag_events");
    sample(&metrics, "tokenwatch_detection_up");
    sample(&metrics, "tokenwatch_audit_queue_depth");
    sample(
        &metrics,
        "tokenwatch_forward_backlog{forwarder=\"siem\",stream=\"events\"}",
    );

    let names = exposed(&metrics);
    for q in dashboard_queries() {
        let used = metric_names(&q);
        assert!(!used.is_empty(), "dashboard query names no metric: {q}");
        for m in used {
            assert!(
                names.contains(&m),
                "the dashboard uses {m}, which /metrics does not expose ({q})"
            );
        }
    }
    for q in rule_exprs() {
        for m in metric_names(&q) {
            // `up` is written by Prometheus itself for every scrape target.
            assert!(
                m == "up" || names.contains(&m),
                "a rule uses {m}, which /metrics does not expose ({q})"
            );
        }
    }

    let Some(promtool) = promtool() else { return };
    let (ok, out) = run(Command::new(&promtool).args(["check", "metrics"]), &metrics);
    assert!(
        ok && out.trim().is_empty(),
        "promtool check metrics:\n{out}"
    );

    // The dashboard's queries as recording rules: promtool parses each one.
    let tmp = tempfile::tempdir().unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, q) in dashboard_queries().iter().enumerate() {
        rules.push_str(&format!(
            "      - record: dashboard:query{i}\n        expr: {}\n",
            serde_json::to_string(q).unwrap()
        ));
    }
    let file = tmp.path().join("dashboard.rules.yml");
    std::fs::write(&file, rules).unwrap();
    let (ok, out) = run(
        Command::new(&promtool).args(["check", "rules"]).arg(&file),
        "",
    );
    assert!(ok, "a dashboard query is not valid PromQL:\n{out}");
    s.stop();
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let Some(promtool) = promtool() else { return };
    let dir = workspace_root().join("deploy/prometheus");
    let (ok, out) = run(
        Command::new(&promtool)
            .args(["check", "rules"])
            .arg(rules_file()),
        "",
    );
    assert!(
        ok && out.contains("SUCCESS"),
        "promtool check rules:\n{out}"
    );
    let (ok, out) = run(
        Command::new(&promtool).current_dir(&dir).args([
            "test",
            "rules",
            "tokenwatch.rules.test.yml",
        ]),
        "",
    );
    assert!(ok, "promtool test rules:\n{out}");
    let (ok, out) = run(
        Command::new(&promtool)
            .current_dir(&dir)
            .args(["check", "config", "prometheus.yml"]),
        "",
    );
    assert!(ok, "promtool check config:\n{out}");
}

#[test]
fn the_metric_name_scanner_finds_selectors_and_skips_labels_and_strings() {
    let got = metric_names(
        r#"histogram_quantile(0.99, sum by (family, le) (rate(tokenwatch_x_bucket{family="api",a="b{c"}[5m]))) / up[1m] + foo{}"#,
    );
    let want: BTreeSet<String> = ["tokenwatch_x_bucket", "up", "foo"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(got, want);
}
