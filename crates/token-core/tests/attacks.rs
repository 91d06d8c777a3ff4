//! The JWT attack corpus: every token here must be refused, with the right reason.

mod common;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{KeyPair, RsaKeyPair, RSA_PKCS1_SHA256};
use common::*;
use serde_json::{json, Value};
use token_core::*;

const NOW: i64 = 1_900_000_000;

/// Asserts `token` is refused for `expected`, and that the refusal is safe to log.
fn check(svc: &TokenService, name: &str, token: &str, expected: Reason) -> Rejection {
    let rej = match svc.verify_at(token, NOW) {
        Ok(v) => panic!(
            "{name}: accepted (sub {:?}), expected {expected}",
            v.claims.sub
        ),
        Err(r) => r,
    };
    assert_eq!(rej.reason, expected, "{name}: {}", rej.message);
    assert_eq!(rej.fingerprint, fingerprint(token), "{name}");
    if token.len() > 8 {
        assert!(
            !rej.message.contains(token),
            "{name}: message leaks the token"
        );
        assert!(
            !format!("{rej:?}").contains(token),
            "{name}: Debug leaks the token"
        );
    }
    for v in [&rej.kid, &rej.alg].into_iter().flatten() {
        assert!(
            v == INVALID_ID
                || v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)),
            "{name}: unsanitized header value {v:?}"
        );
    }
    rej
}

fn replace_part(token: &str, index: usize, part: &str) -> String {
    let mut parts: Vec<&str> = token.split('.').collect();
    parts[index] = part;
    parts.join(".")
}

/// An RSA key the attacker controls, and a JWK of its public half.
fn attacker_rsa() -> (RsaKeyPair, Value) {
    let kp = RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("rsa");
    let pk = kp.public_key();
    let jwk = json!({
        "kty": "RSA",
        "n": b64(pk.modulus().big_endian_without_leading_zero()),
        "e": b64(pk.exponent().big_endian_without_leading_zero()),
    });
    (kp, jwk)
}

fn rs256_sign(kp: &RsaKeyPair, header: &Value, payload: &Value) -> String {
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(payload.to_string().as_bytes())
    );
    let mut sig = vec![0; kp.public_modulus_len()];
    kp.sign(
        &RSA_PKCS1_SHA256,
        &SystemRandom::new(),
        input.as_bytes(),
        &mut sig,
    )
    .expect("sign");
    format!("{input}.{}", b64(&sig))
}

#[test]
fn attack_corpus_is_refused_with_precise_reasons() {
    let f = fixture();
    let svc = &f.svc;
    let good = good_claims(NOW);
    let hdr = shared_header();
    let valid = craft(&hdr, &good, SHARED_SECRET);
    // The corpus is only meaningful if the untouched token passes.
    assert_eq!(
        svc.verify_at(&valid, NOW)
            .expect("control token")
            .claims
            .sub,
        "alice"
    );

    let rsa_pem = svc.public_key_pem(&f.rsa_kid).expect("rsa pem");
    let (attacker, attacker_jwk) = attacker_rsa();
    let sig = valid.rsplit('.').next().expect("sig").to_owned();
    let payload = valid.split('.').nth(1).expect("payload").to_owned();
    // Same bytes as the valid signature, but with non-zero unused trailing bits: a
    // lenient decoder would accept this second spelling of the signature.
    let last = sig.as_bytes()[sig.len() - 1];
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let idx = ALPHABET.iter().position(|c| *c == last).expect("b64 char");
    let malleable_sig = format!("{}{}", &sig[..sig.len() - 1], ALPHABET[idx | 1] as char);
    let issued = svc
        .issue_access_at(&AccessRequest::new("bob"), NOW)
        .expect("issue");
    let issued = issued.token.expose().to_owned();
    let tampered_payload = b64(String::from_utf8(
        base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            issued.split('.').nth(1).expect("payload"),
        )
        .expect("b64"),
    )
    .expect("utf8")
    .replace("\"bob\"", "\"admin\"")
    .as_bytes());

    let none = |alg: &str| {
        craft_raw(
            &json!({"alg": alg, "kid": SHARED_KID}).to_string(),
            &good.to_string(),
            b"",
        )
        .rsplit_once('.')
        .map(|(input, _)| format!("{input}."))
        .expect("dot")
    };

    let cases: Vec<(&str, String, Reason)> = vec![
        // alg none, any spelling, and the published RFC 7515 A.5 unsecured JWS.
        ("alg none", none("none"), Reason::AlgNotAllowed),
        ("alg None", none("None"), Reason::AlgNotAllowed),
        ("alg NONE", none("NONE"), Reason::AlgNotAllowed),
        ("alg nOnE", none("nOnE"), Reason::AlgNotAllowed),
        ("alg none with a signature", craft(&json!({"alg": "none", "kid": SHARED_KID}), &good, SHARED_SECRET), Reason::AlgNotAllowed),
        ("RFC 7515 A.5", "eyJhbGciOiJub25lIn0.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.".into(), Reason::AlgNotAllowed),
        // Algorithm confusion: the RSA public key (PEM, as published) used as an HMAC secret.
        ("RS256->HS256 with PEM secret", craft(&json!({"alg": "HS256", "kid": f.rsa_kid}), &good, rsa_pem.as_bytes()), Reason::AlgNotAllowed),
        ("RS256->HS256 no kid", craft(&json!({"alg": "HS256"}), &good, rsa_pem.as_bytes()), Reason::UnknownKid),
        ("ES256 key, HS256 header", craft(&json!({"alg": "HS256", "kid": f.es_kid}), &good, SHARED_SECRET), Reason::AlgNotAllowed),
        ("HS256 key, ES256 header", replace_part(&valid, 0, &b64(json!({"alg": "ES256", "kid": SHARED_KID}).to_string().as_bytes())), Reason::AlgNotAllowed),
        ("unsupported alg RS512", craft(&json!({"alg": "RS512", "kid": f.rsa_kid}), &good, SHARED_SECRET), Reason::AlgNotAllowed),
        ("alg with trailing space", craft(&json!({"alg": "HS256 ", "kid": SHARED_KID}), &good, SHARED_SECRET), Reason::AlgNotAllowed),
        ("alg lower case hs256", craft(&json!({"alg": "hs256", "kid": SHARED_KID}), &good, SHARED_SECRET), Reason::AlgNotAllowed),
        // Signature stripped, emptied, forged.
        ("empty signature", replace_part(&valid, 2, ""), Reason::BadSignature),
        ("stripped signature (two parts)", valid.rsplit_once('.').expect("dot").0.to_owned(), Reason::Malformed),
        ("tampered payload (HS256)", replace_part(&valid, 1, &b64(with(good.clone(), "sub", json!("admin")).to_string().as_bytes())), Reason::BadSignature),
        ("tampered payload (EdDSA)", replace_part(&issued, 1, &tampered_payload), Reason::BadSignature),
        ("signature from another token", replace_part(&issued, 2, &sig), Reason::BadSignature),
        ("psychic ECDSA r=s=0", craft(&json!({"alg": "ES256", "kid": f.es_kid}), &good, b"").rsplit_once('.').map(|(i, _)| format!("{i}.{}", b64(&[0u8; 64]))).expect("dot"), Reason::BadSignature),
        ("wrong secret", craft(&hdr, &good, &[7u8; 64]), Reason::BadSignature),
        // kid handling: exact match only, never a fallback.
        ("unknown kid", craft(&json!({"alg": "HS256", "kid": "nope"}), &good, SHARED_SECRET), Reason::UnknownKid),
        ("missing kid", craft(&json!({"alg": "HS256"}), &good, SHARED_SECRET), Reason::UnknownKid),
        ("empty kid", craft(&json!({"alg": "HS256", "kid": ""}), &good, SHARED_SECRET), Reason::UnknownKid),
        ("kid path traversal", craft(&json!({"alg": "HS256", "kid": "../../dev/null"}), &good, b""), Reason::UnknownKid),
        ("kid SQL injection", craft(&json!({"alg": "HS256", "kid": "' OR 1=1 --"}), &good, SHARED_SECRET), Reason::UnknownKid),
        ("kid not a string", craft(&json!({"alg": "HS256", "kid": 1}), &good, SHARED_SECRET), Reason::UnknownKid),
        ("kid case-folded", craft(&json!({"alg": "HS256", "kid": SHARED_KID.to_uppercase()}), &good, SHARED_SECRET), Reason::UnknownKid),
        // Key-carrying headers are never used: the attacker's own key does not help.
        ("embedded jwk, our kid", rs256_sign(&attacker, &json!({"alg": "RS256", "kid": f.rsa_kid, "jwk": attacker_jwk}), &good), Reason::BadSignature),
        ("embedded jwk, no kid", rs256_sign(&attacker, &json!({"alg": "RS256", "jwk": attacker_jwk}), &good), Reason::UnknownKid),
        ("jku to attacker JWKS", rs256_sign(&attacker, &json!({"alg": "RS256", "kid": f.rsa_kid, "jku": "https://attacker.example/jwks.json"}), &good), Reason::BadSignature),
        ("x5u to attacker cert", rs256_sign(&attacker, &json!({"alg": "RS256", "kid": f.rsa_kid, "x5u": "https://attacker.example/cert.pem"}), &good), Reason::BadSignature),
        ("x5c attacker chain", rs256_sign(&attacker, &json!({"alg": "RS256", "kid": f.rsa_kid, "x5c": ["MIIB"]}), &good), Reason::BadSignature),
        // crit and typ.
        ("crit exp", craft(&json!({"alg": "HS256", "kid": SHARED_KID, "crit": ["exp"], "exp": NOW}), &good, SHARED_SECRET), Reason::UnsupportedCrit),
        ("crit b64", craft(&json!({"alg": "HS256", "kid": SHARED_KID, "crit": ["b64"], "b64": false}), &good, SHARED_SECRET), Reason::UnsupportedCrit),
        ("crit empty list", craft(&json!({"alg": "HS256", "kid": SHARED_KID, "crit": []}), &good, SHARED_SECRET), Reason::UnsupportedCrit),
        ("typ JOSE", craft(&json!({"alg": "HS256", "kid": SHARED_KID, "typ": "JOSE"}), &good, SHARED_SECRET), Reason::BadType),
        ("typ refresh+jwt", craft(&json!({"alg": "HS256", "kid": SHARED_KID, "typ": "refresh+jwt"}), &good, SHARED_SECRET), Reason::BadType),
        ("typ not a string", craft(&json!({"alg": "HS256", "kid": SHARED_KID, "typ": 1}), &good, SHARED_SECRET), Reason::BadType),
        // Time.
        ("expired", craft(&hdr, &with(good.clone(), "exp", json!(NOW - 60)), SHARED_SECRET), Reason::Expired),
        ("expired at leeway edge", craft(&hdr, &with(good.clone(), "exp", json!(NOW - 5)), SHARED_SECRET), Reason::Expired),
        ("nbf in future", craft(&hdr, &with(good.clone(), "nbf", json!(NOW + 600)), SHARED_SECRET), Reason::NotYetValid),
        ("iat in future", craft(&hdr, &with(good.clone(), "iat", json!(NOW + 600)), SHARED_SECRET), Reason::IssuedInFuture),
        // A date claim that is there but is no date is malformed, never missing.
        ("exp not a number", craft(&hdr, &with(good.clone(), "exp", json!("never")), SHARED_SECRET), Reason::Malformed),
        ("exp -1", craft(&hdr, &with(good.clone(), "exp", json!(-1)), SHARED_SECRET), Reason::Malformed),
        ("exp 1e300", craft(&hdr, &with(good.clone(), "exp", json!(1e300)), SHARED_SECRET), Reason::Malformed),
        ("exp after year 9999", craft(&hdr, &with(good.clone(), "exp", json!(253_402_300_800i64)), SHARED_SECRET), Reason::Malformed),
        ("iat 1e300", craft(&hdr, &with(good.clone(), "iat", json!(1e300)), SHARED_SECRET), Reason::Malformed),
        ("iat -1", craft(&hdr, &with(good.clone(), "iat", json!(-1)), SHARED_SECRET), Reason::Malformed),
        ("nbf -1e300", craft(&hdr, &with(good.clone(), "nbf", json!(-1e300)), SHARED_SECRET), Reason::Malformed),
        // Issuer, audience, required claims.
        ("wrong iss", craft(&hdr, &with(good.clone(), "iss", json!("https://evil.example")), SHARED_SECRET), Reason::IssuerMismatch),
        ("wrong aud", craft(&hdr, &with(good.clone(), "aud", json!("other-api")), SHARED_SECRET), Reason::AudienceMismatch),
        ("aud array without ours", craft(&hdr, &with(good.clone(), "aud", json!(["a", "b"])), SHARED_SECRET), Reason::AudienceMismatch),
        ("missing iss", craft(&hdr, &without(good.clone(), "iss"), SHARED_SECRET), Reason::MissingClaim),
        ("missing aud", craft(&hdr, &without(good.clone(), "aud"), SHARED_SECRET), Reason::MissingClaim),
        ("missing sub", craft(&hdr, &without(good.clone(), "sub"), SHARED_SECRET), Reason::MissingClaim),
        ("missing exp", craft(&hdr, &without(good.clone(), "exp"), SHARED_SECRET), Reason::MissingClaim),
        ("missing iat", craft(&hdr, &without(good.clone(), "iat"), SHARED_SECRET), Reason::MissingClaim),
        ("missing jti", craft(&hdr, &without(good.clone(), "jti"), SHARED_SECRET), Reason::MissingClaim),
        ("iss: 5", craft(&hdr, &with(good.clone(), "iss", json!(5)), SHARED_SECRET), Reason::MissingClaim),
        ("aud: null", craft(&hdr, &with(good.clone(), "aud", Value::Null), SHARED_SECRET), Reason::MissingClaim),
        ("sub: object", craft(&hdr, &with(good.clone(), "sub", json!({"id": 1})), SHARED_SECRET), Reason::Malformed),
        ("roles not a list", craft(&hdr, &with(good.clone(), "roles", json!("admin")), SHARED_SECRET), Reason::Malformed),
        ("duplicate sub", craft_raw(&hdr.to_string(), &good.to_string().replacen('{', "{\"sub\":\"admin\",", 1), SHARED_SECRET), Reason::Malformed),
        // Encoding: strict base64url only.
        ("padded payload", replace_part(&valid, 1, &format!("{payload}==")), Reason::Malformed),
        ("padded signature", replace_part(&valid, 2, &format!("{sig}=")), Reason::Malformed),
        ("'+' in signature", replace_part(&valid, 2, &format!("+{}", &sig[1..])), Reason::Malformed),
        ("'/' in signature", replace_part(&valid, 2, &format!("/{}", &sig[1..])), Reason::Malformed),
        ("space in payload", replace_part(&valid, 1, &format!("{} {}", &payload[..4], &payload[4..])), Reason::Malformed),
        ("leading space", format!(" {valid}"), Reason::Malformed),
        ("non-canonical trailing bits", replace_part(&valid, 2, &malleable_sig), Reason::Malformed),
        ("header not JSON", format!("{}.{payload}.{sig}", b64(b"not json")), Reason::Malformed),
        ("header is an array", format!("{}.{payload}.{sig}", b64(b"[\"HS256\"]")), Reason::Malformed),
        ("header without alg", craft(&json!({"kid": SHARED_KID}), &good, SHARED_SECRET), Reason::Malformed),
        ("payload not JSON", craft_raw(&hdr.to_string(), "hello", SHARED_SECRET), Reason::Malformed),
        // Shape and size.
        ("empty string", String::new(), Reason::Malformed),
        ("one part", "abc".into(), Reason::Malformed),
        ("four parts", format!("{valid}.x"), Reason::Malformed),
        ("a.b.c.d", "a.b.c.d".into(), Reason::Malformed),
        // Five parts whose header is a JWS header, not a JWE one: garbage, not a JWE.
        ("five parts, JWS header", format!("{valid}.x.y"), Reason::Malformed),
        ("five empty parts", "....".into(), Reason::Malformed),
        // `Bearer T T`: two tokens in one value (four dots between them).
        ("two tokens, space-separated", format!("{valid} {valid}"), Reason::Malformed),
        ("tab inside", format!("{}\t{}", &valid[..10], &valid[10..]), Reason::Malformed),
        ("JWE (5 parts)", "eyJhbGciOiJSU0EtT0FFUCIsImVuYyI6IkEyNTZHQ00ifQ.OKOawDo13gRp2ojaHV7LFpZcgV7T6DVZKTyKOMTYUmKoTCVJRgckCL9kiMT03JGeipsEdY3mx_etLbbWSrFr05kLzcSr4qKAq7YN7e9jwQRb23nfa6c9d-StnImGyFDbSv04uVuxIp5Zms1gNxKKK2Da14B8S4rzVRltdYwam_lDp5XnZAYpQdb76FdIKLaVmqgfwX7XWRxv2322i-vDxRfqNzo_tETKzpVLzfiwQyeyPGLBIO56YJ7eObdv0je81860ppamavo35UgoRdbYaBcoh9QcfylQr66oc6vFWXRcZ_ZT2LawVCWTIy3brGPi6UklfCpIMfIjf7iGdXKHzg.48V1_ALb6US04U3b.5eym8TW_c8SuK0ltJ3rpYIzOeDQz7TALvtu6UG9oMo4vpzs9tX_EFShS8iB7j6jiSdiwkIr3ajwQzaBtQD_A.XFBoMYUZodetZdvTiFvSkQ".into(), Reason::EncryptedToken),
        ("oversized", craft(&hdr, &with(good.clone(), "pad", json!("x".repeat(9000))), SHARED_SECRET), Reason::TooLarge),
        ("oversized garbage", "a".repeat(6_700_000), Reason::TooLarge),
    ];
    for (name, token, expected) in &cases {
        check(svc, name, token, *expected);
    }
}

#[test]
fn invalid_date_claims_name_the_claim() {
    let f = fixture();
    let good = good_claims(NOW);
    for (claim, value) in [
        ("exp", json!(-1)),
        ("exp", json!(1e300)),
        ("iat", json!(1e300)),
    ] {
        let token = craft(
            &shared_header(),
            &with(good.clone(), claim, value),
            SHARED_SECRET,
        );
        let rej = check(&f.svc, claim, &token, Reason::Malformed);
        assert!(
            rej.message.contains(&format!("`{claim}`")),
            "{claim}: {}",
            rej.message
        );
    }
    // Absent is still missing.
    let token = craft(&shared_header(), &without(good, "exp"), SHARED_SECRET);
    check(&f.svc, "no exp", &token, Reason::MissingClaim);
}

#[test]
fn refusals_record_sanitized_header_values_and_only_verified_identities() {
    let f = fixture();
    let good = good_claims(NOW);
    let rej = check(
        &f.svc,
        "kid traversal",
        &craft(
            &json!({"alg": "HS256", "kid": "../../dev/null"}),
            &good,
            b"",
        ),
        Reason::UnknownKid,
    );
    assert_eq!(rej.kid.as_deref(), Some(INVALID_ID));
    assert_eq!(rej.alg.as_deref(), Some("HS256"));
    // A forger's claims are not trusted enough to name anyone in the audit trail...
    let forged = craft(&shared_header(), &good, &[9u8; 64]);
    let rej = check(&f.svc, "forged", &forged, Reason::BadSignature);
    assert_eq!((rej.jti, rej.subject), (None, None));
    assert_eq!(rej.kid.as_deref(), Some(SHARED_KID));
    // ...but a correctly signed token refused for its claims names who and which token.
    let wrong_aud = craft(
        &shared_header(),
        &with(good.clone(), "aud", json!("x")),
        SHARED_SECRET,
    );
    let rej = check(&f.svc, "wrong aud", &wrong_aud, Reason::AudienceMismatch);
    assert_eq!(rej.jti.as_deref(), Some("jti-1"));
    assert_eq!(rej.subject.as_deref(), Some("alice"));
    let expired = craft(
        &shared_header(),
        &with(
            with(good, "exp", json!(NOW - 60)),
            "sub",
            json!("eve\nFAKE"),
        ),
        SHARED_SECRET,
    );
    let rej = check(&f.svc, "expired", &expired, Reason::Expired);
    assert_eq!(rej.subject.as_deref(), Some("eve?FAKE"));
}

#[test]
fn accepted_edge_cases() {
    let f = fixture();
    let good = good_claims(NOW);
    for (name, header, payload) in [
        (
            "typ at+jwt",
            json!({"alg": "HS256", "kid": SHARED_KID, "typ": "at+jwt"}),
            good.clone(),
        ),
        (
            "no typ",
            json!({"alg": "HS256", "kid": SHARED_KID}),
            good.clone(),
        ),
        (
            "jku is ignored, not fetched",
            json!({"alg": "HS256", "kid": SHARED_KID, "jku": "http://127.0.0.1:1/jwks"}),
            good.clone(),
        ),
        (
            "exp inside leeway",
            shared_header(),
            with(good.clone(), "exp", json!(NOW - 4)),
        ),
        (
            "nbf inside leeway",
            shared_header(),
            with(good.clone(), "nbf", json!(NOW + 5)),
        ),
        (
            "aud array with ours",
            shared_header(),
            with(good.clone(), "aud", json!(["other", AUD])),
        ),
        (
            "fractional times",
            shared_header(),
            with(good.clone(), "exp", json!(NOW as f64 + 60.5)),
        ),
    ] {
        let token = craft(&header, &payload, SHARED_SECRET);
        let v = f
            .svc
            .verify_at(&token, NOW)
            .unwrap_or_else(|r| panic!("{name}: {r}"));
        assert_eq!(v.claims.aud, AUD, "{name}");
        assert_eq!(v.kid, SHARED_KID, "{name}");
    }
}

#[test]
fn revoked_tokens_and_failing_store_are_refused() {
    let f = fixture();
    let issued = f
        .svc
        .issue_access_at(&AccessRequest::new("carol"), NOW)
        .expect("issue");
    let token = issued.token.expose();
    assert!(f.svc.verify_at(token, NOW).is_ok());
    f.svc
        .revoke_access(&issued.jti, issued.expires_at)
        .expect("revoke");
    let rej = check(&f.svc, "revoked", token, Reason::Revoked);
    assert_eq!(rej.jti.as_deref(), Some(issued.jti.as_str()));

    struct Down;
    impl RevocationStore for Down {
        fn revoke_jti(&self, _: &str, _: i64) -> Result<(), StoreFailure> {
            Err(StoreFailure("disk gone".into()))
        }
        fn is_jti_revoked(&self, _: &str) -> Result<bool, StoreFailure> {
            Err(StoreFailure("disk gone".into()))
        }
        fn revoke_family(&self, _: &str, _: i64) -> Result<(), StoreFailure> {
            Err(StoreFailure("disk gone".into()))
        }
        fn is_family_revoked(&self, _: &str) -> Result<bool, StoreFailure> {
            Err(StoreFailure("disk gone".into()))
        }
        fn purge_expired(&self, _: i64) -> Result<usize, StoreFailure> {
            Err(StoreFailure("disk gone".into()))
        }
    }
    let keys = KeyRing::load_or_create(&f.dir.path().join("keys"), Alg::ES256).expect("reload");
    let svc = TokenService::new(keys, config(), std::sync::Arc::new(Down), f.refresh.clone());
    check(&svc, "store down", token, Reason::StoreUnavailable);
}

/// ES256 has two valid signatures per token, (r, s) and (r, n − s). Only the low-S
/// one is accepted, so a replay detector keyed on `token_fp` sees every copy.
#[test]
fn es256_twins_are_refused_and_our_signatures_are_low_s() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = KeyRing::load_or_create(&dir.path().join("keys"), Alg::ES256).expect("keys");
    let svc = TokenService::new(
        keys,
        config(),
        std::sync::Arc::new(MemoryRevocations::new()),
        std::sync::Arc::new(MemoryRefreshStore::new()),
    );
    let mut high_twins_refused = 0;
    for i in 0..1000 {
        let issued = svc
            .issue_access_at(&AccessRequest::new(format!("user-{i}")), NOW)
            .expect("issue");
        let token = issued.token.expose();
        let sig = base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            token.rsplit('.').next().expect("sig"),
        )
        .expect("b64");
        assert!(!es256_s_is_high(&sig), "token {i} was signed with a high S");
        assert!(svc.verify_at(token, NOW).is_ok(), "token {i}");
        if i % 100 == 0 {
            let twin = with_es256_twin(token);
            assert!(es256_s_is_high(&es256_twin(&sig)));
            let rej = check(&svc, "ES256 high-S twin", &twin, Reason::BadSignature);
            assert!(rej.message.contains("low-S"), "{}", rej.message);
            assert_ne!(rej.fingerprint, issued.fingerprint);
            high_twins_refused += 1;
        }
    }
    assert_eq!(high_twins_refused, 10);
}
