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
    ring.import_hmac(SHARED_KID, Alg::HS256, SHARED_SECRET, &shared_binding())
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
            .import_hmac("weak", alg, &vec![1u8; short], &shared_binding())
            .expect_err("short secret");
        assert!(
            matches!(err, KeyError::SecretTooShort { len, .. } if len == short),
            "{err}"
        );
        ring.import_hmac(
            &format!("ok-{alg}"),
            alg,
            &vec![1u8; short + 1],
            &shared_binding(),
        )
        .expect("long enough");
    }
    assert!(matches!(
        ring.import_hmac("x", Alg::HS256, b"secret", &shared_binding()),
        Err(KeyError::SecretTooShort { .. })
    ));
    assert!(matches!(
        ring.import_hmac("x", Alg::HS256, b"", &shared_binding()),
        Err(KeyError::SecretTooShort { .. })
    ));
    assert!(matches!(
        ring.import_hmac("x", Alg::RS256, &[1; 64], &shared_binding()),
        Err(KeyError::NotHmac { .. })
    ));
    assert!(matches!(
        ring.import_hmac("../etc/passwd", Alg::HS256, &[1; 64], &shared_binding()),
        Err(KeyError::InvalidKid)
    ));

    // Re-importing the same secret is a no-op; a different one under the kid is refused.
    ring.import_hmac("ok-HS256", Alg::HS256, &[1; 32], &shared_binding())
        .expect("idempotent");
    assert!(matches!(
        ring.import_hmac("ok-HS256", Alg::HS256, &[2; 32], &shared_binding()),
        Err(KeyError::KidInUse { .. })
    ));
    let active = ring.active_kid().to_owned();
    assert!(matches!(
        ring.import_hmac(&active, Alg::HS256, &[1; 32], &shared_binding()),
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
        .import_jwk(
            &json!({"kty": "RSA", "kid": "old-rsa", "n": n_1024, "e": "AQAB"}),
            &shared_binding(),
        )
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
        assert!(
            ring.import_jwk(&jwk, &shared_binding()).is_err(),
            "{why} accepted"
        );
    }
    let info = ring
        .import_jwk(
            &json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "partner"}),
            &shared_binding(),
        )
        .expect("ok");
    assert!(info.verify_only && !info.active && info.alg == Alg::EdDSA);
    assert_eq!(
        ring.import_jwk(
            &json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "partner"}),
            &shared_binding()
        )
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

/// Whoever holds a shared secret imported "for verification" must not be able to
/// mint tokenwatch identities: an imported key verifies only tokens of the issuer it
/// was bound to, never tokenwatch's own, and its tokens carry no tokenwatch roles.
#[test]
fn imported_keys_verify_only_their_own_issuer_and_grant_no_roles() {
    let f = fixture();
    let now = unix_now();
    let admin_claims = |iss: &str| {
        json!({"iss": iss, "aud": AUD, "sub": "mallory", "exp": now + 600, "iat": now,
               "jti": format!("j-{iss}"), "roles": ["admin"], "username": "admin"})
    };
    // tokenwatch's own issuer, admin role, signed with the shared secret: refused.
    let forged = craft(&shared_header(), &admin_claims(ISS), SHARED_SECRET);
    let rej = f
        .svc
        .verify(&forged)
        .expect_err("own issuer via imported key");
    assert_eq!(rej.reason, Reason::IssuerMismatch, "{}", rej.message);
    // Any issuer other than the bound one: refused.
    let other = craft(
        &shared_header(),
        &admin_claims("https://elsewhere.test"),
        SHARED_SECRET,
    );
    assert_eq!(
        f.svc.verify(&other).expect_err("other issuer").reason,
        Reason::IssuerMismatch
    );
    // The bound issuer verifies, marked imported, and its roles claim grants nothing.
    let partner = f
        .svc
        .verify(&craft(
            &shared_header(),
            &admin_claims(SHARED_ISS),
            SHARED_SECRET,
        ))
        .expect("bound issuer");
    assert_eq!(partner.origin, KeyOrigin::Imported);
    assert_eq!(partner.claims.roles, ["admin"], "the claim is read as sent");
    assert!(partner.roles().is_empty(), "but vouched for by no one");
    // Our own tokens keep their roles.
    let ours = f
        .svc
        .issue_access(&AccessRequest {
            roles: vec!["admin".into()],
            ..AccessRequest::new("root")
        })
        .expect("issue");
    let ours = f.svc.verify(ours.token.expose()).expect("own token");
    assert_eq!(
        (ours.origin, ours.roles()),
        (KeyOrigin::Own, &["admin".to_string()][..])
    );

    // Binding a key to tokenwatch's own issuer is refused at import.
    let err = f
        .svc
        .import_hmac(
            "evil",
            Alg::HS256,
            &[7; 32],
            &IssuerBinding::new(ISS, None).expect("b"),
        )
        .expect_err("own issuer");
    assert!(matches!(err, KeyError::OwnIssuer { .. }), "{err}");
    // ...and so is any spelling a loose relying party would take for it.
    for alias in [format!("{ISS}/"), ISS.to_ascii_uppercase()] {
        let err = f
            .svc
            .import_hmac(
                "evil",
                Alg::HS256,
                &[7; 32],
                &IssuerBinding::new(alias.clone(), None).expect("b"),
            )
            .expect_err(&alias);
        assert!(matches!(err, KeyError::OwnIssuer { .. }), "{alias}: {err}");
    }
    assert!(f.svc.keys().iter().all(|k| k.kid != "evil"));
    assert!(IssuerBinding::new(" ", None).is_err());
}

#[test]
fn an_imported_key_with_an_audience_needs_that_audience() {
    let f = fixture();
    let now = unix_now();
    let binding =
        IssuerBinding::new("https://billing.test", Some("billing-api".into())).expect("b");
    f.svc
        .import_hmac("billing", Alg::HS256, SHARED_SECRET, &binding)
        .expect("import");
    let hdr = json!({"alg": "HS256", "kid": "billing"});
    let claims = |aud: &str| {
        json!({"iss": "https://billing.test", "aud": aud, "sub": "svc", "exp": now + 600,
               "iat": now, "jti": format!("b-{aud}")})
    };
    assert_eq!(
        f.svc
            .verify(&craft(&hdr, &claims(AUD), SHARED_SECRET))
            .expect_err("our aud")
            .reason,
        Reason::AudienceMismatch
    );
    let ok = f
        .svc
        .verify(&craft(&hdr, &claims("billing-api"), SHARED_SECRET))
        .expect("bound audience");
    assert_eq!(ok.claims.aud, "billing-api");
}

/// A key imported before issuer binding existed is loaded but verifies nothing
/// until it is imported again with an issuer; the rebinding is persisted.
#[test]
fn an_unbound_key_from_an_older_data_dir_verifies_nothing_until_reimported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys_dir = dir.path().join("keys");
    KeyRing::load_or_create(&keys_dir, Alg::ES256).expect("create");
    // The key file exactly as an older tokenwatch wrote it (format 1, no issuer).
    let file = keys_dir.join(format!("{SHARED_KID}.json"));
    let legacy = json!({"format": 1, "kid": SHARED_KID, "alg": "HS256", "created_at": 1,
                        "retired_at": null, "imported": true, "material": b64(SHARED_SECRET)});
    fs::write(&file, legacy.to_string()).expect("write");
    fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).expect("chmod");

    let service = |dir: &std::path::Path| {
        TokenService::new(
            KeyRing::load_or_create(dir, Alg::ES256).expect("load"),
            config(),
            std::sync::Arc::new(MemoryRevocations::new()),
            std::sync::Arc::new(MemoryRefreshStore::new()),
        )
    };
    let svc = service(&keys_dir);
    let info = svc
        .keys()
        .into_iter()
        .find(|k| k.kid == SHARED_KID)
        .expect("loaded");
    assert!(info.verify_only && info.binding.is_none());
    let now = unix_now();
    for iss in [ISS, SHARED_ISS] {
        let token = craft(
            &shared_header(),
            &with(good_claims(now), "iss", json!(iss)),
            SHARED_SECRET,
        );
        let rej = svc.verify(&token).expect_err("unbound key");
        assert_eq!(rej.reason, Reason::IssuerMismatch, "{iss}");
        assert!(rej.message.contains("imported again"), "{}", rej.message);
    }

    // Re-importing the same secret with an issuer binds it, on disk too.
    svc.import_hmac(SHARED_KID, Alg::HS256, SHARED_SECRET, &shared_binding())
        .expect("rebind");
    let token = craft(&shared_header(), &good_claims(now), SHARED_SECRET);
    assert!(svc.verify(&token).is_ok());
    let reloaded = service(&keys_dir);
    assert_eq!(
        reloaded
            .keys()
            .into_iter()
            .find(|k| k.kid == SHARED_KID)
            .expect("key")
            .binding,
        Some(shared_binding())
    );
    assert!(reloaded.verify(&token).is_ok());

    // A key file edited to bind tokenwatch's own issuer still verifies nothing for it.
    let body = fs::read_to_string(&file).expect("read");
    fs::write(&file, body.replace(SHARED_ISS, ISS)).expect("edit");
    let edited = service(&keys_dir);
    let own = craft(
        &shared_header(),
        &with(good_claims(now), "iss", json!(ISS)),
        SHARED_SECRET,
    );
    assert_eq!(
        edited.verify(&own).expect_err("edited file").reason,
        Reason::IssuerMismatch
    );
}
