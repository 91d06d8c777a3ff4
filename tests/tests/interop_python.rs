//! Interop with the JWT library most of our users' APIs run on: PyJWT.
//! A token tokenwatch issues verifies in PyJWT through the JWKS, and an HS256
//! token PyJWT signs with a shared secret verifies in tokenwatch.
//!
//! Needs python3 with PyJWT[crypto]; CI installs them and sets
//! TOKENWATCH_REQUIRE_PYTHON=1 so a missing interpreter fails instead of skipping.

use std::process::Command;

use serde_json::Value;
use tokenwatch_e2e::{cli, data_dir, http, Server};

fn python_with_pyjwt() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import jwt, cryptography"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        assert!(
            std::env::var("TOKENWATCH_REQUIRE_PYTHON").is_err(),
            "python3 with PyJWT[crypto] is required (pip install 'pyjwt[crypto]')"
        );
        eprintln!("SKIP: python3 with PyJWT[crypto] not found (pip install 'pyjwt[crypto]')");
    }
    ok
}

fn python(script: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python3");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const VERIFY_WITH_JWKS: &str = r#"
import json, sys, jwt
token, jwks_url = sys.argv[1], sys.argv[2]
key = jwt.PyJWKClient(jwks_url).get_signing_key_from_jwt(token)
claims = jwt.decode(token, key.key, algorithms=["ES256", "RS256", "EdDSA"], audience="tokenwatch-api", issuer="tokenwatch")
print(json.dumps(claims))
"#;

const SIGN_HS256: &str = r#"
import sys, time, uuid, jwt
secret, kid = sys.argv[1], sys.argv[2]
now = int(time.time())
iss = sys.argv[3] if len(sys.argv) > 3 else "py-service"
print(jwt.encode({"iss": iss, "aud": "tokenwatch-api", "sub": "py-service", "username": "py-service",
                  "roles": ["admin"], "iat": now, "nbf": now, "exp": now + 300, "jti": str(uuid.uuid4())},
                 secret, algorithm="HS256", headers={"kid": kid}))
"#;

#[test]
fn pyjwt_verifies_our_tokens_and_we_verify_pyjwt_hs256() {
    if !python_with_pyjwt() {
        return;
    }
    let (_tmp, dir) = data_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let shared = "a-shared-secret-of-at-least-32-bytes-for-hs256";
    let out = cli(
        &dir,
        &[
            "keys",
            "import-hmac",
            "--kid",
            "pyjwt-shared",
            "--alg",
            "HS256",
            "--issuer",
            "py-service",
            "--secret-stdin",
        ],
        shared,
    );
    assert_eq!(out.status, 0, "{}", out.stderr);

    let s = Server::start(&dir);
    let password = s.admin_password.clone().unwrap();
    let login: Value = http()
        .post(s.url("/oauth/token"))
        .form(&[
            ("grant_type", "password"),
            ("username", "admin"),
            ("password", password.as_str()),
        ])
        .send()
        .unwrap()
        .json()
        .unwrap();
    let access = login["access_token"].as_str().unwrap();

    let (ok, stdout, stderr) = python(
        VERIFY_WITH_JWKS,
        &[access, &s.url("/.well-known/jwks.json")],
    );
    assert!(ok, "PyJWT refused our token: {stderr}");
    let claims: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(claims["username"], "admin");

    let (ok, stdout, stderr) = python(SIGN_HS256, &[shared, "pyjwt-shared"]);
    assert!(ok, "{stderr}");
    let py_token = stdout.trim();
    let resp = http()
        .get(s.url("/api/v1/me"))
        .bearer_auth(py_token)
        .send()
        .unwrap();
    assert_eq!(
        resp.status(),
        200,
        "a PyJWT HS256 token with the shared secret verifies"
    );
    let me: Value = resp.json().unwrap();
    assert_eq!(me["sub"], "py-service");
    assert_eq!(
        me["roles"],
        serde_json::json!([]),
        "a shared secret grants no tokenwatch roles"
    );

    // The shared secret cannot vouch for tokenwatch's own issuer.
    let (ok, stdout, stderr) = python(SIGN_HS256, &[shared, "pyjwt-shared", "tokenwatch"]);
    assert!(ok, "{stderr}");
    let resp = http()
        .get(s.url("/api/v1/me"))
        .bearer_auth(stdout.trim())
        .send()
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert!(resp.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("issuer_mismatch"));

    // The same token signed with another secret is refused.
    let (_, stdout, _) = python(
        SIGN_HS256,
        &["another-secret-of-at-least-32-bytes-long!", "pyjwt-shared"],
    );
    let resp = http()
        .get(s.url("/api/v1/me"))
        .bearer_auth(stdout.trim())
        .send()
        .unwrap();
    assert_eq!(resp.status(), 401);
}

#[test]
fn cli_issue_and_verify() {
    let (_tmp, dir) = data_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let out = cli(
        &dir,
        &[
            "token", "issue", "--sub", "svc-1", "--ttl", "60", "--role", "user",
        ],
        "",
    );
    assert_eq!(out.status, 0, "{}", out.stderr);
    let token = out.stdout.trim().to_string();
    assert_eq!(token.matches('.').count(), 2);

    let out = cli(&dir, &["token", "verify"], &token);
    assert_eq!(out.status, 0, "{}", out.stderr);
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["valid"], true);
    assert_eq!(v["claims"]["sub"], "svc-1");

    // Change one character in the middle of the signature (the last one carries padding bits).
    let mut chars: Vec<char> = token.chars().collect();
    let i = chars.len() - 10;
    chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
    let tampered: String = chars.into_iter().collect();
    let out = cli(&dir, &["token", "verify"], &tampered);
    assert_eq!(out.status, 2);
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["valid"], false);
    assert_eq!(v["reason"], "bad_signature");

    let out = cli(&dir, &["keys", "rotate"], "");
    assert_eq!(out.status, 0, "{}", out.stderr);
    let out = cli(&dir, &["token", "verify"], &token);
    assert_eq!(
        out.status, 0,
        "a token signed before rotation still verifies: {}",
        out.stdout
    );
    let out = cli(&dir, &["keys", "list"], "");
    assert_eq!(out.stdout.lines().count(), 2, "{}", out.stdout);
    assert!(out.stdout.contains("active") && out.stdout.contains("verify-only"));

    let out = cli(
        &dir,
        &["users", "add", "shorty", "--password-stdin"],
        "short",
    );
    assert_ne!(out.status, 0);
    assert!(out.stderr.contains("at least 12"), "{}", out.stderr);
}
