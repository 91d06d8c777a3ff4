//! Reports: CSV downloads with the explorer's filter, streamed in constant
//! memory with no size cap, read from the record (never the derived index), and a
//! manifest (filter, row count, the chain range the rows came from, SHA-256 of the
//! exact bytes sent) signed as a JWS with the server's signing key, which
//! `tokenwatch audit verify-export FILE.csv MANIFEST` checks offline.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use actix_web::http::header;
use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};
use anyhow::{bail, Context};
use askama::Template;
use audit_store::{kinds, Outcome};
use aws_lc_rs::digest;
use serde::Deserialize;
use serde_json::{json, Value};

use super::pages::{kind_options, AlertQuery, FilterQuery, KindOption, PageCtx};
use super::{admin_event, html, show_time, AdminError, Console};
use crate::app::Data;
use crate::request_meta::RequestMeta;

/// What a manifest says it is, so no other signed document passes for one.
pub const MANIFEST_PURPOSE: &str = "tokenwatch-export-manifest";
const MANIFESTS_KEPT: usize = 256;
const CHUNK: usize = 64 * 1024;

/// Manifests of recent downloads, by download id, with the user they belong to.
#[derive(Default)]
pub struct ManifestCache {
    by_id: HashMap<String, (String, String)>,
    order: VecDeque<String>,
}

impl ManifestCache {
    fn put(&mut self, id: String, user: String, jws: String) {
        if self.by_id.insert(id.clone(), (user, jws)).is_none() {
            self.order.push_back(id);
        }
        while self.order.len() > MANIFESTS_KEPT {
            if let Some(old) = self.order.pop_front() {
                self.by_id.remove(&old);
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Report {
    Events,
    Alerts,
    Users,
    Ips,
}

impl Report {
    fn parse(s: &str) -> Result<Report, AdminError> {
        match s {
            "events" => Ok(Report::Events),
            "alerts" => Ok(Report::Alerts),
            "users" => Ok(Report::Users),
            "ips" => Ok(Report::Ips),
            _ => Err(AdminError::BadRequest("unknown report".into())),
        }
    }
    fn name(self) -> &'static str {
        match self {
            Report::Events => "events",
            Report::Alerts => "alerts",
            Report::Users => "users",
            Report::Ips => "ips",
        }
    }
}

#[derive(Template)]
#[template(path = "reports.html")]
pub struct ReportsPage {
    ctx: PageCtx,
    dl: String,
    from: String,
    to: String,
    outcome: String,
    reason: String,
    user: String,
    ip: String,
    jti: String,
    kind_options: Vec<KindOption>,
}

pub async fn form(who: Console, q: web::Query<FilterQuery>) -> Result<HttpResponse, AdminError> {
    let v = |s: &Option<String>| s.clone().unwrap_or_default();
    let page = ReportsPage {
        ctx: PageCtx::new(&who, "reports"),
        dl: crate::random_token(16),
        from: v(&q.from),
        to: v(&q.to),
        outcome: v(&q.outcome),
        reason: v(&q.reason),
        user: v(&q.user),
        ip: v(&q.ip),
        jti: v(&q.jti),
        kind_options: kind_options(q.kind.as_deref()),
    };
    Ok(html(page.render()?))
}

#[derive(Deserialize)]
pub struct ReportQuery {
    report: String,
    #[serde(default)]
    dl: Option<String>,
}

fn valid_dl(s: &str) -> bool {
    (16..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A `Write` that hashes and counts what passes through and hands it, in
/// chunks, to the HTTP response. A client that goes away ends the export.
struct StreamSink {
    tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    buf: Vec<u8>,
    sha: digest::Context,
    bytes: u64,
}

impl StreamSink {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away"))
    }
}

impl Write for StreamSink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.sha.update(data);
        self.bytes += data.len() as u64;
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

pub async fn download(
    req: HttpRequest,
    data: Data,
    who: Console,
    rq: web::Query<ReportQuery>,
    fq: web::Query<FilterQuery>,
    aq: web::Query<AlertQuery>,
) -> Result<HttpResponse, AdminError> {
    let report = Report::parse(&rq.report)?;
    let dl = match rq.dl.as_deref() {
        Some(d) if valid_dl(d) => d.to_owned(),
        Some(_) => return Err(AdminError::BadRequest("malformed download id".into())),
        None => crate::random_token(16),
    };
    let fq = fq.into_inner();
    let aq = aq.into_inner();
    let event_filter = fq.to_filter()?;
    let alert_filter = aq.to_filter()?;
    let filter_json: Value = if report == Report::Alerts {
        serde_json::to_value(&aq).unwrap_or_default()
    } else {
        serde_json::to_value(&fq).unwrap_or_default()
    };
    let reader = data.admin.reader(&data.store)?;

    // Reading the audit trail is itself audited, before a byte leaves.
    let meta = RequestMeta::from_request(&req);
    let ev = admin_event(&meta, kinds::ADMIN_EXPORT, Outcome::Success, who.username())
        .with_detail(json!({ "report": report.name(), "filter": filter_json, "download": dl }));
    data.record(ev).await?;

    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(8);
    let app = data.clone().into_inner();
    let user = who.username().to_owned();
    let dl_id = dl.clone();
    let filter_for_manifest = filter_json.clone();
    std::thread::Builder::new()
        .name("tokenwatch-report".into())
        .spawn(move || {
            let mut sink = StreamSink {
                tx: tx.clone(),
                buf: Vec::with_capacity(CHUNK),
                sha: digest::Context::new(&digest::SHA256),
                bytes: 0,
            };
            let rows = match report {
                Report::Events => reader.export_events_csv(&event_filter, &mut sink),
                Report::Alerts => reader.export_alerts_csv(&alert_filter, &mut sink),
                Report::Users => reader.export_user_summary_csv(&event_filter, &mut sink),
                Report::Ips => reader.export_ip_summary_csv(&event_filter, &mut sink),
            }
            .and_then(|n| {
                sink.flush()
                    .map_err(|e| audit_store::StoreError::Csv(e.into()))
                    .map(|_| n)
            });
            match rows {
                Ok(audit_store::Exported { rows, record }) => {
                    let sha = hex::encode(sink.sha.finish().as_ref());
                    let manifest = json!({
                        "purpose": MANIFEST_PURPOSE,
                        "iss": app.settings.issuer,
                        "report": report.name(),
                        "filter": filter_for_manifest,
                        "rows": rows,
                        // The stretch of the hash chain the rows were read from.
                        "record": record,
                        "bytes": sink.bytes,
                        "sha256": sha,
                        "generated_at": show_time(super::now_us()),
                        "generated_by": user,
                        "download": dl_id,
                    });
                    match app.tokens.sign_document(&manifest) {
                        Ok(jws) => app
                            .admin
                            .manifests
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .put(dl_id, user, jws),
                        Err(e) => tracing::error!(error = %e, "signing a report manifest failed"),
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "report export ended early");
                    let _ = tx.blocking_send(Err(std::io::Error::other("export failed")));
                }
            }
        })
        .map_err(|e| AdminError::Internal(e.to_string()))?;

    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let stamp = show_time(super::now_us()).replace([' ', ':'], "-");
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::CONTENT_TYPE, "text/csv; charset=utf-8"))
        .insert_header((
            header::CONTENT_DISPOSITION,
            format!(
                "attachment; filename=\"tokenwatch-{}-{stamp}.csv\"",
                report.name()
            ),
        ))
        .insert_header((
            "X-Tokenwatch-Manifest",
            format!("/admin/reports/manifest?dl={dl}"),
        ))
        .streaming(body))
}

#[derive(Deserialize)]
pub struct ManifestQuery {
    dl: String,
}

/// The signed manifest of a finished download of this user.
pub async fn manifest(
    data: Data,
    who: Console,
    q: web::Query<ManifestQuery>,
) -> Result<HttpResponse, AdminError> {
    let found = data
        .admin
        .manifests
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .by_id
        .get(&q.dl)
        .filter(|(user, _)| user == who.username())
        .map(|(_, jws)| jws.clone());
    let jws = found.ok_or(AdminError::NotFound)?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::CONTENT_TYPE, "application/jose; charset=utf-8"))
        .insert_header((
            header::CONTENT_DISPOSITION,
            "attachment; filename=\"tokenwatch-report.manifest.jws\"",
        ))
        .body(jws))
}

/// `tokenwatch audit verify-export`: checks the manifest's signature with the
/// keys in the data directory, then the file's SHA-256, size and row count.
/// Returns the manifest's payload.
pub fn verify_export(
    key_dir: &Path,
    alg: token_core::Alg,
    csv: &Path,
    manifest: &Path,
) -> anyhow::Result<Value> {
    if !key_dir.is_dir() {
        bail!("no signing keys in {}", key_dir.display());
    }
    let keys = token_core::KeyRing::load_or_create(key_dir, alg).context("loading the keys")?;
    let service = token_core::TokenService::new(
        keys,
        token_core::TokenConfig::new("tokenwatch", "tokenwatch"),
        Arc::new(token_core::MemoryRevocations::new()),
        Arc::new(token_core::MemoryRefreshStore::new()),
    );
    let jws = std::fs::read_to_string(manifest)
        .with_context(|| format!("reading {}", manifest.display()))?;
    let jws = jws.trim();
    let header_b64 = jws.split('.').next().unwrap_or("");
    use base64::Engine;
    let header: Value = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header_b64)
        .ok()
        .and_then(|h| serde_json::from_slice(&h).ok())
        .context("the manifest is not a JWS")?;
    let kid = header["kid"]
        .as_str()
        .context("the manifest names no key")?;
    let payload = service
        .verify_signature_only(jws, kid)
        .map_err(|r| anyhow::anyhow!("manifest signature refused: {}", r.reason.as_str()))?;
    let m: Value = serde_json::from_slice(&payload).context("manifest payload is not JSON")?;
    if m["purpose"] != MANIFEST_PURPOSE {
        bail!("this signed document is not a tokenwatch export manifest");
    }
    let bytes = std::fs::read(csv).with_context(|| format!("reading {}", csv.display()))?;
    let sha = hex::encode(digest::digest(&digest::SHA256, &bytes).as_ref());
    if Some(sha.as_str()) != m["sha256"].as_str() || Some(bytes.len() as u64) != m["bytes"].as_u64()
    {
        bail!(
            "{} does not match the manifest: SHA-256 {sha}, manifest says {}",
            csv.display(),
            m["sha256"]
        );
    }
    let rows = csv::Reader::from_reader(bytes.as_slice()).records().count() as u64;
    if Some(rows) != m["rows"].as_u64() {
        bail!("row count {rows} differs from the manifest's {}", m["rows"]);
    }
    Ok(m)
}
