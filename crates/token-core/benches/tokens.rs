//! Issue and verify cost per algorithm, token-core against plain jsonwebtoken with
//! the same key in the same run, so the overhead of token-core's extra checks (strict
//! header parsing, kid lookup, claim typing, time checks, two revocation lookups)
//! reads as a ratio.
//!
//! Run: `cargo bench -p token-core --bench tokens -- --warm-up-time 1 --measurement-time 2`

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use jsonwebtoken::{DecodingKey, EncodingKey, Header, Validation};
use serde_json::{json, Value};
use token_core::{
    AccessRequest, Alg, KeyRing, MemoryRefreshStore, MemoryRevocations, TokenConfig, TokenService,
};

const ISS: &str = "https://auth.bench";
const AUD: &str = "bench-api";

/// The active key's private material, read back from its key file (bench only).
fn private_material(dir: &Path, kid: &str) -> Vec<u8> {
    let text = std::fs::read_to_string(dir.join(format!("{kid}.json"))).expect("key file");
    let v: Value = serde_json::from_str(&text).expect("json");
    URL_SAFE_NO_PAD
        .decode(v["material"].as_str().expect("material"))
        .expect("b64")
}

fn pkcs8_pem(der: &[u8]) -> String {
    format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        STANDARD.encode(der)
    )
}

fn b64(jwk: &Value, m: &str) -> String {
    jwk[m].as_str().expect(m).to_owned()
}

fn bench_tokens(c: &mut Criterion) {
    let root = tempfile::tempdir().expect("tempdir");
    for alg in [Alg::HS256, Alg::RS256, Alg::ES256, Alg::EdDSA] {
        let dir = root.path().join(alg.as_str());
        let keys = KeyRing::load_or_create(&dir, alg).expect("keys");
        let kid = keys.active_kid().to_owned();
        let jwks = keys.jwks();
        let svc = TokenService::new(
            keys,
            TokenConfig::new(ISS, AUD),
            Arc::new(MemoryRevocations::new()),
            Arc::new(MemoryRefreshStore::new()),
        );
        let material = private_material(&dir, &kid);
        let jwk = jwks["keys"].get(0).cloned().unwrap_or(Value::Null);
        let (enc, dec, jalg) = match alg {
            Alg::HS256 => (
                EncodingKey::from_secret(&material),
                DecodingKey::from_secret(&material),
                jsonwebtoken::Algorithm::HS256,
            ),
            Alg::RS256 => (
                EncodingKey::from_rsa_pem(pkcs8_pem(&material).as_bytes()).expect("rsa pem"),
                DecodingKey::from_rsa_components(&b64(&jwk, "n"), &b64(&jwk, "e")).expect("rsa"),
                jsonwebtoken::Algorithm::RS256,
            ),
            Alg::ES256 => (
                EncodingKey::from_ec_pem(pkcs8_pem(&material).as_bytes()).expect("ec pem"),
                DecodingKey::from_ec_components(&b64(&jwk, "x"), &b64(&jwk, "y")).expect("ec"),
                jsonwebtoken::Algorithm::ES256,
            ),
            _ => (
                EncodingKey::from_ed_pem(pkcs8_pem(&material).as_bytes()).expect("ed pem"),
                DecodingKey::from_ed_components(&b64(&jwk, "x")).expect("ed"),
                jsonwebtoken::Algorithm::EdDSA,
            ),
        };

        let mut req = AccessRequest::new("user-1");
        req.roles = vec!["reader".into()];
        req.session_id = Some("family-1".into());
        let issued = svc.issue_access(&req).expect("issue");
        let token = issued.token.expose().to_owned();
        // The baseline signs the very same claims, so both sides hash equal-sized input.
        let claims: Value = svc
            .verify(&token)
            .map(|v| json!(&*v.claims))
            .expect("verify");
        let mut header = Header::new(jalg);
        header.kid = Some(kid.clone());
        let baseline_token = jsonwebtoken::encode(&header, &claims, &enc).expect("encode");
        let mut validation = Validation::new(jalg);
        validation.set_audience(&[AUD]);
        jsonwebtoken::decode::<Value>(&baseline_token, &dec, &validation).expect("baseline decode");

        let mut g = c.benchmark_group(format!("issue/{alg}"));
        g.bench_function("token-core", |b| {
            b.iter(|| svc.issue_access(black_box(&req)).expect("issue"))
        });
        g.bench_function("jsonwebtoken-baseline", |b| {
            b.iter(|| jsonwebtoken::encode(&header, black_box(&claims), &enc).expect("encode"))
        });
        g.finish();

        let mut g = c.benchmark_group(format!("verify/{alg}"));
        // First presentation of a token: a fresh one per iteration (issued untimed), so
        // the verified-token cache never helps.
        g.bench_function("token-core", |b| {
            b.iter_batched(
                || {
                    svc.issue_access(&req)
                        .expect("issue")
                        .token
                        .expose()
                        .to_owned()
                },
                |t| svc.verify(black_box(&t)).expect("verify"),
                BatchSize::SmallInput,
            )
        });
        // The same token again (what a client does on every request): a cache hit,
        // still checking the clock and both revocation lists.
        g.bench_function("token-core-again", |b| {
            b.iter(|| svc.verify(black_box(&token)).expect("verify"))
        });
        g.bench_function("jsonwebtoken-baseline", |b| {
            b.iter(|| {
                jsonwebtoken::decode::<Value>(black_box(&baseline_token), &dec, &validation)
                    .expect("decode")
            })
        });
        g.finish();
    }

    // Refusals must be cheap too: an oversized token costs a hash, alg none a header parse.
    let keys = KeyRing::load_or_create(&root.path().join("refuse"), Alg::ES256).expect("keys");
    let svc = TokenService::new(
        keys,
        TokenConfig::new(ISS, AUD),
        Arc::new(MemoryRevocations::new()),
        Arc::new(MemoryRefreshStore::new()),
    );
    let none = "eyJhbGciOiJub25lIn0.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.";
    let mut g = c.benchmark_group("refuse");
    g.bench_function("alg-none", |b| {
        b.iter(|| svc.verify(black_box(none)).expect_err("refused"))
    });
    g.finish();
}

criterion_group!(benches, bench_tokens);
criterion_main!(benches);
