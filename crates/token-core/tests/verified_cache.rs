//! A token presented again is not re-verified cryptographically, but everything that
//! can change between two presentations still is: the clock, revocation, the key ring.

mod common;

use common::*;
use token_core::*;

/// A token for alice issued now, and now.
fn issued_now(fx: &Fixture) -> (IssuedToken, i64) {
    let now = unix_now();
    let t = fx
        .svc
        .issue_access_at(&AccessRequest::new("alice"), now)
        .unwrap();
    (t, now)
}

#[test]
fn a_revoked_token_is_refused_on_its_next_use_even_though_it_verified_before() {
    let fx = fixture();
    let t = fx.svc.issue_access(&AccessRequest::new("alice")).unwrap();
    let first = fx.svc.verify(t.token.expose()).unwrap();
    assert_eq!(
        fx.svc.verify(t.token.expose()).unwrap().claims,
        first.claims
    );
    fx.svc
        .revoke_access(&first.claims.jti, first.claims.exp)
        .unwrap();
    let r = fx.svc.verify(t.token.expose()).unwrap_err();
    assert_eq!(r.reason, Reason::Revoked);
    // The refusal still names the token for the audit trail.
    assert_eq!(r.jti.as_deref(), Some(first.claims.jti.as_str()));
    assert_eq!(r.kid.as_deref(), Some(t.kid.as_str()));
    assert_eq!(r.fingerprint, first.fingerprint);
}

#[test]
fn a_token_that_verified_before_expires_on_time() {
    let fx = fixture();
    let (t, now) = issued_now(&fx);
    let v = fx.svc.verify_at(t.token.expose(), now).unwrap();
    let leeway = fx.svc.config().leeway.as_secs() as i64;
    assert!(fx
        .svc
        .verify_at(t.token.expose(), v.claims.exp + leeway - 1)
        .is_ok());
    let r = fx
        .svc
        .verify_at(t.token.expose(), v.claims.exp + leeway)
        .unwrap_err();
    assert_eq!(r.reason, Reason::Expired);
    // Nor is a not-yet-valid presentation accepted from the cache.
    let r = fx.svc.verify_at(t.token.expose(), now - 3600).unwrap_err();
    assert_eq!(r.reason, Reason::IssuedInFuture);
}

#[test]
fn a_pruned_key_stops_its_cached_tokens_at_once() {
    let fx = fixture();
    let (t, now) = issued_now(&fx);
    assert!(fx.svc.verify(t.token.expose()).is_ok());
    // The key that signed it is retired, then pruned once its tokens could have expired.
    fx.svc.rotate_keys(Alg::ES256).unwrap();
    let pruned = fx.svc.prune_retired_keys(now + 10 * 24 * 3600).unwrap();
    assert!(pruned.contains(&t.kid), "{pruned:?} should hold {}", t.kid);
    let r = fx.svc.verify(t.token.expose()).unwrap_err();
    assert_eq!(r.reason, Reason::UnknownKid);
}

#[test]
fn a_token_differing_by_one_signature_byte_is_checked_in_full() {
    let fx = fixture();
    let t = fx.svc.issue_access(&AccessRequest::new("alice")).unwrap();
    let good = t.token.expose().to_owned();
    assert!(fx.svc.verify(&good).is_ok());
    // Flip one character of the signature (keeping it canonical base64url).
    let mut bytes = good.into_bytes();
    let i = bytes.len() - 2;
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(bytes).unwrap();
    let r = fx.svc.verify(&forged).unwrap_err();
    assert_eq!(r.reason, Reason::BadSignature);
}
