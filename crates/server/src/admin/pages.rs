//! The console's pages: dashboard, event explorer, alerts and plugins.

use actix_web::{web, HttpRequest, HttpResponse};
use askama::Template;
use audit_store::{
    kinds, AlertFilter, AlertStatus, AuditReader, Bucket, Cursor, EventFilter, Outcome, Severity,
    StoredEvent, TimeRange,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::auth::redirect;
use super::{
    admin_event, authorize_admin_action, html, now_us, parse_time, record_action, show_time,
    AdminError, Console,
};
use crate::app::Data;
use crate::request_meta::RequestMeta;

/// What every page's frame (nav bar, logout form) needs.
pub struct PageCtx {
    pub user: String,
    pub role: &'static str,
    pub csrf: String,
    pub is_admin: bool,
    pub active: &'static str,
}

impl PageCtx {
    pub fn new(who: &Console, active: &'static str) -> PageCtx {
        PageCtx {
            user: who.username().to_owned(),
            role: who.session.role.as_str(),
            csrf: who.session.csrf.clone(),
            is_admin: who.is_admin(),
            active,
        }
    }
}

#[derive(Template)]
#[template(path = "error.html")]
pub struct ErrorPage {
    pub status: u16,
    pub message: String,
}

pub async fn root(who: Option<Console>) -> HttpResponse {
    match who {
        Some(_) => redirect("/admin/dashboard"),
        None => redirect("/admin/login"),
    }
}

fn reader(data: &Data) -> Result<AuditReader, AdminError> {
    data.admin.reader(&data.store)
}

/// Checks a POST's CSRF token; a wrong one is itself recorded.
pub async fn check_csrf(
    data: &Data,
    req: &HttpRequest,
    who: &Console,
    presented: &str,
) -> Result<(), AdminError> {
    if let Err(e) = who.check_csrf(presented) {
        let meta = RequestMeta::from_request(req);
        let ev = admin_event(&meta, kinds::ADMIN_ACTION, Outcome::Failure, who.username())
            .with_reason("csrf");
        data.record(ev).await?;
        return Err(e);
    }
    Ok(())
}

/// Refuses (and records) an admin-only action by a non-admin.
pub async fn require_admin(
    data: &Data,
    req: &HttpRequest,
    who: &Console,
    action: &str,
) -> Result<(), AdminError> {
    if who.is_admin() {
        return Ok(());
    }
    let meta = RequestMeta::from_request(req);
    let ev = admin_event(&meta, kinds::ADMIN_ACTION, Outcome::Failure, who.username())
        .with_reason("forbidden")
        .with_detail(json!({ "action": action }));
    data.record(ev).await?;
    Err(AdminError::Forbidden("this action needs the admin role"))
}

// ---------------------------------------------------------------- dashboard

#[derive(Deserialize, Default)]
pub struct RangeQuery {
    #[serde(default)]
    range: Option<String>,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    to: Option<String>,
}

struct Range {
    name: String,
    from_us: i64,
    to_us: i64,
    bucket: Bucket,
}

fn resolve_range(q: &RangeQuery) -> Result<Range, AdminError> {
    const HOUR: i64 = 3_600_000_000;
    let now = now_us();
    let name = q.range.clone().unwrap_or_else(|| "day".into());
    let (from_us, to_us) = match name.as_str() {
        "hour" => (now - HOUR, now),
        "day" => (now - 24 * HOUR, now),
        "week" => (now - 7 * 24 * HOUR, now),
        "custom" => {
            let from = nonempty(&q.from)
                .map(|s| parse_time(&s))
                .transpose()?
                .unwrap_or(now - 24 * HOUR);
            let to = nonempty(&q.to)
                .map(|s| parse_time(&s))
                .transpose()?
                .unwrap_or(now);
            if to <= from {
                return Err(AdminError::BadRequest(
                    "the end of the range must be after its start".into(),
                ));
            }
            (from, to)
        }
        _ => return Err(AdminError::BadRequest("unknown range".into())),
    };
    let span = to_us - from_us;
    let bucket = if span <= 3 * HOUR {
        Bucket::Minute
    } else if span <= 8 * 24 * HOUR {
        Bucket::Hour
    } else {
        Bucket::Day
    };
    Ok(Range {
        name,
        from_us,
        to_us,
        bucket,
    })
}

#[derive(Template)]
#[template(path = "dashboard.html")]
pub struct DashboardPage {
    ctx: PageCtx,
    range: String,
    from_input: String,
    to_input: String,
    from_us: i64,
    to_us: i64,
    from_show: String,
    to_show: String,
    data_url: String,
    totals: Totals,
}

#[derive(Serialize, Default)]
pub struct Totals {
    success: u64,
    failure: u64,
    open_alerts: u64,
}

#[derive(Serialize)]
pub struct DashboardData {
    from_us: i64,
    to_us: i64,
    bucket_us: i64,
    /// `[bucket start (µs), successes, failures]`
    over_time: Vec<(i64, u64, u64)>,
    failure_reasons: Vec<(String, u64)>,
    top_ips: Vec<(String, u64)>,
    top_users: Vec<(String, u64)>,
    open_alerts: Vec<(String, u64)>,
    totals: Totals,
}

/// The dashboard's numbers for `[from_us, to_us)`, exactly as its page and chart
/// endpoint compute them (public for the console benchmark).
pub fn dashboard_numbers_for(
    r: &AuditReader,
    from_us: i64,
    to_us: i64,
) -> Result<DashboardData, AdminError> {
    let q = RangeQuery {
        range: Some("custom".into()),
        from: Some(audit_store::rfc3339_us(from_us)),
        to: Some(audit_store::rfc3339_us(to_us)),
    };
    dashboard_numbers(r, &resolve_range(&q)?)
}

fn dashboard_numbers(r: &AuditReader, range: &Range) -> Result<DashboardData, AdminError> {
    let tr = TimeRange::new(range.from_us, range.to_us);
    let over_time = r.counts_over_time(tr, range.bucket)?;
    let open_alerts: Vec<(String, u64)> = r
        .alert_counts_by_severity(false)?
        .into_iter()
        .map(|(s, n)| (s.as_str().to_owned(), n))
        .collect();
    let totals = Totals {
        success: over_time.iter().map(|b| b.1).sum(),
        failure: over_time.iter().map(|b| b.2).sum(),
        open_alerts: open_alerts.iter().map(|a| a.1).sum(),
    };
    Ok(DashboardData {
        from_us: range.from_us,
        to_us: range.to_us,
        bucket_us: range.bucket.micros(),
        over_time,
        failure_reasons: r.failure_reasons(tr, 10)?,
        top_ips: r.top_client_ips(tr, Some(Outcome::Failure), 10)?,
        top_users: r.top_users(tr, Some(Outcome::Failure), 10)?,
        open_alerts,
        totals,
    })
}

pub async fn dashboard(
    data: Data,
    who: Console,
    q: web::Query<RangeQuery>,
) -> Result<HttpResponse, AdminError> {
    let range = resolve_range(&q)?;
    let r = reader(&data)?;
    let (from_us, to_us, bucket) = (range.from_us, range.to_us, range.bucket);
    let numbers = web::block(move || {
        dashboard_numbers(
            &r,
            &Range {
                name: String::new(),
                from_us,
                to_us,
                bucket,
            },
        )
    })
    .await??;
    // The charts fetch the same numbers for exactly this range.
    let data_url = format!(
        "/admin/api/dashboard?{}",
        serde_urlencoded::to_string([
            ("range", "custom".to_owned()),
            ("from", audit_store::rfc3339_us(from_us)),
            ("to", audit_store::rfc3339_us(to_us)),
        ])
        .unwrap_or_default()
    );
    let input = |us: i64| {
        show_time(us)
            .replace(' ', "T")
            .get(..16)
            .unwrap_or("")
            .to_owned()
    };
    let page = DashboardPage {
        ctx: PageCtx::new(&who, "dashboard"),
        range: range.name,
        from_input: if q.range.as_deref() == Some("custom") {
            input(from_us)
        } else {
            String::new()
        },
        to_input: if q.range.as_deref() == Some("custom") {
            input(to_us)
        } else {
            String::new()
        },
        from_us,
        to_us,
        from_show: show_time(from_us),
        to_show: show_time(to_us),
        data_url,
        totals: numbers.totals,
    };
    Ok(html(page.render()?))
}

pub async fn dashboard_data(
    data: Data,
    _who: Console,
    q: web::Query<RangeQuery>,
) -> Result<HttpResponse, AdminError> {
    let range = resolve_range(&q)?;
    let r = reader(&data)?;
    let numbers = web::block(move || dashboard_numbers(&r, &range)).await??;
    Ok(HttpResponse::Ok()
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
        .json(numbers))
}

// ---------------------------------------------------------------- events

/// The explorer's filter, as typed; the reports use the same one.
#[derive(Deserialize, Serialize, Default, Clone)]
pub struct FilterQuery {
    #[serde(default, skip_serializing_if = "is_blank")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "is_blank")]
    pub to: Option<String>,
    #[serde(default, skip_serializing_if = "is_blank")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "is_blank")]
    pub outcome: Option<String>,
    #[serde(default, skip_serializing_if = "is_blank")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "is_blank")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "is_blank")]
    pub ip: Option<String>,
    #[serde(default, skip_serializing_if = "is_blank")]
    pub jti: Option<String>,
}

fn is_blank(v: &Option<String>) -> bool {
    v.as_deref().is_none_or(|s| s.trim().is_empty())
}

fn nonempty(v: &Option<String>) -> Option<String> {
    v.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

impl FilterQuery {
    pub fn to_filter(&self) -> Result<EventFilter, AdminError> {
        Ok(EventFilter {
            from_us: nonempty(&self.from).map(|s| parse_time(&s)).transpose()?,
            to_us: nonempty(&self.to).map(|s| parse_time(&s)).transpose()?,
            kind: nonempty(&self.kind),
            outcome: nonempty(&self.outcome)
                .map(|s| s.parse::<Outcome>())
                .transpose()?,
            reason: nonempty(&self.reason),
            subject_or_username: nonempty(&self.user),
            client_ip: nonempty(&self.ip),
            jti: nonempty(&self.jti),
            source: None,
        })
    }

    pub fn query_string(&self) -> String {
        serde_urlencoded::to_string(self).unwrap_or_default()
    }

    fn value(v: &Option<String>) -> String {
        v.clone().unwrap_or_default()
    }
}

/// An event as the pages show it: every value already a string (escaped at render).
pub struct EventRow {
    pub id: i64,
    pub time: String,
    pub kind: String,
    pub outcome: &'static str,
    pub reason: String,
    pub user: String,
    pub ip: String,
    pub user_agent: String,
    pub path: String,
    pub jti: String,
}

impl From<&StoredEvent> for EventRow {
    fn from(e: &StoredEvent) -> Self {
        let s = |v: &Option<String>| v.clone().unwrap_or_default();
        EventRow {
            id: e.id,
            time: show_time(e.time_us),
            kind: e.kind.clone(),
            outcome: e.outcome.as_str(),
            reason: s(&e.reason),
            user: e
                .username
                .clone()
                .or_else(|| e.subject.clone())
                .unwrap_or_default(),
            ip: s(&e.client_ip),
            user_agent: s(&e.user_agent),
            path: s(&e.path),
            jti: s(&e.jti),
        }
    }
}

#[derive(Template)]
#[template(path = "events.html")]
pub struct EventsPage {
    ctx: PageCtx,
    from: String,
    to: String,
    outcome: String,
    reason: String,
    user: String,
    ip: String,
    jti: String,
    kind_options: Vec<KindOption>,
    rows: Vec<EventRow>,
    next_url: Option<String>,
    first_url: Option<String>,
    report_url: String,
}

#[derive(Deserialize)]
pub struct PageQuery {
    #[serde(default)]
    after: Option<String>,
}

pub const PAGE_SIZE: usize = 50;

/// One `<option>` of the event-kind select.
pub struct KindOption {
    pub value: &'static str,
    pub selected: bool,
}

pub fn kind_options(current: Option<&str>) -> Vec<KindOption> {
    kinds::ALL
        .iter()
        .map(|k| KindOption {
            value: k,
            selected: current == Some(*k),
        })
        .collect()
}

pub async fn events(
    data: Data,
    who: Console,
    q: web::Query<FilterQuery>,
    page: web::Query<PageQuery>,
) -> Result<HttpResponse, AdminError> {
    let q = q.into_inner();
    let filter = q.to_filter()?;
    let after = nonempty(&page.after)
        .map(|s| s.parse::<Cursor>())
        .transpose()?;
    let r = reader(&data)?;
    let result = web::block(move || r.query_events(&filter, after, PAGE_SIZE)).await??;
    let qs = q.query_string();
    let sep = if qs.is_empty() { "" } else { "&" };
    let page = EventsPage {
        ctx: PageCtx::new(&who, "events"),
        from: FilterQuery::value(&q.from),
        to: FilterQuery::value(&q.to),
        outcome: FilterQuery::value(&q.outcome),
        reason: FilterQuery::value(&q.reason),
        user: FilterQuery::value(&q.user),
        ip: FilterQuery::value(&q.ip),
        jti: FilterQuery::value(&q.jti),
        kind_options: kind_options(q.kind.as_deref()),
        rows: result.items.iter().map(EventRow::from).collect(),
        next_url: result
            .next
            .map(|c| format!("/admin/events?{qs}{sep}after={c}")),
        first_url: after.map(|_| format!("/admin/events?{qs}")),
        report_url: format!("/admin/reports?{qs}"),
    };
    Ok(html(page.render()?))
}

#[derive(Template)]
#[template(path = "event.html")]
pub struct EventPage {
    ctx: PageCtx,
    ev: EventRow,
    fields: Vec<(&'static str, String)>,
    detail: String,
    user_url: String,
    ip_url: String,
    around_user: Vec<EventRow>,
    around_ip: Vec<EventRow>,
}

/// Events of the same user or IP within this distance of the one shown.
const AROUND_US: i64 = 3_600_000_000;
const AROUND_N: usize = 25;

fn around(r: &AuditReader, e: &StoredEvent, user: bool) -> Result<Vec<EventRow>, AdminError> {
    let mut f = EventFilter {
        from_us: Some(e.time_us - AROUND_US),
        to_us: Some(e.time_us + AROUND_US),
        ..Default::default()
    };
    if user {
        let Some(u) = e.username.clone().or_else(|| e.subject.clone()) else {
            return Ok(Vec::new());
        };
        f.subject_or_username = Some(u);
    } else {
        let Some(ip) = e.client_ip.clone() else {
            return Ok(Vec::new());
        };
        f.client_ip = Some(ip);
    }
    // Newer neighbours: the oldest ones after the event (among the first
    // thousand after it; the page shows a window, not a history).
    let newer = EventFilter {
        from_us: Some(e.time_us),
        ..f.clone()
    };
    let mut rows: Vec<StoredEvent> = r
        .query_events(&newer, None, 1000)?
        .items
        .into_iter()
        .filter(|x| (x.time_us, x.id) > (e.time_us, e.id))
        .collect();
    let keep = rows.len().saturating_sub(AROUND_N);
    let mut out: Vec<StoredEvent> = rows.split_off(keep);
    let older = r.query_events(
        &f,
        Some(Cursor {
            time_us: e.time_us,
            id: e.id,
        }),
        AROUND_N,
    )?;
    out.push(e.clone());
    out.extend(older.items);
    Ok(out.iter().map(EventRow::from).collect())
}

pub async fn event(
    data: Data,
    who: Console,
    id: web::Path<i64>,
) -> Result<HttpResponse, AdminError> {
    let id = id.into_inner();
    let r = reader(&data)?;
    let (e, around_user, around_ip) = web::block(move || -> Result<_, AdminError> {
        let e = r.get_event(id)?.ok_or(AdminError::NotFound)?;
        let u = around(&r, &e, true)?;
        let i = around(&r, &e, false)?;
        Ok((e, u, i))
    })
    .await??;
    let s = |v: &Option<String>| v.clone().unwrap_or_default();
    let fields = vec![
        ("subject", s(&e.subject)),
        ("username", s(&e.username)),
        ("client_ip", s(&e.client_ip)),
        ("user_agent", s(&e.user_agent)),
        ("method", s(&e.method)),
        ("path", s(&e.path)),
        ("jti", s(&e.jti)),
        ("kid", s(&e.kid)),
        ("alg", s(&e.alg)),
        ("token_fp", s(&e.token_fp)),
        ("source", e.source.clone()),
        ("hash", e.hash.clone()),
    ];
    let row = EventRow::from(&e);
    let user_url = format!(
        "/admin/events?{}",
        serde_urlencoded::to_string([("user", &row.user)]).unwrap_or_default()
    );
    let ip_url = format!(
        "/admin/events?{}",
        serde_urlencoded::to_string([("ip", &row.ip)]).unwrap_or_default()
    );
    let page = EventPage {
        ctx: PageCtx::new(&who, "events"),
        detail: serde_json::to_string_pretty(&e.detail).unwrap_or_default(),
        ev: row,
        fields,
        user_url,
        ip_url,
        around_user,
        around_ip,
    };
    Ok(html(page.render()?))
}

// ---------------------------------------------------------------- alerts

pub struct AlertRow {
    pub id: i64,
    pub time: String,
    pub updated: String,
    pub detector: String,
    pub rule: String,
    pub severity: &'static str,
    pub status: &'static str,
    pub subject: String,
    pub ip: String,
    pub summary: String,
    pub count: u64,
    pub status_by: String,
    pub status_at: String,
    pub status_note: String,
}

impl From<&audit_store::Alert> for AlertRow {
    fn from(a: &audit_store::Alert) -> Self {
        let s = |v: &Option<String>| v.clone().unwrap_or_default();
        AlertRow {
            id: a.id,
            time: show_time(a.time_us),
            updated: show_time(a.updated_at_us),
            detector: a.detector.clone(),
            rule: a.rule.clone(),
            severity: a.severity.as_str(),
            status: a.status.as_str(),
            subject: s(&a.subject),
            ip: s(&a.client_ip),
            summary: a.summary.clone(),
            count: a.count,
            status_by: s(&a.status_by),
            status_at: a.status_at_us.map(show_time).unwrap_or_default(),
            status_note: s(&a.status_note),
        }
    }
}

#[derive(Deserialize, Serialize, Default)]
pub struct AlertQuery {
    #[serde(default, skip_serializing_if = "is_blank")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "is_blank")]
    pub severity: Option<String>,
    #[serde(default, skip_serializing_if = "is_blank")]
    pub detector: Option<String>,
}

impl AlertQuery {
    pub fn to_filter(&self) -> Result<AlertFilter, AdminError> {
        Ok(AlertFilter {
            status: nonempty(&self.status)
                .map(|s| s.parse::<AlertStatus>())
                .transpose()?,
            min_severity: nonempty(&self.severity)
                .map(|s| s.parse::<Severity>())
                .transpose()?,
            detector: nonempty(&self.detector),
            ..Default::default()
        })
    }
}

#[derive(Template)]
#[template(path = "alerts.html")]
pub struct AlertsPage {
    ctx: PageCtx,
    status: String,
    severity: String,
    detector: String,
    rows: Vec<AlertRow>,
    next_url: Option<String>,
}

#[derive(Deserialize)]
pub struct AlertPageQuery {
    #[serde(default)]
    after: Option<i64>,
}

pub async fn alerts(
    data: Data,
    who: Console,
    q: web::Query<AlertQuery>,
    page: web::Query<AlertPageQuery>,
) -> Result<HttpResponse, AdminError> {
    let q = q.into_inner();
    let filter = q.to_filter()?;
    let after = page.after;
    let r = reader(&data)?;
    let result = web::block(move || r.list_alerts(&filter, after, PAGE_SIZE)).await??;
    let qs = serde_urlencoded::to_string(&q).unwrap_or_default();
    let page = AlertsPage {
        ctx: PageCtx::new(&who, "alerts"),
        status: q.status.unwrap_or_default(),
        severity: q.severity.unwrap_or_default(),
        detector: q.detector.unwrap_or_default(),
        rows: result.items.iter().map(AlertRow::from).collect(),
        next_url: result.next.map(|n| format!("/admin/alerts?{qs}&after={n}")),
    };
    Ok(html(page.render()?))
}

#[derive(Template)]
#[template(path = "alert.html")]
pub struct AlertPage {
    ctx: PageCtx,
    a: AlertRow,
    group_key: String,
    evidence: Vec<EventRow>,
    evidence_total: usize,
    exception_user_url: Option<String>,
    exception_ip_url: Option<String>,
}

const EVIDENCE_SHOWN: usize = 200;

pub async fn alert(
    data: Data,
    who: Console,
    id: web::Path<i64>,
) -> Result<HttpResponse, AdminError> {
    let id = id.into_inner();
    let r = reader(&data)?;
    let (a, evidence) = web::block(move || -> Result<_, AdminError> {
        let a = r.get_alert(id)?.ok_or(AdminError::NotFound)?;
        let mut ev = Vec::new();
        for eid in a.evidence.iter().take(EVIDENCE_SHOWN) {
            if let Some(e) = r.get_event(*eid)? {
                ev.push(EventRow::from(&e));
            }
        }
        Ok((a, ev))
    })
    .await??;
    let exception_url = |field: &str, v: &Option<String>| {
        v.as_ref().map(|v| {
            format!(
                "/admin/exceptions/new?{}",
                serde_urlencoded::to_string([
                    ("detector", a.detector.as_str()),
                    (field, v.as_str()),
                    ("alert", &a.id.to_string()),
                ])
                .unwrap_or_default()
            )
        })
    };
    let page = AlertPage {
        ctx: PageCtx::new(&who, "alerts"),
        exception_user_url: exception_url("user", &a.subject),
        exception_ip_url: exception_url("ip", &a.client_ip),
        a: AlertRow::from(&a),
        group_key: a.group_key.clone(),
        evidence_total: a.evidence.len(),
        evidence,
    };
    Ok(html(page.render()?))
}

#[derive(Deserialize)]
pub struct StatusForm {
    #[serde(default)]
    csrf: String,
    action: String,
    #[serde(default)]
    note: String,
}

/// Acknowledge, close, suppress or reopen an alert (analyst or admin).
pub async fn alert_status(
    req: HttpRequest,
    data: Data,
    who: Console,
    id: web::Path<i64>,
    form: web::Form<StatusForm>,
) -> Result<HttpResponse, AdminError> {
    check_csrf(&data, &req, &who, &form.csrf).await?;
    let id = id.into_inner();
    let status = match form.action.as_str() {
        "acknowledge" => AlertStatus::Acknowledged,
        "close" => AlertStatus::Closed,
        "suppress" => AlertStatus::Suppressed,
        "reopen" => AlertStatus::Open,
        _ => return Err(AdminError::BadRequest("unknown alert action".into())),
    };
    let r = reader(&data)?;
    let exists = web::block(move || r.get_alert(id)).await??.is_some();
    if !exists {
        return Err(AdminError::NotFound);
    }
    let note = crate::request_meta::truncate(form.note.trim(), 2000);
    // Recorded first: an action that cannot be audited is not done.
    record_action(
        &data,
        &req,
        &who,
        json!({
            "action": "alert.status", "alert_id": id, "status": status.as_str(), "note": note,
        }),
    )
    .await?;
    let writer = data.audit.clone();
    let actor = who.username().to_owned();
    web::block(move || {
        writer.update_alert_status(
            id,
            status,
            &actor,
            (!note.is_empty()).then_some(note.as_str()),
        )
    })
    .await??;
    Ok(redirect(&format!("/admin/alerts/{id}")))
}

// ---------------------------------------------------------------- plugins

pub struct PluginRow {
    name: String,
    version: String,
    description: String,
    file: String,
    status: &'static str,
    error: String,
    events_seen: u64,
    alerts_raised: u64,
    errors: u64,
    over_budget: u64,
    crashes: u64,
    lag: i64,
    time_ms: String,
}

#[derive(Template)]
#[template(path = "plugins.html")]
pub struct PluginsPage {
    ctx: PageCtx,
    enabled: bool,
    process_up: bool,
    restarts: u64,
    lag: i64,
    rows: Vec<PluginRow>,
}

pub async fn plugins(data: Data, who: Console) -> Result<HttpResponse, AdminError> {
    let list = data
        .detection
        .as_ref()
        .map(|d| d.plugins())
        .unwrap_or_default();
    let head = data.store.committed_watch().latest();
    let rows = list
        .into_iter()
        .map(|p| PluginRow {
            error: p.reason(),
            status: p.status.label(),
            lag: if p.status == crate::detection::Status::Running {
                (head - p.cursor).max(0)
            } else {
                0
            },
            name: p.name,
            version: p.version,
            description: p.description,
            file: p
                .file
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default(),
            events_seen: p.events_seen,
            alerts_raised: p.alerts_raised,
            errors: p.errors,
            over_budget: p.over_budget,
            crashes: p.crashes,
            time_ms: format!("{:.1}", p.time_spent_ns as f64 / 1e6),
        })
        .collect();
    let detection = data.detection.as_ref().map(|d| d.health_json());
    let page = PluginsPage {
        ctx: PageCtx::new(&who, "plugins"),
        enabled: data.detection.is_some(),
        process_up: detection
            .as_ref()
            .is_some_and(|h| h["up"].as_bool() == Some(true)),
        restarts: detection
            .as_ref()
            .and_then(|h| h["restarts"].as_u64())
            .unwrap_or(0),
        lag: detection
            .as_ref()
            .and_then(|h| h["lag_events"].as_i64())
            .unwrap_or(0),
        rows,
    };
    Ok(html(page.render()?))
}

#[derive(Deserialize)]
pub struct CsrfOnly {
    #[serde(default)]
    csrf: String,
}

/// Reload or disable a plugin: admin only, checked here.
pub async fn plugin_action(
    req: HttpRequest,
    data: Data,
    who: Console,
    path: web::Path<(String, String)>,
    form: web::Form<CsrfOnly>,
) -> Result<HttpResponse, AdminError> {
    let (name, action) = path.into_inner();
    if action != "reload" && action != "disable" {
        return Err(AdminError::NotFound);
    }
    let audited = format!("plugin.{action}");
    authorize_admin_action(
        &data,
        &req,
        &who,
        &form.csrf,
        &audited,
        &[("plugin", json!(name))],
    )
    .await?;
    let host_data = data.clone();
    let n = name.clone();
    let result = web::block(move || {
        let detection = host_data
            .detection
            .as_ref()
            .ok_or_else(|| "detectors are not running".to_owned())?;
        match action.as_str() {
            "reload" => detection.reload(&n),
            _ => detection.disable(&n),
        }
    })
    .await?;
    if let Err(e) = result {
        return Err(AdminError::BadRequest(e));
    }
    Ok(redirect("/admin/plugins"))
}
