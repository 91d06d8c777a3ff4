//! The ECS security log against the ECS definitions it claims to follow
//! (vendored in `tests/ecs-8.17.0/`) and against the Elasticsearch mappings and
//! Filebeat input shipped in `deploy/`: every field of every event kind and of
//! alerts exists in ECS with the JSON type its ECS type needs, categorisation
//! values are ECS's allowed values, and the index template maps every field
//! with the ECS type.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use audit_store::{
    kinds, AuditStore, NewAlert, NewEvent, Outcome, Severity, StoreConfig, ECS_VERSION,
};
use serde_json::{json, Value};

fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn repo_file(rel: &str) -> PathBuf {
    manifest().join("../..").join(rel)
}

struct EcsField {
    ty: String,
    array: bool,
}

/// `fields.csv`: field name -> (type, expected as an array).
fn ecs_fields() -> BTreeMap<String, EcsField> {
    let dir = manifest().join(format!("tests/ecs-{ECS_VERSION}"));
    let mut rd = csv::Reader::from_path(dir.join("fields.csv")).expect("vendored fields.csv");
    let mut out = BTreeMap::new();
    for row in rd.records() {
        let row = row.unwrap();
        assert_eq!(
            &row[0], ECS_VERSION,
            "fields.csv is from another ECS release"
        );
        out.insert(
            row[3].to_string(),
            EcsField {
                ty: row[4].to_string(),
                array: row[6].contains("array"),
            },
        );
    }
    out
}

/// `allowed_values.csv`: (field, value) -> expected event types (categories only).
fn allowed_values() -> BTreeMap<(String, String), Vec<String>> {
    let dir = manifest().join(format!("tests/ecs-{ECS_VERSION}"));
    let mut rd = csv::Reader::from_path(dir.join("allowed_values.csv")).unwrap();
    rd.records()
        .map(|r| {
            let r = r.unwrap();
            (
                (r[0].to_string(), r[1].to_string()),
                r[2].split_whitespace().map(str::to_string).collect(),
            )
        })
        .collect()
}

/// The component template's mappings, flattened: field -> type.
fn template_mappings() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(repo_file(
        "deploy/elasticsearch/tokenwatch-audit@mappings.json",
    ))
    .unwrap();
    let v: Value = serde_json::from_str(&text).expect("the component template is JSON");
    let mut out = BTreeMap::new();
    fn walk(prefix: &str, props: &Value, out: &mut BTreeMap<String, String>) {
        for (k, m) in props.as_object().unwrap() {
            let name = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            if let Some(t) = m["type"].as_str() {
                out.insert(name.clone(), t.to_string());
                // Multi-fields (user.name.text) are mappings of their own.
                if let Some(fields) = m.get("fields") {
                    for (sub, sm) in fields.as_object().unwrap() {
                        out.insert(format!("{name}.{sub}"), sm["type"].as_str().unwrap().into());
                    }
                }
            }
            if let Some(p) = m.get("properties") {
                walk(&name, p, out);
            }
        }
    }
    walk("", &v["template"]["mappings"]["properties"], &mut out);
    out
}

/// Leaf fields of one line; the walk stops at a field mapped `flattened`.
fn leaves(
    prefix: &str,
    v: &Value,
    mapped: &BTreeMap<String, String>,
    out: &mut Vec<(String, Value)>,
) {
    match v {
        Value::Object(m) if mapped.get(prefix).map(String::as_str) != Some("flattened") => {
            for (k, v) in m {
                let name = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                leaves(&name, v, mapped, out);
            }
        }
        _ => out.push((prefix.to_string(), v.clone())),
    }
}

/// Whether a JSON scalar is what an Elasticsearch field of type `ty` accepts.
fn fits(ty: &str, v: &Value) -> bool {
    match ty {
        "keyword" | "constant_keyword" | "wildcard" | "match_only_text" | "text" => v.is_string(),
        "long" => v.is_i64() || v.is_u64(),
        "float" | "scaled_float" | "double" => v.is_number(),
        "boolean" => v.is_boolean(),
        "ip" => v.as_str().is_some_and(|s| s.parse::<IpAddr>().is_ok()),
        "date" => v.as_str().is_some_and(|s| {
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).is_ok()
        }),
        "flattened" | "object" => v.is_object(),
        _ => false,
    }
}

/// Every kind, with every optional field set, plus a client address that is
/// not an IP, and two alerts (one updated by a second report).
fn write_log(dir: &Path) -> (Vec<Value>, PathBuf) {
    let mut c = StoreConfig::in_data_dir(dir);
    let logdir = dir.join("security-log");
    c.security_log_dir = Some(logdir.clone());
    let store = AuditStore::open(c).unwrap();
    let w = store.writer();
    for (i, kind) in kinds::ALL.iter().enumerate() {
        let outcome = if i % 2 == 0 {
            Outcome::Success
        } else {
            Outcome::Failure
        };
        w.record_blocking(
            NewEvent::new(kind, outcome)
                .with_reason("bad_signature")
                .with_username("alice")
                .with_subject("u-1")
                .with_client_ip(if i == 3 { "unix-socket" } else { "2001:db8::7" })
                .with_user_agent("python-requests/2.32")
                .with_method("POST")
                .with_path("/oauth/token")
                .with_jti("j-1")
                .with_kid("k-1")
                .with_alg("ES256")
                .with_token_fp("ab12cd34")
                .with_detail(json!({"nested": {"n": 1, "list": ["a"]}, "plain": true})),
        )
        .unwrap();
    }
    for n in 0..2 {
        w.insert_alert(NewAlert {
            time_us: 1_714_564_800_000_000 + n,
            detector: "brute-force".into(),
            rule: "failed_logins".into(),
            severity: if n == 0 {
                Severity::High
            } else {
                Severity::Critical
            },
            subject: Some("alice".into()),
            client_ip: Some("192.0.2.9".into()),
            summary: "12 failed logins for alice in 300 s".into(),
            group_key: "user:alice".into(),
            evidence: vec![1, 2, 3],
        })
        .unwrap();
    }
    store.shutdown().unwrap();
    let files: Vec<PathBuf> = std::fs::read_dir(&logdir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let lines = std::fs::read_to_string(&files[0])
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("every line is one JSON object"))
        .collect();
    (lines, files[0].clone())
}

#[test]
fn every_field_of_every_line_is_ecs_with_the_ecs_type_and_mapped_by_the_template() {
    let dir = tempfile::tempdir().unwrap();
    let (lines, _) = write_log(dir.path());
    assert_eq!(lines.len(), kinds::ALL.len() + 2);
    let ecs = ecs_fields();
    let mapped = template_mappings();
    let mut seen_fields = BTreeSet::new();
    for line in &lines {
        let mut fields = Vec::new();
        leaves("", line, &mapped, &mut fields);
        for (name, value) in fields {
            seen_fields.insert(name.clone());
            let mapping = mapped.get(&name).unwrap_or_else(|| {
                panic!(
                    "{name} is not mapped by deploy/elasticsearch/tokenwatch-audit@mappings.json"
                )
            });
            let scalars: Vec<&Value> = match &value {
                Value::Array(a) => a.iter().collect(),
                v => vec![v],
            };
            if let Some(custom) = name.strip_prefix("tokenwatch.") {
                assert!(!custom.is_empty());
            } else {
                let def = ecs
                    .get(&name)
                    .unwrap_or_else(|| panic!("{name} is not an ECS {ECS_VERSION} field: {line}"));
                assert_eq!(mapping, &def.ty, "{name}: template type differs from ECS");
                assert_eq!(
                    value.is_array(),
                    def.array,
                    "{name}: ECS {} an array",
                    if def.array {
                        "expects"
                    } else {
                        "does not expect"
                    }
                );
            }
            for s in scalars {
                assert!(fits(mapping, s), "{name} = {s} does not fit type {mapping}");
            }
        }
        assert_eq!(line["ecs"]["version"], ECS_VERSION);
        for required in ["@timestamp", "message"] {
            assert!(line[required].is_string(), "{required} missing: {line}");
        }
        for required in ["kind", "category", "type", "action", "dataset"] {
            assert!(
                !line["event"][required].is_null(),
                "event.{required} missing: {line}"
            );
        }
    }
    // The template maps what the log writes, and the test saw all of it used.
    for f in [
        "event.type",
        "event.reason",
        "user.name",
        "user.id",
        "source.ip",
        "source.address",
        "user_agent.original",
        "url.path",
        "http.request.method",
        "rule.name",
        "rule.ruleset",
        "event.severity",
        "event.risk_score",
        "tokenwatch.detail",
        "tokenwatch.alert.evidence",
    ] {
        assert!(seen_fields.contains(f), "no line carried {f}");
    }
    // A mapped ECS field that is not ECS, or with another type, would also be wrong.
    for (name, ty) in &mapped {
        if name.starts_with("tokenwatch.") {
            continue;
        }
        let def = ecs
            .get(name)
            .unwrap_or_else(|| panic!("template maps non-ECS {name}"));
        assert_eq!(
            ty, &def.ty,
            "template maps {name} as {ty}, ECS says {}",
            def.ty
        );
    }
}

#[test]
fn categorisation_values_are_allowed_and_each_type_fits_its_category() {
    let dir = tempfile::tempdir().unwrap();
    let (lines, _) = write_log(dir.path());
    let allowed = allowed_values();
    let is_allowed = |field: &str, v: &str| allowed.contains_key(&(field.into(), v.into()));
    let mut actions = BTreeSet::new();
    let mut alerts = 0;
    for line in &lines {
        let e = &line["event"];
        let kind = e["kind"].as_str().unwrap();
        assert!(is_allowed("event.kind", kind), "event.kind {kind}");
        let cats: Vec<&str> = e["category"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let types: Vec<&str> = e["type"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(!cats.is_empty() && !types.is_empty(), "{line}");
        for c in &cats {
            assert!(
                is_allowed("event.category", c),
                "event.category {c}: {line}"
            );
        }
        for t in &types {
            assert!(is_allowed("event.type", t), "event.type {t}: {line}");
            let expected = cats.iter().any(|c| {
                allowed[&("event.category".to_string(), c.to_string())].contains(&t.to_string())
            });
            assert!(
                expected,
                "event.type {t} is not expected for {cats:?}: {line}"
            );
        }
        match kind {
            "event" => {
                let outcome = e["outcome"].as_str().unwrap();
                assert!(is_allowed("event.outcome", outcome));
                actions.insert(e["action"].as_str().unwrap().to_string());
            }
            "alert" => {
                alerts += 1;
                assert_eq!(line["rule"]["ruleset"], "brute-force");
                assert_eq!(line["rule"]["name"], "failed_logins");
                assert_eq!(line["message"], "12 failed logins for alice in 300 s");
                assert_eq!(line["source"]["ip"], "192.0.2.9");
                assert!(e["severity"].as_u64().unwrap() >= 3);
            }
            other => panic!("unexpected event.kind {other}"),
        }
    }
    assert_eq!(alerts, 2, "an alert raised, then updated: two alert lines");
    let all: BTreeSet<String> = kinds::ALL.iter().map(|k| k.to_string()).collect();
    assert_eq!(actions, all, "one line per kind, event.action = the kind");
}

#[test]
fn a_line_tells_a_reader_what_happened_and_keeps_non_addresses_out_of_source_ip() {
    let dir = tempfile::tempdir().unwrap();
    let (lines, _) = write_log(dir.path());
    let first = &lines[0];
    assert_eq!(
        first["message"],
        "auth.login.success success (bad_signature) user=alice from 2001:db8::7"
    );
    assert_eq!(first["source"]["ip"], "2001:db8::7");
    assert_eq!(first["user_agent"]["original"], "python-requests/2.32");
    assert_eq!(first["url"]["path"], "/oauth/token");
    let odd = &lines[3];
    assert_eq!(odd["source"]["address"], "unix-socket");
    assert!(odd["source"].get("ip").is_none(), "{odd}");
}

#[test]
fn filebeat_reads_the_files_the_log_writes_into_the_templated_data_stream() {
    let dir = tempfile::tempdir().unwrap();
    let (_, file) = write_log(dir.path());
    let fb = std::fs::read_to_string(repo_file("deploy/filebeat/tokenwatch.filebeat.yml")).unwrap();
    let value_of = |key: &str| {
        fb.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.trim().trim_matches('"').to_string())
            .unwrap_or_else(|| panic!("no {key} in the Filebeat input"))
    };
    // The glob's file part matches the rolled file name (security.YYYY-MM-DD.log).
    let path = value_of("- /");
    let glob = path.rsplit('/').next().unwrap();
    let (pre, post) = glob.split_once('*').unwrap();
    let name = file.file_name().unwrap().to_str().unwrap();
    assert!(
        name.starts_with(pre) && name.ends_with(post),
        "{glob} vs {name}"
    );
    assert!(path.ends_with("security-log/security.*.log"), "{path}");
    assert!(fb.contains("- ndjson:"), "lines must be parsed as JSON");
    // The data stream it writes is one the index template applies to.
    let index = value_of("index:");
    let tpl: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_file(
            "deploy/elasticsearch/tokenwatch-audit.index-template.json",
        ))
        .unwrap(),
    )
    .unwrap();
    let pattern = tpl["index_patterns"][0].as_str().unwrap();
    let prefix = pattern.strip_suffix('*').unwrap();
    assert!(index.starts_with(prefix), "{index} vs {pattern}");
    assert!(tpl["composed_of"]
        .as_array()
        .unwrap()
        .contains(&json!("tokenwatch-audit@mappings")));
}
