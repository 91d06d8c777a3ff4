//! Interoperability with an independent JOSE implementation (jwt-simple, pure Rust):
//! our tokens verify there with keys taken only from our JWKS, and an HS256 token
//! made there with a shared secret verifies here (the PyJWT scenario).

mod common;

use common::*;
use jwt_simple::prelude::*;
use serde_json::Value;
use token_core::{AccessRequest, Alg, KeyRing, Reason, TokenService};

#[derive(Debug, Serialize, Deserialize)]
struct OurClaims {
    roles: Vec<String>,
    username: Option<String>,
}

fn jwk_bytes(jwk: &Value, member: &str) -> Vec<u8> {
    Base64UrlSafeNoPadding::decode_to_vec(jwk[member].as_str().expect(member), None).expect("b64")
}

fn options() -> VerificationOptions {
    VerificationOptions {
        allowed_issuers: Some(HashSet::from_strings(&[ISS])),
        allowed_audiences: Some(HashSet::from_strings(&[AUD])),
        ..Default::default()
    }
}

#[test]
fn our_tokens_verify_in_jwt_simple_using_only_the_published_jwks() {
    let dir = tempfile::tempdir().expect("tempdir");
    for alg in [Alg::RS256, Alg::ES256, Alg::EdDSA] {
        let keys = KeyRing::load_or_create(&dir.path().join(alg.as_str()), alg).expect("keys");
        let svc = TokenService::new(
            keys,
            config(),
            std::sync::Arc::new(token_core::MemoryRevocations::new()),
            std::sync::Arc::new(token_core::MemoryRefreshStore::new()),
        );
        let mut req = AccessRequest::new("user-1");
        req.roles = vec!["reader".into()];
        req.username = Some("alice".into());
        let issued = svc.issue_access(&req).expect("issue");
        let token = issued.token.expose();

        // Everything the other side knows comes from the JWKS document, found by kid.
        let jwks = svc.jwks();
        let jwk = jwks["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .find(|k| k["kid"] == issued.kid.as_str())
            .expect("kid published");
        assert_eq!(jwk["alg"], alg.as_str());
        let claims = match alg {
            Alg::RS256 => {
                RS256PublicKey::from_components(&jwk_bytes(jwk, "n"), &jwk_bytes(jwk, "e"))
                    .expect("rsa jwk")
                    .with_key_id(&issued.kid)
                    .verify_token::<OurClaims>(token, Some(options()))
            }
            Alg::ES256 => {
                let mut point = vec![4u8];
                point.extend(jwk_bytes(jwk, "x"));
                point.extend(jwk_bytes(jwk, "y"));
                ES256PublicKey::from_bytes(&point)
                    .expect("ec jwk")
                    .with_key_id(&issued.kid)
                    .verify_token::<OurClaims>(token, Some(options()))
            }
            _ => Ed25519PublicKey::from_bytes(&jwk_bytes(jwk, "x"))
                .expect("okp jwk")
                .with_key_id(&issued.kid)
                .verify_token::<OurClaims>(token, Some(options())),
        }
        .unwrap_or_else(|e| panic!("{alg}: jwt-simple refused our token: {e}"));
        assert_eq!(claims.subject.as_deref(), Some("user-1"), "{alg}");
        assert_eq!(claims.jwt_id.as_deref(), Some(issued.jti.as_str()), "{alg}");
        assert_eq!(claims.custom.roles, ["reader"], "{alg}");
        assert_eq!(claims.custom.username.as_deref(), Some("alice"), "{alg}");
    }
}

#[test]
fn hs256_token_from_jwt_simple_verifies_with_an_imported_secret() {
    let f = fixture();
    let key = HS256Key::from_bytes(SHARED_SECRET).with_key_id(SHARED_KID);
    let claims = Claims::create(Duration::from_mins(5))
        .with_issuer(SHARED_ISS)
        .with_audience(AUD)
        .with_subject("py-user")
        .with_jwt_id("ext-1");
    let token = key.authenticate(claims).expect("sign");
    let v = f.svc.verify(&token).expect("verifies here");
    assert_eq!(
        (v.claims.sub.as_str(), v.claims.jti.as_str()),
        ("py-user", "ext-1")
    );
    assert_eq!(v.alg, Alg::HS256);

    // Same library, a key the service does not share: refused.
    let other = HS256Key::from_bytes(&[42u8; 64]).with_key_id(SHARED_KID);
    let forged = other
        .authenticate(
            Claims::create(Duration::from_mins(5))
                .with_issuer(SHARED_ISS)
                .with_audience(AUD)
                .with_subject("py-user")
                .with_jwt_id("ext-2"),
        )
        .expect("sign");
    assert_eq!(
        f.svc.verify(&forged).expect_err("forged").reason,
        Reason::BadSignature
    );
}
