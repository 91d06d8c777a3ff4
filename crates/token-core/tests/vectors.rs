//! Published test vectors (RFC 7515 appendix A, RFC 7520 §4.4), used verbatim.

mod common;

use base64::Engine;
use common::*;
use serde_json::json;
use token_core::*;

const A1_KEY: &str =
    "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow";
const A1_TOKEN: &str = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const A1_PAYLOAD: &[u8] =
    b"{\"iss\":\"joe\",\r\n \"exp\":1300819380,\r\n \"http://example.com/is_root\":true}";
const A3_X: &str = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU";
const A3_Y: &str = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0";
const A3_TOKEN: &str = "eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q";
const R7520_KID: &str = "018c0ae5-4d9b-471b-bfd6-eef314bc7037";
const R7520_KEY: &str = "hJtXIZ2uSN5kbQfbtTNWbpdmhkV8FJG-Onbc6mxCcYg";
const R7520_TOKEN: &str = "eyJhbGciOiJIUzI1NiIsImtpZCI6IjAxOGMwYWU1LTRkOWItNDcxYi1iZmQ2LWVlZjMxNGJjNzAzNyJ9.SXTigJlzIGEgZGFuZ2Vyb3VzIGJ1c2luZXNzLCBGcm9kbywgZ29pbmcgb3V0IHlvdXIgZG9vci4gWW91IHN0ZXAgb250byB0aGUgcm9hZCwgYW5kIGlmIHlvdSBkb24ndCBrZWVwIHlvdXIgZmVldCwgdGhlcmXigJlzIG5vIGtub3dpbmcgd2hlcmUgeW91IG1pZ2h0IGJlIHN3ZXB0IG9mZiB0by4.s0h6KThzkfBBBkLspW1h84VsJZFTsPPqMDA7g1Md7p0";

fn b64d(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .expect("b64")
}

/// The vectors' issuer, bound to the imported keys (it is not our own issuer).
fn joe() -> IssuerBinding {
    IssuerBinding::new("joe", Some("any".into())).expect("binding")
}

fn service_with(import: impl FnOnce(&mut KeyRing)) -> (TokenService, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut keys = KeyRing::load_or_create(&dir.path().join("k"), Alg::ES256).expect("keys");
    import(&mut keys);
    let svc = TokenService::new(
        keys,
        TokenConfig::new("tokenwatch", "any"),
        std::sync::Arc::new(MemoryRevocations::new()),
        std::sync::Arc::new(MemoryRefreshStore::new()),
    );
    (svc, dir)
}

#[test]
fn rfc7515_a1_hs256_signature_verifies_then_full_checks_refuse_it() {
    let (svc, _dir) = service_with(|k| {
        k.import_hmac("rfc7515-a1", Alg::HS256, &b64d(A1_KEY), &joe())
            .expect("import");
    });
    let payload = svc
        .verify_signature_only(A1_TOKEN, "rfc7515-a1")
        .expect("signature");
    assert_eq!(payload, A1_PAYLOAD);
    // One flipped signature byte must fail the same helper.
    let forged = A1_TOKEN.replace("dBjftJeZ4CVP", "dBjftJeZ4CVQ");
    assert_eq!(
        svc.verify_signature_only(&forged, "rfc7515-a1")
            .expect_err("forged")
            .reason,
        Reason::BadSignature
    );
    // The vector has no kid, so full verification never reaches a key.
    assert_eq!(
        svc.verify(A1_TOKEN).expect_err("no kid").reason,
        Reason::UnknownKid
    );

    // The same header and payload, re-signed with the vector's key under a kid, are
    // refused for their 2011 expiry once the required claims are present.
    let claims = json!({"iss": "joe", "exp": 1300819380, "iat": 1300819000, "aud": "any", "sub": "joe", "jti": "a1",
                        "http://example.com/is_root": true});
    let token = craft(
        &json!({"typ": "JWT", "alg": "HS256", "kid": "rfc7515-a1"}),
        &claims,
        &b64d(A1_KEY),
    );
    assert_eq!(
        svc.verify(&token).expect_err("2011").reason,
        Reason::Expired
    );
    assert!(svc.verify_at(&token, 1300819000).is_ok());
}

#[test]
fn rfc7515_a3_es256_signature_verifies() {
    let (svc, _dir) = service_with(|k| {
        k.import_jwk(
            &json!({"kty": "EC", "crv": "P-256", "x": A3_X, "y": A3_Y, "kid": "rfc7515-a3"}),
            &joe(),
        )
        .expect("import");
    });
    // The published signature is the high-S one of the pair (r, s) / (r, n − s):
    // tokenwatch accepts only low S, so the vector itself is refused and its
    // low-S twin, the same signature mathematically, verifies.
    assert_eq!(
        svc.verify_signature_only(A3_TOKEN, "rfc7515-a3")
            .expect_err("high S")
            .reason,
        Reason::BadSignature
    );
    let a3_low_s = with_es256_twin(A3_TOKEN);
    let payload = svc
        .verify_signature_only(&a3_low_s, "rfc7515-a3")
        .expect("signature");
    assert_eq!(payload, A1_PAYLOAD);
    let mut sig = b64d(a3_low_s.rsplit('.').next().expect("sig"));
    sig[10] ^= 1;
    let (input, _) = a3_low_s.rsplit_once('.').expect("dot");
    let forged = format!("{input}.{}", b64(&sig));
    assert_eq!(
        svc.verify_signature_only(&forged, "rfc7515-a3")
            .expect_err("forged")
            .reason,
        Reason::BadSignature
    );
    // Under a different ES256 key (our own generated one) the signature fails.
    let ours = svc
        .keys()
        .into_iter()
        .find(|k| !k.verify_only)
        .expect("own key")
        .kid;
    assert_eq!(
        svc.verify_signature_only(&a3_low_s, &ours)
            .expect_err("other key")
            .reason,
        Reason::BadSignature
    );
}

#[test]
fn rfc7520_4_4_signature_verifies_but_text_payload_is_malformed() {
    let (svc, _dir) = service_with(|k| {
        k.import_hmac(R7520_KID, Alg::HS256, &b64d(R7520_KEY), &joe())
            .expect("import");
    });
    let payload = svc
        .verify_signature_only(R7520_TOKEN, R7520_KID)
        .expect("signature");
    assert!(String::from_utf8(payload)
        .expect("utf8")
        .starts_with("It’s a dangerous business, Frodo"));
    let rej = svc.verify(R7520_TOKEN).expect_err("not JSON");
    assert_eq!(rej.reason, Reason::Malformed);
    assert_eq!(rej.kid.as_deref(), Some(R7520_KID));
}
