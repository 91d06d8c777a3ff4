//! Tokens already verified once, so that a client presenting the same access token on
//! every request pays for its signature check once.
//!
//! The key is the SHA-256 of the whole token (header, payload and signature): an entry
//! can only be hit by the byte-identical token that passed every check with the key
//! ring as it was. What it saves is what cannot change for those bytes: parsing, the
//! signature, and the claim shape, issuer and audience. What can change is checked
//! again on every hit by the caller: the clock (`exp`, `nbf`, `iat`) and revocation (by
//! `jti` and by session). Any change to the key ring empties the cache, so removing a
//! key (say, after a compromise) takes effect on the next request; a verification that
//! started before the change cannot add its result after it (a generation number is
//! checked under the shard lock). Refusals are never cached: garbage never enters.
//!
//! Bounded: 16 shards, each two generations of [`PER_GENERATION`] entries. When the
//! current generation fills, the previous one is dropped and the current one becomes
//! previous; a hit in the previous generation moves the entry back to the current one.
//! That is an LRU approximation with O(1) work and no per-entry bookkeeping.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::alg::Alg;
use crate::claims::Claims;

const SHARDS: usize = 16;
/// Entries per shard generation: at most `16 × 2 × 1024 = 32 768` tokens are kept.
pub(crate) const PER_GENERATION: usize = 1024;

pub(crate) type Digest = [u8; 32];

/// What a successful verification established about a token's bytes.
pub(crate) struct Verified {
    pub claims: Arc<Claims>,
    pub kid: String,
    pub alg: Alg,
    pub origin: crate::service::KeyOrigin,
}

#[derive(Default)]
struct Shard {
    current: HashMap<Digest, Arc<Verified>>,
    previous: HashMap<Digest, Arc<Verified>>,
}

impl Shard {
    fn insert(&mut self, d: Digest, v: Arc<Verified>) {
        if self.current.len() >= PER_GENERATION {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(d, v);
    }
}

pub(crate) struct VerifiedCache {
    shards: Vec<Mutex<Shard>>,
    /// Bumped by every key-ring change.
    generation: AtomicU64,
}

impl Default for VerifiedCache {
    fn default() -> Self {
        VerifiedCache {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            generation: AtomicU64::new(0),
        }
    }
}

impl VerifiedCache {
    fn shard(&self, d: &Digest) -> std::sync::MutexGuard<'_, Shard> {
        // A panic cannot leave a shard half-updated (single map operations), so a
        // poisoned lock is still usable.
        self.shards[usize::from(d[0]) % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, d: &Digest) -> Option<Arc<Verified>> {
        let mut s = self.shard(d);
        if let Some(v) = s.current.get(d) {
            return Some(v.clone());
        }
        let v = s.previous.remove(d)?;
        s.insert(*d, v.clone());
        Some(v)
    }

    /// The generation to pass to [`VerifiedCache::insert`]; read it while holding the
    /// key ring the verification uses.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Keeps `v` unless the key ring changed since `generation` was read.
    pub fn insert(&self, d: Digest, v: Verified, generation: u64) {
        let mut s = self.shard(&d);
        if self.generation() == generation {
            s.insert(d, Arc::new(v));
        }
    }

    /// Forgets everything; call with the key ring's write lock held, before changing it.
    pub fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        for s in &self.shards {
            let mut s = s.lock().unwrap_or_else(|p| p.into_inner());
            s.current.clear();
            s.previous.clear();
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let s = s.lock().unwrap_or_else(|p| p.into_inner());
                s.current.len() + s.previous.len()
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Verified {
        Verified {
            claims: Arc::new(Claims {
                iss: "i".into(),
                sub: "s".into(),
                aud: "a".into(),
                exp: 2,
                iat: 1,
                nbf: 1,
                jti: "j".into(),
                username: None,
                roles: Vec::new(),
                client_id: None,
                scope: None,
                sid: None,
                extra: Default::default(),
            }),
            kid: "k".into(),
            alg: Alg::HS256,
            origin: crate::service::KeyOrigin::Own,
        }
    }

    fn digest(i: u32) -> Digest {
        let mut d = [0u8; 32];
        d[..4].copy_from_slice(&i.to_le_bytes());
        d
    }

    #[test]
    fn stays_bounded_and_keeps_recent_entries() {
        let c = VerifiedCache::default();
        for i in 0..200_000 {
            c.insert(digest(i), entry(), c.generation());
        }
        assert!(c.len() <= SHARDS * 2 * PER_GENERATION, "{}", c.len());
        assert!(c.get(&digest(199_999)).is_some());
        assert!(c.get(&digest(0)).is_none());
    }

    #[test]
    fn a_verification_begun_before_a_key_change_is_not_kept() {
        let c = VerifiedCache::default();
        let g = c.generation();
        c.insert(digest(1), entry(), g);
        c.invalidate();
        assert!(c.get(&digest(1)).is_none());
        c.insert(digest(2), entry(), g);
        assert!(
            c.get(&digest(2)).is_none(),
            "stale generation must not be cached"
        );
        c.insert(digest(3), entry(), c.generation());
        assert!(c.get(&digest(3)).is_some());
    }
}
