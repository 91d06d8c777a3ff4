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
token, jwks_url, issuer = sys.argv[1], sys.argv[2], sys.argv[3]
key = jwt.PyJWKClient(jwks_url).get_signing_key_from_jwt(token)
claims = jwt.decode(token, key.key, algorithms=["ES256", "RS256", "EdDSA"], audience="tokenwatch-api", issuer=issuer)
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
        // The server was given no issuer: it is its own address.
        &[access, &s.url("/.well-known/jwks.json"), &s.base],
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
    let (ok, stdout, stderr) = python(SIGN_HS256, &[shared, "pyjwt-shared", &s.base]);
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

/// Authlib as an app would use it: it reads the endpoints from the discovery
/// document, makes a PKCE (S256) authorization URL, and exchanges the code the
/// login page sends back (the browser is played by `requests`). It then calls the
/// API with the token it got.
const AUTHLIB_CODE_FLOW: &str = r#"
import html, json, os, re, sys
import requests
from authlib.common.security import generate_token
from authlib.integrations.requests_client import OAuth2Session
os.environ["AUTHLIB_INSECURE_TRANSPORT"] = "1"  # the test server is plain http on 127.0.0.1
base, user, password, redirect_uri = sys.argv[1:5]
meta = requests.get(base + "/.well-known/openid-configuration", timeout=30).json()
assert meta["issuer"] == base, meta
assert "S256" in meta["code_challenge_methods_supported"], meta
assert "none" in meta["token_endpoint_auth_methods_supported"], meta
client = OAuth2Session("py-app", redirect_uri=redirect_uri, scope="read",
                       code_challenge_method="S256", token_endpoint_auth_method="none")
verifier = generate_token(64)
url, state = client.create_authorization_url(meta["authorization_endpoint"], code_verifier=verifier)
browser = requests.Session()
page = browser.get(url, timeout=30)
assert page.status_code == 200, page.text
form = {name: html.unescape(value) for name, value in
        re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page.text)}
form.update(username=user, password=password, decision="allow")
answer = browser.post(meta["authorization_endpoint"], data=form, allow_redirects=False, timeout=30)
assert answer.status_code == 303, answer.text
location = answer.headers["Location"]
assert location.startswith(redirect_uri), location
token = client.fetch_token(meta["token_endpoint"], authorization_response=location,
                           state=state, code_verifier=verifier)
me = client.get(base + "/api/v1/me", timeout=30).json()
print(json.dumps({"me": me, "scope": token.get("scope"), "has_refresh": "refresh_token" in token}))
"#;

#[test]
fn authlib_discovers_the_server_and_completes_the_code_flow() {
    let ok = Command::new("python3")
        .args(["-c", "import authlib, requests"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        assert!(
            std::env::var("TOKENWATCH_REQUIRE_PYTHON").is_err(),
            "python3 with Authlib is required (pip install authlib requests)"
        );
        eprintln!("SKIP: python3 with Authlib not found (pip install authlib requests)");
        return;
    }
    let (_tmp, dir) = data_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let password = "a-password-for-the-authlib-test";
    let out = cli(
        &dir,
        &["users", "add", "carol", "--password-stdin"],
        password,
    );
    assert_eq!(out.status, 0, "{}", out.stderr);
    let redirect = "http://127.0.0.1:1/callback";
    let out = cli(
        &dir,
        &[
            "clients",
            "add",
            "py-app",
            "--kind",
            "public",
            "--scope",
            "read write",
            "--redirect-uri",
            redirect,
        ],
        "",
    );
    assert_eq!(out.status, 0, "{}", out.stderr);
    let s = Server::start(&dir);
    let (ok, stdout, stderr) = python(AUTHLIB_CODE_FLOW, &[&s.base, "carol", password, redirect]);
    assert!(ok, "Authlib could not complete the flow: {stderr}");
    let v: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["me"]["username"], "carol");
    assert_eq!(v["me"]["client_id"], "py-app");
    assert_eq!(v["scope"], "read");
    assert_eq!(v["has_refresh"], true);
}
