//! Refresh-token rotation, reuse detection and revocation (RFC 9700 §4.14.2, RFC 7009).

mod common;

use std::sync::{Arc, Barrier};

use common::*;
use token_core::*;

fn access_for(f: &Fixture, rotated_family: &str) -> String {
    let mut req = AccessRequest::new("alice");
    req.session_id = Some(rotated_family.to_owned());
    f.svc
        .issue_access(&req)
        .expect("issue")
        .token
        .expose()
        .to_owned()
}

#[test]
fn rotation_then_reuse_revokes_the_family_and_its_access_tokens() {
    let f = fixture();
    let first = f
        .svc
        .issue_refresh("alice", Some("alice"), Some("web"), Some("read"), None)
        .expect("issue");
    assert_eq!(first.token.expose().len(), 43, "256 bits, base64url");
    assert_eq!(first.fingerprint, fingerprint(first.token.expose()));
    // Stored hashed only: the store never sees the token value.
    let rec = f
        .refresh
        .find(&sha256_hex(first.token.expose()))
        .expect("find")
        .expect("stored");
    assert_eq!(rec.family_id, first.family_id);
    assert!(!format!("{rec:?}").contains(first.token.expose()));

    let access = access_for(&f, &first.family_id);
    let rotated = f
        .svc
        .rotate_refresh(first.token.expose(), Some("web"))
        .expect("rotate");
    assert_eq!(rotated.family_id, first.family_id);
    assert_eq!(rotated.refresh.family_id, first.family_id);
    assert_ne!(rotated.refresh.token.expose(), first.token.expose());
    assert_eq!(
        (
            rotated.subject.as_str(),
            rotated.username.as_deref(),
            rotated.scope.as_deref()
        ),
        ("alice", Some("alice"), Some("read"))
    );
    assert!(
        f.svc.verify(&access).is_ok(),
        "rotation alone does not end access tokens"
    );

    // The old token again: reuse. The family dies, including the new refresh token
    // and every access token carrying its sid.
    match f.svc.rotate_refresh(first.token.expose(), Some("web")) {
        Err(RefreshError::Reused { family_id, subject }) => {
            assert_eq!(
                (family_id.as_str(), subject.as_str()),
                (first.family_id.as_str(), "alice")
            );
        }
        other => panic!("expected Reused, got {other:?}"),
    }
    assert_eq!(
        f.svc.verify(&access).expect_err("family revoked").reason,
        Reason::Revoked
    );
    let e = f
        .svc
        .rotate_refresh(rotated.refresh.token.expose(), Some("web"))
        .expect_err("revoked");
    assert!(matches!(e, RefreshError::Revoked), "{e:?}");
    assert_eq!(e.as_str(), "revoked");
    // Tokens of other families are untouched.
    let other = f
        .svc
        .issue_refresh("bob", None, Some("web"), None, None)
        .expect("issue");
    assert!(f
        .svc
        .rotate_refresh(other.token.expose(), Some("web"))
        .is_ok());
}

#[test]
fn unknown_expired_and_wrong_client_tokens_are_refused() {
    let f = fixture();
    let e = f
        .svc
        .rotate_refresh("not-a-token", None)
        .expect_err("unknown");
    assert!(matches!(e, RefreshError::Unknown), "{e:?}");
    assert_eq!(e.as_str(), "unknown_token");

    let t = f
        .svc
        .issue_refresh("alice", None, Some("web"), None, None)
        .expect("issue");
    let e = f
        .svc
        .rotate_refresh(t.token.expose(), Some("mobile"))
        .expect_err("client");
    assert!(matches!(e, RefreshError::ClientMismatch), "{e:?}");
    let e = f
        .svc
        .rotate_refresh(t.token.expose(), None)
        .expect_err("client");
    assert!(matches!(e, RefreshError::ClientMismatch), "{e:?}");
    // A refused client does not burn the token for its owner.
    let later = t.expires_at;
    let e = f
        .svc
        .rotate_refresh_at(t.token.expose(), Some("web"), later)
        .expect_err("expired");
    assert!(matches!(e, RefreshError::Expired), "{e:?}");
    assert!(f
        .svc
        .rotate_refresh_at(t.token.expose(), Some("web"), later - 1)
        .is_ok());
}

#[test]
fn revoking_a_refresh_token_ends_its_grant() {
    let f = fixture();
    let t = f
        .svc
        .issue_refresh("alice", None, None, None, None)
        .expect("issue");
    let access = access_for(&f, &t.family_id);
    assert_eq!(
        f.svc
            .revoke_refresh(t.token.expose(), None)
            .expect("revoke"),
        RefreshRevocation::Revoked {
            family_id: t.family_id.clone()
        }
    );
    assert_eq!(
        f.svc.verify(&access).expect_err("revoked").reason,
        Reason::Revoked
    );
    assert!(matches!(
        f.svc.rotate_refresh(t.token.expose(), None),
        Err(RefreshError::Revoked)
    ));
    assert_eq!(
        f.svc.revoke_refresh("unknown", None).expect("revoke"),
        RefreshRevocation::Unknown
    );
}

/// RFC 7009 §2.1: a client may revoke only the tokens issued to it.
#[test]
fn a_client_cannot_revoke_another_clients_refresh_token() {
    let f = fixture();
    let t = f
        .svc
        .issue_refresh("alice", None, Some("web"), None, None)
        .expect("issue");
    let access = {
        let mut req = AccessRequest::new("alice");
        req.session_id = Some(t.family_id.clone());
        req.client_id = Some("web".into());
        f.svc
            .issue_access(&req)
            .expect("issue")
            .token
            .expose()
            .to_owned()
    };
    for other in [Some("mobile"), None] {
        assert_eq!(
            f.svc
                .revoke_refresh(t.token.expose(), other)
                .expect("revoke"),
            RefreshRevocation::OtherClient {
                family_id: t.family_id.clone()
            }
        );
    }
    assert!(f.svc.verify(&access).is_ok(), "the grant is untouched");
    assert!(f.svc.rotate_refresh(t.token.expose(), Some("web")).is_ok());
}

fn grace_fixture(secs: u64) -> Fixture {
    let mut f = fixture();
    let mut cfg = config();
    cfg.refresh_reuse_grace = std::time::Duration::from_secs(secs);
    let keys = KeyRing::load_or_create(&f.dir.path().join("keys"), Alg::ES256).expect("keys");
    f.svc = TokenService::new(keys, cfg, f.revocations.clone(), f.refresh.clone());
    f
}

/// The honest double submit: within the grace, the just-exchanged token gets the
/// same new refresh token again (any number of times), and the family lives on.
#[test]
fn a_repeat_within_the_grace_gets_the_same_new_token() {
    let f = grace_fixture(10);
    let now = unix_now();
    let first = f
        .svc
        .issue_refresh("alice", Some("alice"), Some("web"), None, None)
        .expect("issue");
    let access = access_for(&f, &first.family_id);
    let rotated = f
        .svc
        .rotate_refresh_at(first.token.expose(), Some("web"), now)
        .expect("rotate");
    assert!(!rotated.grace_repeat);
    for (i, at) in [now, now + 3, now + 10].into_iter().enumerate() {
        let again = f
            .svc
            .rotate_refresh_at(first.token.expose(), Some("web"), at)
            .unwrap_or_else(|e| panic!("repeat {i} within the grace: {e:?}"));
        assert!(again.grace_repeat);
        assert_eq!(again.refresh.token.expose(), rotated.refresh.token.expose());
        assert_eq!(again.family_id, rotated.family_id);
    }
    assert!(f.svc.verify(&access).is_ok(), "the family is not revoked");
    // Another client presenting it is still refused, grace or not.
    assert!(matches!(
        f.svc
            .rotate_refresh_at(first.token.expose(), Some("mobile"), now + 1),
        Err(RefreshError::ClientMismatch)
    ));
    // The new token works as usual.
    let third = f
        .svc
        .rotate_refresh_at(rotated.refresh.token.expose(), Some("web"), now + 11)
        .expect("next rotation");
    assert!(!third.grace_repeat);
}

#[test]
fn reuse_outside_the_grace_or_of_an_older_parent_still_revokes_the_family() {
    let f = grace_fixture(10);
    let now = unix_now();
    // Too late: the window is counted from the exchange and ends after 10 s.
    let late = f
        .svc
        .issue_refresh("alice", None, None, None, None)
        .expect("issue");
    let access = access_for(&f, &late.family_id);
    f.svc
        .rotate_refresh_at(late.token.expose(), None, now)
        .expect("rotate");
    assert!(matches!(
        f.svc.rotate_refresh_at(late.token.expose(), None, now + 11),
        Err(RefreshError::Reused { .. })
    ));
    assert_eq!(
        f.svc.verify(&access).expect_err("family revoked").reason,
        Reason::Revoked
    );

    // Not the latest parent: A → B → C, then A again, within seconds.
    let a = f
        .svc
        .issue_refresh("bob", None, None, None, None)
        .expect("issue");
    let b = f
        .svc
        .rotate_refresh_at(a.token.expose(), None, now)
        .expect("a→b");
    let c = f
        .svc
        .rotate_refresh_at(b.refresh.token.expose(), None, now + 1)
        .expect("b→c");
    assert!(matches!(
        f.svc.rotate_refresh_at(a.token.expose(), None, now + 2),
        Err(RefreshError::Reused { .. })
    ));
    assert!(matches!(
        f.svc
            .rotate_refresh_at(c.refresh.token.expose(), None, now + 3),
        Err(RefreshError::Revoked)
    ));
}

#[test]
fn without_a_grace_an_immediate_repeat_revokes_the_family() {
    let f = fixture();
    assert!(
        f.svc.config().refresh_reuse_grace.is_zero(),
        "off by default"
    );
    let now = unix_now();
    let t = f
        .svc
        .issue_refresh("alice", None, None, None, None)
        .expect("issue");
    let rotated = f
        .svc
        .rotate_refresh_at(t.token.expose(), None, now)
        .expect("rotate");
    assert!(matches!(
        f.svc.rotate_refresh_at(t.token.expose(), None, now),
        Err(RefreshError::Reused { .. })
    ));
    assert!(matches!(
        f.svc
            .rotate_refresh_at(rotated.refresh.token.expose(), None, now),
        Err(RefreshError::Revoked)
    ));
}

#[test]
fn concurrent_exchange_of_one_token_has_exactly_one_winner() {
    let store = Arc::new(MemoryRefreshStore::new());
    let rec = RefreshRecord {
        token_hash: sha256_hex("t"),
        family_id: "fam".into(),
        subject: "alice".into(),
        username: None,
        client_id: None,
        scope: None,
        issued_at: 0,
        expires_at: i64::MAX,
        used_at: None,
        revoked: false,
    };
    for round in 0..50 {
        let mut rec = rec.clone();
        rec.token_hash = sha256_hex(&format!("t{round}"));
        store.insert(&rec).expect("insert");
        let barrier = Arc::new(Barrier::new(8));
        let winners: usize = (0..8)
            .map(|_| {
                let (store, barrier, hash) =
                    (store.clone(), barrier.clone(), rec.token_hash.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    store.mark_used(&hash, 1).expect("mark")
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| usize::from(h.join().expect("join")))
            .sum();
        assert_eq!(winners, 1, "round {round}");
    }

    // Through the service: two racing refreshes, one gets a token, the other
    // triggers reuse detection.
    let f = Arc::new(fixture());
    let t = f
        .svc
        .issue_refresh("alice", None, None, None, None)
        .expect("issue");
    let barrier = Arc::new(Barrier::new(2));
    let results: Vec<_> = (0..2)
        .map(|_| {
            let (f, barrier, tok) = (f.clone(), barrier.clone(), t.token.expose().to_owned());
            std::thread::spawn(move || {
                barrier.wait();
                f.svc.rotate_refresh(&tok, None).map(|r| r.family_id)
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().expect("join"))
        .collect();
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{results:?}"
    );
    assert!(results
        .iter()
        .any(|r| matches!(r, Err(RefreshError::Reused { .. }))));
}

#[test]
fn memory_stores_purge_only_what_expired() {
    let rev = MemoryRevocations::new();
    rev.revoke_jti("a", 100).expect("revoke");
    rev.revoke_jti("b", 200).expect("revoke");
    rev.revoke_jti("b", 150)
        .expect("revoking again never shortens");
    rev.revoke_family("f", 100).expect("revoke");
    assert_eq!(rev.purge_expired(100).expect("purge"), 2);
    assert!(!rev.is_jti_revoked("a").expect("q"));
    assert!(rev.is_jti_revoked("b").expect("q"));
    assert_eq!(rev.purge_expired(199).expect("purge"), 0);
}

#[test]
fn access_requests_are_validated() {
    let f = fixture();
    let mut req = AccessRequest::new("alice");
    req.extra.insert("sub".into(), serde_json::json!("admin"));
    assert!(matches!(f.svc.issue_access(&req), Err(IssueError::ReservedClaim(c)) if c == "sub"));
    let mut req = AccessRequest::new("alice");
    req.ttl = Some(std::time::Duration::from_secs(16 * 60));
    assert!(matches!(
        f.svc.issue_access(&req),
        Err(IssueError::TtlTooLong { max_secs: 900 })
    ));
    req.ttl = Some(std::time::Duration::from_secs(60));
    let t = f.svc.issue_access(&req).expect("short ttl");
    assert_eq!(t.expires_at - t.issued_at, 60);
    assert!(matches!(
        f.svc.issue_access(&AccessRequest::new("")),
        Err(IssueError::InvalidRequest(_))
    ));
    let mut req = AccessRequest::new("alice");
    req.extra
        .insert("blob".into(), serde_json::json!("x".repeat(9000)));
    assert!(matches!(
        f.svc.issue_access(&req),
        Err(IssueError::TooLarge { .. })
    ));
}
