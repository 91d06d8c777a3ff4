//! Admin sessions, CSRF tokens and the login back-off.
//!
//! A session is a random 256-bit id in an HttpOnly, SameSite=Strict cookie
//! scoped to `/admin`. Only its SHA-256 is kept (in memory: a restart logs
//! everyone out), so a memory dump does not hand out live sessions. Each
//! session has its own CSRF token, required on every state-changing request.

use std::collections::HashMap;
use std::future::{ready, Ready};
use std::sync::Mutex;

use actix_web::cookie::{Cookie, SameSite};
use actix_web::{dev::Payload, web, FromRequest, HttpRequest};

use super::AdminError;
use crate::app::AppState;
use crate::passwords::constant_time_eq;
use crate::state::{now_secs, Role};

pub const SESSION_COOKIE: &str = "tw_session";
pub const LOGIN_CSRF_COOKIE: &str = "tw_login_csrf";
/// A session ends after this long without a request...
const IDLE_SECS: i64 = 30 * 60;
/// ...and after this long in any case.
const ABSOLUTE_SECS: i64 = 12 * 3600;
/// Failed logins (per username and per client IP) allowed before back-off starts.
pub const FREE_FAILURES: u32 = 5;
/// The first lockout; each further failure doubles it, up to `MAX_LOCK_SECS`.
const FIRST_LOCK_SECS: i64 = 30;
const MAX_LOCK_SECS: i64 = 15 * 60;
/// Failures older than this are forgotten.
const FAILURE_MEMORY_SECS: i64 = 3600;

#[derive(Clone, Debug)]
pub struct Session {
    pub username: String,
    pub role: Role,
    pub csrf: String,
    created: i64,
    last_seen: i64,
}

#[derive(Default)]
struct Failures {
    count: u32,
    last: i64,
    locked_until: i64,
}

/// In-memory state of the admin UI, shared by every worker.
#[derive(Default)]
pub struct AdminUi {
    sessions: Mutex<HashMap<String, Session>>,
    failures: Mutex<HashMap<String, Failures>>,
    pub(super) manifests: Mutex<super::reports::ManifestCache>,
    reader: std::sync::OnceLock<audit_store::AuditReader>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl AdminUi {
    /// One read-only connection pool for every console query.
    pub fn reader(
        &self,
        store: &audit_store::AuditStore,
    ) -> Result<audit_store::AuditReader, AdminError> {
        if let Some(r) = self.reader.get() {
            return Ok(r.clone());
        }
        let r = store.reader()?;
        Ok(self.reader.get_or_init(|| r).clone())
    }

    /// Starts a session; returns the cookie value (never stored itself).
    pub fn create_session(&self, username: &str, role: Role) -> (String, Session) {
        let id = crate::random_token(32);
        let now = now_secs();
        let s = Session {
            username: username.to_owned(),
            role,
            csrf: crate::random_token(32),
            created: now,
            last_seen: now,
        };
        let mut sessions = lock(&self.sessions);
        sessions.retain(|_, v| live(v, now));
        sessions.insert(crate::state::sha256_hex(id.as_bytes()), s.clone());
        (id, s)
    }

    pub fn session(&self, id: &str) -> Option<Session> {
        let now = now_secs();
        let key = crate::state::sha256_hex(id.as_bytes());
        let mut sessions = lock(&self.sessions);
        let s = sessions.get_mut(&key)?;
        if !live(s, now) {
            sessions.remove(&key);
            return None;
        }
        s.last_seen = now;
        Some(s.clone())
    }

    pub fn end_session(&self, id: &str) {
        lock(&self.sessions).remove(&crate::state::sha256_hex(id.as_bytes()));
    }

    /// Seconds left of a lockout on any of `keys`, if one is in force.
    pub fn locked_for(&self, keys: &[String]) -> Option<i64> {
        let now = now_secs();
        let failures = lock(&self.failures);
        keys.iter()
            .filter_map(|k| failures.get(k))
            .map(|f| f.locked_until - now)
            .filter(|left| *left > 0)
            .max()
    }

    /// Counts a failed login against every key; past [`FREE_FAILURES`] each
    /// further failure locks the key for twice as long as the one before.
    pub fn login_failed(&self, keys: &[String]) {
        let now = now_secs();
        let mut failures = lock(&self.failures);
        failures.retain(|_, f| now - f.last < FAILURE_MEMORY_SECS || f.locked_until > now);
        for k in keys {
            let f = failures.entry(k.clone()).or_default();
            f.count += 1;
            f.last = now;
            if f.count >= FREE_FAILURES {
                let doublings = (f.count - FREE_FAILURES).min(10);
                let secs = (FIRST_LOCK_SECS << doublings).min(MAX_LOCK_SECS);
                f.locked_until = now + secs;
            }
        }
    }

    /// A successful login clears the username's count (not the IP's: an attacker
    /// with one valid account must not reset the back-off for the others).
    pub fn login_succeeded(&self, user_key: &str) {
        lock(&self.failures).remove(user_key);
    }
}

fn live(s: &Session, now: i64) -> bool {
    now - s.last_seen < IDLE_SECS && now - s.created < ABSOLUTE_SECS
}

pub fn session_cookie(value: &str, secure: bool) -> Cookie<'static> {
    Cookie::build(SESSION_COOKIE, value.to_owned())
        .path("/admin")
        .http_only(true)
        .secure(secure)
        .same_site(SameSite::Strict)
        .finish()
}

pub fn expired_cookie(name: &'static str) -> Cookie<'static> {
    let mut c = Cookie::build(name, "")
        .path("/admin")
        .http_only(true)
        .same_site(SameSite::Strict)
        .finish();
    c.make_removal();
    c
}

pub fn is_https(req: &HttpRequest) -> bool {
    req.connection_info().scheme() == "https"
}

/// The logged-in console user of a request (admin or analyst).
#[derive(Clone, Debug)]
pub struct Console {
    pub session_id: String,
    pub session: Session,
}

impl Console {
    pub fn username(&self) -> &str {
        &self.session.username
    }

    pub fn is_admin(&self) -> bool {
        self.session.role == Role::Admin
    }

    /// Checks the CSRF token of a state-changing request, in constant time.
    pub fn check_csrf(&self, presented: &str) -> Result<(), AdminError> {
        if constant_time_eq(presented.as_bytes(), self.session.csrf.as_bytes()) {
            Ok(())
        } else {
            Err(AdminError::Csrf)
        }
    }
}

impl FromRequest for Console {
    type Error = AdminError;
    type Future = Ready<Result<Console, AdminError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(console_of(req))
    }
}

fn console_of(req: &HttpRequest) -> Result<Console, AdminError> {
    let data = req
        .app_data::<web::Data<AppState>>()
        .ok_or_else(|| AdminError::Internal("app state missing".into()))?;
    let id = req
        .cookie(SESSION_COOKIE)
        .map(|c| c.value().to_owned())
        .ok_or(AdminError::LoginRequired)?;
    let session = data.admin.session(&id).ok_or(AdminError::LoginRequired)?;
    // A role changed or removed since login takes effect at once.
    Ok(Console {
        session_id: id,
        session,
    })
}
