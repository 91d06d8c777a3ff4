//! Canonical row encoding and the two MACs of the hash chain.
//!
//! `content_mac = HMAC(k, "tw-audit-v1" ‖ fields)` binds what a row says; it is computed
//! by the submitting thread, off the writer's critical path.
//! `hash = HMAC(k, prev_hash ‖ id ‖ content_mac)` binds the row into the sequence; the
//! writer computes it (cheap: 72 bytes). Every field is length-prefixed and `None` is
//! distinct from `Some("")`, so no two different rows share an encoding.

use aws_lc_rs::hmac;

use crate::NewEvent;

pub(crate) const GENESIS: [u8; 32] = [0u8; 32];
pub(crate) type Mac = [u8; 32];

/// The fields of a row that the content MAC covers, as stored.
pub(crate) struct RowFields<'a> {
    pub time_us: i64,
    pub kind: &'a str,
    pub outcome: &'a str,
    pub reason: Option<&'a str>,
    pub subject: Option<&'a str>,
    pub username: Option<&'a str>,
    pub client_ip: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    pub method: Option<&'a str>,
    pub path: Option<&'a str>,
    pub jti: Option<&'a str>,
    pub kid: Option<&'a str>,
    pub alg: Option<&'a str>,
    pub token_fp: Option<&'a str>,
    pub source: &'a str,
    pub detail: &'a str,
}

impl<'a> RowFields<'a> {
    pub fn of(ev: &'a NewEvent, detail: &'a str) -> Self {
        RowFields {
            time_us: ev.time_us,
            kind: &ev.kind,
            outcome: ev.outcome.as_str(),
            reason: ev.reason.as_deref(),
            subject: ev.subject.as_deref(),
            username: ev.username.as_deref(),
            client_ip: ev.client_ip.as_deref(),
            user_agent: ev.user_agent.as_deref(),
            method: ev.method.as_deref(),
            path: ev.path.as_deref(),
            jti: ev.jti.as_deref(),
            kid: ev.kid.as_deref(),
            alg: ev.alg.as_deref(),
            token_fp: ev.token_fp.as_deref(),
            source: &ev.source,
            detail,
        }
    }

    pub fn content_mac(&self, key: &hmac::Key) -> Mac {
        thread_local! {
            // One HMAC update over the whole encoding costs far less than one per
            // field through the FFI; the buffer is reused by every event of a thread.
            static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        BUF.with(|buf| {
            let mut b = buf.borrow_mut();
            b.clear();
            self.encode(&mut b);
            let mac = hmac::sign(key, &b);
            if b.capacity() > 64 * 1024 {
                // Do not keep a huge event's buffer alive for the thread's lifetime.
                *b = Vec::new();
            }
            to_mac(mac)
        })
    }

    /// The canonical encoding: a version tag, the time, then every field
    /// length-prefixed, with `None` distinct from `Some("")`.
    fn encode(&self, b: &mut Vec<u8>) {
        let s = |b: &mut Vec<u8>, v: &str| {
            b.push(1);
            b.extend_from_slice(&(v.len() as u64).to_be_bytes());
            b.extend_from_slice(v.as_bytes());
        };
        let o = |b: &mut Vec<u8>, v: Option<&str>| match v {
            Some(v) => s(b, v),
            None => b.push(0),
        };
        b.extend_from_slice(b"tw-audit-v1");
        b.extend_from_slice(&self.time_us.to_be_bytes());
        s(b, self.kind);
        s(b, self.outcome);
        for v in [
            self.reason,
            self.subject,
            self.username,
            self.client_ip,
            self.user_agent,
            self.method,
            self.path,
            self.jti,
            self.kid,
            self.alg,
            self.token_fp,
        ] {
            o(b, v);
        }
        s(b, self.source);
        s(b, self.detail);
    }
}

pub(crate) fn link(key: &hmac::Key, prev: &Mac, id: i64, content_mac: &Mac) -> Mac {
    // One HMAC call over the concatenation (the same bytes as one update per part).
    let mut msg = [0u8; 72];
    msg[..32].copy_from_slice(prev);
    msg[32..40].copy_from_slice(&id.to_be_bytes());
    msg[40..].copy_from_slice(content_mac);
    to_mac(hmac::sign(key, &msg))
}

fn to_mac(tag: hmac::Tag) -> Mac {
    let mut m = [0u8; 32];
    m.copy_from_slice(tag.as_ref());
    m
}

/// Constant-time compare, so verify timings say nothing about the key.
pub(crate) fn mac_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub(crate) fn to_array(v: &[u8]) -> Option<Mac> {
    <[u8; 32]>::try_from(v).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows written by earlier versions must keep verifying: the encoding is the one
    /// they were MACed with, field by field.
    #[test]
    fn content_mac_is_the_field_by_field_encoding() {
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"k");
        let ev = NewEvent::new("auth.login.failure", crate::Outcome::Failure)
            .with_time_us(1_700_000_000_123_456)
            .with_username("alice")
            .with_client_ip("10.0.0.1")
            .with_reason("");
        let fields = RowFields::of(&ev, "null");
        let mut c = hmac::Context::with_key(&key);
        c.update(b"tw-audit-v1");
        c.update(&ev.time_us.to_be_bytes());
        let s = |c: &mut hmac::Context, v: &str| {
            c.update(&[1]);
            c.update(&(v.len() as u64).to_be_bytes());
            c.update(v.as_bytes());
        };
        s(&mut c, "auth.login.failure");
        s(&mut c, "failure");
        s(&mut c, ""); // reason: Some("")
        c.update(&[0]); // subject
        s(&mut c, "alice");
        s(&mut c, "10.0.0.1");
        for _ in 0..7 {
            c.update(&[0]); // user_agent .. token_fp
        }
        s(&mut c, "tokenwatch");
        s(&mut c, "null");
        assert_eq!(fields.content_mac(&key), to_mac(c.sign()));
    }

    /// Chains written by earlier versions must keep verifying: a link is the HMAC of
    /// the previous hash, the id (big-endian) and the content MAC, in that order.
    #[test]
    fn link_is_prev_then_id_then_content_mac() {
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"k");
        let (prev, content) = ([7u8; 32], [9u8; 32]);
        let mut c = hmac::Context::with_key(&key);
        c.update(&prev);
        c.update(&42i64.to_be_bytes());
        c.update(&content);
        assert_eq!(link(&key, &prev, 42, &content), to_mac(c.sign()));
    }
}
