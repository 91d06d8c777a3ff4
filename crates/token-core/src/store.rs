//! The narrow storage traits token-core needs, and in-memory implementations.
//!
//! token-core knows no SQL: the server implements these traits on SQLite. The
//! in-memory versions here are complete implementations (used by tests and by
//! embedders that do not need persistence), not mocks.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use serde::Serialize;

/// A storage backend could not answer. Verification treats this as a refusal
/// (`store_unavailable`): a token is never accepted because revocation could not be checked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("token store unavailable: {0}")]
pub struct StoreFailure(pub String);

/// Revoked access tokens (by `jti`) and revoked refresh families (by the `sid` claim).
pub trait RevocationStore: Send + Sync {
    /// Revokes one access token. `until` is when the entry may be purged: the token's `exp`.
    fn revoke_jti(&self, jti: &str, until: i64) -> Result<(), StoreFailure>;
    fn is_jti_revoked(&self, jti: &str) -> Result<bool, StoreFailure>;
    /// Revokes every access token carrying `sid = family_id`. `until` must be at least
    /// the expiry of the longest-lived access token of that family.
    fn revoke_family(&self, family_id: &str, until: i64) -> Result<(), StoreFailure>;
    fn is_family_revoked(&self, family_id: &str) -> Result<bool, StoreFailure>;
    /// Drops entries whose `until` is at or before `now`; returns how many.
    fn purge_expired(&self, now: i64) -> Result<usize, StoreFailure>;
}

/// One refresh token, stored only as the SHA-256 of its value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RefreshRecord {
    /// Lowercase hex SHA-256 of the token value.
    pub token_hash: String,
    /// The grant this token belongs to; kept across rotations so reuse is recognised.
    pub family_id: String,
    pub subject: String,
    pub username: Option<String>,
    pub client_id: Option<String>,
    pub scope: Option<String>,
    pub issued_at: i64,
    pub expires_at: i64,
    /// Set once, when the token is exchanged. A second exchange is the reuse signal.
    pub used_at: Option<i64>,
    pub revoked: bool,
}

/// Refresh-token records.
pub trait RefreshStore: Send + Sync {
    /// Stores a new record; fails if the hash already exists.
    fn insert(&self, rec: &RefreshRecord) -> Result<(), StoreFailure>;
    fn find(&self, token_hash: &str) -> Result<Option<RefreshRecord>, StoreFailure>;
    /// Atomic compare-and-set of `used_at` from unset to `at`. Returns `false` when the
    /// token was already used (the reuse signal) or is unknown. Must be race-free: of
    /// two concurrent calls for one hash, exactly one may return `true`.
    fn mark_used(&self, token_hash: &str, at: i64) -> Result<bool, StoreFailure>;
    /// Marks every record of the family revoked; returns how many changed.
    fn revoke_family(&self, family_id: &str) -> Result<usize, StoreFailure>;
    /// Deletes records that expired at or before `now`; returns how many.
    fn purge_expired(&self, now: i64) -> Result<usize, StoreFailure>;
}

fn lock<T>(m: &Mutex<T>) -> Result<MutexGuard<'_, T>, StoreFailure> {
    m.lock()
        .map_err(|_| StoreFailure("in-memory store lock poisoned by a panicked thread".into()))
}

/// In-memory [`RevocationStore`].
#[derive(Debug, Default)]
pub struct MemoryRevocations {
    jtis: Mutex<HashMap<String, i64>>,
    families: Mutex<HashMap<String, i64>>,
}

impl MemoryRevocations {
    pub fn new() -> Self {
        Self::default()
    }
}

fn revoke_until(
    map: &Mutex<HashMap<String, i64>>,
    id: &str,
    until: i64,
) -> Result<(), StoreFailure> {
    let mut map = lock(map)?;
    // Revoking twice must never shorten an existing revocation.
    let entry = map.entry(id.to_owned()).or_insert(until);
    *entry = (*entry).max(until);
    Ok(())
}

impl RevocationStore for MemoryRevocations {
    fn revoke_jti(&self, jti: &str, until: i64) -> Result<(), StoreFailure> {
        revoke_until(&self.jtis, jti, until)
    }

    fn is_jti_revoked(&self, jti: &str) -> Result<bool, StoreFailure> {
        Ok(lock(&self.jtis)?.contains_key(jti))
    }

    fn revoke_family(&self, family_id: &str, until: i64) -> Result<(), StoreFailure> {
        revoke_until(&self.families, family_id, until)
    }

    fn is_family_revoked(&self, family_id: &str) -> Result<bool, StoreFailure> {
        Ok(lock(&self.families)?.contains_key(family_id))
    }

    fn purge_expired(&self, now: i64) -> Result<usize, StoreFailure> {
        let mut purged = 0;
        for map in [&self.jtis, &self.families] {
            let mut map = lock(map)?;
            let before = map.len();
            map.retain(|_, until| *until > now);
            purged += before - map.len();
        }
        Ok(purged)
    }
}

/// In-memory [`RefreshStore`].
#[derive(Debug, Default)]
pub struct MemoryRefreshStore {
    records: Mutex<HashMap<String, RefreshRecord>>,
}

impl MemoryRefreshStore {
    pub fn new() -> Self {
        Self::default()
    }
}

impl RefreshStore for MemoryRefreshStore {
    fn insert(&self, rec: &RefreshRecord) -> Result<(), StoreFailure> {
        let mut records = lock(&self.records)?;
        if records.contains_key(&rec.token_hash) {
            return Err(StoreFailure("refresh token hash already stored".into()));
        }
        records.insert(rec.token_hash.clone(), rec.clone());
        Ok(())
    }

    fn find(&self, token_hash: &str) -> Result<Option<RefreshRecord>, StoreFailure> {
        Ok(lock(&self.records)?.get(token_hash).cloned())
    }

    fn mark_used(&self, token_hash: &str, at: i64) -> Result<bool, StoreFailure> {
        let mut records = lock(&self.records)?;
        match records.get_mut(token_hash) {
            Some(rec) if rec.used_at.is_none() => {
                rec.used_at = Some(at);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn revoke_family(&self, family_id: &str) -> Result<usize, StoreFailure> {
        let mut records = lock(&self.records)?;
        let mut changed = 0;
        for rec in records.values_mut() {
            if rec.family_id == family_id && !rec.revoked {
                rec.revoked = true;
                changed += 1;
            }
        }
        Ok(changed)
    }

    fn purge_expired(&self, now: i64) -> Result<usize, StoreFailure> {
        let mut records = lock(&self.records)?;
        let before = records.len();
        records.retain(|_, rec| rec.expires_at > now);
        Ok(before - records.len())
    }
}
