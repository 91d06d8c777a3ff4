//! HTTP edge cases of the console's exceptions and sources, in process: the real
//! routes and `AppState` (as `serve` opens them, through the benches' support
//! code) on a fresh data directory, one request at a time.

#[path = "../benches/support/app.rs"]
mod app;

use actix_web::cookie::Cookie;
use actix_web::{test, App};
use audit_store::{EventFilter, Outcome, StoredEvent};
use tokenwatch::app::AppState;
use tokenwatch::config::FileConfig;
use tokenwatch::state::Role;

/// A console user's session cookie and CSRF token.
struct Who {
    cookie: String,
    csrf: String,
}

fn session(data: &AppState, name: &str, role: Role) -> Who {
    let (cookie, s) = data.admin.create_session(name, role);
    Who {
        cookie,
        csrf: s.csrf,
    }
}

/// POSTs `form` (with the user's CSRF token) as `who`; the status and body.
macro_rules! post {
    ($app:expr, $who:expr, $path:expr, $form:expr) => {{
        let who: &Who = $who;
        let mut fields = vec![("csrf", who.csrf.as_str())];
        fields.extend_from_slice($form);
        let req = test::TestRequest::post()
            .uri($path)
            .cookie(Cookie::new("tw_session", who.cookie.clone()))
            .set_form(fields)
            .to_request();
        let resp = test::call_service($app, req).await;
        let status = resp.status().as_u16();
        let body = String::from_utf8_lossy(&test::read_body(resp).await).into_owned();
        (status, body)
    }};
}

/// GETs a console page as `who`; its body (200 asserted).
macro_rules! get {
    ($app:expr, $who:expr, $path:expr) => {{
        let who: &Who = $who;
        let req = test::TestRequest::get()
            .uri($path)
            .cookie(Cookie::new("tw_session", who.cookie.clone()))
            .to_request();
        let resp = test::call_service($app, req).await;
        assert_eq!(resp.status(), 200, "GET {}", $path);
        String::from_utf8_lossy(&test::read_body(resp).await).into_owned()
    }};
}

fn actions(data: &AppState) -> Vec<StoredEvent> {
    let f = EventFilter {
        kind: Some("admin.action".into()),
        ..Default::default()
    };
    data.store
        .reader()
        .unwrap()
        .query_events(&f, None, 10_000)
        .unwrap()
        .items
}

/// An exception form: detector, user, ip, hours.
fn form<'a>(
    detector: &'a str,
    user: &'a str,
    ip: &'a str,
    hours: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("detector", detector),
        ("user", user),
        ("ip", ip),
        ("hours", hours),
        ("reason", "INC-42 load test"),
    ]
}

#[actix_web::test]
async fn an_analyst_cannot_switch_off_detection_with_one_form_post() {
    let (_tmp, data) = app::open(FileConfig::default());
    let app =
        test::init_service(App::new().configure(|cfg| tokenwatch::routes::configure(cfg, &data)))
            .await;
    let analyst = session(&data, "analyst", Role::Analyst);
    let admin = session(&data, "admin", Role::Admin);

    // Each of these silences more than one analyst may: refused with a reason that
    // says so, recorded as a refused action, and nothing stored.
    for (f, says) in [
        (form("*", "", "0.0.0.0/0", ""), "every detector"),
        (form("*", "svc-batch", "", "24"), "every detector"),
        (
            form("brute-force", "", "0.0.0.0/0", "24"),
            "wider than an analyst",
        ),
        (
            form("brute-force", "", "::/0", "24"),
            "wider than an analyst",
        ),
        (
            form("brute-force", "", "10.0.0.0/23", "24"),
            "wider than an analyst",
        ),
        (
            form("brute-force", "", "2001:db8::/55", "24"),
            "wider than an analyst",
        ),
        (form("brute-force", "svc-batch", "", ""), "never expires"),
        (
            form("brute-force", "svc-batch", "", "2161"),
            "at most 2160 hours",
        ),
    ] {
        let (status, body) = post!(&app, &analyst, "/admin/exceptions", &f);
        assert_eq!(status, 403, "{f:?}: {body}");
        assert!(body.contains(says), "{f:?}: {body}");
    }
    assert!(data.state.list_exceptions().unwrap().is_empty());
    let refused = actions(&data)
        .into_iter()
        .filter(|e| e.outcome == Outcome::Failure && e.detail["action"] == "exception.add")
        .count();
    assert_eq!(refused, 8, "every refusal is an audit event");

    // Within the limits an analyst may; beyond them an admin may.
    for f in [
        form("brute-force", "svc-batch", "", "2160"),
        form("brute-force", "", "203.0.113.0/24", "1"),
        form("brute-force", "", "2001:db8:0:100::/56", "24"),
    ] {
        let (status, body) = post!(&app, &analyst, "/admin/exceptions", &f);
        assert_eq!(status, 303, "{f:?}: {body}");
    }
    let (status, body) = post!(
        &app,
        &admin,
        "/admin/exceptions",
        &form("*", "", "0.0.0.0/0", "")
    );
    assert_eq!(status, 303, "{body}");

    // An analyst cannot lift the admin's wide exception into something else either,
    // nor make their own last for ever.
    let all = data.state.list_exceptions().unwrap();
    let wide = all.iter().find(|e| e.detector == "*").unwrap();
    let own = all.iter().find(|e| e.created_by == "analyst").unwrap();
    let edit = |id: i64| format!("/admin/exceptions/{id}/edit");
    let (status, _) = post!(
        &app,
        &analyst,
        &edit(wide.id),
        &[("reason", "x"), ("hours", "1")]
    );
    assert_eq!(status, 403);
    let (status, body) = post!(
        &app,
        &analyst,
        &edit(own.id),
        &[("reason", "x"), ("hours", "")]
    );
    assert_eq!(
        (status, body.contains("never expires")),
        (403, true),
        "{body}"
    );
    let (status, _) = post!(
        &app,
        &analyst,
        &edit(own.id),
        &[("reason", "extended"), ("hours", "48")]
    );
    assert_eq!(status, 303);

    // The list shows who made each, when and why.
    let page = get!(&app, &analyst, "/admin/exceptions");
    for text in ["analyst", "admin", "INC-42 load test", "extended"] {
        assert!(page.contains(text), "{text} missing");
    }
    let edits = actions(&data)
        .into_iter()
        .filter(|e| e.detail["action"] == "exception.edit")
        .map(|e| e.outcome)
        .collect::<Vec<_>>();
    assert_eq!(
        edits,
        vec![Outcome::Success, Outcome::Failure, Outcome::Failure],
        "newest first: the refused edits and the one that was done"
    );
}

#[actix_web::test]
async fn an_absurd_lifetime_is_refused_by_name_and_no_time_is_made_up() {
    let (_tmp, data) = app::open(FileConfig::default());
    let app =
        test::init_service(App::new().configure(|cfg| tokenwatch::routes::configure(cfg, &data)))
            .await;
    let admin = session(&data, "admin", Role::Admin);
    for hours in [
        "99999999999999",
        "-5",
        "1.5",
        "87841",
        "9223372036854775807",
    ] {
        let (status, body) = post!(
            &app,
            &admin,
            "/admin/exceptions",
            &form("brute-force", "bob", "", hours)
        );
        assert_eq!(status, 400, "{hours}: {body}");
        assert!(body.contains("hours:"), "{hours}: {body}");
    }
    assert!(data.state.list_exceptions().unwrap().is_empty());

    // A row stored before lifetimes were bounded is shown without a made-up time.
    let (status, _) = post!(
        &app,
        &admin,
        "/admin/exceptions",
        &form("brute-force", "bob", "", "1")
    );
    assert_eq!(status, 303);
    let state_db = rusqlite::Connection::open(data.settings.state_db_path()).unwrap();
    state_db
        .execute(
            "UPDATE exceptions SET expires_at = ?1",
            [99_999_999_999_999i64 * 3600],
        )
        .unwrap();
    let page = get!(&app, &admin, "/admin/exceptions");
    assert!(!page.contains("invalid-time"), "{page}");
    assert!(page.contains("not a valid time"), "{page}");
}

#[actix_web::test]
async fn every_source_name_the_validator_accepts_can_be_revoked() {
    let (_tmp, data) = app::open(FileConfig::default());
    let app =
        test::init_service(App::new().configure(|cfg| tokenwatch::routes::configure(cfg, &data)))
            .await;
    let admin = session(&data, "admin", Role::Admin);
    let long = "a.".repeat(32);
    for name in [
        ".",
        "..",
        "...",
        "-",
        "@",
        "_",
        ".-@_",
        "a..b",
        long.as_str(),
    ] {
        let (status, body) = post!(&app, &admin, "/admin/sources", &[("name", name)]);
        assert_eq!(status, 200, "{name}: {body}");
        let (status, body) = post!(&app, &admin, "/admin/sources/revoke", &[("name", name)]);
        assert_eq!(status, 303, "{name}: {body}");
        let s = data.state.list_sources().unwrap();
        let s = s.iter().find(|s| s.name == name).unwrap();
        assert!(s.revoked_at.is_some(), "{name} still active");
    }
    // Names the validator refuses get a message saying what a name may be.
    for name in ["a/b", "50%", "a b", "é", &"x".repeat(65)] {
        let (status, body) = post!(&app, &admin, "/admin/sources", &[("name", name)]);
        assert_eq!(status, 400, "{name}");
        assert!(body.contains("1-64 characters"), "{name}: {body}");
    }
}
