//! Building blocks for detectors: keyed hashing, a hard-capped map, short
//! event rings, small distinct-value sets and per-incident alert state.
//!
//! Everything here is bounded by construction, because a detector's input is
//! attacker-controlled: a flood of random client IPs, usernames or token ids
//! must cost a fixed amount of memory, not an amount proportional to the
//! flood.
//!
//! ```
//! use detector_sdk::kit::{BoundedMap, KeyHasher};
//!
//! let hasher = KeyHasher::new();
//! let mut failures: BoundedMap<u32> = BoundedMap::new(2);
//! for ip in ["10.0.0.1", "10.0.0.2", "10.0.0.1", "10.0.0.3"] {
//!     *failures.get_or_insert_with(hasher.key(ip), || 0) += 1;
//! }
//! // The cap holds: the least recently touched IP (10.0.0.2) made room.
//! assert_eq!(failures.len(), 2);
//! assert_eq!(failures.evictions(), 1);
//! assert_eq!(failures.get(hasher.key("10.0.0.1")), Some(&2));
//! ```

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};

use crate::{Alert, Alerts, EmitError, Severity};

/// Microseconds in one second.
pub const SECOND_US: i64 = 1_000_000;

/// A 64-bit key derived from one or more strings with a per-process random
/// SipHash key (std's `RandomState`).
///
/// Maps are keyed by this instead of by the strings themselves: no
/// allocation per new IP or username, and a fixed 8 bytes per key. Because
/// the hash key is secret and random, an attacker cannot choose inputs that
/// collide (neither to merge two users' state nor to degrade the map), and
/// accidental collisions are ~2^-64 per pair.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(pub u64);

/// Produces [`Key`]s; one per detector instance.
#[derive(Clone, Debug, Default)]
pub struct KeyHasher {
    state: std::collections::hash_map::RandomState,
}

impl KeyHasher {
    /// A hasher with a fresh random key.
    pub fn new() -> KeyHasher {
        KeyHasher::default()
    }

    /// The key of one string.
    pub fn key(&self, s: &str) -> Key {
        let mut h = self.state.build_hasher();
        h.write(s.as_bytes());
        Key(h.finish())
    }

    /// The key of a pair of strings; `("ab", "c")` and `("a", "bc")` differ.
    pub fn key2(&self, a: &str, b: &str) -> Key {
        let mut h = self.state.build_hasher();
        h.write_usize(a.len());
        h.write(a.as_bytes());
        h.write(b.as_bytes());
        Key(h.finish())
    }

    /// The key of raw bytes (e.g. the octets of an IP network).
    pub fn key_bytes(&self, bytes: &[u8]) -> Key {
        let mut h = self.state.build_hasher();
        h.write(bytes);
        Key(h.finish())
    }

    /// The key of whatever `feed` writes into the hasher; for keys built
    /// from a transformed input without allocating a copy of it.
    pub fn key_with(&self, feed: impl FnOnce(&mut dyn Hasher)) -> Key {
        let mut h = self.state.build_hasher();
        feed(&mut h);
        Key(h.finish())
    }
}

/// The last `N` event ids of something, inline (no heap allocation), for
/// evidence on state that exists per token or per user.
#[derive(Clone, Copy, Debug)]
pub struct RecentIds<const N: usize> {
    ids: [i64; N],
    next: usize,
    filled: bool,
}

impl<const N: usize> Default for RecentIds<N> {
    fn default() -> Self {
        RecentIds {
            ids: [0; N],
            next: 0,
            filled: false,
        }
    }
}

impl<const N: usize> RecentIds<N> {
    /// Record an id, overwriting the oldest once `N` are held.
    pub fn push(&mut self, id: i64) {
        if N == 0 {
            return;
        }
        self.ids[self.next] = id;
        self.next += 1;
        if self.next == N {
            self.next = 0;
            self.filled = true;
        }
    }

    /// The ids, oldest first.
    pub fn to_vec(&self) -> Vec<i64> {
        if self.filled {
            let mut v = self.ids[self.next..].to_vec();
            v.extend_from_slice(&self.ids[..self.next]);
            v
        } else {
            self.ids[..self.next].to_vec()
        }
    }
}

/// Hashes a [`Key`] by passing its already-random bits through.
#[derive(Default, Clone, Copy)]
pub struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only reached if something other than a Key is hashed; fold the
        // bytes in so the result is still usable.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type KeyMap<V> = HashMap<Key, V, BuildHasherDefault<PassThrough>>;

struct Slot<V> {
    value: V,
    touched: u64,
}

/// A map from [`Key`] to `V` that never holds more than `cap` entries.
///
/// When full, inserting evicts the least recently touched sixteenth of the
/// entries in one pass, so eviction costs O(1) amortised per insert and no
/// linked list is kept. An attacker flooding new keys therefore pushes out
/// *idle* state first; a key that keeps producing events stays hot.
pub struct BoundedMap<V> {
    map: KeyMap<Slot<V>>,
    cap: usize,
    clock: u64,
    evictions: u64,
}

impl<V> BoundedMap<V> {
    /// An empty map holding at most `cap` entries (at least 1).
    pub fn new(cap: usize) -> BoundedMap<V> {
        BoundedMap {
            map: KeyMap::default(),
            cap: cap.max(1),
            clock: 0,
            evictions: 0,
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The hard cap.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Entries evicted so far to respect the cap.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Look up without touching.
    pub fn get(&self, key: Key) -> Option<&V> {
        self.map.get(&key).map(|s| &s.value)
    }

    /// Look up and mark as recently used.
    pub fn get_mut(&mut self, key: Key) -> Option<&mut V> {
        self.clock += 1;
        let clock = self.clock;
        self.map.get_mut(&key).map(|s| {
            s.touched = clock;
            &mut s.value
        })
    }

    /// The entry for `key`, created with `make` (evicting if full).
    pub fn get_or_insert_with(&mut self, key: Key, make: impl FnOnce() -> V) -> &mut V {
        self.clock += 1;
        if !self.map.contains_key(&key) && self.map.len() >= self.cap {
            self.evict();
        }
        let clock = self.clock;
        let slot = self.map.entry(key).or_insert_with(|| Slot {
            value: make(),
            touched: clock,
        });
        slot.touched = clock;
        &mut slot.value
    }

    /// Remove an entry.
    pub fn remove(&mut self, key: Key) -> Option<V> {
        self.map.remove(&key).map(|s| s.value)
    }

    /// Keep only the entries for which `keep` returns true.
    pub fn retain(&mut self, mut keep: impl FnMut(Key, &mut V) -> bool) {
        self.map.retain(|k, s| keep(*k, &mut s.value));
    }

    /// Like [`retain`](Self::retain), for a `keep` that can fail (e.g. by
    /// emitting an alert): every entry is visited; an entry whose `keep`
    /// fails is kept, and the first error is returned.
    pub fn try_retain<E>(
        &mut self,
        mut keep: impl FnMut(Key, &mut V) -> Result<bool, E>,
    ) -> Result<(), E> {
        let mut first = None;
        self.map.retain(|k, s| match keep(*k, &mut s.value) {
            Ok(keep) => keep,
            Err(e) => {
                first.get_or_insert(e);
                true
            }
        });
        first.map_or(Ok(()), Err)
    }

    /// Iterate over the entries.
    pub fn iter(&self) -> impl Iterator<Item = (Key, &V)> {
        self.map.iter().map(|(k, s)| (*k, &s.value))
    }

    fn evict(&mut self) {
        let n = self.map.len();
        let drop_count = (n / 16).max(1);
        let mut stamps: Vec<u64> = self.map.values().map(|s| s.touched).collect();
        let (_, cutoff, _) = stamps.select_nth_unstable(drop_count - 1);
        let cutoff = *cutoff;
        let before = self.map.len();
        // Stamps are unique (one clock tick per access), so this drops
        // exactly `drop_count` entries.
        self.map.retain(|_, s| s.touched > cutoff);
        self.evictions += (before - self.map.len()) as u64;
    }
}

/// The most recent events of one key: `(time_us, event id, tag)`, oldest
/// first, at most `cap` of them. Used both to count events within a sliding
/// window and as the alert's evidence. The optional tag (e.g. the [`Key`] of
/// the client IP or username) lets a detector forget some of the events
/// again ([`EventRing::remove_tag`]), e.g. failures that a later successful
/// login from the same IP showed to be typos.
#[derive(Clone, Debug, Default)]
pub struct EventRing {
    events: VecDeque<(i64, i64, u64)>,
}

impl EventRing {
    /// An empty ring.
    pub fn new() -> EventRing {
        EventRing::default()
    }

    /// Record an event, dropping the oldest beyond `cap`.
    pub fn push(&mut self, time_us: i64, id: i64, cap: usize) {
        self.push_tagged(time_us, id, Key(0), cap);
    }

    /// Record an event with a tag, dropping the oldest beyond `cap`.
    pub fn push_tagged(&mut self, time_us: i64, id: i64, tag: Key, cap: usize) {
        if self.events.len() >= cap.max(1) {
            self.events.pop_front();
        }
        self.events.push_back((time_us, id, tag.0));
    }

    /// Forget the events recorded with `tag`; how many were dropped.
    pub fn remove_tag(&mut self, tag: Key) -> usize {
        let before = self.events.len();
        self.events.retain(|e| e.2 != tag.0);
        before - self.events.len()
    }

    /// Forget events older than `since_us`.
    pub fn prune(&mut self, since_us: i64) {
        while self.events.front().is_some_and(|e| e.0 < since_us) {
            self.events.pop_front();
        }
    }

    /// Forget every event.
    pub fn clear(&mut self) {
        self.events.clear();
    }

    /// Events held.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Time of the newest event.
    pub fn newest(&self) -> Option<i64> {
        self.events.back().map(|e| e.0)
    }

    /// Event ids, oldest first.
    pub fn ids(&self) -> Vec<i64> {
        self.events.iter().map(|e| e.1).collect()
    }
}

/// A small set of distinct [`Key`]s seen within a window, each with the time
/// it was last seen. Linear scans: it is meant for a few dozen values.
#[derive(Clone, Debug, Default)]
pub struct DistinctSet {
    seen: Vec<(Key, i64)>,
}

impl DistinctSet {
    /// An empty set.
    pub fn new() -> DistinctSet {
        DistinctSet::default()
    }

    /// Record `key` at `time_us`; true when it was not in the set. When the
    /// set holds `cap` values the oldest one makes room, so the set stays
    /// bounded and its length saturates at `cap`.
    pub fn insert(&mut self, key: Key, time_us: i64, cap: usize) -> bool {
        if let Some(slot) = self.seen.iter_mut().find(|(k, _)| *k == key) {
            slot.1 = slot.1.max(time_us);
            return false;
        }
        if self.seen.len() >= cap.max(1) {
            if let Some(oldest) = self
                .seen
                .iter()
                .enumerate()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(i, _)| i)
            {
                self.seen.swap_remove(oldest);
            }
        }
        self.seen.push((key, time_us));
        true
    }

    /// Forget `key`; true when it was in the set.
    pub fn remove(&mut self, key: Key) -> bool {
        let before = self.seen.len();
        self.seen.retain(|(k, _)| *k != key);
        before != self.seen.len()
    }

    /// True when `key` is in the set.
    pub fn contains(&self, key: Key) -> bool {
        self.seen.iter().any(|(k, _)| *k == key)
    }

    /// Forget values last seen before `since_us`.
    pub fn prune(&mut self, since_us: i64) {
        self.seen.retain(|(_, t)| *t >= since_us);
    }

    /// Distinct values held.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

/// Alert state of one incident: raise it once, re-raise only when it gets
/// worse, and consider it over after a quiet period.
///
/// The host stores alerts by `(detector, group_key)`: a second emit with the
/// same key updates the open alert. This keeps that to one emit per
/// incident plus one per escalation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Incident {
    raised: Option<Severity>,
    last_us: i64,
}

impl Incident {
    /// True when an alert of `severity` should be emitted now: no alert was
    /// raised for this incident yet, or this one is more severe. Records it.
    pub fn escalate(&mut self, severity: Severity, now_us: i64) -> bool {
        self.last_us = self.last_us.max(now_us);
        if self.raised.is_some_and(|s| s >= severity) {
            return false;
        }
        self.raised = Some(severity);
        true
    }

    /// Note activity that belongs to the incident (keeps it open).
    pub fn touch(&mut self, now_us: i64) {
        self.last_us = self.last_us.max(now_us);
    }

    /// True when an alert was raised and the incident has not ended.
    pub fn is_open(&self) -> bool {
        self.raised.is_some()
    }

    /// Severity raised so far.
    pub fn raised(&self) -> Option<Severity> {
        self.raised
    }

    /// End the incident when nothing happened for `quiet_us`; true if it ended.
    pub fn close_if_quiet(&mut self, now_us: i64, quiet_us: i64) -> bool {
        if self.raised.is_some() && now_us.saturating_sub(self.last_us) >= quiet_us {
            self.raised = None;
            return true;
        }
        false
    }
}

/// Evidence ids queued per open incident between two updates; more are
/// counted but not listed (the store keeps at most 1000 per alert anyway).
pub const MAX_PENDING_EVIDENCE: usize = 64;

/// What was raised for an open incident, kept to send updates.
#[derive(Clone, Debug)]
struct Raised {
    rule: Box<str>,
    severity: Severity,
    subject: Option<Box<str>>,
    client_ip: Option<Box<str>>,
    group_key: Box<str>,
    summary: Box<str>,
    pending: Vec<i64>,
    /// Events of the incident since the alert was first raised.
    more: u64,
    /// Events since the last emit whose ids did not fit in `pending`.
    unlisted: u64,
    reported_us: i64,
}

/// One incident's alert, raised once and then *updated*, never repeated.
///
/// The host stores alerts by `(detector, group_key)`: emitting again with
/// the same group key while the analyst has not closed the alert adds the
/// new evidence ids to it, bumps its count and keeps the highest severity.
/// This type drives that protocol for one incident:
///
/// - [`raise`](Self::raise) emits the alert the first time and again only
///   when the severity rises (an escalation);
/// - [`add_evidence`](Self::add_evidence) queues the id of each later event
///   of the incident (at most [`MAX_PENDING_EVIDENCE`] between updates);
/// - [`flush_due`](Self::flush_due) (on events and on `tick`) emits an
///   update with the queued ids at most once per `every_us`;
/// - [`close_if_quiet`](Self::close_if_quiet) ends the incident after a
///   quiet period, emitting a last update with whatever is still queued.
///
/// Nothing is allocated until an alert is raised, so idle state costs the
/// size of an [`Incident`] plus one pointer.
#[derive(Clone, Debug, Default)]
pub struct IncidentAlert {
    incident: Incident,
    raised: Option<Box<Raised>>,
}

impl IncidentAlert {
    /// True when an alert was raised and the incident has not ended.
    pub fn is_open(&self) -> bool {
        self.raised.is_some()
    }

    /// Severity raised so far in this incident.
    pub fn raised(&self) -> Option<Severity> {
        self.incident.raised()
    }

    /// Note activity that keeps the incident open, without evidence.
    pub fn touch(&mut self, now_us: i64) {
        self.incident.touch(now_us);
    }

    /// Raise `alert` for this incident: emitted when nothing was raised yet
    /// or when `alert.severity` is higher than what was raised (ids queued by
    /// [`add_evidence`](Self::add_evidence) are added to its evidence).
    /// Returns whether it was emitted.
    pub fn raise(
        &mut self,
        alert: &Alert<'_>,
        now_us: i64,
        out: &mut Alerts<'_>,
    ) -> Result<bool, EmitError> {
        if !self.incident.escalate(alert.severity, now_us) {
            return Ok(false);
        }
        let (pending, more) = match self.raised.take() {
            Some(r) => (r.pending, r.more),
            None => (Vec::new(), 0),
        };
        let mut evidence = alert.evidence.to_vec();
        for id in pending {
            if !evidence.contains(&id) {
                evidence.push(id);
            }
        }
        out.emit(&Alert {
            evidence: &evidence,
            ..*alert
        })?;
        self.raised = Some(Box::new(Raised {
            rule: alert.rule.into(),
            severity: alert.severity,
            subject: alert.subject.map(Into::into),
            client_ip: alert.client_ip.map(Into::into),
            group_key: alert.group_key.into(),
            summary: alert.summary.into(),
            pending: Vec::new(),
            more,
            unlisted: 0,
            reported_us: now_us,
        }));
        Ok(true)
    }

    /// An event that belongs to the open incident: keeps it open and queues
    /// `id` for the next update. Returns false (and does nothing) when no
    /// incident is open.
    pub fn add_evidence(&mut self, id: i64, now_us: i64) -> bool {
        let Some(r) = self.raised.as_mut() else {
            return false;
        };
        self.incident.touch(now_us);
        r.more += 1;
        if r.pending.len() < MAX_PENDING_EVIDENCE {
            r.pending.push(id);
        } else {
            r.unlisted += 1;
        }
        true
    }

    /// Emit an update carrying the queued evidence when some is queued and
    /// the last emit is at least `every_us` old. Returns whether it emitted.
    pub fn flush_due(
        &mut self,
        now_us: i64,
        every_us: i64,
        out: &mut Alerts<'_>,
    ) -> Result<bool, EmitError> {
        match &self.raised {
            Some(r)
                if !(r.pending.is_empty() && r.unlisted == 0)
                    && now_us.saturating_sub(r.reported_us) >= every_us =>
            {
                self.emit_update(now_us, false, out).map(|()| true)
            }
            _ => Ok(false),
        }
    }

    /// End the incident when nothing happened for `quiet_us`, emitting a
    /// last update if evidence is still queued. True if it ended (the next
    /// [`raise`](Self::raise) starts a new incident).
    pub fn close_if_quiet(
        &mut self,
        now_us: i64,
        quiet_us: i64,
        out: &mut Alerts<'_>,
    ) -> Result<bool, EmitError> {
        if !self.incident.close_if_quiet(now_us, quiet_us) {
            return Ok(false);
        }
        let result = match &self.raised {
            Some(r) if !(r.pending.is_empty() && r.unlisted == 0) => {
                self.emit_update(now_us, true, out)
            }
            _ => Ok(()),
        };
        self.raised = None;
        result.map(|()| true)
    }

    fn emit_update(
        &mut self,
        now_us: i64,
        ended: bool,
        out: &mut Alerts<'_>,
    ) -> Result<(), EmitError> {
        let Some(r) = self.raised.as_mut() else {
            return Ok(());
        };
        let state = if ended { "ended" } else { "ongoing" };
        let summary = format!(
            "{} [{state}: {} more event{} since raised]",
            r.summary,
            r.more,
            if r.more == 1 { "" } else { "s" }
        );
        let evidence = std::mem::take(&mut r.pending);
        r.unlisted = 0;
        r.reported_us = now_us;
        out.emit(&Alert {
            rule: &r.rule,
            severity: r.severity,
            subject: r.subject.as_deref(),
            client_ip: r.client_ip.as_deref(),
            summary: &summary,
            group_key: &r.group_key,
            evidence: &evidence,
        })
    }
}

/// A refused detector config; `Display` says which detector, which field
/// and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    detector: &'static str,
    message: String,
}

impl ConfigError {
    /// A config error of `detector`.
    pub fn new(detector: &'static str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            detector,
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} config: {}", self.detector, self.message)
    }
}

impl std::error::Error for ConfigError {}

/// `low | medium | high | critical`, as written in configs.
pub fn parse_severity(
    detector: &'static str,
    field: &str,
    value: &str,
) -> Result<Severity, ConfigError> {
    match value {
        "low" => Ok(Severity::Low),
        "medium" => Ok(Severity::Medium),
        "high" => Ok(Severity::High),
        "critical" => Ok(Severity::Critical),
        other => Err(ConfigError::new(
            detector,
            format!("{field} {other:?} is not one of low, medium, high, critical"),
        )),
    }
}

/// A duration in seconds from a config, as microseconds: 1 s to 10 years.
pub fn secs_to_us(detector: &'static str, field: &str, secs: u64) -> Result<i64, ConfigError> {
    const MAX_SECS: u64 = 10 * 366 * 24 * 3600;
    if secs == 0 || secs > MAX_SECS {
        return Err(ConfigError::new(
            detector,
            format!("{field} must be between 1 and {MAX_SECS} seconds, got {secs}"),
        ));
    }
    // In range by the check above.
    Ok(secs as i64 * SECOND_US)
}

/// Check `value >= min` for a config field.
pub fn at_least(
    detector: &'static str,
    field: &str,
    value: u64,
    min: u64,
) -> Result<(), ConfigError> {
    if value < min {
        return Err(ConfigError::new(
            detector,
            format!("{field} must be at least {min}, got {value}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_map_never_exceeds_its_cap_and_keeps_hot_keys() {
        let h = KeyHasher::new();
        let mut m: BoundedMap<u32> = BoundedMap::new(64);
        let hot = h.key("attacker");
        for i in 0..10_000 {
            *m.get_or_insert_with(h.key(&format!("10.{i}")), || 0) += 1;
            *m.get_or_insert_with(hot, || 0) += 1;
            assert!(m.len() <= 64);
        }
        assert_eq!(m.get(hot), Some(&10_000), "a key in use is never evicted");
        assert!(m.evictions() >= 10_000 - 64);
    }

    #[test]
    fn recent_ids_keep_the_newest_in_order() {
        let mut r = RecentIds::<3>::default();
        r.push(1);
        r.push(2);
        assert_eq!(r.to_vec(), vec![1, 2]);
        r.push(3);
        r.push(4);
        assert_eq!(r.to_vec(), vec![2, 3, 4]);
    }

    #[test]
    fn key2_separates_the_parts() {
        let h = KeyHasher::new();
        assert_ne!(h.key2("ab", "c"), h.key2("a", "bc"));
        assert_eq!(h.key2("a", "bc"), h.key2("a", "bc"));
    }

    #[test]
    fn event_ring_counts_within_a_window() {
        let mut r = EventRing::new();
        for (t, id) in [(1, 10), (5, 11), (9, 12)] {
            r.push(t, id, 2);
        }
        assert_eq!(r.ids(), vec![11, 12]);
        r.prune(6);
        assert_eq!(r.ids(), vec![12]);
        assert_eq!(r.newest(), Some(9));
    }

    #[test]
    fn distinct_set_is_capped_and_prunes_by_time() {
        let mut s = DistinctSet::new();
        assert!(s.insert(Key(1), 10, 2));
        assert!(!s.insert(Key(1), 11, 2));
        assert!(s.insert(Key(2), 12, 2));
        assert!(s.insert(Key(3), 13, 2));
        assert_eq!(s.len(), 2);
        assert!(!s.contains(Key(1)), "the oldest value made room");
        s.prune(13);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn incident_raises_once_escalates_and_ends_after_quiet() {
        let mut i = Incident::default();
        assert!(i.escalate(Severity::Medium, 0));
        assert!(!i.escalate(Severity::Medium, 5));
        assert!(!i.escalate(Severity::Low, 6));
        assert!(i.escalate(Severity::High, 7));
        assert!(!i.close_if_quiet(10, 5));
        assert!(i.close_if_quiet(12, 5));
        assert!(
            i.escalate(Severity::Medium, 20),
            "a new incident raises again"
        );
    }

    #[test]
    fn incident_alert_raises_once_updates_with_evidence_and_ends() {
        use crate::testing::collect;
        let alert = |sev, ids: &'static [i64]| Alert {
            rule: "r",
            severity: sev,
            subject: Some("bob"),
            client_ip: None,
            summary: "s",
            group_key: "user:bob",
            evidence: ids,
        };
        let mut ia = IncidentAlert::default();
        assert!(!ia.add_evidence(1, 0), "nothing open yet");
        let (r, got) = collect(|out| ia.raise(&alert(Severity::High, &[1, 2]), 10, out));
        assert_eq!((r, got.len()), (Ok(true), 1));
        let (r, got) = collect(|out| ia.raise(&alert(Severity::High, &[3]), 11, out));
        assert_eq!(
            (r, got.len()),
            (Ok(false), 0),
            "the same severity is not repeated"
        );
        assert!(ia.add_evidence(3, 12));
        assert!(ia.add_evidence(4, 13));
        let (r, got) = collect(|out| ia.flush_due(14, 100, out));
        assert_eq!((r, got.len()), (Ok(false), 0), "not due yet");
        let (r, got) = collect(|out| ia.flush_due(110, 100, out));
        assert_eq!(r, Ok(true));
        assert_eq!(got[0].evidence, vec![3, 4]);
        assert_eq!(got[0].group_key, "user:bob");
        assert!(
            got[0].summary.contains("ongoing: 2 more events"),
            "{}",
            got[0].summary
        );
        assert!(ia.add_evidence(5, 120));
        let (r, got) = collect(|out| ia.raise(&alert(Severity::Critical, &[6]), 121, out));
        assert_eq!(r, Ok(true));
        assert_eq!(
            got[0].evidence,
            vec![6, 5],
            "an escalation carries the queued ids"
        );
        assert!(ia.add_evidence(7, 130));
        let (r, got) = collect(|out| ia.close_if_quiet(200, 100, out));
        assert_eq!((r, got.len()), (Ok(false), 0));
        let (r, got) = collect(|out| ia.close_if_quiet(230, 100, out));
        assert_eq!(r, Ok(true));
        assert_eq!(got[0].evidence, vec![7]);
        assert_eq!(got[0].severity, Severity::Critical);
        assert!(got[0].summary.contains("ended"), "{}", got[0].summary);
        assert!(!ia.is_open());
        let (r, got) = collect(|out| ia.raise(&alert(Severity::Medium, &[9]), 300, out));
        assert_eq!((r, got.len()), (Ok(true), 1), "a new incident raises again");
    }

    #[test]
    fn incident_alert_queues_a_bounded_number_of_ids() {
        use crate::testing::collect;
        let mut ia = IncidentAlert::default();
        let a = Alert {
            rule: "r",
            severity: Severity::Low,
            subject: None,
            client_ip: None,
            summary: "s",
            group_key: "k",
            evidence: &[],
        };
        let _ = collect(|out| ia.raise(&a, 0, out));
        for id in 0..10_000 {
            ia.add_evidence(id, 1);
        }
        let (_, got) = collect(|out| ia.flush_due(1, 0, out));
        assert_eq!(got[0].evidence.len(), MAX_PENDING_EVIDENCE);
        assert!(got[0].summary.contains("10000 more events"));
    }

    #[test]
    fn event_ring_forgets_by_tag_and_distinct_set_removes() {
        let mut r = EventRing::new();
        r.push_tagged(1, 10, Key(7), 8);
        r.push_tagged(2, 11, Key(8), 8);
        r.push_tagged(3, 12, Key(7), 8);
        assert_eq!(r.remove_tag(Key(7)), 2);
        assert_eq!(r.ids(), vec![11]);
        let mut s = DistinctSet::new();
        s.insert(Key(1), 1, 4);
        assert!(s.remove(Key(1)));
        assert!(!s.remove(Key(1)));
        assert!(s.is_empty());
    }

    #[test]
    fn config_helpers_name_the_field() {
        let e = secs_to_us("d", "window_secs", 0).unwrap_err();
        assert_eq!(
            e.to_string(),
            "d config: window_secs must be between 1 and 316224000 seconds, got 0"
        );
        assert!(parse_severity("d", "severity", "urgent")
            .unwrap_err()
            .to_string()
            .contains("\"urgent\" is not one of"));
        assert_eq!(secs_to_us("d", "w", 2).unwrap(), 2_000_000);
    }
}
