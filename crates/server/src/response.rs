//! What the server does about alerts: analyst exceptions that silence a
//! detector for a user or network, and lockouts (an account locked, or a
//! client IP throttled, at `/oauth/token`) for a growing period.
//!
//! Both live in `state.db` beside users and clients. Callers record the audit
//! event for every change; this module only keeps the state.

use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use rusqlite::{params, OptionalExtension, Row};
use serde::{Deserialize, Serialize};

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
    pub fn add_exception(&self, new: &NewException) -> Result<Exception, StateError> {
        let detector = new.detector.trim();
        if detector.is_empty() {
            return Err(StateError::Invalid(
                "an exception names a detector (or * for all)".into(),
            ));
        }
        let user = new.user.as_deref().map(str::trim).filter(|u| !u.is_empty());
        let ip = new.ip.as_deref().map(str::trim).filter(|i| !i.is_empty());
        if user.is_none() && ip.is_none() {
            return Err(StateError::Invalid(
                "an exception needs a user, an IP or CIDR range, or both".into(),
            ));
        }
        if let Some(ip) = ip {
            parse_range(ip)?;
        }
        if new.reason.trim().is_empty() {
            return Err(StateError::Invalid(
                "an exception needs a reason, for the next analyst".into(),
            ));
        }
        let now = now_secs();
        if new.expires_at.is_some_and(|t| t <= now) {
            return Err(StateError::Invalid("the expiry is in the past".into()));
        }
        let conn = self.conn();
        conn.execute(
            "INSERT INTO exceptions (detector, user, ip, reason, created_by, created_at, expires_at, revoked)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0)",
            params![detector, user, ip, new.reason.trim(), new.created_by, now, new.expires_at],
        )?;
        let id = conn.last_insert_rowid();
        Ok(conn.query_row(
            &format!("SELECT {EXCEPTION_COLS} FROM exceptions WHERE id = ?1"),
            [id],
            exception_row,
        )?)
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

    /// Changes an active exception's reason and expiry (`None` = never expires).
    /// False when there is no such exception still in force.
    pub fn update_exception(
        &self,
        id: i64,
        reason: &str,
        expires_at: Option<i64>,
    ) -> Result<bool, StateError> {
        if reason.trim().is_empty() {
            return Err(StateError::Invalid(
                "an exception needs a reason, for the next analyst".into(),
            ));
        }
        let now = now_secs();
        if expires_at.is_some_and(|t| t <= now) {
            return Err(StateError::Invalid(
                "the expiry is in the past; expire the exception instead".into(),
            ));
        }
        Ok(self.conn().execute(
            "UPDATE exceptions SET reason = ?2, expires_at = ?3
             WHERE id = ?1 AND revoked = 0 AND (expires_at IS NULL OR expires_at > ?4)",
            params![id, reason.trim(), expires_at, now],
        )? > 0)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> (tempfile::TempDir, StateDb) {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(&dir.path().join("state.db")).unwrap();
        (dir, db)
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
        db.add_exception(&exception("password-spray", None, Some("203.0.113.0/24")))
            .unwrap();
        db.add_exception(&exception("*", Some("svc-backup"), None))
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
        let short = db.add_exception(&e).unwrap();
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
            .add_exception(&exception("brute-force", Some("bob"), None))
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
            .add_exception(&exception("brute-force", Some("alice"), None))
            .unwrap();
        let later = now_secs() + 3600;
        assert!(db
            .update_exception(e.id, "INC-7 extended", Some(later))
            .unwrap());
        let now = db.list_exceptions().unwrap().remove(0);
        assert_eq!(
            (now.reason.as_str(), now.expires_at),
            ("INC-7 extended", Some(later))
        );
        assert!(db.update_exception(e.id, " ", None).is_err());
        assert!(db
            .update_exception(e.id, "x", Some(now_secs() - 1))
            .is_err());
        db.revoke_exception(e.id).unwrap();
        assert!(!db.update_exception(e.id, "too late", None).unwrap());
    }

    #[test]
    fn bad_exceptions_are_refused_with_a_reason() {
        let (_d, db) = db();
        let err = db
            .add_exception(&exception("x", None, None))
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs a user"), "{err}");
        let err = db
            .add_exception(&exception("x", None, Some("not-an-ip")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("CIDR"), "{err}");
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
