//! What the server does about alerts: analyst exceptions that silence a
//! detector for a user or network, and lockouts (an account locked, or a
//! client IP throttled, at `/oauth/token`) for a growing period.
//!
//! Both live in `state.db` beside users and clients. Callers record the audit
//! event for every change; this module keeps the state, decides what an analyst
//! may silence ([`Authority`]), and records each exception's lapse once
//! ([`spawn_lapse_sweep`]).

use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use rusqlite::{params, OptionalExtension, Row};
use serde::{Deserialize, Serialize};

use audit_store::{kinds, AuditWriter, NewEvent, Outcome};
use serde_json::json;

use crate::state::{now_secs, StateDb, StateError};

/// An analyst's decision that a detector's alerts for a user and/or an IP
/// range are expected. It stops applying at `expires_at` on its own.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Exception {
    pub id: i64,
    /// A plugin name, or `*` for every detector.
    pub detector: String,
    pub user: Option<String>,
    /// One address or a CIDR range.
    pub ip: Option<String>,
    pub reason: String,
    pub created_by: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds; `None` never expires.
    pub expires_at: Option<i64>,
    pub revoked: bool,
}

#[derive(Clone, Debug, Deserialize)]
pub struct NewException {
    pub detector: String,
    pub user: Option<String>,
    pub ip: Option<String>,
    pub reason: String,
    pub created_by: String,
    pub expires_at: Option<i64>,
}

/// Who is making or changing an exception. An analyst may silence one detector for
/// one subject or a small network for a bounded time; anything wider switches off
/// more detection than one analyst should alone, so it is the admin's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Authority {
    Analyst,
    /// Console admins, and the CLI (it runs as the operator).
    Admin,
}

/// The longest an analyst's exception may last: 90 days.
pub const ANALYST_MAX_LIFETIME_SECS: i64 = 90 * 24 * 3600;
/// The longest any exception with an expiry may last: ten years (admins may also
/// give none). A bound keeps every expiry a time the product can show.
pub const MAX_LIFETIME_SECS: i64 = 10 * 366 * 24 * 3600;
/// The widest networks an analyst may name.
const ANALYST_MIN_V4_PREFIX: u8 = 24;
const ANALYST_MIN_V6_PREFIX: u8 = 56;

/// Why an exception or a change to one was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExceptionRefused {
    /// The input is wrong whoever sends it.
    #[error("{0}")]
    Invalid(String),
    /// Within what an admin may do, beyond what an analyst may.
    #[error("{0}")]
    NeedsAdmin(String),
}

impl From<ExceptionRefused> for StateError {
    fn from(e: ExceptionRefused) -> Self {
        StateError::Invalid(e.to_string())
    }
}

/// A lifetime typed in hours (`field` names the form field in the error). Empty or
/// `0` means no expiry. Bounded, so no lifetime overflows or yields a time the
/// product cannot show.
pub fn lifetime_from_hours(field: &str, text: &str) -> Result<Option<i64>, ExceptionRefused> {
    let max_hours = MAX_LIFETIME_SECS / 3600;
    let bad = || {
        ExceptionRefused::Invalid(format!(
            "{field}: {text:?} is not a lifetime; give whole hours from 1 to {max_hours} \
             (an analyst: at most {} hours, 90 days), or leave it empty for no expiry",
            ANALYST_MAX_LIFETIME_SECS / 3600
        ))
    };
    match text.trim() {
        "" | "0" => Ok(None),
        h => match h.parse::<i64>() {
            Ok(n) if (1..=max_hours).contains(&n) => Ok(Some(n * 3600)),
            _ => Err(bad()),
        },
    }
}

/// Checks an expiry (`None` = never) set at `now` by `who`.
fn vet_expiry(expires_at: Option<i64>, who: Authority, now: i64) -> Result<(), ExceptionRefused> {
    let analyst_max = ANALYST_MAX_LIFETIME_SECS / 3600;
    match expires_at {
        Some(t) if t <= now => Err(ExceptionRefused::Invalid(
            "expiry: the expiry is in the past".into(),
        )),
        Some(t) if t - now > MAX_LIFETIME_SECS => Err(ExceptionRefused::Invalid(format!(
            "expiry: an exception lasts at most {} hours (ten years)",
            MAX_LIFETIME_SECS / 3600
        ))),
        Some(t) if who == Authority::Analyst && t - now > ANALYST_MAX_LIFETIME_SECS => {
            Err(ExceptionRefused::NeedsAdmin(format!(
                "expiry: an analyst's exception lasts at most {analyst_max} hours (90 days); \
                 a longer one needs the admin role"
            )))
        }
        None if who == Authority::Analyst => Err(ExceptionRefused::NeedsAdmin(format!(
            "expiry: an exception that never expires needs the admin role; \
             give it at most {analyst_max} hours (90 days)"
        ))),
        _ => Ok(()),
    }
}

/// The networks an analyst may name: an IPv4 /24 or narrower, an IPv6 /56 or
/// narrower (an IPv4-mapped IPv6 range counts as the IPv4 range it maps).
fn narrow_enough(net: &IpNet) -> bool {
    match net {
        IpNet::V4(n) => n.prefix_len() >= ANALYST_MIN_V4_PREFIX,
        IpNet::V6(n) if n.network().to_ipv4_mapped().is_some() && n.prefix_len() >= 96 => {
            n.prefix_len() - 96 >= ANALYST_MIN_V4_PREFIX
        }
        IpNet::V6(n) => n.prefix_len() >= ANALYST_MIN_V6_PREFIX,
    }
}

/// What an exception covers, checked against what `who` may silence.
fn vet_scope(
    detector: &str,
    user: Option<&str>,
    ip: Option<&str>,
    who: Authority,
) -> Result<(), ExceptionRefused> {
    if detector.is_empty() {
        return Err(ExceptionRefused::Invalid(
            "detector: an exception names a detector (or * for all, admins only)".into(),
        ));
    }
    if user.is_none() && ip.is_none() {
        return Err(ExceptionRefused::Invalid(
            "an exception needs a user, an IP or CIDR range, or both".into(),
        ));
    }
    let net = ip
        .map(|ip| parse_range(ip).map_err(|e| ExceptionRefused::Invalid(format!("ip: {e}"))))
        .transpose()?;
    if who == Authority::Admin {
        return Ok(());
    }
    if detector == "*" {
        return Err(ExceptionRefused::NeedsAdmin(
            "detector: an exception for every detector (*) needs the admin role; name one detector"
                .into(),
        ));
    }
    match net {
        Some(net) if !narrow_enough(&net) => Err(ExceptionRefused::NeedsAdmin(format!(
            "ip: {net} is wider than an analyst may silence (an IPv4 /{ANALYST_MIN_V4_PREFIX} \
             or an IPv6 /{ANALYST_MIN_V6_PREFIX}); a wider range needs the admin role"
        ))),
        _ => Ok(()),
    }
}

/// Everything an exception must satisfy before it is stored, for `who` at `now`.
pub fn vet_new_exception(
    new: &NewException,
    who: Authority,
    now: i64,
) -> Result<(), ExceptionRefused> {
    let trimmed = |s: &Option<String>| {
        s.as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    vet_scope(
        new.detector.trim(),
        trimmed(&new.user).as_deref(),
        trimmed(&new.ip).as_deref(),
        who,
    )?;
    if new.reason.trim().is_empty() {
        return Err(ExceptionRefused::Invalid(
            "reason: an exception needs a reason, for the next analyst".into(),
        ));
    }
    vet_expiry(new.expires_at, who, now)
}

/// What a change of `current`'s reason and expiry by `who` at `now` must satisfy:
/// an analyst may change only an exception an analyst could have made.
pub fn vet_exception_change(
    current: &Exception,
    reason: &str,
    expires_at: Option<i64>,
    who: Authority,
    now: i64,
) -> Result<(), ExceptionRefused> {
    vet_scope(
        &current.detector,
        current.user.as_deref(),
        current.ip.as_deref(),
        who,
    )?;
    if reason.trim().is_empty() {
        return Err(ExceptionRefused::Invalid(
            "reason: an exception needs a reason, for the next analyst".into(),
        ));
    }
    vet_expiry(expires_at, who, now)
}

impl Exception {
    pub fn is_active(&self, now: i64) -> bool {
        !self.revoked && self.expires_at.is_none_or(|t| now < t)
    }

    /// Whether an alert from `detector` about `subject` and `client_ip` is covered.
    pub fn covers(&self, detector: &str, subject: Option<&str>, client_ip: Option<&str>) -> bool {
        if self.detector != "*" && self.detector != detector {
            return false;
        }
        let user_ok = match &self.user {
            None => true,
            Some(u) => subject == Some(u.as_str()),
        };
        let ip_ok = match &self.ip {
            None => true,
            Some(range) => client_ip.is_some_and(|ip| ip_in(range, ip)),
        };
        user_ok && ip_ok
    }
}

/// `ip` lies in `range` (an address or a CIDR); unparsable input matches nothing.
pub fn ip_in(range: &str, ip: &str) -> bool {
    let Ok(ip) = IpAddr::from_str(ip) else {
        return false;
    };
    parse_range(range).is_ok_and(|net| net.contains(&ip))
}

fn parse_range(range: &str) -> Result<IpNet, StateError> {
    IpNet::from_str(range)
        .or_else(|_| IpAddr::from_str(range).map(IpNet::from))
        .map_err(|_| {
            StateError::Invalid(format!(
                "{range:?} is not an IP address or CIDR range such as 203.0.113.0/24"
            ))
        })
}

/// An account or a client IP refused at `/oauth/token` until `until`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Lockout {
    /// `user` or `ip`.
    pub kind: String,
    pub key: String,
    /// Unix seconds.
    pub until: i64,
    /// How many lockouts in a row this key has had; each one lasts twice as long.
    pub level: u32,
    pub reason: String,
    pub created_at: i64,
}

impl Lockout {
    pub fn is_active(&self, now: i64) -> bool {
        now < self.until
    }
}

/// How long lockouts last.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockoutPolicy {
    pub base_secs: i64,
    pub max_secs: i64,
}

impl LockoutPolicy {
    pub fn duration_for_level(&self, level: u32) -> i64 {
        let factor = 1i64 << level.saturating_sub(1).min(20);
        self.base_secs.saturating_mul(factor).min(self.max_secs)
    }
}

/// A key that stayed clear this long starts again at the base duration.
const LEVEL_MEMORY_SECS: i64 = 24 * 3600;

fn exception_row(r: &Row<'_>) -> rusqlite::Result<Exception> {
    Ok(Exception {
        id: r.get(0)?,
        detector: r.get(1)?,
        user: r.get(2)?,
        ip: r.get(3)?,
        reason: r.get(4)?,
        created_by: r.get(5)?,
        created_at: r.get(6)?,
        expires_at: r.get(7)?,
        revoked: r.get(8)?,
    })
}

fn lockout_row(r: &Row<'_>) -> rusqlite::Result<Lockout> {
    Ok(Lockout {
        kind: r.get(0)?,
        key: r.get(1)?,
        until: r.get(2)?,
        level: r.get(3)?,
        reason: r.get(4)?,
        created_at: r.get(5)?,
    })
}

const EXCEPTION_COLS: &str =
    "id, detector, user, ip, reason, created_by, created_at, expires_at, revoked";
const LOCKOUT_COLS: &str = "kind, key, until, level, reason, created_at";

impl StateDb {
    /// Stores an exception made by `who`, after [`vet_new_exception`].
    pub fn add_exception(
        &self,
        new: &NewException,
        who: Authority,
    ) -> Result<Exception, StateError> {
        let now = now_secs();
        vet_new_exception(new, who, now)?;
        let user = new.user.as_deref().map(str::trim).filter(|u| !u.is_empty());
        let ip = new.ip.as_deref().map(str::trim).filter(|i| !i.is_empty());
        let conn = self.conn();
        conn.execute(
            "INSERT INTO exceptions (detector, user, ip, reason, created_by, created_at, expires_at, revoked)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0)",
            params![new.detector.trim(), user, ip, new.reason.trim(), new.created_by, now, new.expires_at],
        )?;
        let id = conn.last_insert_rowid();
        Ok(conn.query_row(
            &format!("SELECT {EXCEPTION_COLS} FROM exceptions WHERE id = ?1"),
            [id],
            exception_row,
        )?)
    }

    pub fn get_exception(&self, id: i64) -> Result<Option<Exception>, StateError> {
        Ok(self
            .conn()
            .query_row(
                &format!("SELECT {EXCEPTION_COLS} FROM exceptions WHERE id = ?1"),
                [id],
                exception_row,
            )
            .optional()?)
    }

    /// Every exception, newest first, expired and revoked ones included.
    pub fn list_exceptions(&self) -> Result<Vec<Exception>, StateError> {
        let conn = self.conn();
        let mut st = conn.prepare_cached(&format!(
            "SELECT {EXCEPTION_COLS} FROM exceptions ORDER BY id DESC"
        ))?;
        let rows = st.query_map([], exception_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Changes an active exception's reason and expiry (`None` = never expires), by
    /// `who`, after [`vet_exception_change`]. False when there is no such exception
    /// still in force.
    pub fn update_exception(
        &self,
        id: i64,
        reason: &str,
        expires_at: Option<i64>,
        who: Authority,
    ) -> Result<bool, StateError> {
        let now = now_secs();
        let Some(current) = self.get_exception(id)? else {
            return Ok(false);
        };
        if !current.is_active(now) {
            return Ok(false);
        }
        vet_exception_change(&current, reason, expires_at, who, now)?;
        Ok(self.conn().execute(
            "UPDATE exceptions SET reason = ?2, expires_at = ?3
             WHERE id = ?1 AND revoked = 0 AND (expires_at IS NULL OR expires_at > ?4)",
            params![id, reason.trim(), expires_at, now],
        )? > 0)
    }

    /// Exceptions that have run out but whose lapse is not yet in the audit record,
    /// oldest expiry first.
    pub fn lapsed_unrecorded(&self, now: i64) -> Result<Vec<Exception>, StateError> {
        let conn = self.conn();
        let mut st = conn.prepare_cached(&format!(
            "SELECT {EXCEPTION_COLS} FROM exceptions
             WHERE revoked = 0 AND expires_at <= ?1 AND lapse_recorded = 0 ORDER BY expires_at, id"
        ))?;
        let rows = st.query_map([now], exception_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Notes that exception `id`'s lapse is in the audit record.
    pub fn mark_lapse_recorded(&self, id: i64) -> Result<(), StateError> {
        self.conn().execute(
            "UPDATE exceptions SET lapse_recorded = 1 WHERE id = ?1",
            [id],
        )?;
        Ok(())
    }

    /// Stops an exception now. False when there was no such active exception.
    pub fn revoke_exception(&self, id: i64) -> Result<bool, StateError> {
        Ok(self.conn().execute(
            "UPDATE exceptions SET revoked = 1 WHERE id = ?1 AND revoked = 0",
            [id],
        )? > 0)
    }

    /// The active exception covering an alert, if any.
    pub fn exception_covering(
        &self,
        detector: &str,
        subject: Option<&str>,
        client_ip: Option<&str>,
    ) -> Result<Option<Exception>, StateError> {
        let now = now_secs();
        let conn = self.conn();
        let mut st = conn.prepare_cached(&format!(
            "SELECT {EXCEPTION_COLS} FROM exceptions
             WHERE revoked = 0 AND (expires_at IS NULL OR expires_at > ?1)
               AND detector IN ('*', ?2)"
        ))?;
        let rows = st.query_map(params![now, detector], exception_row)?;
        for row in rows {
            let e = row?;
            if e.covers(detector, subject, client_ip) {
                return Ok(Some(e));
            }
        }
        Ok(None)
    }

    /// Locks `key` unless it is locked already. Returns the new lockout, or
    /// `None` when one was still running (an ongoing incident does not
    /// escalate on every alert update).
    pub fn apply_lockout(
        &self,
        kind: &str,
        key: &str,
        reason: &str,
        policy: LockoutPolicy,
    ) -> Result<Option<Lockout>, StateError> {
        let now = now_secs();
        let conn = self.conn();
        let previous = conn
            .query_row(
                &format!("SELECT {LOCKOUT_COLS} FROM lockouts WHERE kind = ?1 AND key = ?2"),
                params![kind, key],
                lockout_row,
            )
            .optional()?;
        let level = match &previous {
            Some(p) if p.is_active(now) => return Ok(None),
            Some(p) if now - p.until < LEVEL_MEMORY_SECS => p.level + 1,
            _ => 1,
        };
        let lock = Lockout {
            kind: kind.to_string(),
            key: key.to_string(),
            until: now + policy.duration_for_level(level),
            level,
            reason: reason.to_string(),
            created_at: now,
        };
        conn.execute(
            "INSERT INTO lockouts (kind, key, until, level, reason, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (kind, key) DO UPDATE SET until = excluded.until, level = excluded.level,
                 reason = excluded.reason, created_at = excluded.created_at",
            params![
                lock.kind,
                lock.key,
                lock.until,
                lock.level,
                lock.reason,
                lock.created_at
            ],
        )?;
        Ok(Some(lock))
    }

    /// The running lockout of `key`, if any.
    pub fn active_lockout(&self, kind: &str, key: &str) -> Result<Option<Lockout>, StateError> {
        let now = now_secs();
        Ok(self
            .conn()
            .query_row(
                &format!(
                    "SELECT {LOCKOUT_COLS} FROM lockouts WHERE kind = ?1 AND key = ?2 AND until > ?3"
                ),
                params![kind, key, now],
                lockout_row,
            )
            .optional()?)
    }

    /// Running lockouts, soonest to end first.
    pub fn list_lockouts(&self) -> Result<Vec<Lockout>, StateError> {
        let conn = self.conn();
        let mut st = conn.prepare_cached(&format!(
            "SELECT {LOCKOUT_COLS} FROM lockouts WHERE until > ?1 ORDER BY until"
        ))?;
        let rows = st.query_map([now_secs()], lockout_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Ends a running lockout now. False when `key` was not locked.
    pub fn lift_lockout(&self, kind: &str, key: &str) -> Result<bool, StateError> {
        let now = now_secs();
        Ok(self.conn().execute(
            "UPDATE lockouts SET until = ?3 WHERE kind = ?1 AND key = ?2 AND until > ?3",
            params![kind, key, now],
        )? > 0)
    }
}

/// How often the server looks for exceptions that ran out.
const LAPSE_SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// The audit event of an exception that ran out: what it covered, who made it
/// and why, so the record shows when detection came back.
pub fn lapse_event(e: &Exception) -> NewEvent {
    let mut ev = NewEvent::new(kinds::EXCEPTION_EXPIRED, Outcome::Success);
    ev.reason = Some("expired".into());
    ev.detail = json!({
        "exception_id": e.id, "detector": e.detector, "user": e.user, "ip": e.ip,
        "reason": e.reason, "created_by": e.created_by, "created_at": e.created_at,
        "expires_at": e.expires_at,
    });
    ev
}

/// Records one `exception.expired` event for each exception that ran out since the
/// last pass, and only then marks it recorded (a crash in between records it again
/// rather than never). Returns how many were recorded.
pub fn record_lapses(state: &StateDb, audit: &AuditWriter) -> anyhow::Result<usize> {
    let lapsed = state.lapsed_unrecorded(now_secs())?;
    for e in &lapsed {
        audit.record_blocking(lapse_event(e))?;
        state.mark_lapse_recorded(e.id)?;
    }
    Ok(lapsed.len())
}

/// Runs [`record_lapses`] at start and every [`LAPSE_SWEEP_EVERY`] after.
pub fn spawn_lapse_sweep(state: std::sync::Arc<StateDb>, audit: AuditWriter) {
    let spawned = std::thread::Builder::new()
        .name("tokenwatch-exception-lapses".into())
        .spawn(move || loop {
            if let Err(e) = record_lapses(&state, &audit) {
                tracing::warn!(error = %format!("{e:#}"), "recording lapsed exceptions failed; retrying");
            }
            std::thread::sleep(LAPSE_SWEEP_EVERY);
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "could not start the exception lapse sweep");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> (tempfile::TempDir, StateDb) {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(&dir.path().join("state.db")).unwrap();
        (dir, db)
    }

    impl StateDb {
        fn add_exception_as_admin(&self, new: &NewException) -> Result<Exception, StateError> {
            self.add_exception(new, Authority::Admin)
        }
    }

    fn exception(detector: &str, user: Option<&str>, ip: Option<&str>) -> NewException {
        NewException {
            detector: detector.into(),
            user: user.map(Into::into),
            ip: ip.map(Into::into),
            reason: "pen test".into(),
            created_by: "analyst".into(),
            expires_at: None,
        }
    }

    #[test]
    fn exceptions_match_by_detector_user_and_cidr() {
        let (_d, db) = db();
        db.add_exception_as_admin(&exception("password-spray", None, Some("203.0.113.0/24")))
            .unwrap();
        db.add_exception_as_admin(&exception("*", Some("svc-backup"), None))
            .unwrap();
        let hit = |det, user, ip| db.exception_covering(det, user, ip).unwrap().is_some();
        assert!(hit("password-spray", None, Some("203.0.113.77")));
        assert!(!hit("password-spray", None, Some("203.0.114.1")));
        assert!(!hit("brute-force", None, Some("203.0.113.77")));
        assert!(hit("brute-force", Some("svc-backup"), Some("198.51.100.1")));
        assert!(!hit("brute-force", Some("alice"), None));
    }

    #[test]
    fn expired_and_revoked_exceptions_stop_applying() {
        let (_d, db) = db();
        let mut e = exception("brute-force", Some("alice"), None);
        e.expires_at = Some(now_secs() + 1);
        let short = db.add_exception(&e, Authority::Admin).unwrap();
        assert!(db
            .exception_covering("brute-force", Some("alice"), None)
            .unwrap()
            .is_some());
        std::thread::sleep(std::time::Duration::from_millis(2100));
        assert!(db
            .exception_covering("brute-force", Some("alice"), None)
            .unwrap()
            .is_none());
        assert!(!short.is_active(now_secs()));

        let e = db
            .add_exception_as_admin(&exception("brute-force", Some("bob"), None))
            .unwrap();
        assert!(db.revoke_exception(e.id).unwrap());
        assert!(!db.revoke_exception(e.id).unwrap());
        assert!(db
            .exception_covering("brute-force", Some("bob"), None)
            .unwrap()
            .is_none());
    }

    #[test]
    fn an_active_exception_can_be_edited_not_an_ended_one() {
        let (_d, db) = db();
        let e = db
            .add_exception_as_admin(&exception("brute-force", Some("alice"), None))
            .unwrap();
        let later = now_secs() + 3600;
        assert!(db
            .update_exception(e.id, "INC-7 extended", Some(later), Authority::Admin)
            .unwrap());
        let now = db.list_exceptions().unwrap().remove(0);
        assert_eq!(
            (now.reason.as_str(), now.expires_at),
            ("INC-7 extended", Some(later))
        );
        assert!(db
            .update_exception(e.id, " ", None, Authority::Admin)
            .is_err());
        assert!(db
            .update_exception(e.id, "x", Some(now_secs() - 1), Authority::Admin)
            .is_err());
        db.revoke_exception(e.id).unwrap();
        assert!(!db
            .update_exception(e.id, "too late", None, Authority::Admin)
            .unwrap());
    }

    #[test]
    fn bad_exceptions_are_refused_with_a_reason() {
        let (_d, db) = db();
        let err = db
            .add_exception_as_admin(&exception("x", None, None))
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs a user"), "{err}");
        let err = db
            .add_exception_as_admin(&exception("x", None, Some("not-an-ip")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("CIDR"), "{err}");
    }

    /// (detector, user, ip, lifetime in seconds or None) an analyst may or may not add.
    fn analyst_case(
        detector: &str,
        user: Option<&str>,
        ip: Option<&str>,
        life: Option<i64>,
    ) -> NewException {
        let mut e = exception(detector, user, ip);
        e.expires_at = life.map(|s| now_secs() + s);
        e
    }

    #[test]
    fn an_analyst_may_silence_one_detector_for_a_subject_or_small_network_for_90_days() {
        let (_d, db) = db();
        let day = 24 * 3600;
        for (case, ok) in [
            (
                analyst_case("brute-force", Some("svc-backup"), None, Some(day)),
                true,
            ),
            (
                analyst_case("brute-force", None, Some("203.0.113.0/24"), Some(90 * day)),
                true,
            ),
            (
                analyst_case("brute-force", None, Some("2001:db8:0:100::/56"), Some(day)),
                true,
            ),
            (
                analyst_case("brute-force", None, Some("203.0.113.9"), Some(day)),
                true,
            ),
            (
                analyst_case(
                    "brute-force",
                    None,
                    Some("::ffff:203.0.113.0/120"),
                    Some(day),
                ),
                true,
            ),
            (
                analyst_case("*", Some("svc-backup"), None, Some(day)),
                false,
            ),
            (
                analyst_case("brute-force", None, Some("0.0.0.0/0"), Some(day)),
                false,
            ),
            (
                analyst_case("brute-force", None, Some("::/0"), Some(day)),
                false,
            ),
            (
                analyst_case("brute-force", None, Some("203.0.112.0/23"), Some(day)),
                false,
            ),
            (
                analyst_case("brute-force", None, Some("2001:db8::/55"), Some(day)),
                false,
            ),
            (
                analyst_case("brute-force", None, Some("::ffff:0.0.0.0/96"), Some(day)),
                false,
            ),
            (
                analyst_case("brute-force", Some("svc-backup"), None, None),
                false,
            ),
            (
                analyst_case("brute-force", Some("svc-backup"), None, Some(90 * day + 1)),
                false,
            ),
        ] {
            let what = format!(
                "{:?} {:?} {:?} {:?}",
                case.detector, case.user, case.ip, case.expires_at
            );
            match vet_new_exception(&case, Authority::Analyst, now_secs()) {
                Ok(()) => assert!(ok, "an analyst may not add {what}"),
                Err(ExceptionRefused::NeedsAdmin(m)) => assert!(!ok, "{what}: {m}"),
                Err(e) => panic!("{what}: {e}"),
            }
            assert_eq!(
                db.add_exception(&case, Authority::Analyst).is_ok(),
                ok,
                "{what}"
            );
            // Whatever an analyst may not add, an admin may.
            assert!(db.add_exception(&case, Authority::Admin).is_ok(), "{what}");
        }
    }

    #[test]
    fn an_analyst_may_not_widen_an_exception_by_editing_it() {
        let (_d, db) = db();
        let wide = db
            .add_exception(
                &analyst_case("*", None, Some("10.0.0.0/8"), None),
                Authority::Admin,
            )
            .unwrap();
        let later = Some(now_secs() + 3600);
        assert!(db
            .update_exception(wide.id, "x", later, Authority::Analyst)
            .is_err());
        assert!(db
            .update_exception(wide.id, "x", later, Authority::Admin)
            .unwrap());
        let narrow = db
            .add_exception(
                &analyst_case("brute-force", Some("bob"), None, Some(60)),
                Authority::Analyst,
            )
            .unwrap();
        let err = db
            .update_exception(narrow.id, "x", None, Authority::Analyst)
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("never expires needs the admin role"),
            "{err}"
        );
        assert!(db
            .update_exception(narrow.id, "x", later, Authority::Analyst)
            .unwrap());
    }

    #[test]
    fn a_lifetime_is_bounded_and_its_error_names_the_field() {
        assert_eq!(lifetime_from_hours("hours", ""), Ok(None));
        assert_eq!(lifetime_from_hours("hours", "24"), Ok(Some(24 * 3600)));
        for bad in ["99999999999999", "-1", "1.5", "1e3", "87841", "ten"] {
            let err = lifetime_from_hours("hours", bad).unwrap_err().to_string();
            assert!(err.starts_with("hours: "), "{err}");
        }
        let huge = analyst_case(
            "brute-force",
            Some("bob"),
            None,
            Some(MAX_LIFETIME_SECS + 10),
        );
        let err = vet_new_exception(&huge, Authority::Admin, now_secs()).unwrap_err();
        assert!(err.to_string().starts_with("expiry: "), "{err}");
    }

    #[test]
    fn a_lapse_is_listed_once_until_marked_recorded() {
        let (_d, db) = db();
        let e = db
            .add_exception(
                &analyst_case("brute-force", Some("bob"), None, Some(1)),
                Authority::Analyst,
            )
            .unwrap();
        db.add_exception(
            &analyst_case("brute-force", Some("eve"), None, Some(3600)),
            Authority::Analyst,
        )
        .unwrap();
        assert!(db.lapsed_unrecorded(now_secs()).unwrap().is_empty());
        let lapsed = db.lapsed_unrecorded(now_secs() + 2).unwrap();
        assert_eq!(lapsed.iter().map(|x| x.id).collect::<Vec<_>>(), vec![e.id]);
        db.mark_lapse_recorded(e.id).unwrap();
        assert!(db.lapsed_unrecorded(now_secs() + 2).unwrap().is_empty());
    }

    #[test]
    fn each_lapse_is_recorded_once_in_the_audit_record() {
        let (d, db) = db();
        let store = audit_store::AuditStore::open(audit_store::StoreConfig::in_data_dir(
            &d.path().join("audit"),
        ))
        .unwrap();
        let e = db
            .add_exception(
                &analyst_case("brute-force", Some("bob"), None, Some(1)),
                Authority::Analyst,
            )
            .unwrap();
        assert_eq!(record_lapses(&db, &store.writer()).unwrap(), 0);
        std::thread::sleep(std::time::Duration::from_millis(2100));
        assert_eq!(record_lapses(&db, &store.writer()).unwrap(), 1);
        assert_eq!(record_lapses(&db, &store.writer()).unwrap(), 0);
        let f = audit_store::EventFilter {
            kind: Some(kinds::EXCEPTION_EXPIRED.into()),
            ..Default::default()
        };
        let got = store
            .reader()
            .unwrap()
            .query_events(&f, None, 10)
            .unwrap()
            .items;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].detail["exception_id"], e.id);
        assert_eq!(got[0].detail["created_by"], "analyst");
        assert_eq!(got[0].detail["user"], "bob");
        store.shutdown().unwrap();
    }

    #[test]
    fn lockouts_grow_and_can_be_lifted() {
        let (_d, db) = db();
        let policy = LockoutPolicy {
            base_secs: 60,
            max_secs: 200,
        };
        let first = db
            .apply_lockout("user", "alice", "brute force", policy)
            .unwrap()
            .unwrap();
        assert_eq!((first.level, first.until - first.created_at), (1, 60));
        // While it runs, more alerts do not escalate it.
        assert!(db
            .apply_lockout("user", "alice", "brute force", policy)
            .unwrap()
            .is_none());
        assert!(db.active_lockout("user", "alice").unwrap().is_some());
        assert!(db.lift_lockout("user", "alice").unwrap());
        assert!(db.active_lockout("user", "alice").unwrap().is_none());
        let second = db
            .apply_lockout("user", "alice", "brute force", policy)
            .unwrap()
            .unwrap();
        assert_eq!((second.level, second.until - second.created_at), (2, 120));
        db.lift_lockout("user", "alice").unwrap();
        let third = db
            .apply_lockout("user", "alice", "brute force", policy)
            .unwrap()
            .unwrap();
        assert_eq!(third.until - third.created_at, 200, "capped at max");
        assert_eq!(db.list_lockouts().unwrap().len(), 1);
    }
}
