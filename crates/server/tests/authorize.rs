//! The authorization-code flow with PKCE, in process: every error answer of
//! `/oauth/authorize` and of the code exchange, the login and consent form, the
//! discovery documents, and per-client grants. The real `routes::configure` app
//! on the real `AppState` of a fresh data dir, driven by `actix_web::test`; each
//! test reads back the audit events its requests committed.

#[path = "../benches/support/app.rs"]
mod app;

use actix_web::cookie::Cookie;
use actix_web::dev::ServiceResponse;
use actix_web::http::{header, StatusCode};
use actix_web::{test, App};
use audit_store::StoredEvent;
use base64::Engine;
use serde_json::Value;
use tokenwatch::app::AppState;
use tokenwatch::config::FileConfig;
use tokenwatch::state::{ClientKind, GrantType, NewClient, Role};

/// Parameters to replace in (or, empty, remove from) a valid request.
type Params = &'static [(&'static str, &'static str)];

const PASSWORD: &str = "correct horse battery staple";
const SPA_CB: &str = "https://app.example/cb";
const WEB_CB: &str = "http://127.0.0.1:9/callback?tenant=a";
/// RFC 7636 Appendix B.
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

macro_rules! service {
    ($data:expr) => {
        test::init_service(App::new().configure(|cfg| tokenwatch::routes::configure(cfg, &$data)))
            .await
    };
}

trait Svc:
    actix_web::dev::Service<actix_http::Request, Response = ServiceResponse, Error = actix_web::Error>
{
}
impl<S> Svc for S where
    S: actix_web::dev::Service<
        actix_http::Request,
        Response = ServiceResponse,
        Error = actix_web::Error,
    >
{
}

struct Fixture {
    _tmp: tempfile::TempDir,
    data: actix_web::web::Data<AppState>,
    /// The secret of `web`, a confidential client with the password grant off.
    web_secret: String,
    legacy_secret: String,
}

/// alice; `spa` (public), `web` (confidential, code + refresh only) and `legacy`
/// (confidential, the grants clients had before this flow).
fn fixture() -> Fixture {
    let (tmp, data) = app::open(FileConfig::default());
    data.state
        .add_user("alice", Role::User, PASSWORD)
        .expect("user");
    let mut spa = NewClient::new("spa", ClientKind::Public);
    spa.redirect_uris = vec![SPA_CB.into()];
    spa.scope = Some("read write".into());
    assert!(data.state.add_client(&spa).expect("spa").is_none());
    let mut web = NewClient::new("web", ClientKind::Confidential);
    web.redirect_uris = vec![WEB_CB.into()];
    web.grant_types = Some(vec![GrantType::AuthorizationCode, GrantType::RefreshToken]);
    let web_secret = data.state.add_client(&web).expect("web").expect("secret");
    let legacy_secret = data
        .state
        .add_client(&NewClient::new("legacy", ClientKind::Confidential))
        .expect("legacy")
        .expect("secret");
    Fixture {
        _tmp: tmp,
        data,
        web_secret,
        legacy_secret,
    }
}

fn events(data: &AppState, kind: &str) -> Vec<StoredEvent> {
    data.store
        .reader()
        .expect("reader")
        .events_after(0, 10_000)
        .expect("events")
        .into_iter()
        .filter(|e| e.kind == kind)
        .collect()
}

fn last(data: &AppState, kind: &str) -> StoredEvent {
    events(data, kind)
        .pop()
        .unwrap_or_else(|| panic!("no {kind} event"))
}

fn basic(id: &str, secret: &str) -> String {
    let pair = format!("{id}:{secret}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

fn query(pairs: &[(&str, &str)]) -> String {
    serde_urlencoded::to_string(pairs).expect("query")
}

/// A valid authorization request of `spa`, with `over` replacing or (with an
/// empty value) removing parameters.
fn spa_request(over: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    let mut p = vec![
        ("response_type", "code"),
        ("client_id", "spa"),
        ("redirect_uri", SPA_CB),
        ("code_challenge", CHALLENGE),
        ("code_challenge_method", "S256"),
        ("state", "st-123"),
        ("scope", "read"),
    ];
    for (k, v) in over {
        p.retain(|(pk, _)| pk != k);
        if !v.is_empty() {
            p.push((k, v));
        }
    }
    p
}

async fn get(app: &impl Svc, pairs: &[(&str, &str)]) -> ServiceResponse {
    let req = test::TestRequest::get()
        .uri(&format!("/oauth/authorize?{}", query(pairs)))
        .to_request();
    test::call_service(app, req).await
}

fn location(resp: &ServiceResponse) -> Option<url::Url> {
    resp.headers()
        .get(header::LOCATION)
        .map(|l| url::Url::parse(l.to_str().expect("ascii")).expect("absolute Location"))
}

fn param(url: &url::Url, key: &str) -> Option<String> {
    url.query_pairs()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

async fn body_text(resp: ServiceResponse) -> String {
    String::from_utf8(test::read_body(resp).await.to_vec()).expect("utf-8")
}

/// The page's form: its CSRF field and the cookie that must come back with it.
struct Page {
    csrf: String,
    cookie: Cookie<'static>,
    html: String,
}

async fn page(app: &impl Svc, pairs: &[(&str, &str)]) -> Page {
    let resp = get(app, pairs).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let cookie = resp
        .response()
        .cookies()
        .find(|c| c.name() == "tw_authz_csrf")
        .expect("CSRF cookie")
        .into_owned();
    let html = body_text(resp).await;
    let csrf = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("csrf field")
        .to_string();
    Page { csrf, cookie, html }
}

/// Submits the page's form for `pairs` with a decision and credentials.
async fn submit(
    app: &impl Svc,
    pairs: &[(&str, &str)],
    decision: &str,
    password: &str,
) -> ServiceResponse {
    let p = page(app, pairs).await;
    let mut form: Vec<(&str, &str)> = pairs.to_vec();
    form.extend([
        ("csrf", p.csrf.as_str()),
        ("decision", decision),
        ("username", "alice"),
        ("password", password),
    ]);
    let req = test::TestRequest::post()
        .uri("/oauth/authorize")
        .cookie(p.cookie)
        .set_form(&form)
        .to_request();
    test::call_service(app, req).await
}

/// Logs alice in for `pairs` and returns the code from the redirect.
async fn code_for(app: &impl Svc, pairs: &[(&str, &str)]) -> String {
    let resp = submit(app, pairs, "allow", PASSWORD).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let to = location(&resp).expect("redirect");
    param(&to, "code").expect("code")
}

async fn token(app: &impl Svc, form: &[(&str, &str)], auth: Option<String>) -> (StatusCode, Value) {
    let mut req = test::TestRequest::post().uri("/oauth/token").set_form(form);
    if let Some(a) = auth {
        req = req.insert_header((header::AUTHORIZATION, a));
    }
    let resp = test::call_service(app, req.to_request()).await;
    let status = resp.status();
    (status, test::read_body_json(resp).await)
}

async fn exchange_spa(
    app: &impl Svc,
    code: &str,
    verifier: &str,
    redirect: &str,
) -> (StatusCode, Value) {
    token(
        app,
        &[
            ("grant_type", "authorization_code"),
            ("client_id", "spa"),
            ("code", code),
            ("code_verifier", verifier),
            ("redirect_uri", redirect),
        ],
        None,
    )
    .await
}

async fn me(app: &impl Svc, access: &str) -> StatusCode {
    let req = test::TestRequest::get()
        .uri("/api/v1/me")
        .insert_header((header::AUTHORIZATION, format!("Bearer {access}")))
        .to_request();
    test::call_service(app, req).await.status()
}

/// Without a trustworthy redirect URI there is no redirect at all: an error page.
#[actix_web::test]
async fn unknown_client_or_unregistered_redirect_uri_gets_a_page_never_a_redirect() {
    let f = fixture();
    let app = service!(f.data);
    let cases: [(Params, &str); 7] = [
        (&[("client_id", "")], "missing_client_id"),
        (&[("client_id", "nobody")], "unknown_client"),
        (&[("redirect_uri", "")], "redirect_uri_mismatch"),
        (
            &[("redirect_uri", "https://evil.example/cb")],
            "redirect_uri_mismatch",
        ),
        (
            &[("redirect_uri", "https://app.example/cb/")],
            "redirect_uri_mismatch",
        ),
        (
            &[("redirect_uri", "https://app.example/cb?x=1")],
            "redirect_uri_mismatch",
        ),
        // Registered for `web`, not for `spa`.
        (&[("redirect_uri", WEB_CB)], "redirect_uri_mismatch"),
    ];
    for (over, reason) in cases {
        let resp = get(&app, &spa_request(over)).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{over:?}");
        assert!(location(&resp).is_none(), "{over:?} must not redirect");
        let csp = resp
            .headers()
            .get(header::CONTENT_SECURITY_POLICY)
            .expect("csp");
        assert!(csp.to_str().unwrap().contains("frame-ancestors 'none'"));
        let html = body_text(resp).await;
        assert!(html.contains("Sign-in request refused"), "{html}");
        assert!(
            !html.contains("evil.example"),
            "nothing links to the unregistered URI"
        );
        assert_eq!(
            last(&f.data, "authorize.refused").reason.as_deref(),
            Some(reason)
        );
    }
    // A parameter given twice: which one counts would be a guess.
    let mut twice = spa_request(&[]);
    twice.push(("redirect_uri", "https://evil.example/cb"));
    let resp = get(&app, &twice).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(location(&resp).is_none());
}

/// After the redirect URI is trusted, errors go back to it with `state` and `iss`.
#[actix_web::test]
async fn later_errors_go_back_to_the_registered_uri_with_state() {
    let f = fixture();
    let app = service!(f.data);
    let cases: [(Params, &str, &str); 8] = [
        (
            &[("code_challenge", "")],
            "invalid_request",
            "missing_code_challenge",
        ),
        (
            &[("code_challenge_method", "plain")],
            "invalid_request",
            "pkce_plain",
        ),
        (
            &[("code_challenge_method", "")],
            "invalid_request",
            "pkce_plain",
        ),
        (
            &[("code_challenge_method", "S512")],
            "invalid_request",
            "pkce_method_unsupported",
        ),
        (
            &[("code_challenge", "too-short")],
            "invalid_request",
            "invalid_code_challenge",
        ),
        (
            &[("response_type", "token")],
            "unsupported_response_type",
            "unsupported_response_type",
        ),
        (
            &[("response_type", "")],
            "invalid_request",
            "missing_response_type",
        ),
        (&[("scope", "read admin")], "invalid_scope", "invalid_scope"),
    ];
    for (over, error, reason) in cases {
        let resp = get(&app, &spa_request(over)).await;
        assert_eq!(resp.status(), StatusCode::SEE_OTHER, "{over:?}");
        let to = location(&resp).expect("redirect");
        assert!(to.as_str().starts_with(SPA_CB), "{to}");
        assert_eq!(param(&to, "error").as_deref(), Some(error), "{over:?}");
        assert_eq!(param(&to, "state").as_deref(), Some("st-123"));
        assert_eq!(
            param(&to, "iss").as_deref(),
            Some(f.data.settings.issuer.as_str())
        );
        assert!(param(&to, "code").is_none());
        let ev = last(&f.data, "authorize.refused");
        assert_eq!(ev.reason.as_deref(), Some(reason));
        assert_eq!(ev.detail["client_id"], "spa");
    }
}

#[actix_web::test]
async fn the_page_is_labelled_framed_by_nobody_and_runs_no_script() {
    let f = fixture();
    let app = service!(f.data);
    let resp = get(&app, &spa_request(&[])).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let csp = resp
        .headers()
        .get(header::CONTENT_SECURITY_POLICY)
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("default-src 'none'") && !csp.contains("script-src"),
        "{csp}"
    );
    assert!(
        csp.contains("form-action 'self' https://app.example"),
        "{csp}"
    );
    assert_eq!(resp.headers().get(header::X_FRAME_OPTIONS).unwrap(), "DENY");
    assert_eq!(
        resp.headers().get(header::CACHE_CONTROL).unwrap(),
        "no-store"
    );
    let p = page(&app, &spa_request(&[])).await;
    assert!(p.cookie.http_only().unwrap_or(false));
    assert_eq!(
        p.cookie.same_site(),
        Some(actix_web::cookie::SameSite::Strict)
    );
    for needle in [
        "<label for=\"username\">",
        "<label for=\"password\">",
        "autofocus",
        "lang=\"en\"",
    ] {
        assert!(p.html.contains(needle), "{needle} missing");
    }
    assert!(!p.html.contains("<script"), "no script at all");
    assert!(p.html.contains("<strong id=\"client-name\">spa</strong>"));
}

#[actix_web::test]
async fn a_public_client_completes_the_flow_and_calls_the_api() {
    let f = fixture();
    let app = service!(f.data);
    let resp = submit(&app, &spa_request(&[]), "allow", PASSWORD).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let to = location(&resp).expect("redirect");
    assert_eq!(param(&to, "state").as_deref(), Some("st-123"));
    assert_eq!(
        param(&to, "iss").as_deref(),
        Some(f.data.settings.issuer.as_str())
    );
    let code = param(&to, "code").expect("code");

    let (status, body) = exchange_spa(&app, &code, VERIFIER, SPA_CB).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["scope"], "read");
    let access = body["access_token"].as_str().expect("access");
    assert!(body["refresh_token"].is_string());
    assert_eq!(me(&app, access).await, StatusCode::OK);
    let claims = f.data.tokens.verify(access).expect("verifies").claims;
    assert_eq!(claims.iss, f.data.settings.issuer);
    assert_eq!(claims.client_id.as_deref(), Some("spa"));

    let login = last(&f.data, "auth.login.success");
    assert_eq!(login.username.as_deref(), Some("alice"));
    assert_eq!(login.detail["grant_type"], "authorization_code");
    let approved = last(&f.data, "authorize.approved");
    assert_eq!(approved.token_fp, Some(token_core::fingerprint(&code)));
    let issued = last(&f.data, "token.issued");
    assert_eq!(issued.detail["grant_type"], "authorization_code");
    assert_eq!(issued.detail["client_id"], "spa");
    assert_eq!(issued.jti, Some(claims.jti.clone()));
    // The code itself is never recorded, only its fingerprint.
    let all = format!(
        "{:?}",
        f.data
            .store
            .reader()
            .unwrap()
            .events_after(0, 10_000)
            .unwrap()
    );
    assert!(!all.contains(&code));

    // The refresh token works for the public client by its client_id.
    let refresh = body["refresh_token"].as_str().unwrap();
    let (status, _) = token(
        &app,
        &[
            ("grant_type", "refresh_token"),
            ("client_id", "spa"),
            ("refresh_token", refresh),
        ],
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[actix_web::test]
async fn every_bad_exchange_is_refused_and_audited() {
    let f = fixture();
    let app = service!(f.data);
    let req = spa_request(&[]);

    // Wrong verifier: invalid_grant, and the code is burnt.
    let code = code_for(&app, &req).await;
    let wrong = "x".repeat(43);
    let (status, body) = exchange_spa(&app, &code, &wrong, SPA_CB).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
    assert_eq!(
        last(&f.data, "code.rejected").reason.as_deref(),
        Some("pkce_mismatch")
    );
    let (status, _) = exchange_spa(&app, &code, VERIFIER, SPA_CB).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "a burnt code stays burnt");
    assert_eq!(
        last(&f.data, "code.rejected").reason.as_deref(),
        Some("unknown_code")
    );

    // Wrong redirect_uri.
    let code = code_for(&app, &req).await;
    let (_, body) = exchange_spa(&app, &code, VERIFIER, "https://app.example/other").await;
    assert_eq!(body["error"], "invalid_grant");
    assert_eq!(
        last(&f.data, "code.rejected").reason.as_deref(),
        Some("redirect_uri_mismatch")
    );

    // A verifier that is not one (too short): invalid_grant.
    let code = code_for(&app, &req).await;
    let (_, body) = exchange_spa(&app, &code, "short", SPA_CB).await;
    assert_eq!(body["error"], "invalid_grant");
    assert_eq!(
        last(&f.data, "code.rejected").reason.as_deref(),
        Some("invalid_code_verifier")
    );

    // Missing verifier: invalid_request, audited; the code survives it.
    let code = code_for(&app, &req).await;
    let (status, body) = token(
        &app,
        &[
            ("grant_type", "authorization_code"),
            ("client_id", "spa"),
            ("code", &code),
            ("redirect_uri", SPA_CB),
        ],
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request"))
    );
    assert_eq!(
        last(&f.data, "code.rejected").reason.as_deref(),
        Some("missing_parameter")
    );

    // Another client presenting spa's code.
    let (status, body) = token(
        &app,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("code_verifier", VERIFIER),
            ("redirect_uri", SPA_CB),
        ],
        Some(basic("web", &f.web_secret)),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
    assert_eq!(
        last(&f.data, "code.rejected").reason.as_deref(),
        Some("client_mismatch")
    );

    // Expired: 60 s is all a code gets.
    let code = code_for(&app, &req).await;
    f.data.codes.backdate(61);
    let (_, body) = exchange_spa(&app, &code, VERIFIER, SPA_CB).await;
    assert_eq!(body["error"], "invalid_grant");
    assert_eq!(
        last(&f.data, "code.rejected").reason.as_deref(),
        Some("expired_code")
    );

    // Unknown client: 401 invalid_client; a public client sending a secret likewise.
    let code = code_for(&app, &req).await;
    for (id, secret) in [("nobody", None), ("spa", Some("guess"))] {
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("client_id", id),
            ("code", code.as_str()),
            ("code_verifier", VERIFIER),
            ("redirect_uri", SPA_CB),
        ];
        if let Some(s) = secret {
            form.push(("client_secret", s));
        }
        let (status, body) = token(&app, &form, None).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::UNAUTHORIZED, Some("invalid_client")),
            "{id}"
        );
    }
    // No client at all.
    let (status, _) = token(
        &app,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("code_verifier", VERIFIER),
            ("redirect_uri", SPA_CB),
        ],
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        last(&f.data, "code.rejected").reason.as_deref(),
        Some("no_client")
    );
    // None of that used the code up: spa still redeems it.
    let (status, _) = exchange_spa(&app, &code, VERIFIER, SPA_CB).await;
    assert_eq!(status, StatusCode::OK);

    // A client registered without the code grant: unauthorized_client.
    let (status, body) = token(
        &app,
        &[
            ("grant_type", "authorization_code"),
            ("code", "x"),
            ("code_verifier", VERIFIER),
            ("redirect_uri", SPA_CB),
        ],
        Some(basic("legacy", &f.legacy_secret)),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("unauthorized_client"))
    );
}

/// RFC 6749 §4.1.2: a code used twice revokes the tokens issued for it.
#[actix_web::test]
async fn a_reused_code_revokes_what_it_issued() {
    let f = fixture();
    let app = service!(f.data);
    let code = code_for(&app, &spa_request(&[])).await;
    let (status, body) = exchange_spa(&app, &code, VERIFIER, SPA_CB).await;
    assert_eq!(status, StatusCode::OK);
    let access = body["access_token"].as_str().unwrap().to_string();
    let refresh = body["refresh_token"].as_str().unwrap().to_string();
    assert_eq!(me(&app, &access).await, StatusCode::OK);

    let (status, body) = exchange_spa(&app, &code, VERIFIER, SPA_CB).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
    let reused = last(&f.data, "code.reused");
    assert_eq!(reused.detail["tokens_revoked"], true);
    assert_eq!(reused.username.as_deref(), Some("alice"));

    assert_eq!(me(&app, &access).await, StatusCode::UNAUTHORIZED);
    let (status, _) = token(
        &app,
        &[
            ("grant_type", "refresh_token"),
            ("client_id", "spa"),
            ("refresh_token", &refresh),
        ],
        None,
    )
    .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "the refresh family is revoked too"
    );
}

/// The password grant is switched off per client; public clients never have it.
#[actix_web::test]
async fn the_password_grant_is_refused_to_clients_without_it() {
    let f = fixture();
    let app = service!(f.data);
    let form = [
        ("grant_type", "password"),
        ("username", "alice"),
        ("password", PASSWORD),
    ];
    let (status, body) = token(&app, &form, Some(basic("web", &f.web_secret))).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("unauthorized_client"))
    );
    let ev = last(&f.data, "auth.login.failure");
    assert_eq!(ev.reason.as_deref(), Some("unauthorized_client"));
    assert_eq!(ev.detail["grant_type"], "password");
    assert_eq!(ev.detail["client_id"], "web");

    let mut public = form.to_vec();
    public.push(("client_id", "spa"));
    let (_, body) = token(&app, &public, None).await;
    assert_eq!(body["error"], "unauthorized_client");

    let (_, body) = token(
        &app,
        &[("grant_type", "client_credentials")],
        Some(basic("web", &f.web_secret)),
    )
    .await;
    assert_eq!(body["error"], "unauthorized_client");

    // A client registered before grants were configurable keeps its grants.
    let (status, _) = token(&app, &form, Some(basic("legacy", &f.legacy_secret))).await;
    assert_eq!(status, StatusCode::OK);

    // A public client cannot introspect: its client_id proves nothing.
    let (status, body) = token_at(
        &app,
        "/oauth/introspect",
        &[("client_id", "spa"), ("token", "x")],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_client"))
    );
}

async fn token_at(app: &impl Svc, path: &str, form: &[(&str, &str)]) -> (StatusCode, Value) {
    let req = test::TestRequest::post()
        .uri(path)
        .set_form(form)
        .to_request();
    let resp = test::call_service(app, req).await;
    let status = resp.status();
    (status, test::read_body_json(resp).await)
}

#[actix_web::test]
async fn the_confidential_client_authenticates_at_the_exchange() {
    let f = fixture();
    let app = service!(f.data);
    let pairs = [
        ("response_type", "code"),
        ("client_id", "web"),
        ("redirect_uri", WEB_CB),
        ("code_challenge", CHALLENGE),
        ("code_challenge_method", "S256"),
    ];
    let resp = submit(&app, &pairs, "allow", PASSWORD).await;
    let to = location(&resp).expect("redirect");
    // The registered query survives; no state was sent, none comes back.
    assert_eq!(param(&to, "tenant").as_deref(), Some("a"));
    assert!(param(&to, "state").is_none());
    let code = param(&to, "code").unwrap();
    let form = [
        ("grant_type", "authorization_code"),
        ("client_id", "web"),
        ("code", code.as_str()),
        ("code_verifier", VERIFIER),
        ("redirect_uri", WEB_CB),
    ];
    let (status, _) = token(&app, &form, None).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "a confidential client must authenticate"
    );
    let (status, body) = token(
        &app,
        &form[..1]
            .iter()
            .chain(&form[2..])
            .copied()
            .collect::<Vec<_>>(),
        Some(basic("web", &f.web_secret)),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[actix_web::test]
async fn login_failures_feed_the_lockout_and_csrf_and_deny_are_answered() {
    let f = fixture();
    let app = service!(f.data);
    let req = spa_request(&[]);

    let resp = submit(&app, &req, "allow", "wrong password here").await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(location(&resp).is_none());
    let html = body_text(resp).await;
    assert!(html.contains("Wrong username or password.") && html.contains("role=\"alert\""));
    let ev = last(&f.data, "auth.login.failure");
    assert_eq!(ev.reason.as_deref(), Some("bad_password"));
    assert_eq!(ev.detail["grant_type"], "authorization_code");

    // A locked account is refused before its password is checked, and reads as a wrong password.
    let policy = tokenwatch::response::LockoutPolicy {
        base_secs: 60,
        max_secs: 60,
    };
    f.data
        .state
        .apply_lockout("user", "alice", "test", policy)
        .expect("lock");
    let resp = submit(&app, &req, "allow", PASSWORD).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        last(&f.data, "auth.login.failure").reason.as_deref(),
        Some("account_locked")
    );
    f.data.state.lift_lockout("user", "alice").expect("lift");

    // Without the CSRF cookie, or with another token: 403, audited, nothing issued.
    let p = page(&app, &req).await;
    let mut form = req.clone();
    form.extend([
        ("csrf", p.csrf.as_str()),
        ("decision", "allow"),
        ("username", "alice"),
        ("password", PASSWORD),
    ]);
    let resp = test::call_service(
        &app,
        test::TestRequest::post()
            .uri("/oauth/authorize")
            .set_form(&form)
            .to_request(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        last(&f.data, "authorize.refused").reason.as_deref(),
        Some("csrf")
    );
    let forged = Cookie::new("tw_authz_csrf", "A".repeat(43));
    let resp = test::call_service(
        &app,
        test::TestRequest::post()
            .uri("/oauth/authorize")
            .cookie(forged)
            .set_form(&form)
            .to_request(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert!(events(&f.data, "authorize.approved").is_empty());

    // Deny: back to the client with access_denied and the state.
    let resp = submit(&app, &req, "deny", "").await;
    let to = location(&resp).expect("redirect");
    assert_eq!(param(&to, "error").as_deref(), Some("access_denied"));
    assert_eq!(param(&to, "state").as_deref(), Some("st-123"));
    assert_eq!(last(&f.data, "authorize.denied").detail["client_id"], "spa");
}

#[actix_web::test]
async fn discovery_describes_this_server() {
    let f = fixture();
    let app = service!(f.data);
    let mut docs = Vec::new();
    for path in [
        "/.well-known/oauth-authorization-server",
        "/.well-known/openid-configuration",
    ] {
        let resp = test::call_service(&app, test::TestRequest::get().uri(path).to_request()).await;
        assert_eq!(resp.status(), StatusCode::OK);
        docs.push(test::read_body_json::<Value, _>(resp).await);
    }
    assert_eq!(docs[0], docs[1]);
    let d = &docs[0];
    let iss = f.data.settings.issuer.as_str();
    assert_eq!(d["issuer"], iss);
    assert_eq!(
        d["authorization_endpoint"],
        format!("{iss}/oauth/authorize")
    );
    assert_eq!(
        d["code_challenge_methods_supported"],
        serde_json::json!(["S256"])
    );
    assert_eq!(d["response_types_supported"], serde_json::json!(["code"]));
    assert_eq!(
        d["access_token_signing_alg_values_supported"],
        serde_json::json!(["ES256"])
    );
    // Not an OpenID Provider, and it says nothing that would claim it is.
    for absent in [
        "userinfo_endpoint",
        "id_token_signing_alg_values_supported",
        "scopes_supported",
    ] {
        assert!(d.get(absent).is_none(), "{absent}");
    }
    // Every endpoint listed answers here (none is a 404).
    for key in [
        "authorization_endpoint",
        "token_endpoint",
        "jwks_uri",
        "revocation_endpoint",
        "introspection_endpoint",
    ] {
        let url = url::Url::parse(d[key].as_str().unwrap()).unwrap();
        let method = if key == "jwks_uri" || key == "authorization_endpoint" {
            "GET"
        } else {
            "POST"
        };
        let req = if method == "GET" {
            test::TestRequest::get()
        } else {
            test::TestRequest::post()
        };
        let resp = test::call_service(&app, req.uri(url.path()).to_request()).await;
        assert_ne!(resp.status(), StatusCode::NOT_FOUND, "{key}");
    }
}
