//! Read-only queries, aggregates and CSV export.

use std::io::Write;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::types::Value;
use rusqlite::{params_from_iter, Connection, OpenFlags, OptionalExtension, Row};

use crate::export::{outcome_str, rfc3339_us, ChainRange, Exported, SafeCsv};
use crate::rollup::{self, Dim};
use crate::{
    Alert, AlertFilter, AlertStatus, Bucket, Cursor, EventFilter, Outcome, Page, Severity,
    StoreError, StoredEvent, TimeRange,
};

/// Largest page a query returns.
pub const MAX_PAGE: usize = 10_000;
const POOL_IDLE: usize = 8;

/// Blocking, read-only access. Clone + Send + Sync: clones share a small pool of
/// read-only connections, which WAL lets run beside the writer.
#[derive(Clone)]
pub struct AuditReader {
    pool: Arc<Pool>,
}

struct Pool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

struct Lease<'a> {
    pool: &'a Pool,
    conn: Option<Connection>,
}

impl Deref for Lease<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        // Only None after drop has taken it.
        self.conn
            .as_ref()
            .unwrap_or_else(|| unreachable!("lease used after release"))
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take() {
            let mut idle = self.pool.idle.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < POOL_IDLE {
                idle.push(c);
            }
        }
    }
}

const EVENT_COLS: &str = "id, time_us, kind, outcome, reason, subject, username, client_ip, user_agent, method, path, jti, kid, alg, token_fp, source, detail, hash";
const ALERT_COLS: &str = "id, time_us, updated_at_us, detector, rule, severity, subject, client_ip, summary, group_key, evidence, count, status, status_by, status_at_us, status_note";

fn event_row(r: &Row<'_>) -> rusqlite::Result<StoredEvent> {
    let outcome: String = r.get(3)?;
    let detail: String = r.get(16)?;
    let hash: Vec<u8> = r.get(17)?;
    Ok(StoredEvent {
        id: r.get(0)?,
        time_us: r.get(1)?,
        kind: r.get(2)?,
        outcome: Outcome::from_db(&outcome),
        reason: r.get(4)?,
        subject: r.get(5)?,
        username: r.get(6)?,
        client_ip: r.get(7)?,
        user_agent: r.get(8)?,
        method: r.get(9)?,
        path: r.get(10)?,
        jti: r.get(11)?,
        kid: r.get(12)?,
        alg: r.get(13)?,
        token_fp: r.get(14)?,
        source: r.get(15)?,
        // Stored detail is always JSON we wrote; if someone edited it into something else,
        // show the raw text rather than failing the whole page.
        detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::String(detail)),
        hash: hex::encode(hash),
    })
}

fn alert_row(r: &Row<'_>) -> rusqlite::Result<Alert> {
    let sev: String = r.get(5)?;
    let evidence: String = r.get(10)?;
    let status: String = r.get(12)?;
    let count: i64 = r.get(11)?;
    Ok(Alert {
        id: r.get(0)?,
        time_us: r.get(1)?,
        updated_at_us: r.get(2)?,
        detector: r.get(3)?,
        rule: r.get(4)?,
        severity: sev.parse().unwrap_or(Severity::Critical),
        subject: r.get(6)?,
        client_ip: r.get(7)?,
        summary: r.get(8)?,
        group_key: r.get(9)?,
        evidence: serde_json::from_str(&evidence).unwrap_or_default(),
        count: u64::try_from(count).unwrap_or(0),
        status: status.parse().unwrap_or(AlertStatus::Open),
        status_by: r.get(13)?,
        status_at_us: r.get(14)?,
        status_note: r.get(15)?,
    })
}

/// Which column(s) `subject_or_username` is matched against in one SQL statement.
#[derive(Clone, Copy)]
enum Who {
    Subject,
    Username,
    Either,
}

/// The SQL condition for `f` over the event columns, each named with `t` (a table
/// qualifier such as `"x."`, or `""`), and its parameters.
fn event_where_on(t: &str, f: &EventFilter, who: Who) -> (String, Vec<Value>) {
    let mut c: Vec<String> = Vec::new();
    let mut p: Vec<Value> = Vec::new();
    let eq = |col: &str, v: &Option<String>, c: &mut Vec<String>, p: &mut Vec<Value>| {
        if let Some(v) = v {
            p.push(Value::Text(v.clone()));
            c.push(format!("{t}{col} = ?{}", p.len()));
        }
    };
    if let Some(x) = f.from_us {
        p.push(Value::Integer(x));
        c.push(format!("{t}time_us >= ?{}", p.len()));
    }
    if let Some(x) = f.to_us {
        p.push(Value::Integer(x));
        c.push(format!("{t}time_us < ?{}", p.len()));
    }
    eq("kind", &f.kind, &mut c, &mut p);
    if let Some(o) = f.outcome {
        p.push(Value::Text(o.as_str().into()));
        c.push(format!("{t}outcome = ?{}", p.len()));
    }
    eq("reason", &f.reason, &mut c, &mut p);
    eq("client_ip", &f.client_ip, &mut c, &mut p);
    eq("jti", &f.jti, &mut c, &mut p);
    eq("source", &f.source, &mut c, &mut p);
    if let Some(u) = &f.subject_or_username {
        p.push(Value::Text(u.clone()));
        let n = p.len();
        c.push(match who {
            Who::Subject => format!("{t}subject = ?{n}"),
            Who::Username => format!("{t}username = ?{n}"),
            Who::Either => format!("({t}subject = ?{n} OR {t}username = ?{n})"),
        });
    }
    let w = if c.is_empty() {
        "1".to_owned()
    } else {
        c.join(" AND ")
    };
    (w, p)
}

fn event_where(f: &EventFilter, who: Who) -> (String, Vec<Value>) {
    event_where_on("", f, who)
}

/// Record rows the index does not hold yet. A scalar subquery, so each statement reads
/// the watermark from the same snapshot as the index rows it combines with.
const ABOVE_INDEX: &str = "id > (SELECT indexed_id FROM ix.ix_state WHERE singleton = 1)";

/// The narrow columns of every event in the record matching `w`: what a report reads
/// instead of the index, so the index cannot change which rows it counts.
fn from_record(w: &str) -> String {
    format!(
        "SELECT {} FROM main.events WHERE {w}",
        crate::index::NARROW_COLS
    )
}

/// `SELECT {cols}` of every event matching `w` (unqualified event columns): from the
/// index up to its watermark, from the record above it.
fn matching(cols: &str, w: &str) -> String {
    format!(
        "SELECT {cols} FROM ix.ev WHERE {w}
         UNION ALL SELECT {cols} FROM main.events WHERE {ABOVE_INDEX} AND {w}"
    )
}

impl AuditReader {
    /// Opens a reader on an existing, migrated audit database without starting a writer
    /// (for `tokenwatch export` while the server may be running).
    pub fn open(db_path: &Path) -> Result<AuditReader, StoreError> {
        let pool = Arc::new(Pool {
            path: db_path.to_owned(),
            idle: Mutex::new(Vec::new()),
        });
        let r = AuditReader { pool };
        // Fail now, with a clear message, rather than at the first query.
        drop(r.conn()?);
        Ok(r)
    }

    fn conn(&self) -> Result<Lease<'_>, StoreError> {
        let idle = self
            .pool
            .idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop();
        let conn = match idle {
            Some(c) => c,
            None => {
                let c = Connection::open_with_flags(
                    &self.pool.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                c.busy_timeout(Duration::from_secs(5))?;
                let v = crate::schema::check_not_newer(&c)?;
                if v < crate::SCHEMA_VERSION {
                    return Err(StoreError::InvalidArgument(format!(
                        "{}: audit schema version {v} is older than {}; start tokenwatch once to migrate it",
                        self.pool.path.display(),
                        crate::SCHEMA_VERSION
                    )));
                }
                let index = crate::index::path_for(&self.pool.path);
                if !index.exists() {
                    return Err(StoreError::InvalidArgument(format!(
                        "{}: the audit index is missing; start tokenwatch once to rebuild it from the record",
                        index.display()
                    )));
                }
                // Attached databases inherit the read-only open flags.
                c.execute("ATTACH DATABASE ?1 AS ix", [index.to_string_lossy()])?;
                c
            }
        };
        Ok(Lease {
            pool: &self.pool,
            conn: Some(conn),
        })
    }

    /// Events matching `f`, newest first (by time, then id), `limit` per page (at most
    /// [`MAX_PAGE`]). Keyset pagination: pass the previous page's `next` as `after`;
    /// page 10 000 costs what page 1 costs.
    pub fn query_events(
        &self,
        f: &EventFilter,
        after: Option<Cursor>,
        limit: usize,
    ) -> Result<Page<StoredEvent>, StoreError> {
        let limit = limit.clamp(1, MAX_PAGE);
        let conn = self.conn()?;
        let mut items = if f.subject_or_username.is_some() {
            // Two index-friendly queries merged here beat one OR that SQLite would
            // answer by collecting and sorting every match.
            let tx = conn.unchecked_transaction()?;
            let mut a = page_query(&tx, f, Who::Subject, after, limit + 1)?;
            let b = page_query(&tx, f, Who::Username, after, limit + 1)?;
            a.extend(b);
            a.sort_by_key(|e| std::cmp::Reverse((e.time_us, e.id)));
            a.dedup_by_key(|e| e.id);
            a.truncate(limit + 1);
            a
        } else {
            page_query(&conn, f, Who::Either, after, limit + 1)?
        };
        let next = if items.len() > limit {
            items.truncate(limit);
            items.last().map(|e| Cursor {
                time_us: e.time_us,
                id: e.id,
            })
        } else {
            None
        };
        Ok(Page { items, next })
    }

    pub fn get_event(&self, id: i64) -> Result<Option<StoredEvent>, StoreError> {
        let conn = self.conn()?;
        let mut st = conn.prepare_cached(&format!(
            "SELECT {EVENT_COLS} FROM main.events WHERE id = ?1"
        ))?;
        Ok(st.query_row([id], event_row).optional()?)
    }

    /// Events with id > `id`, ascending, at most `limit` (for detectors and backtests).
    pub fn events_after(&self, id: i64, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        let conn = self.conn()?;
        let mut st = conn.prepare_cached(&format!(
            "SELECT {EVENT_COLS} FROM main.events WHERE id > ?1 ORDER BY id LIMIT ?2"
        ))?;
        let rows = st.query_map(rusqlite::params![id, limit.min(MAX_PAGE) as i64], event_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// How far each detector has analysed the record: `(detector, last event id)`.
    pub fn detector_cursors(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let conn = self.conn()?;
        let mut st = conn.prepare_cached(
            "SELECT detector, last_event_id FROM main.detector_cursors ORDER BY detector",
        )?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The newest committed event id (0 if none).
    pub fn max_event_id(&self) -> Result<i64, StoreError> {
        let conn = self.conn()?;
        Ok(
            conn.query_row("SELECT coalesce(max(id), 0) FROM main.events", [], |r| {
                r.get(0)
            })?,
        )
    }

    /// `(bucket start, successes, failures)` for every bucket in `range` that has events,
    /// ascending. Buckets are UTC-aligned; the first and last may be partial.
    pub fn counts_over_time(
        &self,
        range: TimeRange,
        bucket: Bucket,
    ) -> Result<Vec<(i64, u64, u64)>, StoreError> {
        let b = bucket.micros();
        let levels: Vec<i64> = Dim::All
            .levels()
            .iter()
            .copied()
            .filter(|l| *l <= b)
            .collect();
        let conn = self.conn()?;
        let tx = conn.unchecked_transaction()?;
        let (inner, params) = union_sql(
            Dim::All,
            range,
            &levels,
            None,
            &format!("bucket_us - ((bucket_us % {b}) + {b}) % {b}"),
            &rollup::floor_sql(b),
        )?;
        let sql = format!(
            "SELECT v, sum(CASE WHEN o = 0 THEN c ELSE 0 END), sum(CASE WHEN o = 1 THEN c ELSE 0 END)
             FROM ({inner}) GROUP BY v ORDER BY v"
        );
        let mut st = tx.prepare(&sql)?;
        let rows = st.query_map(params_from_iter(params), |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)? as u64,
                r.get::<_, i64>(2)? as u64,
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The `n` client IPs with the most events in `range` (optionally of one outcome).
    pub fn top_client_ips(
        &self,
        range: TimeRange,
        outcome: Option<Outcome>,
        n: usize,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        self.top(Dim::Ip, range, outcome, n)
    }

    /// The `n` users with the most events; a user is the username, or the token subject
    /// when the event has no username.
    pub fn top_users(
        &self,
        range: TimeRange,
        outcome: Option<Outcome>,
        n: usize,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        self.top(Dim::User, range, outcome, n)
    }

    /// The `n` most frequent reasons among failures in `range`.
    pub fn failure_reasons(
        &self,
        range: TimeRange,
        n: usize,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        self.top(Dim::Reason, range, Some(Outcome::Failure), n)
    }

    fn top(
        &self,
        dim: Dim,
        range: TimeRange,
        outcome: Option<Outcome>,
        n: usize,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        let conn = self.conn()?;
        let tx = conn.unchecked_transaction()?;
        let (inner, mut params) =
            union_sql(dim, range, dim.levels(), outcome, "value", dim.value_sql())?;
        params.push(Value::Integer(n.min(MAX_PAGE) as i64));
        let sql = format!(
            "SELECT v, sum(c) AS total FROM ({inner}) GROUP BY v ORDER BY total DESC, v LIMIT ?{}",
            params.len()
        );
        let mut st = tx.prepare(&sql)?;
        let rows = st.query_map(params_from_iter(params), |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Alerts matching `f`, newest first; `after` is the previous page's `next` (an alert id).
    pub fn list_alerts(
        &self,
        f: &AlertFilter,
        after: Option<i64>,
        limit: usize,
    ) -> Result<Page<Alert, i64>, StoreError> {
        let limit = limit.clamp(1, MAX_PAGE);
        let (w, mut p) = alert_where(f);
        let mut sql = format!("SELECT {ALERT_COLS} FROM alerts WHERE {w}");
        if let Some(a) = after {
            p.push(Value::Integer(a));
            sql.push_str(&format!(" AND id < ?{}", p.len()));
        }
        p.push(Value::Integer(limit as i64 + 1));
        sql.push_str(&format!(" ORDER BY id DESC LIMIT ?{}", p.len()));
        let conn = self.conn()?;
        let mut st = conn.prepare_cached(&sql)?;
        let mut items: Vec<Alert> = st
            .query_map(params_from_iter(p), alert_row)?
            .collect::<Result<_, _>>()?;
        let next = if items.len() > limit {
            items.truncate(limit);
            items.last().map(|a| a.id)
        } else {
            None
        };
        Ok(Page { items, next })
    }

    pub fn get_alert(&self, id: i64) -> Result<Option<Alert>, StoreError> {
        let conn = self.conn()?;
        let mut st =
            conn.prepare_cached(&format!("SELECT {ALERT_COLS} FROM alerts WHERE id = ?1"))?;
        Ok(st.query_row([id], alert_row).optional()?)
    }

    /// Alerts with id > `id`, ascending, at most `limit` (for forwarders that
    /// keep a delivery cursor).
    pub fn alerts_after(&self, id: i64, limit: usize) -> Result<Vec<Alert>, StoreError> {
        let conn = self.conn()?;
        let mut st = conn.prepare_cached(&format!(
            "SELECT {ALERT_COLS} FROM alerts WHERE id > ?1 ORDER BY id LIMIT ?2"
        ))?;
        let rows = st.query_map(rusqlite::params![id, limit.min(MAX_PAGE) as i64], alert_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The newest alert id (0 if none).
    pub fn max_alert_id(&self) -> Result<i64, StoreError> {
        let conn = self.conn()?;
        Ok(conn.query_row("SELECT coalesce(max(id), 0) FROM alerts", [], |r| r.get(0))?)
    }

    /// Streams every event matching `f` as CSV ([`crate::CSV_EVENT_COLUMNS`]), oldest
    /// first (by time, then id: the explorer's rows reversed), in constant memory.
    ///
    /// Read from the record alone, never the derived index: which rows, and every field
    /// of them, come from `events` in one read snapshot, so an edited `audit-index.db`
    /// cannot make a report lie. The cost is a scan of the record (its time column is
    /// not indexed, and ingested events carry their own times, so an id range cannot
    /// stand in for a time range).
    pub fn export_events_csv<W: Write>(
        &self,
        f: &EventFilter,
        out: W,
    ) -> Result<Exported, StoreError> {
        let conn = self.conn()?;
        let tx = conn.unchecked_transaction()?;
        let record = chain_range(&tx)?;
        let (w, p) = event_where(f, Who::Either);
        let mut st = tx.prepare(&format!(
            "SELECT {EVENT_COLS} FROM main.events WHERE {w} ORDER BY time_us, id"
        ))?;
        let mut rows = st.query(params_from_iter(p))?;
        let mut csv = SafeCsv::new(out);
        csv.record(crate::CSV_EVENT_COLUMNS)?;
        let mut n = 0u64;
        let mut idbuf = itoa_buf();
        // Reused per row: a million rows must not mean millions of small allocations.
        let mut timebuf = [0u8; crate::export::RFC3339_US_LEN];
        let mut hexbuf = [0u8; 64];
        while let Some(r) = rows.next()? {
            csv.field(fmt_int(&mut idbuf, r.get(0)?))?;
            let t: i64 = r.get(1)?;
            match crate::export::write_rfc3339_us(t, &mut timebuf) {
                Some(text) => csv.field(text)?,
                None => csv.field(&rfc3339_us(t))?,
            }
            csv.field(r.get_ref(2)?.as_str().unwrap_or(""))?;
            let outcome = r.get_ref(3)?.as_str().unwrap_or_default();
            csv.field(outcome_str(Outcome::from_db(outcome)))?;
            for i in 4..=16 {
                csv.field(r.get_ref(i)?.as_str().unwrap_or(""))?;
            }
            let hash = r.get_ref(17)?.as_blob().unwrap_or_default();
            match hex::encode_to_slice(hash, &mut hexbuf) {
                Ok(()) => csv.field(std::str::from_utf8(&hexbuf).unwrap_or_default())?,
                Err(_) => csv.field(&hex::encode(hash))?,
            }
            csv.end_record()?;
            n += 1;
        }
        csv.flush().map_err(|e| StoreError::Csv(e.into()))?;
        Ok(Exported { rows: n, record })
    }

    /// Streams alerts matching `f` as CSV ([`crate::CSV_ALERT_COLUMNS`]), oldest first.
    /// Alerts live in the record (`audit.db`); `record` is its event chain as of the
    /// same snapshot.
    pub fn export_alerts_csv<W: Write>(
        &self,
        f: &AlertFilter,
        out: W,
    ) -> Result<Exported, StoreError> {
        let conn = self.conn()?;
        let tx = conn.unchecked_transaction()?;
        let record = chain_range(&tx)?;
        let (w, p) = alert_where(f);
        let mut st = tx.prepare(&format!(
            "SELECT {ALERT_COLS} FROM alerts WHERE {w} ORDER BY id"
        ))?;
        let mut rows = st.query(params_from_iter(p))?;
        let mut csv = SafeCsv::new(out);
        csv.record(crate::CSV_ALERT_COLUMNS)?;
        let mut n = 0u64;
        let opt = |s: &Option<String>| s.clone().unwrap_or_default();
        while let Some(r) = rows.next()? {
            let a = alert_row(r)?;
            let evidence: Vec<String> = a.evidence.iter().map(i64::to_string).collect();
            csv.record([
                a.id.to_string(),
                rfc3339_us(a.time_us),
                rfc3339_us(a.updated_at_us),
                a.detector,
                a.rule,
                a.severity.as_str().to_owned(),
                a.status.as_str().to_owned(),
                opt(&a.subject),
                opt(&a.client_ip),
                a.summary,
                a.group_key,
                a.count.to_string(),
                evidence.join(" "),
                opt(&a.status_by),
                a.status_at_us.map(rfc3339_us).unwrap_or_default(),
                opt(&a.status_note),
            ])?;
            n += 1;
        }
        csv.flush().map_err(|e| StoreError::Csv(e.into()))?;
        Ok(Exported { rows: n, record })
    }
}

/// The record's event chain in the current read transaction: first and last id, and
/// the chain hash at the last one.
fn chain_range(conn: &Connection) -> Result<Option<ChainRange>, StoreError> {
    let ends: Option<(i64, i64)> =
        conn.query_row("SELECT min(id), max(id) FROM main.events", [], |r| {
            Ok(r.get::<_, Option<i64>>(0)?.zip(r.get::<_, Option<i64>>(1)?))
        })?;
    let Some((first_id, last_id)) = ends else {
        return Ok(None);
    };
    let hash: Vec<u8> = conn.query_row(
        "SELECT hash FROM main.events WHERE id = ?1",
        [last_id],
        |r| r.get(0),
    )?;
    Ok(Some(ChainRange {
        first_id,
        last_id,
        last_hash: hex::encode(hash),
    }))
}

impl AuditReader {
    /// Open alerts (status `open` or `acknowledged` when `include_acknowledged`)
    /// counted by severity, least severe first; severities with none are left out.
    pub fn alert_counts_by_severity(
        &self,
        include_acknowledged: bool,
    ) -> Result<Vec<(Severity, u64)>, StoreError> {
        let statuses = if include_acknowledged {
            "'open', 'acknowledged'"
        } else {
            "'open'"
        };
        let conn = self.conn()?;
        let mut st = conn.prepare_cached(&format!(
            "SELECT severity, count(*) FROM alerts WHERE status IN ({statuses}) GROUP BY severity"
        ))?;
        let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (s, n) = row?;
            out.push((s.parse().unwrap_or(Severity::Critical), n as u64));
        }
        out.sort_by_key(|(s, _)| *s);
        Ok(out)
    }

    /// Streams a per-user summary of the events matching `f` as CSV
    /// ([`crate::CSV_USER_SUMMARY_COLUMNS`]), one row per user (the username, else the
    /// token subject), ordered by user. Returns the number of data rows.
    pub fn export_user_summary_csv<W: Write>(
        &self,
        f: &EventFilter,
        out: W,
    ) -> Result<Exported, StoreError> {
        let (w, p) = event_where(f, Who::Either);
        // SQLite takes the bare column client_ip from the row holding max(time_us):
        // the IP the user was last seen from.
        let sql = format!(
            "SELECT coalesce(username, subject) AS u,
                    sum(kind = 'auth.login.success'), sum(kind = 'auth.login.failure'),
                    sum(kind = 'token.issued'), sum(outcome = 'failure'), count(*),
                    min(time_us), max(time_us), client_ip
             FROM ({m}) WHERE coalesce(username, subject) IS NOT NULL
             GROUP BY u ORDER BY u",
            m = from_record(&w)
        );
        self.summary_csv(&sql, p, crate::CSV_USER_SUMMARY_COLUMNS, out)
    }

    /// Streams a per-client-IP summary of the events matching `f` as CSV
    /// ([`crate::CSV_IP_SUMMARY_COLUMNS`]), ordered by IP. Returns the number of rows.
    pub fn export_ip_summary_csv<W: Write>(
        &self,
        f: &EventFilter,
        out: W,
    ) -> Result<Exported, StoreError> {
        let (w, p) = event_where(f, Who::Either);
        let sql = format!(
            "SELECT client_ip,
                    sum(kind = 'auth.login.success'), sum(kind = 'auth.login.failure'),
                    sum(kind = 'token.issued'), sum(outcome = 'failure'), count(*),
                    min(time_us), max(time_us), count(DISTINCT coalesce(username, subject))
             FROM ({m}) WHERE client_ip IS NOT NULL
             GROUP BY client_ip ORDER BY client_ip",
            m = from_record(&w)
        );
        self.summary_csv(&sql, p, crate::CSV_IP_SUMMARY_COLUMNS, out)
    }

    /// Runs a summary query whose columns are: key, five counts, first and last
    /// time, and one trailing text-or-count column. Like the event export, it reads
    /// the record, never the derived index.
    fn summary_csv<W: Write>(
        &self,
        sql: &str,
        params: Vec<Value>,
        header: &[&str],
        out: W,
    ) -> Result<Exported, StoreError> {
        let conn = self.conn()?;
        let tx = conn.unchecked_transaction()?;
        let record = chain_range(&tx)?;
        let mut st = tx.prepare(sql)?;
        let mut rows = st.query(params_from_iter(params))?;
        let mut csv = SafeCsv::new(out);
        csv.record(header)?;
        let mut n = 0u64;
        while let Some(r) = rows.next()? {
            let key: String = r.get(0)?;
            let mut rec: Vec<String> = vec![key];
            for i in 1..=5 {
                rec.push(r.get::<_, i64>(i)?.to_string());
            }
            rec.push(rfc3339_us(r.get(6)?));
            rec.push(rfc3339_us(r.get(7)?));
            let last = match r.get_ref(8)? {
                rusqlite::types::ValueRef::Integer(i) => i.to_string(),
                v => v.as_str().unwrap_or("").to_owned(),
            };
            rec.push(last);
            csv.record(&rec)?;
            n += 1;
        }
        csv.flush().map_err(|e| StoreError::Csv(e.into()))?;
        Ok(Exported { rows: n, record })
    }
}

fn itoa_buf() -> String {
    String::with_capacity(20)
}

fn fmt_int(buf: &mut String, v: i64) -> &str {
    use std::fmt::Write as _;
    buf.clear();
    let _ = write!(buf, "{v}");
    buf
}

fn page_query(
    conn: &Connection,
    f: &EventFilter,
    who: Who,
    after: Option<Cursor>,
    limit: usize,
) -> Result<Vec<StoredEvent>, StoreError> {
    let (mut w, mut p) = event_where(f, who);
    if let Some(c) = after {
        p.push(Value::Integer(c.time_us));
        let t = p.len();
        p.push(Value::Integer(c.id));
        let i = p.len();
        // `time_us <= t` bounds the index range; the OR only trims rows sharing time t.
        w.push_str(&format!(
            " AND time_us <= ?{t} AND (time_us < ?{t} OR id < ?{i})"
        ));
    }
    p.push(Value::Integer(limit as i64));
    let n = p.len();
    // Each arm is limited on its own (the index arm walks its index in order and
    // stops), then the two short lists are merged. The outer `{w}` checks the filter
    // again on the record's own columns: a row the index claims but the record does
    // not match (an edited or forged index row) is never shown.
    let sql = format!(
        "SELECT {EVENT_COLS} FROM main.events WHERE {w} AND id IN (
           SELECT id FROM (
             SELECT * FROM (SELECT id, time_us FROM ix.ev WHERE {w}
                            ORDER BY time_us DESC, id DESC LIMIT ?{n})
             UNION ALL
             SELECT * FROM (SELECT id, time_us FROM main.events WHERE {ABOVE_INDEX} AND {w}
                            ORDER BY time_us DESC, id DESC LIMIT ?{n}))
           ORDER BY time_us DESC, id DESC LIMIT ?{n})
         ORDER BY time_us DESC, id DESC"
    );
    let mut st = conn.prepare_cached(&sql)?;
    let rows = st.query_map(params_from_iter(p), event_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn alert_where(f: &AlertFilter) -> (String, Vec<Value>) {
    let mut c: Vec<String> = Vec::new();
    let mut p: Vec<Value> = Vec::new();
    let push = |sql: &str, v: Value, c: &mut Vec<String>, p: &mut Vec<Value>| {
        p.push(v);
        c.push(sql.replace('#', &format!("?{}", p.len())));
    };
    if let Some(t) = f.from_us {
        push("time_us >= #", Value::Integer(t), &mut c, &mut p);
    }
    if let Some(t) = f.to_us {
        push("time_us < #", Value::Integer(t), &mut c, &mut p);
    }
    if let Some(v) = &f.detector {
        push("detector = #", Value::Text(v.clone()), &mut c, &mut p);
    }
    if let Some(v) = f.status {
        push("status = #", Value::Text(v.as_str().into()), &mut c, &mut p);
    }
    if let Some(v) = &f.subject {
        push("subject = #", Value::Text(v.clone()), &mut c, &mut p);
    }
    if let Some(v) = &f.client_ip {
        push("client_ip = #", Value::Text(v.clone()), &mut c, &mut p);
    }
    if let Some(min) = f.min_severity {
        let allowed: Vec<String> = [
            Severity::Low,
            Severity::Medium,
            Severity::High,
            Severity::Critical,
        ]
        .into_iter()
        .filter(|s| *s >= min)
        .map(|s| format!("'{}'", s.as_str()))
        .collect();
        c.push(format!("severity IN ({})", allowed.join(", ")));
    }
    let w = if c.is_empty() {
        "1".to_owned()
    } else {
        c.join(" AND ")
    };
    (w, p)
}

/// Builds `SELECT v, o, c` rows covering `range` exactly: whole buckets from the rollup
/// (rows up to the watermark), raw edge ranges from `events`, and rows above the
/// watermark inside the rollup-covered ranges from `events`. `v` is `rollup_v` over
/// the rollup and `raw_v` over `events`.
fn union_sql(
    dim: Dim,
    range: TimeRange,
    levels: &[i64],
    outcome: Option<Outcome>,
    rollup_v: &str,
    raw_v: &str,
) -> Result<(String, Vec<Value>), StoreError> {
    let plan = rollup::plan(range.from_us, range.to_us, levels);
    let mut parts: Vec<String> = Vec::new();
    let mut p: Vec<Value> = Vec::new();
    let arg = |v: i64, p: &mut Vec<Value>| {
        p.push(Value::Integer(v));
        format!("?{}", p.len())
    };
    let (roll_o, raw_o) = match outcome {
        Some(o) => (
            format!(" AND outcome = {}", rollup::outcome_sql_code(o)),
            format!(" AND outcome = '{}'", o.as_str()),
        ),
        None => (String::new(), String::new()),
    };
    let not_null = if dim == Dim::All {
        String::new()
    } else {
        format!(" AND {raw_v} IS NOT NULL")
    };
    for &(level, a, b) in &plan.pieces {
        parts.push(format!(
            "SELECT {rollup_v} AS v, outcome AS o, n AS c FROM ix.rollup WHERE dim = {} AND level = {level}
             AND bucket_us >= {} AND bucket_us < {}{roll_o}",
            dim as i64,
            arg(a, &mut p),
            arg(b, &mut p)
        ));
        // Unary + keeps SQLite on the rowid range (a second of rows), off the time and
        // outcome indexes, which would make it walk millions of older entries.
        let fresh_o = raw_o.replace(" AND outcome", " AND +outcome");
        parts.push(format!(
            "SELECT {raw_v} AS v, outcome = 'failure' AS o, 1 AS c FROM main.events WHERE {ABOVE_INDEX}
             AND +time_us >= {} AND +time_us < {}{fresh_o}{not_null}",
            arg(a, &mut p),
            arg(b, &mut p)
        ));
    }
    for &(a, b) in &plan.raw {
        let w = format!(
            "time_us >= {} AND time_us < {}{raw_o}{not_null}",
            arg(a, &mut p),
            arg(b, &mut p)
        );
        parts.push(matching(
            &format!("{raw_v} AS v, outcome = 'failure' AS o, 1 AS c"),
            &w,
        ));
    }
    if parts.is_empty() {
        parts.push("SELECT NULL AS v, 0 AS o, 0 AS c WHERE 0".into());
    }
    Ok((parts.join(" UNION ALL "), p))
}
