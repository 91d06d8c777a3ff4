//! Key storage, rotation, pruning, import rules and the JWKS, on real files.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use common::*;
use serde_json::{json, Value};
use token_core::*;

/// A 1024-bit RSA private key (PKCS#8 DER, base64url), made with
/// `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:1024` and
/// `openssl pkcs8 -topk8 -nocrypt`. Test-only.
const RSA_1024_PKCS8: &str = "MIICdwIBADANBgkqhkiG9w0BAQEFAASCAmEwggJdAgEAAoGBAN1PfnSQ4t937NxRkuqIc_yi-T9t_Ns-Hzi8wtuorWJUlzEDLQuNxciEElgu5iRIpbZHfXQbXOFbDlP9As3DiH6FVylDc5mYImTytc8yyydCLLByXLXQ5J_v8OzRM21lzaJ6toNYOXk3auQja5gCLO7SQ4ydzuPDAeYgSptj5onvAgMBAAECgYEAnj2U4awnTDnntrDtJ51hsaamKWBviCQnFt6BRaaaMtDhOj5XGwfH_9PPehYuoIsBUhBT940JIGmHGS6zroS9NsVCmU0Fu8Hf5qE16lZfPAP4DCqwDJOPYzbpAlzukJsehEZq5r760Ml6AePEz308UdvFQc3HTUuWpzDuD2DrvCECQQD5pWI_WMOEYxa0vwmkqTqZDktd6suoVPcbwcozIy07_i0931kDwEBxa_Uv9OfTsbZjjCRjswyLMKewcgcqTladAkEA4vF8G7uDGyKfJ7ceS8Injpb0EQjrFBBawoEeQhqUESpuuHauVGCpOVEwY5hSr6bG7la-5glsm0oYC22APFS2-wJAEue-V_O94rGqT4fEEC8sm9ikRnl4cMf2aqizSkoYq9lkzbGzSQBvIOe_CqGuSK7FlCZRvycZBRVrLYaFGmQSVQJBAMh6-d9p4-UJzb2A-COGzfkaA1w1G65q0DK5a6iL4DfV21_bgB-MEJJQ1cV1373KQDx2p0eCFc6NQvZ9cmZZlBcCQF41o5rQmCNUmvrgM1lVkUbWRr30LP_Cea2Eo8AqSqHFmgFM2KAZWkKEOXgAuTx4oGnMNQRp5mTWdNsjvBMGeiI";

fn mode(path: &Path) -> u32 {
    fs::metadata(path).expect("metadata").permissions().mode() & 0o777
}

fn service(keys: KeyRing) -> TokenService {
    TokenService::new(
        keys,
        config(),
        Arc::new(MemoryRevocations::new()),
        Arc::new(MemoryRefreshStore::new()),
    )
}

fn key_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn every_algorithm_round_trips_and_survives_a_reload() {
    let root = tempfile::tempdir().expect("tempdir");
    for alg in Alg::ALL {
        let dir = root.path().join(alg.as_str());
        let svc = service(KeyRing::load_or_create(&dir, alg).expect("create"));
        let mut req = AccessRequest::new("user-7");
        req.username = Some("alice".into());
        req.roles = vec!["admin".into(), "audit".into()];
        req.client_id = Some("cli".into());
        req.scope = Some("read write".into());
        req.session_id = Some("fam-1".into());
        req.extra.insert("tenant".into(), json!("acme"));
        let issued = svc.issue_access(&req).expect("issue");
        assert_eq!(issued.alg, alg);
        assert_eq!(issued.fingerprint, fingerprint(issued.token.expose()));
        assert_eq!(issued.expires_at - issued.issued_at, 15 * 60);
        let v = svc
            .verify(issued.token.expose())
            .unwrap_or_else(|r| panic!("{alg}: {r}"));
        assert_eq!((v.alg, v.kid.as_str()), (alg, issued.kid.as_str()));
        let c = &v.claims;
        assert_eq!(
            (c.iss.as_str(), c.aud.as_str(), c.sub.as_str()),
            (ISS, AUD, "user-7")
        );
        assert_eq!(c.jti, issued.jti);
        assert_eq!(c.username.as_deref(), Some("alice"));
        assert_eq!(c.roles, ["admin", "audit"]);
        assert_eq!(c.scopes(), ["read", "write"]);
        assert_eq!(c.sid.as_deref(), Some("fam-1"));
        assert_eq!(c.extra.get("tenant"), Some(&json!("acme")));

        // Key files are private, and a restarted service still accepts the token.
        assert_eq!(mode(&dir), 0o700, "{alg} dir");
        let files = key_files(&dir);
        assert_eq!(files, [format!("{}.json", issued.kid)]);
        assert_eq!(mode(&dir.join(&files[0])), 0o600, "{alg} file");
        drop(svc);
        let reloaded = service(KeyRing::load_or_create(&dir, Alg::ES256).expect("reload"));
        assert_eq!(
            reloaded.keys().len(),
            1,
            "reload must not generate another key"
        );
        assert!(
            reloaded.verify(issued.token.expose()).is_ok(),
            "{alg} after reload"
        );
    }
}

#[test]
fn rotation_keeps_old_tokens_valid_and_publishes_retired_public_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys_dir = dir.path().join("keys");
    let svc = service(KeyRing::load_or_create(&keys_dir, Alg::RS256).expect("create"));
    let old = svc.issue_access(&AccessRequest::new("u")).expect("issue");
    let es = svc.rotate_keys(Alg::ES256).expect("rotate");
    let ed = svc.rotate_keys(Alg::EdDSA).expect("rotate");
    let hs = svc.rotate_keys(Alg::HS512).expect("rotate");
    assert!(hs.active);
    let new = svc.issue_access(&AccessRequest::new("u")).expect("issue");
    assert_eq!(new.kid, hs.kid);
    assert!(
        svc.verify(old.token.expose()).is_ok(),
        "token of a retired key"
    );
    assert!(svc.verify(new.token.expose()).is_ok());

    let infos = svc.keys();
    assert_eq!(infos.iter().filter(|k| k.active).count(), 1);
    assert!(infos
        .iter()
        .filter(|k| !k.active)
        .all(|k| k.retired_at.is_some()));

    let jwks = svc.jwks();
    let published: Vec<&Value> = jwks["keys"].as_array().expect("keys").iter().collect();
    let kids: Vec<&str> = published
        .iter()
        .map(|k| k["kid"].as_str().expect("kid"))
        .collect();
    assert_eq!(kids.len(), 3, "RSA, EC, OKP; never the HMAC key: {kids:?}");
    for k in [&old.kid, &es.kid, &ed.kid] {
        assert!(kids.contains(&k.as_str()), "{k} missing from JWKS");
    }
    let text = jwks.to_string();
    assert!(!text.contains(&hs.kid) && !text.contains("\"oct\"") && !text.contains("\"d\""));
    for k in &published {
        assert_eq!(k["use"], "sig");
        match k["kty"].as_str() {
            Some("RSA") => assert!(k["alg"] == "RS256" && k["n"].is_string() && k["e"] == "AQAB"),
            Some("EC") => assert!(k["crv"] == "P-256" && k["x"].is_string() && k["y"].is_string()),
            Some("OKP") => assert!(k["crv"] == "Ed25519" && k["x"].is_string()),
            other => panic!("unexpected kty {other:?}"),
        }
    }

    // After a restart the newest key is still the active one.
    drop(svc);
    let ring = KeyRing::load_or_create(&keys_dir, Alg::RS256).expect("reload");
    assert_eq!(ring.active_kid(), hs.kid);
}

#[test]
fn pruning_drops_only_keys_retired_long_enough() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys_dir = dir.path().join("keys");
    let mut ring = KeyRing::load_or_create(&keys_dir, Alg::ES256).expect("create");
    let first = ring.active_kid().to_owned();
    ring.import_hmac(SHARED_KID, Alg::HS256, SHARED_SECRET)
        .expect("import");
    let second = ring.rotate(Alg::ES256).expect("rotate").kid;
    let now = unix_now();
    assert!(ring.prune_retired(now, 3600).expect("prune").is_empty());
    assert_eq!(
        ring.prune_retired(now + 3600, 3600).expect("prune"),
        std::slice::from_ref(&first)
    );
    let left: Vec<String> = ring.keys().into_iter().map(|k| k.kid).collect();
    assert_eq!(left.len(), 2);
    assert!(left.contains(&second) && left.contains(&SHARED_KID.to_owned()));
    assert!(!keys_dir.join(format!("{first}.json")).exists());
    // The pruned key is gone for good: its tokens now name an unknown kid.
    let again = KeyRing::load_or_create(&keys_dir, Alg::ES256).expect("reload");
    assert_eq!(again.keys().len(), 2);
}

#[test]
fn loose_permissions_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys_dir = dir.path().join("keys");
    let ring = KeyRing::load_or_create(&keys_dir, Alg::EdDSA).expect("create");
    let file = keys_dir.join(format!("{}.json", ring.active_kid()));
    fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).expect("chmod");
    let err = KeyRing::load_or_create(&keys_dir, Alg::EdDSA).expect_err("group-readable key");
    assert!(
        matches!(err, KeyError::InsecurePermissions { mode: 0o644, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("chmod 600"), "{err}");
    fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).expect("chmod");

    fs::set_permissions(&keys_dir, fs::Permissions::from_mode(0o755)).expect("chmod");
    let err = KeyRing::load_or_create(&keys_dir, Alg::EdDSA).expect_err("world-listable dir");
    assert!(err.to_string().contains("chmod 700"), "{err}");
}

#[test]
fn broken_key_files_are_reported_without_their_contents() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys_dir = dir.path().join("keys");
    let ring = KeyRing::load_or_create(&keys_dir, Alg::ES256).expect("create");
    let path = keys_dir.join(format!("{}.json", ring.active_kid()));
    let body = fs::read_to_string(&path).expect("read");
    let material = serde_json::from_str::<Value>(&body).expect("json")["material"]
        .as_str()
        .expect("material")
        .to_owned();
    fs::write(&path, body.replace("\"ES256\"", "[\"ES256\"]")).expect("write");
    let err = KeyRing::load_or_create(&keys_dir, Alg::ES256).expect_err("corrupt");
    let msg = err.to_string();
    assert!(matches!(err, KeyError::Corrupt { .. }), "{msg}");
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(!msg.contains(&material[..20]), "error leaks key material");
}

#[test]
fn weak_keys_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys_dir = dir.path().join("keys");
    let mut ring = KeyRing::load_or_create(&keys_dir, Alg::ES256).expect("create");
    for (alg, short) in [(Alg::HS256, 31), (Alg::HS384, 47), (Alg::HS512, 63)] {
        let err = ring
            .import_hmac("weak", alg, &vec![1u8; short])
            .expect_err("short secret");
        assert!(
            matches!(err, KeyError::SecretTooShort { len, .. } if len == short),
            "{err}"
        );
        ring.import_hmac(&format!("ok-{alg}"), alg, &vec![1u8; short + 1])
            .expect("long enough");
    }
    assert!(matches!(
        ring.import_hmac("x", Alg::HS256, b"secret"),
        Err(KeyError::SecretTooShort { .. })
    ));
    assert!(matches!(
        ring.import_hmac("x", Alg::HS256, b""),
        Err(KeyError::SecretTooShort { .. })
    ));
    assert!(matches!(
        ring.import_hmac("x", Alg::RS256, &[1; 64]),
        Err(KeyError::NotHmac { .. })
    ));
    assert!(matches!(
        ring.import_hmac("../etc/passwd", Alg::HS256, &[1; 64]),
        Err(KeyError::InvalidKid)
    ));

    // Re-importing the same secret is a no-op; a different one under the kid is refused.
    ring.import_hmac("ok-HS256", Alg::HS256, &[1; 32])
        .expect("idempotent");
    assert!(matches!(
        ring.import_hmac("ok-HS256", Alg::HS256, &[2; 32]),
        Err(KeyError::KidInUse { .. })
    ));
    let active = ring.active_kid().to_owned();
    assert!(matches!(
        ring.import_hmac(&active, Alg::HS256, &[1; 32]),
        Err(KeyError::KidInUse { .. })
    ));

    // RSA under 2048 bits: as a public JWK and as a key file.
    use base64::Engine;
    let der = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(RSA_1024_PKCS8)
        .expect("b64");
    assert!(der.len() > 600);
    let n_1024 = b64(&[0xc5; 128]);
    let err = ring
        .import_jwk(&json!({"kty": "RSA", "kid": "old-rsa", "n": n_1024, "e": "AQAB"}))
        .expect_err("1024-bit JWK");
    assert!(matches!(err, KeyError::RsaTooSmall { bits: 1024 }), "{err}");

    let file = keys_dir.join("legacy.json");
    let stored = json!({"format": 1, "kid": "legacy", "alg": "RS256", "created_at": 1, "retired_at": null,
                        "imported": false, "material": RSA_1024_PKCS8});
    fs::write(&file, stored.to_string()).expect("write");
    fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).expect("chmod");
    let err = KeyRing::load_or_create(&keys_dir, Alg::ES256).expect_err("1024-bit key file");
    assert!(matches!(err, KeyError::RsaTooSmall { bits: 1024 }), "{err}");
}

#[test]
fn public_jwk_import_rules() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut ring = KeyRing::load_or_create(&dir.path().join("k"), Alg::EdDSA).expect("create");
    let x = b64(&[3u8; 32]);
    for (jwk, why) in [
        (json!({"kty": "OKP", "crv": "Ed25519", "x": x}), "no kid"),
        (
            json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "p", "d": x}),
            "private part",
        ),
        (
            json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "p", "use": "enc"}),
            "use enc",
        ),
        (
            json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "p", "alg": "ES256"}),
            "alg mismatch",
        ),
        (
            json!({"kty": "EC", "crv": "P-384", "x": x, "y": x, "kid": "p"}),
            "curve",
        ),
        (json!({"kty": "oct", "k": x, "kid": "p"}), "oct"),
        (
            json!({"kty": "EC", "crv": "P-256", "x": b64(&[1; 31]), "y": x, "kid": "p"}),
            "short x",
        ),
    ] {
        assert!(ring.import_jwk(&jwk).is_err(), "{why} accepted");
    }
    let info = ring
        .import_jwk(&json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "partner"}))
        .expect("ok");
    assert!(info.verify_only && !info.active && info.alg == Alg::EdDSA);
    assert_eq!(
        ring.import_jwk(&json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "partner"}))
            .expect("again"),
        info
    );
    // Imported keys are not ours to publish.
    assert!(!ring.jwks().to_string().contains("partner"));
    assert!(ring.public_key_pem("partner").is_none());
}

#[test]
fn public_key_pem_is_a_spki_pem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ring = KeyRing::load_or_create(&dir.path().join("k"), Alg::RS256).expect("create");
    let pem = ring.public_key_pem(ring.active_kid()).expect("pem");
    assert!(
        pem.starts_with("-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"),
        "{pem}"
    );
    assert!(pem.ends_with("-----END PUBLIC KEY-----\n"));
    assert!(pem.lines().all(|l| l.len() <= 64));
}
