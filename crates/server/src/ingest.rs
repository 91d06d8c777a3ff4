//! The ingest event schema: what another service may report, checked field by
//! field, and the mappings used by `tokenwatch ingest FILE` (the ECS lines the
//! security log writes, and generic JSON lines). Shared by the HTTP API and the
//! CLI so both accept and refuse exactly the same events.

use std::net::IpAddr;

use audit_store::{kinds, NewEvent, Outcome};
use serde::Deserialize;
use serde_json::{Map, Value};

/// Kinds another service may report through the ingest API: decisions about
/// tokens and access. tokenwatch's own kinds (`admin.*`, `plugin.*`,
/// `lockout.*`, `ingest.*`) are refused: no one else can speak for it.
pub const INGEST_KINDS: &[&str] = &[
    kinds::AUTH_LOGIN_SUCCESS,
    kinds::AUTH_LOGIN_FAILURE,
    kinds::TOKEN_ISSUED,
    kinds::TOKEN_REFRESHED,
    kinds::TOKEN_REVOKED,
    kinds::TOKEN_VERIFIED,
    kinds::TOKEN_REJECTED,
    kinds::REFRESH_REUSE_DETECTED,
    kinds::ACCESS_GRANTED,
    kinds::ACCESS_DENIED,
];

/// Which kinds a caller may record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KindPolicy {
    /// [`INGEST_KINDS`] only: the HTTP API.
    Ingest,
    /// Every documented kind: an operator importing tokenwatch's own logs.
    AnyKnown,
}

/// Longest accepted string per field, in bytes.
const MAX_FIELD: usize = 256;
const MAX_LONG_FIELD: usize = 1024;
/// Longest accepted `detail` object, serialized.
pub const MAX_DETAIL_BYTES: usize = 8 * 1024;
/// Oldest and newest accepted event times, relative to now.
const MAX_AGE_US: i64 = 10 * 365 * 86_400 * 1_000_000;
const MAX_FUTURE_US: i64 = 5 * 60 * 1_000_000;

/// One event as sent to `POST /api/v1/events` (the documented schema).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestEvent {
    /// RFC 3339; default: when tokenwatch receives it.
    pub time: Option<String>,
    pub kind: String,
    pub outcome: String,
    pub reason: Option<String>,
    pub subject: Option<String>,
    pub username: Option<String>,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
    pub method: Option<String>,
    pub path: Option<String>,
    pub jti: Option<String>,
    pub kid: Option<String>,
    pub alg: Option<String>,
    pub token_fp: Option<String>,
    pub detail: Option<Value>,
}

/// Parses and checks one JSON value. Errors are sentences meant for the
/// sender, naming the field.
pub fn parse_value(
    v: Value,
    source: &str,
    policy: KindPolicy,
    now_us: i64,
) -> Result<NewEvent, String> {
    if let Value::Object(o) = &v {
        if o.contains_key("source") {
            return Err("field `source` is not accepted: it is set from the API key".into());
        }
        if let Some(secret) = o.keys().find(|k| is_secret_field(k)) {
            return Err(format!(
                "field `{secret}` is refused: never send raw tokens or secrets; identify a token by `jti` or `token_fp`"
            ));
        }
    } else {
        return Err(format!("expected a JSON object, got {}", type_name(&v)));
    }
    let ev: IngestEvent = serde_json::from_value(v).map_err(|e| e.to_string())?;
    ev.validate(source, policy, now_us)
}

/// Parses one NDJSON line.
pub fn parse_line(
    line: &[u8],
    source: &str,
    policy: KindPolicy,
    now_us: i64,
) -> Result<NewEvent, String> {
    // Fast path: straight into the schema. Only a line that fails is parsed
    // again as a plain value, to explain precisely what is wrong with it.
    if let Ok(ev) = serde_json::from_slice::<IngestEvent>(line) {
        return ev.validate(source, policy, now_us);
    }
    let v: Value = serde_json::from_slice(line).map_err(|e| format!("invalid JSON: {e}"))?;
    parse_value(v, source, policy, now_us)
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn check_str(name: &str, v: Option<String>, max: usize) -> Result<Option<String>, String> {
    match v {
        None => Ok(None),
        Some(s) if s.is_empty() => Ok(None),
        Some(s) if s.len() > max => Err(format!(
            "field `{name}` is {} bytes long; at most {max} are accepted",
            s.len()
        )),
        Some(s) if s.chars().any(char::is_control) => {
            Err(format!("field `{name}` contains control characters"))
        }
        Some(s) => Ok(Some(s)),
    }
}

/// The outcome a kind implies, if it implies one.
fn implied_outcome(kind: &str) -> Option<Outcome> {
    match kind {
        kinds::AUTH_LOGIN_SUCCESS
        | kinds::TOKEN_ISSUED
        | kinds::TOKEN_REFRESHED
        | kinds::TOKEN_VERIFIED
        | kinds::ACCESS_GRANTED => Some(Outcome::Success),
        kinds::AUTH_LOGIN_FAILURE
        | kinds::TOKEN_REJECTED
        | kinds::REFRESH_REUSE_DETECTED
        | kinds::ACCESS_DENIED => Some(Outcome::Failure),
        _ => None,
    }
}

/// Refuses an event whose own time is already past the audit retention window.
///
/// Retention can only delete the oldest rows of the hash chain (a prefix by id,
/// which is also the order of recording): a backdated event recorded behind newer
/// ones cannot be deleted at its own time without breaking the chain. Refusing it
/// here keeps the window honest: no event is recorded already past it, and each
/// one is deleted at most one window after it was recorded.
pub fn within_retention(
    ev: NewEvent,
    retention: Option<std::time::Duration>,
    now_us: i64,
) -> Result<NewEvent, String> {
    let Some(window) = retention else {
        return Ok(ev);
    };
    let window_us = i64::try_from(window.as_micros()).unwrap_or(i64::MAX);
    if ev.time_us < now_us.saturating_sub(window_us) {
        return Err(format!(
            "field `time` is older than the audit retention window ({} days): the event would be deleted as soon as it was recorded",
            window.as_secs() / 86_400
        ));
    }
    Ok(ev)
}

pub fn parse_time(s: &str) -> Result<i64, String> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("field `time` is not an RFC 3339 time ({e}): {s:?}"))?;
    i64::try_from(t.unix_timestamp_nanos() / 1000)
        .map_err(|_| "field `time` is out of range".into())
}

impl IngestEvent {
    fn validate(self, source: &str, policy: KindPolicy, now_us: i64) -> Result<NewEvent, String> {
        let allowed = match policy {
            KindPolicy::Ingest => INGEST_KINDS,
            KindPolicy::AnyKnown => kinds::ALL,
        };
        if self.kind.starts_with("audit.") {
            return Err(format!(
                "kind {:?} is recorded only by tokenwatch's audit store itself",
                self.kind
            ));
        }
        if !allowed.contains(&self.kind.as_str()) {
            return Err(format!(
                "kind {:?} is not accepted here; accepted kinds: {}",
                self.kind,
                allowed.join(", ")
            ));
        }
        let outcome: Outcome = match self.outcome.as_str() {
            "success" => Outcome::Success,
            "failure" => Outcome::Failure,
            other => {
                return Err(format!(
                    "field `outcome` must be \"success\" or \"failure\", got {other:?}"
                ))
            }
        };
        if let Some(implied) = implied_outcome(&self.kind) {
            if implied != outcome {
                return Err(format!(
                    "kind {:?} is always outcome {:?}",
                    self.kind,
                    implied.as_str()
                ));
            }
        }
        let time_us = match &self.time {
            None => now_us,
            Some(t) => {
                let t = parse_time(t)?;
                if t > now_us + MAX_FUTURE_US {
                    return Err("field `time` is more than 5 minutes in the future".into());
                }
                if t < now_us - MAX_AGE_US {
                    return Err("field `time` is more than 10 years in the past".into());
                }
                t
            }
        };
        let client_ip = check_str("client_ip", self.client_ip, MAX_FIELD)?;
        if let Some(ip) = &client_ip {
            if ip.parse::<IpAddr>().is_err() {
                return Err(format!(
                    "field `client_ip` is not an IPv4 or IPv6 address: {ip:?}"
                ));
            }
        }
        let detail = match self.detail {
            None | Some(Value::Null) => Value::Null,
            Some(d @ Value::Object(_)) => {
                if let Some(path) = secret_path(&d) {
                    return Err(format!(
                        "field `detail.{path}` is refused: never send raw tokens or secrets; identify a token by `jti` or `token_fp`"
                    ));
                }
                let n = serde_json::to_string(&d).map(|s| s.len()).unwrap_or(0);
                if n > MAX_DETAIL_BYTES {
                    return Err(format!(
                        "field `detail` is {n} bytes as JSON; at most {MAX_DETAIL_BYTES} are accepted"
                    ));
                }
                d
            }
            Some(other) => {
                return Err(format!(
                    "field `detail` must be a JSON object, got {}",
                    type_name(&other)
                ))
            }
        };
        Ok(NewEvent {
            time_us,
            kind: self.kind,
            outcome,
            reason: check_str("reason", self.reason, MAX_FIELD)?,
            subject: check_str("subject", self.subject, MAX_FIELD)?,
            username: check_str("username", self.username, MAX_FIELD)?,
            client_ip,
            user_agent: check_str("user_agent", self.user_agent, MAX_LONG_FIELD)?,
            method: check_str("method", self.method, 16)?,
            path: check_str("path", self.path, MAX_LONG_FIELD)?,
            jti: check_str("jti", self.jti, MAX_FIELD)?,
            kid: check_str("kid", self.kid, MAX_FIELD)?,
            alg: check_str("alg", self.alg, 16)?,
            token_fp: check_str("token_fp", self.token_fp, 128)?,
            source: source.to_owned(),
            detail,
        })
    }
}

/// Maps one line of a JSON-lines log to the ingest schema.
///
/// * An ECS line as written by tokenwatch's security log (it has `@timestamp`
///   and `event.action`) is mapped field by field (see README, "Ingest").
/// * Any other JSON object is read as the ingest schema itself, with these
///   common aliases: `@timestamp`/`timestamp`/`ts` → `time`, `event`/`action`
///   → `kind`, `result`/`status` → `outcome`, `user`/`user_name` → `username`,
///   `sub` → `subject`, `ip`/`src_ip`/`remote_addr` → `client_ip`,
///   `ua` → `user_agent`, `error`/`error_code` → `reason`. Fields the schema
///   does not know go into `detail.extra`.
pub fn map_log_line(v: Value) -> Value {
    let Value::Object(o) = v else { return v };
    if o.contains_key("@timestamp") && o.get("event").and_then(|e| e.get("action")).is_some() {
        return map_ecs(&o);
    }
    map_generic(o)
}

fn get<'a>(o: &'a Map<String, Value>, path: &[&str]) -> Option<&'a Value> {
    let mut cur = o.get(path[0])?;
    for p in &path[1..] {
        cur = cur.get(p)?;
    }
    Some(cur)
}

fn map_ecs(o: &Map<String, Value>) -> Value {
    let mut out = Map::new();
    let mut put = |k: &str, path: &[&str]| {
        if let Some(v) = get(o, path) {
            out.insert(k.into(), v.clone());
        }
    };
    put("time", &["@timestamp"]);
    put("kind", &["event", "action"]);
    put("outcome", &["event", "outcome"]);
    put("reason", &["event", "reason"]);
    put("username", &["user", "name"]);
    put("subject", &["user", "id"]);
    put("client_ip", &["source", "ip"]);
    put("user_agent", &["user_agent", "original"]);
    put("method", &["http", "request", "method"]);
    put("path", &["url", "path"]);
    put("jti", &["tokenwatch", "jti"]);
    put("kid", &["tokenwatch", "kid"]);
    put("alg", &["tokenwatch", "alg"]);
    put("token_fp", &["tokenwatch", "token_fp"]);
    let mut detail = match get(o, &["tokenwatch", "detail"]) {
        Some(Value::Object(d)) => d.clone(),
        Some(other) => Map::from_iter([("value".to_string(), other.clone())]),
        None => Map::new(),
    };
    // Where the line came from, so an imported row can be traced to the original.
    let mut origin = Map::new();
    for (k, path) in [
        ("provider", &["event", "provider"][..]),
        ("sequence", &["event", "sequence"][..]),
        ("hash", &["tokenwatch", "hash"][..]),
    ] {
        if let Some(v) = get(o, path) {
            origin.insert(k.into(), v.clone());
        }
    }
    if !origin.is_empty() {
        detail.insert("origin".into(), Value::Object(origin));
    }
    if !detail.is_empty() {
        out.insert("detail".into(), Value::Object(detail));
    }
    Value::Object(out)
}

const ALIASES: &[(&str, &str)] = &[
    ("@timestamp", "time"),
    ("timestamp", "time"),
    ("ts", "time"),
    ("event", "kind"),
    ("action", "kind"),
    ("result", "outcome"),
    ("status", "outcome"),
    ("user", "username"),
    ("user_name", "username"),
    ("sub", "subject"),
    ("ip", "client_ip"),
    ("src_ip", "client_ip"),
    ("remote_addr", "client_ip"),
    ("ua", "user_agent"),
    ("error", "reason"),
    ("error_code", "reason"),
];

const SCHEMA_FIELDS: &[&str] = &[
    "time",
    "kind",
    "outcome",
    "reason",
    "subject",
    "username",
    "client_ip",
    "user_agent",
    "method",
    "path",
    "jti",
    "kid",
    "alg",
    "token_fp",
    "detail",
];

/// Fields that must never be copied anywhere, not even into `detail`.
const SECRET_FIELDS: &[&str] = &[
    "token",
    "access_token",
    "refresh_token",
    "password",
    "secret",
    "authorization",
];

fn is_secret_field(key: &str) -> bool {
    SECRET_FIELDS.contains(&key.to_ascii_lowercase().as_str())
}

/// The dotted path of the first secret-named key inside `v`, at any depth.
fn secret_path(v: &Value) -> Option<String> {
    match v {
        Value::Object(o) => o.iter().find_map(|(k, v)| {
            if is_secret_field(k) {
                Some(k.clone())
            } else {
                secret_path(v).map(|p| format!("{k}.{p}"))
            }
        }),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .find_map(|(i, v)| secret_path(v).map(|p| format!("{i}.{p}"))),
        _ => None,
    }
}

fn map_generic(o: Map<String, Value>) -> Value {
    let mut out = Map::new();
    let mut extra = Map::new();
    for (k, v) in o {
        let key = ALIASES
            .iter()
            .find(|(a, _)| *a == k)
            .map(|(_, t)| (*t).to_string())
            .unwrap_or(k);
        if is_secret_field(&key) {
            continue;
        }
        if SCHEMA_FIELDS.contains(&key.as_str()) && !out.contains_key(&key) {
            out.insert(key, v);
        } else {
            extra.insert(key, v);
        }
    }
    if !extra.is_empty() {
        let mut detail = match out.remove("detail") {
            Some(Value::Object(d)) => d,
            Some(other) => Map::from_iter([("value".to_string(), other)]),
            None => Map::new(),
        };
        detail.insert("extra".into(), Value::Object(extra));
        out.insert("detail".into(), Value::Object(detail));
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_older_than_retention_and_the_stores_own_kinds_are_refused() {
        let now = 1_800_000_000_000_000;
        let day = std::time::Duration::from_secs(86_400);
        let ev = |age_us: i64| {
            NewEvent::new(kinds::TOKEN_REJECTED, Outcome::Failure).with_time_us(now - age_us)
        };
        let err = within_retention(ev(86_400_000_001), Some(day), now).unwrap_err();
        assert!(
            err.contains("older than the audit retention window (1 days)"),
            "{err}"
        );
        assert!(within_retention(ev(86_400_000_000), Some(day), now).is_ok());
        assert!(
            within_retention(ev(i64::MAX / 2), None, now).is_ok(),
            "kept forever: any age"
        );
        for policy in [KindPolicy::Ingest, KindPolicy::AnyKnown] {
            let line = br#"{"kind":"audit.pruned","outcome":"success"}"#;
            let err = parse_line(line, "svc", policy, now).unwrap_err();
            assert!(err.contains("only by tokenwatch's audit store"), "{err}");
        }
    }

    #[test]
    fn secrets_are_refused_at_the_top_and_inside_detail() {
        let now = 1_800_000_000_000_000;
        let top = json!({"kind": "token.verified", "outcome": "success", "Password": "hunter2"});
        let err = parse_value(top, "api", KindPolicy::Ingest, now).unwrap_err();
        assert!(
            err.contains("`Password`") && !err.contains("hunter2"),
            "{err}"
        );
        let nested = json!({"kind": "token.verified", "outcome": "success",
            "detail": {"request": {"headers": [{"authorization": "Bearer eyJ..."}]}}});
        let err = parse_value(nested, "api", KindPolicy::Ingest, now).unwrap_err();
        assert!(
            err.contains("detail.request.headers.0.authorization"),
            "{err}"
        );
        assert!(!err.contains("eyJ"), "{err}");
    }
    use serde_json::json;

    const NOW: i64 = 1_800_000_000_000_000;

    fn check(v: Value, expected: Result<(), &str>) {
        let got = parse_value(v.clone(), "svc", KindPolicy::Ingest, NOW);
        match (got, expected) {
            (Ok(ev), Ok(())) => assert_eq!(ev.source, "svc"),
            (Err(e), Err(want)) => assert!(e.contains(want), "{v}: {e:?} lacks {want:?}"),
            (got, want) => panic!("{v}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn schema_cases() {
        let ok = json!({"kind": "token.rejected", "outcome": "failure", "reason": "expired", "client_ip": "10.0.0.1"});
        check(ok, Ok(()));
        for (v, want) in [
            (json!([1]), "expected a JSON object"),
            (json!({"outcome": "failure"}), "missing field `kind`"),
            (
                json!({"kind": "admin.action", "outcome": "success"}),
                "is not accepted here",
            ),
            (
                json!({"kind": "token.verified", "outcome": "failure"}),
                "always outcome",
            ),
            (
                json!({"kind": "token.revoked", "outcome": "maybe"}),
                "must be \"success\" or \"failure\"",
            ),
            (
                json!({"kind": "token.revoked", "outcome": "success", "source": "x"}),
                "set from the API key",
            ),
            (
                json!({"kind": "token.revoked", "outcome": "success", "token": "eyJ"}),
                "never send raw tokens",
            ),
            (
                json!({"kind": "token.revoked", "outcome": "success", "client_ip": "nope"}),
                "not an IPv4 or IPv6",
            ),
            (
                json!({"kind": "token.revoked", "outcome": "success", "time": "yesterday"}),
                "RFC 3339",
            ),
            (
                json!({"kind": "token.revoked", "outcome": "success", "detail": [1]}),
                "must be a JSON object",
            ),
            (
                json!({"kind": "token.revoked", "outcome": "success", "colour": "red"}),
                "unknown field `colour`",
            ),
            (
                json!({"kind": "token.revoked", "outcome": "success", "username": "x".repeat(300)}),
                "at most 256",
            ),
        ] {
            check(v, Err(want));
        }
    }

    #[test]
    fn ecs_round_trip() {
        let line = json!({"@timestamp": "2026-01-02T03:04:05.000006Z", "event": {"action": "token.rejected",
            "outcome": "failure", "reason": "expired", "provider": "tokenwatch", "sequence": 7},
            "user": {"name": "alice"}, "source": {"ip": "10.1.2.3"}, "url": {"path": "/api/v1/me"},
            "tokenwatch": {"jti": "j1", "hash": "ab"}});
        let ev = parse_value(map_log_line(line), "import", KindPolicy::AnyKnown, NOW).unwrap();
        assert_eq!(ev.kind, "token.rejected");
        assert_eq!(ev.username.as_deref(), Some("alice"));
        assert_eq!(ev.client_ip.as_deref(), Some("10.1.2.3"));
        assert_eq!(ev.jti.as_deref(), Some("j1"));
        assert_eq!(ev.detail["origin"]["sequence"], 7);
        assert_eq!(ev.time_us % 1_000_000, 6);
    }

    #[test]
    fn generic_aliases_and_extras() {
        let line = json!({"ts": "2026-01-02T03:04:05Z", "event": "auth.login.failure", "result": "failure",
            "user": "bob", "ip": "::1", "password": "hunter2", "region": "eu"});
        let ev = parse_value(map_log_line(line), "import", KindPolicy::AnyKnown, NOW).unwrap();
        assert_eq!(ev.username.as_deref(), Some("bob"));
        assert_eq!(ev.detail["extra"]["region"], "eu");
        assert!(!ev.detail.to_string().contains("hunter2"));
    }
}
