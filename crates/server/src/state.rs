//! Mutable state that is not audit history: users, OAuth clients, refresh-token
//! families and revocations. It lives in its own SQLite file (`state.db`) so the
//! append-only audit database has a single writer and nothing ever updates it.
//!
//! Revocations are read on every token verification, so they are mirrored in
//! memory and written through to SQLite; the file is the source of truth at start.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, MutexGuard, RwLock};

use rusqlite::{params, Connection, OptionalExtension};
use token_core::{RefreshRecord, RefreshStore, RevocationStore, StoreFailure};

use crate::passwords;

pub use crate::response::{Exception, Lockout, NewException};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state database {path}: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error("state database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("state database schema version {found} is newer than this tokenwatch knows ({known}); upgrade tokenwatch")]
    TooNew { found: i64, known: i64 },
    #[error("user {0:?} already exists")]
    UserExists(String),
    #[error("client {0:?} already exists")]
    ClientExists(String),
    #[error("{0}")]
    Invalid(String),
    #[error("password hashing failed: {0}")]
    Hash(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Admin,
    Analyst,
    User,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Analyst => "analyst",
            Role::User => "user",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = StateError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "admin" => Ok(Role::Admin),
            "analyst" => Ok(Role::Analyst),
            "user" => Ok(Role::User),
            other => Err(StateError::Invalid(format!(
                "unknown role {other:?}: expected admin, analyst or user"
            ))),
        }
    }
}

#[derive(Clone, Debug)]
pub struct User {
    pub username: String,
    pub subject: String,
    pub role: Role,
    pub password_hash: String,
    pub disabled: bool,
}

pub use crate::clients::{Client, ClientKind, GrantType, NewClient};

const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE users (
    username      TEXT PRIMARY KEY,
    subject       TEXT NOT NULL UNIQUE,
    role          TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    disabled      INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL
);
CREATE TABLE clients (
    client_id     TEXT PRIMARY KEY,
    secret_sha256 TEXT NOT NULL,
    kind          TEXT NOT NULL,
    scope         TEXT,
    created_at    INTEGER NOT NULL
);
CREATE TABLE refresh_tokens (
    token_hash TEXT PRIMARY KEY,
    family_id  TEXT NOT NULL,
    subject    TEXT NOT NULL,
    username   TEXT,
    client_id  TEXT,
    scope      TEXT,
    issued_at  INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at    INTEGER,
    revoked    INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX refresh_tokens_family ON refresh_tokens(family_id);
CREATE TABLE revocations (
    kind  TEXT NOT NULL CHECK (kind IN ('jti', 'family')),
    id    TEXT NOT NULL,
    until INTEGER NOT NULL,
    PRIMARY KEY (kind, id)
);
"#,
    r#"
CREATE TABLE exceptions (
    id         INTEGER PRIMARY KEY,
    detector   TEXT NOT NULL,
    user       TEXT,
    ip         TEXT,
    reason     TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    revoked    INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE lockouts (
    kind       TEXT NOT NULL CHECK (kind IN ('user', 'ip')),
    key        TEXT NOT NULL,
    until      INTEGER NOT NULL,
    level      INTEGER NOT NULL,
    reason     TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (kind, key)
);
"#,
    // Ingest: per-source API keys (SHA-256 of a 256-bit random key), resumable
    // file imports and the forwarders' delivery cursors.
    r#"
CREATE TABLE ingest_sources (
    name       TEXT PRIMARY KEY,
    key_sha256 TEXT NOT NULL UNIQUE,
    key_hint   TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE TABLE ingest_files (
    path       TEXT PRIMARY KEY,
    head_sha256 TEXT NOT NULL,
    byte_offset INTEGER NOT NULL,
    line       INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE forward_cursors (
    name       TEXT PRIMARY KEY,
    last_id    INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
"#,
    // An exception's lapse is an audit event, recorded once: this marks it done.
    r#"
ALTER TABLE exceptions ADD COLUMN lapse_recorded INTEGER NOT NULL DEFAULT 0;
"#,
    // Per-client grant types (space-separated) and redirect URIs (a JSON array) for
    // the authorization-code flow. Existing clients keep exactly the grants their
    // kind had before.
    r#"
ALTER TABLE clients ADD COLUMN grant_types TEXT NOT NULL DEFAULT '';
ALTER TABLE clients ADD COLUMN redirect_uris TEXT NOT NULL DEFAULT '[]';
UPDATE clients SET grant_types = 'password client_credentials refresh_token'
    WHERE kind = 'confidential';
"#,
    // Detector plugins that crashed or hung the detection process: not loaded
    // again until the file's content changes or an admin re-enables them.
    r#"
CREATE TABLE plugin_quarantine (
    file       TEXT PRIMARY KEY,
    sha256     TEXT NOT NULL,
    plugin     TEXT,
    reason     TEXT NOT NULL,
    at         INTEGER NOT NULL
);
"#,
];

pub struct StateDb {
    conn: Mutex<Connection>,
    revoked_jti: RwLock<HashMap<String, i64>>,
    revoked_family: RwLock<HashMap<String, i64>>,
}

fn failure(e: impl std::fmt::Display) -> StoreFailure {
    StoreFailure(format!("state database: {e}"))
}

impl StateDb {
    pub fn open(path: &Path) -> Result<StateDb, StateError> {
        let conn = Connection::open(path).map_err(|source| StateError::Open {
            path: path.display().to_string(),
            source,
        })?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&conn)?;
        let db = StateDb {
            conn: Mutex::new(conn),
            revoked_jti: RwLock::new(HashMap::new()),
            revoked_family: RwLock::new(HashMap::new()),
        };
        db.load_revocations()?;
        Ok(db)
    }

    pub(crate) fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent (every
        // statement is atomic), so a poisoned lock is safe to keep using.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn load_revocations(&self) -> Result<(), StateError> {
        let now = now_secs();
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT kind, id, until FROM revocations WHERE until >= ?1")?;
        let rows = stmt.query_map([now], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        let mut jti = write_lock(&self.revoked_jti);
        let mut fam = write_lock(&self.revoked_family);
        for row in rows {
            let (kind, id, until) = row?;
            if kind == "jti" {
                jti.insert(id, until);
            } else {
                fam.insert(id, until);
            }
        }
        Ok(())
    }

    pub fn user_count(&self) -> Result<i64, StateError> {
        Ok(self
            .conn()
            .query_row("SELECT count(*) FROM users", [], |r| r.get(0))?)
    }

    /// Replaces a user's password hash. False when there is no such user.
    pub fn set_password(&self, username: &str, password: &str) -> Result<bool, StateError> {
        if password.chars().count() < 12 {
            return Err(StateError::Invalid(
                "password must be at least 12 characters".into(),
            ));
        }
        let hash = passwords::hash(password).map_err(StateError::Hash)?;
        Ok(self.conn().execute(
            "UPDATE users SET password_hash = ?2 WHERE username = ?1",
            params![username, hash],
        )? > 0)
    }

    /// Creates a user with an argon2id hash of `password`.
    pub fn add_user(&self, username: &str, role: Role, password: &str) -> Result<User, StateError> {
        validate_name(username, "username")?;
        if password.chars().count() < 12 {
            return Err(StateError::Invalid(
                "password must be at least 12 characters".into(),
            ));
        }
        let hash = passwords::hash(password).map_err(StateError::Hash)?;
        let subject = uuid::Uuid::new_v4().to_string();
        let conn = self.conn();
        let inserted = conn.execute(
            "INSERT OR IGNORE INTO users (username, subject, role, password_hash, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![username, subject, role.as_str(), hash, now_secs()],
        )?;
        if inserted == 0 {
            return Err(StateError::UserExists(username.to_string()));
        }
        Ok(User {
            username: username.into(),
            subject,
            role,
            password_hash: hash,
            disabled: false,
        })
    }

    pub fn find_user(&self, username: &str) -> Result<Option<User>, StateError> {
        self.query_user("username", username)
    }

    pub fn find_user_by_subject(&self, subject: &str) -> Result<Option<User>, StateError> {
        self.query_user("subject", subject)
    }

    fn query_user(&self, column: &str, value: &str) -> Result<Option<User>, StateError> {
        let sql = format!(
            "SELECT username, subject, role, password_hash, disabled FROM users WHERE {column} = ?1"
        );
        let conn = self.conn();
        let row = conn
            .query_row(&sql, [value], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, bool>(4)?,
                ))
            })
            .optional()?;
        row.map(|(username, subject, role, password_hash, disabled)| {
            Ok(User {
                username,
                subject,
                role: role.parse()?,
                password_hash,
                disabled,
            })
        })
        .transpose()
    }

    fn insert_revocation(&self, kind: &str, id: &str, until: i64) -> Result<(), StoreFailure> {
        self.conn()
            .execute(
                "INSERT INTO revocations (kind, id, until) VALUES (?1, ?2, ?3)
                 ON CONFLICT(kind, id) DO UPDATE SET until = max(until, excluded.until)",
                params![kind, id, until],
            )
            .map_err(failure)?;
        Ok(())
    }
}

fn write_lock<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

fn read_lock<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

impl RevocationStore for StateDb {
    fn revoke_jti(&self, jti: &str, until: i64) -> Result<(), StoreFailure> {
        self.insert_revocation("jti", jti, until)?;
        write_lock(&self.revoked_jti).insert(jti.to_string(), until);
        Ok(())
    }

    fn is_jti_revoked(&self, jti: &str) -> Result<bool, StoreFailure> {
        Ok(read_lock(&self.revoked_jti).contains_key(jti))
    }

    fn revoke_family(&self, family_id: &str, until: i64) -> Result<(), StoreFailure> {
        self.insert_revocation("family", family_id, until)?;
        write_lock(&self.revoked_family).insert(family_id.to_string(), until);
        Ok(())
    }

    fn is_family_revoked(&self, family_id: &str) -> Result<bool, StoreFailure> {
        Ok(read_lock(&self.revoked_family).contains_key(family_id))
    }

    fn purge_expired(&self, now: i64) -> Result<usize, StoreFailure> {
        let n = self
            .conn()
            .execute("DELETE FROM revocations WHERE until < ?1", [now])
            .map_err(failure)?;
        write_lock(&self.revoked_jti).retain(|_, until| *until >= now);
        write_lock(&self.revoked_family).retain(|_, until| *until >= now);
        Ok(n)
    }
}

impl RefreshStore for StateDb {
    fn insert(&self, rec: &RefreshRecord) -> Result<(), StoreFailure> {
        self.conn()
            .execute(
                "INSERT INTO refresh_tokens (token_hash, family_id, subject, username, client_id, scope, issued_at, expires_at, used_at, revoked)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    rec.token_hash,
                    rec.family_id,
                    rec.subject,
                    rec.username,
                    rec.client_id,
                    rec.scope,
                    rec.issued_at,
                    rec.expires_at,
                    rec.used_at,
                    rec.revoked
                ],
            )
            .map_err(failure)?;
        Ok(())
    }

    fn find(&self, token_hash: &str) -> Result<Option<RefreshRecord>, StoreFailure> {
        self.conn()
            .query_row(
                "SELECT token_hash, family_id, subject, username, client_id, scope, issued_at, expires_at, used_at, revoked
                 FROM refresh_tokens WHERE token_hash = ?1",
                [token_hash],
                |r| {
                    Ok(RefreshRecord {
                        token_hash: r.get(0)?,
                        family_id: r.get(1)?,
                        subject: r.get(2)?,
                        username: r.get(3)?,
                        client_id: r.get(4)?,
                        scope: r.get(5)?,
                        issued_at: r.get(6)?,
                        expires_at: r.get(7)?,
                        used_at: r.get(8)?,
                        revoked: r.get(9)?,
                    })
                },
            )
            .optional()
            .map_err(failure)
    }

    fn mark_used(&self, token_hash: &str, at: i64) -> Result<bool, StoreFailure> {
        let changed = self
            .conn()
            .execute(
                "UPDATE refresh_tokens SET used_at = ?2 WHERE token_hash = ?1 AND used_at IS NULL",
                params![token_hash, at],
            )
            .map_err(failure)?;
        Ok(changed == 1)
    }

    fn revoke_family(&self, family_id: &str) -> Result<usize, StoreFailure> {
        self.conn()
            .execute(
                "UPDATE refresh_tokens SET revoked = 1 WHERE family_id = ?1 AND revoked = 0",
                [family_id],
            )
            .map_err(failure)
    }

    fn purge_expired(&self, now: i64) -> Result<usize, StoreFailure> {
        // Used tokens are kept until they expire: that is what lets reuse be recognised.
        self.conn()
            .execute("DELETE FROM refresh_tokens WHERE expires_at < ?1", [now])
            .map_err(failure)
    }
}

fn migrate(conn: &Connection) -> Result<(), StateError> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(StateError::TooNew {
            found: version,
            known,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {sql}; PRAGMA user_version = {}; COMMIT;",
            i + 1
        ))?;
    }
    Ok(())
}

pub(crate) fn validate_name(name: &str, what: &str) -> Result<(), StateError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if ok {
        Ok(())
    } else {
        Err(StateError::Invalid(format!(
            "{what} must be 1-64 characters of letters, digits, '.', '_', '-' or '@'"
        )))
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data))
}

pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
