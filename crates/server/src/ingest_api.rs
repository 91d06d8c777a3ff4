//! `POST /api/v1/events`: events reported by other services, authenticated by
//! a per-source API key, validated line by line, committed through the audit
//! store like the server's own (hash-chained, seen by the detectors).
//!
//! A request's accepted events and the `ingest.batch` event recording the
//! request itself commit in one transaction; the answer is sent after it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use audit_store::{kinds, NewEvent, Outcome};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::app::Data;
use crate::ingest::{parse_line, parse_value, within_retention, KindPolicy};
use crate::request_meta::RequestMeta;
use crate::sources::KEY_PREFIX;

/// The header that carries an ingest key when `Authorization` is taken by
/// something else (a proxy's own auth, say). `Authorization: Bearer twk_...` works too.
pub const KEY_HEADER: &str = "x-tokenwatch-key";

/// `[ingest]` in tokenwatch.toml.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestFileConfig {
    /// Largest request body in bytes (default 8 MiB).
    pub max_body_bytes: Option<usize>,
    /// Most events in one request (default 10 000).
    pub max_batch_events: Option<usize>,
    /// Sustained events per second per source (default 200 000).
    pub rate_limit_per_sec: Option<u64>,
    /// Events a source may send at once above the sustained rate (default: one
    /// second's worth, at least one full batch).
    pub rate_limit_burst: Option<u64>,
}

/// The resolved ingest limits.
#[derive(Debug, Clone)]
pub struct IngestLimits {
    pub max_body_bytes: usize,
    pub max_batch_events: usize,
    pub rate_per_sec: f64,
    pub burst: f64,
}

impl IngestFileConfig {
    pub fn resolve(&self) -> IngestLimits {
        let max_batch_events = self.max_batch_events.unwrap_or(10_000).max(1);
        let rate = self.rate_limit_per_sec.unwrap_or(200_000).max(1);
        let burst = self
            .rate_limit_burst
            .unwrap_or(rate)
            .max(max_batch_events as u64);
        IngestLimits {
            max_body_bytes: self.max_body_bytes.unwrap_or(8 << 20).max(1024),
            max_batch_events,
            rate_per_sec: rate as f64,
            burst: burst as f64,
        }
    }
}

impl Default for IngestLimits {
    fn default() -> Self {
        IngestFileConfig::default().resolve()
    }
}

/// Refusals for rate-limited requests are audited at most once per source per
/// this period, with a count of those not recorded one by one: a client stuck
/// in a retry loop must not flood the audit trail.
const RATE_LIMIT_AUDIT_EVERY: Duration = Duration::from_secs(10);

struct Bucket {
    tokens: f64,
    at: Instant,
    last_audit: Option<Instant>,
    unaudited: u64,
}

/// Per-source token buckets (in memory: a restart forgives).
#[derive(Default)]
pub struct IngestState {
    buckets: Mutex<HashMap<String, Bucket>>,
}

enum RateDecision {
    Allowed,
    /// Retry after this many seconds; `audit` carries the count of refusals
    /// not yet audited, or `None` when this one is not to be audited.
    Limited {
        retry_after: u64,
        audit: Option<u64>,
    },
}

impl IngestState {
    fn take(&self, source: &str, n: usize, limits: &IngestLimits) -> RateDecision {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let b = buckets.entry(source.to_owned()).or_insert(Bucket {
            tokens: limits.burst,
            at: now,
            last_audit: None,
            unaudited: 0,
        });
        let elapsed = now.duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * limits.rate_per_sec).min(limits.burst);
        b.at = now;
        let n = n as f64;
        if b.tokens >= n {
            b.tokens -= n;
            return RateDecision::Allowed;
        }
        let retry_after = ((n - b.tokens) / limits.rate_per_sec).ceil().max(1.0) as u64;
        let audit = if b
            .last_audit
            .is_none_or(|t| now.duration_since(t) >= RATE_LIMIT_AUDIT_EVERY)
        {
            b.last_audit = Some(now);
            Some(std::mem::take(&mut b.unaudited))
        } else {
            b.unaudited += 1;
            None
        };
        RateDecision::Limited { retry_after, audit }
    }
}

fn error_body(status: StatusCode, error: &str, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(json!({ "error": error, "message": message }))
}

fn unauthorized(message: &str) -> HttpResponse {
    HttpResponse::Unauthorized()
        .insert_header((
            header::WWW_AUTHENTICATE,
            "Bearer realm=\"tokenwatch-ingest\", error=\"invalid_token\"",
        ))
        .json(json!({ "error": "unauthorized", "message": message }))
}

fn unavailable() -> HttpResponse {
    Reply::unavailable().into_response()
}

/// The key from `X-Tokenwatch-Key` or `Authorization: Bearer`, if any.
fn presented_key(req: &HttpRequest) -> Result<Option<String>, &'static str> {
    if let Some(v) = req.headers().get(KEY_HEADER) {
        return Ok(Some(
            v.to_str()
                .map_err(|_| "the X-Tokenwatch-Key header is not valid text")?
                .trim()
                .to_owned(),
        ));
    }
    let Some(v) = req.headers().get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let v = v
        .to_str()
        .map_err(|_| "the Authorization header is not valid text")?;
    match v.split_once(' ') {
        Some((scheme, key)) if scheme.eq_ignore_ascii_case("bearer") => {
            Ok(Some(key.trim().to_owned()))
        }
        _ => Err("use `Authorization: Bearer <ingest key>` or `X-Tokenwatch-Key: <ingest key>`"),
    }
}

/// One refused line (NDJSON: 1-based `line`; JSON array: 0-based `index`).
#[derive(Debug, serde::Serialize)]
struct LineError {
    #[serde(skip_serializing_if = "Option::is_none")]
    line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<usize>,
    error: String,
}

struct Parsed {
    events: Vec<NewEvent>,
    errors: Vec<LineError>,
    total: usize,
}

#[derive(Debug)]
enum BodyError {
    TooManyEvents(usize),
    NotJson(String),
    Empty,
}

fn parse_body(
    body: &[u8],
    source: &str,
    max_events: usize,
    retention: Option<std::time::Duration>,
) -> Result<Parsed, BodyError> {
    let now = audit_now_us();
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    let mut p = Parsed {
        events: Vec::new(),
        errors: Vec::new(),
        total: 0,
    };
    match first {
        None => return Err(BodyError::Empty),
        Some(b'[') => {
            let items: Vec<Value> = serde_json::from_slice(body).map_err(|e| {
                BodyError::NotJson(format!(
                    "the body starts with '[' but is not a JSON array: {e}"
                ))
            })?;
            if items.len() > max_events {
                return Err(BodyError::TooManyEvents(items.len()));
            }
            p.total = items.len();
            p.events.reserve(items.len());
            for (i, v) in items.into_iter().enumerate() {
                match parse_value(v, source, KindPolicy::Ingest, now)
                    .and_then(|ev| within_retention(ev, retention, now))
                {
                    Ok(ev) => p.events.push(ev),
                    Err(error) => p.errors.push(LineError {
                        line: None,
                        index: Some(i),
                        error,
                    }),
                }
            }
        }
        Some(_) => {
            let lines = body
                .split(|b| *b == b'\n')
                .enumerate()
                .filter(|(_, l)| l.iter().any(|b| !b.is_ascii_whitespace()));
            for (i, line) in lines {
                p.total += 1;
                if p.total > max_events {
                    let total = body
                        .split(|b| *b == b'\n')
                        .filter(|l| l.iter().any(|b| !b.is_ascii_whitespace()))
                        .count();
                    return Err(BodyError::TooManyEvents(total));
                }
                match parse_line(line, source, KindPolicy::Ingest, now)
                    .and_then(|ev| within_retention(ev, retention, now))
                {
                    Ok(ev) => p.events.push(ev),
                    Err(error) => p.errors.push(LineError {
                        line: Some(i + 1),
                        index: None,
                        error,
                    }),
                }
            }
        }
    }
    Ok(p)
}

fn audit_now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// The `ingest.batch` event for a request from `source`.
fn batch_event(meta: &RequestMeta, source: &str, outcome: Outcome) -> NewEvent {
    let mut ev = meta.event(kinds::INGEST_BATCH, outcome);
    ev.username = Some(format!("source:{source}"));
    ev
}

pub async fn post_events(req: HttpRequest, mut payload: web::Payload, data: Data) -> HttpResponse {
    let meta = RequestMeta::from_request(&req);
    let limits = data.ingest_limits.clone();

    // Who is it? Refused requests are audited like any refused access.
    let denied = |reason: &str| {
        let mut ev = meta.event(kinds::ACCESS_DENIED, Outcome::Failure);
        ev.reason = Some(reason.into());
        ev
    };
    let key = match presented_key(&req) {
        Ok(Some(k)) if k.starts_with(KEY_PREFIX) => k,
        Ok(Some(_)) => {
            return match data.record(denied("not_an_ingest_key")).await {
                Ok(_) => unauthorized("this endpoint takes an ingest API key (twk_...) from `tokenwatch sources add`, not an access token"),
                Err(_) => unavailable(),
            }
        }
        Ok(None) => {
            return match data.record(denied("missing_api_key")).await {
                Ok(_) => unauthorized("send the source's API key as `Authorization: Bearer <key>` or `X-Tokenwatch-Key: <key>`"),
                Err(_) => unavailable(),
            }
        }
        Err(msg) => {
            return match data.record(denied("malformed_api_key")).await {
                Ok(_) => unauthorized(msg),
                Err(_) => unavailable(),
            }
        }
    };
    let state = data.state.clone();
    let source = match web::block(move || state.source_for_key(&key)).await {
        Ok(Ok(Some(s))) => s,
        Ok(Ok(None)) => {
            return match data.record(denied("unknown_api_key")).await {
                Ok(_) => unauthorized("unknown or revoked ingest API key"),
                Err(_) => unavailable(),
            }
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "looking up an ingest key failed");
            return unavailable();
        }
        Err(_) => return unavailable(),
    };

    // The body, within the size limit.
    let too_large = |n: Option<usize>| {
        let mut ev = batch_event(&meta, &source, Outcome::Failure);
        ev.reason = Some("too_large".into());
        ev.detail =
            json!({ "source": source, "content_length": n, "limit": limits.max_body_bytes });
        ev
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let too_large_response = || {
        error_body(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            &format!(
                "the body is larger than {} bytes; split it into smaller batches",
                limits.max_body_bytes
            ),
        )
    };
    if declared.is_some_and(|n| n > limits.max_body_bytes) {
        return match data.record(too_large(declared)).await {
            Ok(_) => too_large_response(),
            Err(_) => unavailable(),
        };
    }
    let mut body = web::BytesMut::with_capacity(declared.unwrap_or(64 * 1024));
    while let Some(chunk) = payload.next().await {
        let Ok(chunk) = chunk else {
            return error_body(
                StatusCode::BAD_REQUEST,
                "bad_body",
                "the request body could not be read",
            );
        };
        if body.len() + chunk.len() > limits.max_body_bytes {
            return match data.record(too_large(None)).await {
                Ok(_) => too_large_response(),
                Err(_) => unavailable(),
            };
        }
        body.extend_from_slice(&chunk);
    }
    let body = body.freeze();

    // Parse, check the rate, commit: off the async workers.
    let work_data = data.clone();
    let work_source = source.clone();
    let work_meta = meta.clone();
    let result =
        web::block(move || ingest_blocking(&work_data, &work_meta, &work_source, &body)).await;
    match result {
        Ok(r) => r.into_response(),
        Err(_) => unavailable(),
    }
}

/// What the blocking part decided (an `HttpResponse` is not `Send`).
struct Reply {
    status: StatusCode,
    body: Value,
    retry_after: Option<u64>,
}

impl Reply {
    fn new(status: StatusCode, body: Value) -> Reply {
        Reply {
            status,
            body,
            retry_after: None,
        }
    }
    fn unavailable() -> Reply {
        Reply::new(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "error": "audit_store_unavailable",
                    "message": "the audit store cannot commit right now; nothing was recorded, retry later" }),
        )
    }
    fn into_response(self) -> HttpResponse {
        let mut r = HttpResponse::build(self.status);
        if let Some(s) = self.retry_after {
            r.insert_header((header::RETRY_AFTER, s.to_string()));
        }
        r.json(self.body)
    }
}

fn ingest_blocking(data: &Data, meta: &RequestMeta, source: &str, body: &[u8]) -> Reply {
    let limits = &data.ingest_limits;
    let record_refusal = |reason: &str, detail: Value| {
        let mut ev = batch_event(meta, source, Outcome::Failure);
        ev.reason = Some(reason.into());
        ev.detail = detail;
        data.metrics.count_event(&ev);
        data.audit.record_blocking(ev).is_ok()
    };
    let retention = data.settings.audit_retention;
    let parsed = match parse_body(body, source, limits.max_batch_events, retention) {
        Ok(p) => p,
        Err(e) => {
            let (status, code, msg) = match &e {
                BodyError::TooManyEvents(n) => (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_many_events",
                    format!(
                        "the batch has {n} events; at most {} are accepted per request",
                        limits.max_batch_events
                    ),
                ),
                BodyError::NotJson(m) => (StatusCode::BAD_REQUEST, "malformed", m.clone()),
                BodyError::Empty => (
                    StatusCode::BAD_REQUEST,
                    "empty",
                    "the body is empty: send NDJSON (one event per line) or a JSON array of events"
                        .into(),
                ),
            };
            if !record_refusal(code, json!({ "source": source, "message": msg })) {
                return Reply::unavailable();
            }
            return Reply::new(status, json!({ "error": code, "message": msg }));
        }
    };
    if let RateDecision::Limited { retry_after, audit } =
        data.ingest.take(source, parsed.total.max(1), limits)
    {
        if let Some(unaudited) = audit {
            let detail = json!({
                "source": source,
                "events": parsed.total,
                "refusals_not_audited_since_last": unaudited,
            });
            if !record_refusal("rate_limited", detail) {
                return Reply::unavailable();
            }
        }
        return Reply {
            status: StatusCode::TOO_MANY_REQUESTS,
            retry_after: Some(retry_after),
            body: json!({
                "error": "rate_limited",
                "message": format!(
                    "source {source:?} may send {} events per second; retry after {retry_after} s",
                    limits.rate_per_sec
                ),
            }),
        };
    }

    let accepted = parsed.events.len();
    let outcome = if accepted > 0 || parsed.total == 0 {
        Outcome::Success
    } else {
        Outcome::Failure
    };
    let mut batch = batch_event(meta, source, outcome);
    if outcome == Outcome::Failure {
        batch.reason = Some("invalid_events".into());
    }
    // The first refusals, so an analyst sees what a source got wrong without
    // the audit trail holding a copy of every bad line.
    let sample: Vec<&LineError> = parsed.errors.iter().take(10).collect();
    batch.detail = json!({
        "source": source,
        "accepted": accepted,
        "rejected": parsed.errors.len(),
        "first_errors": sample,
    });
    let mut events = parsed.events;
    for ev in &events {
        data.metrics.count_event(ev);
    }
    data.metrics.count_event(&batch);
    events.push(batch);
    let mut ids = match data.audit.record_many_blocking(events) {
        Ok(ids) => ids,
        Err(e) => {
            tracing::error!(error = %e, "ingested events could not be committed; refusing the batch");
            return Reply::unavailable();
        }
    };
    ids.pop(); // the ingest.batch event's own id
    let status = if outcome == Outcome::Success {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    Reply::new(
        status,
        json!({
            "source": source,
            "accepted": accepted,
            "rejected": parsed.errors.len(),
            "ids": ids,
            "errors": parsed.errors,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ndjson_line_numbers_count_blank_lines() {
        let body = b"{\"kind\":\"token.verified\",\"outcome\":\"success\"}\n\n{oops\n{\"kind\":\"token.verified\",\"outcome\":\"success\"}\n";
        let p = parse_body(body, "svc", 10, None).unwrap();
        assert_eq!(p.events.len(), 2);
        assert_eq!(p.errors.len(), 1);
        assert_eq!(p.errors[0].line, Some(3));
        assert!(p.errors[0].error.starts_with("invalid JSON"));
    }

    #[test]
    fn batch_limit() {
        let line = "{\"kind\":\"token.verified\",\"outcome\":\"success\"}\n";
        assert!(matches!(
            parse_body(line.repeat(11).as_bytes(), "svc", 10, None),
            Err(BodyError::TooManyEvents(11))
        ));
    }

    #[test]
    fn token_bucket() {
        let s = IngestState::default();
        let limits = IngestLimits {
            max_body_bytes: 1 << 20,
            max_batch_events: 10,
            rate_per_sec: 10.0,
            burst: 20.0,
        };
        assert!(matches!(s.take("a", 20, &limits), RateDecision::Allowed));
        match s.take("a", 10, &limits) {
            RateDecision::Limited { retry_after, audit } => {
                assert_eq!(retry_after, 1);
                assert_eq!(audit, Some(0));
            }
            RateDecision::Allowed => panic!("should be limited"),
        }
        assert!(matches!(
            s.take("a", 10, &limits),
            RateDecision::Limited { audit: None, .. }
        ));
        assert!(matches!(s.take("b", 10, &limits), RateDecision::Allowed));
    }
}
