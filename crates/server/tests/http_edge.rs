//! HTTP edge cases of the token endpoints and the bearer middleware, in process:
//! the real `routes::configure` app on the real `AppState` of a fresh data dir
//! (real SQLite files, the real audit writer), driven by `actix_web::test`.
//! Each test reads back the audit events its requests committed.

#[path = "../benches/support/app.rs"]
mod app;

use actix_web::http::{header, StatusCode};
use actix_web::{test, App};
use audit_store::StoredEvent;
use aws_lc_rs::hmac;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};
use token_core::{Alg, IssuerBinding};
use tokenwatch::app::AppState;
use tokenwatch::config::FileConfig;
use tokenwatch::state::{ClientKind, NewClient, Role};

const PASSWORD: &str = "correct horse battery staple";

/// The app `serve` runs, over `data`.
macro_rules! service {
    ($data:expr) => {
        test::init_service(App::new().configure(|cfg| tokenwatch::routes::configure(cfg, &$data)))
            .await
    };
}

fn events(data: &AppState) -> Vec<StoredEvent> {
    data.store
        .reader()
        .expect("reader")
        .events_after(0, 10_000)
        .expect("events")
}

fn last_of(data: &AppState, kind: &str) -> StoredEvent {
    events(data)
        .into_iter()
        .rev()
        .find(|e| e.kind == kind)
        .unwrap_or_else(|| panic!("no {kind} event"))
}

fn basic(id: &str, secret: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
    )
}

/// A user, and a confidential client with its secret.
fn user_and_client(data: &AppState, user: &str, client: &str) -> String {
    data.state
        .add_user(user, Role::User, PASSWORD)
        .expect("add user");
    data.state
        .add_client(&NewClient::new(client, ClientKind::Confidential))
        .expect("add client")
        .expect("a confidential client has a secret")
}

/// `(access_token, refresh_token)` from the password grant through `client`.
async fn login<S>(app: &S, user: &str, client: (&str, &str)) -> (String, String)
where
    S: actix_web::dev::Service<
        actix_http::Request,
        Response = actix_web::dev::ServiceResponse,
        Error = actix_web::Error,
    >,
{
    let req = test::TestRequest::post()
        .uri("/oauth/token")
        .insert_header((header::AUTHORIZATION, basic(client.0, client.1)))
        .set_form([
            ("grant_type", "password"),
            ("username", user),
            ("password", PASSWORD),
        ])
        .to_request();
    let resp = test::call_service(app, req).await;
    assert_eq!(resp.status(), StatusCode::OK, "login of {user}");
    let body: Value = test::read_body_json(resp).await;
    (
        body["access_token"].as_str().expect("access").to_owned(),
        body["refresh_token"].as_str().expect("refresh").to_owned(),
    )
}

async fn me<S>(app: &S, authorization: &[&str]) -> actix_web::dev::ServiceResponse
where
    S: actix_web::dev::Service<
        actix_http::Request,
        Response = actix_web::dev::ServiceResponse,
        Error = actix_web::Error,
    >,
{
    let mut req = test::TestRequest::get().uri("/api/v1/me");
    for value in authorization {
        req = req.append_header((header::AUTHORIZATION, *value));
    }
    test::call_service(app, req.to_request()).await
}

fn challenge(resp: &actix_web::dev::ServiceResponse) -> String {
    resp.headers()
        .get(header::WWW_AUTHENTICATE)
        .map(|v| v.to_str().expect("ascii").to_owned())
        .unwrap_or_default()
}

/// RFC 6750 §3.1: two Authorization headers make the request malformed
/// (`invalid_request`, 400), with a reason of their own in the audit record,
/// whatever the headers hold.
#[actix_web::test]
async fn two_authorization_headers_are_an_invalid_request() {
    let (_tmp, data) = app::open(FileConfig::default());
    let app = service!(data);
    let token = app::access_token(&data);
    let bearer = format!("Bearer {token}");
    assert_eq!(me(&app, &[&bearer]).await.status(), StatusCode::OK);

    let basic_ab = basic("a", "b");
    for pair in [
        [bearer.as_str(), bearer.as_str()],
        [basic_ab.as_str(), bearer.as_str()],
        [bearer.as_str(), "Bearer garbage"],
    ] {
        let resp = me(&app, &pair).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{pair:?}");
        let www = challenge(&resp);
        assert!(
            www.contains("error=\"invalid_request\"")
                && www.contains("error_description=\"duplicate_authorization\""),
            "{www}"
        );
        let body: Value = test::read_body_json(resp).await;
        assert_eq!(body["error"], "invalid_request");
        let ev = last_of(&data, "access.denied");
        assert_eq!(ev.reason.as_deref(), Some("duplicate_authorization"));
    }
    // One Basic header alone is no bearer token: a bare challenge, no error.
    let resp = me(&app, &[&basic_ab]).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(!challenge(&resp).contains("error="));
    assert_eq!(
        last_of(&data, "access.denied").reason.as_deref(),
        Some("missing_token")
    );
}

/// `Bearer T T` and dotted garbage are malformed, not a JWE.
#[actix_web::test]
async fn garbage_bearer_values_are_malformed() {
    let (_tmp, data) = app::open(FileConfig::default());
    let app = service!(data);
    let token = app::access_token(&data);
    for value in [
        format!("Bearer {token} {token}"),
        "Bearer a.b.c.d".to_string(),
        "Bearer a.b.c.d.e".to_string(),
    ] {
        let resp = me(&app, &[&value]).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert!(
            challenge(&resp).contains("error_description=\"malformed\""),
            "{}",
            challenge(&resp)
        );
    }
}

fn hs256_token(secret: &[u8], kid: &str, claims: &Value) -> String {
    let enc = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let input = format!(
        "{}.{}",
        enc(&json!({"alg": "HS256", "typ": "JWT", "kid": kid})),
        enc(claims)
    );
    let sig = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
}

/// A shared secret imported for another issuer verifies that issuer's tokens only,
/// and what those tokens say about roles grants nothing.
#[actix_web::test]
async fn an_imported_key_cannot_mint_tokenwatch_identities() {
    let (_tmp, data) = app::open(FileConfig::default());
    let app = service!(data);
    let secret = [9u8; 32];
    let binding = IssuerBinding::new("billing", None).expect("binding");
    data.tokens
        .import_hmac("billing-key", Alg::HS256, &secret, &binding)
        .expect("import");
    let own = IssuerBinding::new(data.settings.issuer.clone(), None).expect("binding");
    assert!(data
        .tokens
        .import_hmac("evil", Alg::HS256, &secret, &own)
        .is_err());

    let now = token_core::unix_now();
    let claims = |iss: &str| {
        json!({"iss": iss, "aud": data.settings.audience, "sub": "mallory", "username": "admin",
               "roles": ["admin"], "exp": now + 300, "iat": now, "jti": format!("j-{iss}")})
    };
    let forged = hs256_token(
        &secret,
        "billing-key",
        &claims(data.settings.issuer.as_str()),
    );
    let resp = me(&app, &[&format!("Bearer {forged}")]).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(challenge(&resp).contains("issuer_mismatch"));

    let partner = hs256_token(&secret, "billing-key", &claims("billing"));
    let resp = me(&app, &[&format!("Bearer {partner}")]).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = test::read_body_json(resp).await;
    assert_eq!(body["sub"], "mallory");
    assert_eq!(
        body["roles"],
        json!([]),
        "no tokenwatch roles from an imported key"
    );
    let granted = last_of(&data, "access.granted");
    assert_eq!(granted.detail["key"], "imported");
}

async fn revoke<S>(app: &S, auth: Option<&str>, form: &[(&str, &str)]) -> StatusCode
where
    S: actix_web::dev::Service<
        actix_http::Request,
        Response = actix_web::dev::ServiceResponse,
        Error = actix_web::Error,
    >,
{
    let mut req = test::TestRequest::post()
        .uri("/oauth/revoke")
        .set_form(form);
    if let Some(a) = auth {
        req = req.insert_header((header::AUTHORIZATION, a));
    }
    test::call_service(app, req.to_request()).await.status()
}

/// RFC 7009 §2.1: the client authenticates, and only its own tokens are revoked;
/// another client's token and an unknown one are still answered 200.
#[actix_web::test]
async fn revocation_requires_the_client_that_holds_the_token() {
    let (_tmp, data) = app::open(FileConfig::default());
    let app = service!(data);
    let web_secret = user_and_client(&data, "alice", "web");
    let other_secret = data
        .state
        .add_client(&NewClient::new("other", ClientKind::Confidential))
        .expect("client")
        .expect("secret");
    let (access, refresh) = login(&app, "alice", ("web", &web_secret)).await;
    let bearer = format!("Bearer {access}");

    // No client authentication: 401 invalid_client, audited, nothing revoked.
    let status = revoke(&app, None, &[("token", access.as_str())]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let ev = last_of(&data, "token.revoked");
    assert_eq!(
        (ev.reason.as_deref(), ev.token_fp.clone()),
        (
            Some("invalid_client"),
            Some(token_core::fingerprint(&access))
        )
    );
    // Two Authorization headers: which one authenticates would be a guess.
    let req = test::TestRequest::post()
        .uri("/oauth/revoke")
        .append_header((header::AUTHORIZATION, basic("web", &web_secret)))
        .append_header((header::AUTHORIZATION, basic("other", &other_secret)))
        .set_form([("token", access.as_str())])
        .to_request();
    let resp = test::call_service(&app, req).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: Value = test::read_body_json(resp).await;
    assert_eq!(body["error"], "invalid_request");
    // A wrong secret: 401 as well.
    let status = revoke(
        &app,
        Some(&basic("web", "wrong")),
        &[("token", access.as_str())],
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(me(&app, &[&bearer]).await.status(), StatusCode::OK);

    // Another client: 200, but the tokens stay valid and the refusal is recorded.
    let other = basic("other", &other_secret);
    for form in [
        [
            ("token", access.as_str()),
            ("token_type_hint", "access_token"),
        ],
        [
            ("token", refresh.as_str()),
            ("token_type_hint", "refresh_token"),
        ],
    ] {
        assert_eq!(revoke(&app, Some(&other), &form).await, StatusCode::OK);
        let ev = last_of(&data, "token.revoked");
        assert_eq!(ev.reason.as_deref(), Some("client_mismatch"), "{form:?}");
        assert_eq!(ev.outcome, audit_store::Outcome::Failure);
    }
    assert_eq!(me(&app, &[&bearer]).await.status(), StatusCode::OK);

    // Unknown token: 200 (RFC 7009 §2.2).
    assert_eq!(
        revoke(&app, Some(&other), &[("token", "no-such-token")]).await,
        StatusCode::OK
    );

    // The owner: the access token stops working, then the refresh family ends.
    let owner = basic("web", &web_secret);
    assert_eq!(
        revoke(&app, Some(&owner), &[("token", access.as_str())]).await,
        StatusCode::OK
    );
    assert_eq!(
        me(&app, &[&bearer]).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        revoke(
            &app,
            Some(&owner),
            &[
                ("token", refresh.as_str()),
                ("token_type_hint", "refresh_token")
            ]
        )
        .await,
        StatusCode::OK
    );
    let ev = last_of(&data, "token.revoked");
    assert_eq!(ev.outcome, audit_store::Outcome::Success);
    assert_eq!(ev.detail["effect"], "family revoked");
    let resp = refresh_grant(&app, &owner, &refresh).await;
    assert_eq!(resp.0, StatusCode::BAD_REQUEST, "a revoked family is gone");
}

async fn refresh_grant<S>(app: &S, auth: &str, refresh: &str) -> (StatusCode, Value)
where
    S: actix_web::dev::Service<
        actix_http::Request,
        Response = actix_web::dev::ServiceResponse,
        Error = actix_web::Error,
    >,
{
    let req = test::TestRequest::post()
        .uri("/oauth/token")
        .insert_header((header::AUTHORIZATION, auth))
        .set_form([("grant_type", "refresh_token"), ("refresh_token", refresh)])
        .to_request();
    let resp = test::call_service(app, req).await;
    let status = resp.status();
    let body = test::read_body(resp).await;
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// With `refresh_reuse_grace_secs`, the honest double submit gets the same new
/// refresh token and a `token.refresh_grace` event; the family lives on.
#[actix_web::test]
async fn a_double_submit_within_the_grace_gets_the_same_refresh_token() {
    let (_tmp, data) = app::open(FileConfig {
        refresh_reuse_grace_secs: Some(30),
        ..FileConfig::default()
    });
    let app = service!(data);
    let secret = user_and_client(&data, "alice", "web");
    let auth = basic("web", &secret);
    let (_, refresh) = login(&app, "alice", ("web", &secret)).await;

    let (status, first) = refresh_grant(&app, &auth, &refresh).await;
    assert_eq!(status, StatusCode::OK);
    let (status, second) = refresh_grant(&app, &auth, &refresh).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_eq!(second["refresh_token"], first["refresh_token"]);
    let access = second["access_token"].as_str().expect("access");
    assert_eq!(
        me(&app, &[&format!("Bearer {access}")]).await.status(),
        StatusCode::OK
    );
    let ev = last_of(&data, "token.refresh_grace");
    assert_eq!(ev.detail["grace_repeat"], true);
    assert!(events(&data)
        .iter()
        .all(|e| e.kind != "refresh.reuse_detected"));

    // The new token rotates as usual; the old parent has no grace any more.
    let next = first["refresh_token"].as_str().expect("refresh");
    assert_eq!(refresh_grant(&app, &auth, next).await.0, StatusCode::OK);
    assert_eq!(
        refresh_grant(&app, &auth, &refresh).await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        last_of(&data, "refresh.reuse_detected").reason.as_deref(),
        Some("refresh_reused")
    );
}

/// Off by default: the same double submit revokes the family (RFC 9700 §4.14.2).
#[actix_web::test]
async fn without_a_grace_a_double_submit_revokes_the_family() {
    let (_tmp, data) = app::open(FileConfig::default());
    let app = service!(data);
    let secret = user_and_client(&data, "alice", "web");
    let auth = basic("web", &secret);
    let (_, refresh) = login(&app, "alice", ("web", &secret)).await;
    let (status, first) = refresh_grant(&app, &auth, &refresh).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        refresh_grant(&app, &auth, &refresh).await.0,
        StatusCode::BAD_REQUEST
    );
    last_of(&data, "refresh.reuse_detected");
    let next = first["refresh_token"].as_str().expect("refresh");
    assert_eq!(
        refresh_grant(&app, &auth, next).await.0,
        StatusCode::BAD_REQUEST
    );
    assert!(events(&data)
        .iter()
        .all(|e| e.kind != "token.refresh_grace"));
}
