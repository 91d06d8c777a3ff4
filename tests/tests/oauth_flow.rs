//! Discovery and the authorization-code flow with PKCE against a real
//! `tokenwatch serve`: every endpoint the metadata lists answers and every grant
//! it lists works; the issuer is a URL (derived from the bound address, or set
//! with `--issuer`) and is what tokens carry; the flow driven in a real headless
//! Chromium (Debian's `chromium`) from the login page to a protected API call.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::time::Duration;

use headless_chrome::{Browser, LaunchOptions};
use serde_json::Value;
use tokenwatch_e2e::{cli, data_dir, http, wait_for, Server};

const PASSWORD: &str = "a-password-for-the-flow-test";
/// RFC 7636 Appendix B.
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

fn no_redirects() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

fn add_user(dir: &std::path::Path) {
    let out = cli(
        dir,
        &["users", "add", "alice", "--password-stdin"],
        PASSWORD,
    );
    assert_eq!(out.status, 0, "{}", out.stderr);
}

/// Registers a client; returns its secret when it has one.
fn add_client(dir: &std::path::Path, args: &[&str]) -> Option<String> {
    let mut all = vec!["clients", "add"];
    all.extend(args);
    let out = cli(dir, &all, "");
    assert_eq!(out.status, 0, "clients add {args:?}: {}", out.stderr);
    out.stdout
        .lines()
        .find_map(|l| l.strip_prefix("client_secret: "))
        .map(|s| s.trim().to_string())
}

fn metadata(s: &Server, path: &str) -> Value {
    let resp = http().get(s.url(path)).send().unwrap();
    assert_eq!(resp.status(), 200, "{path}");
    resp.json().unwrap()
}

/// Plays the browser with plain HTTP: the login page, then the form posted with
/// its CSRF cookie. Returns the redirect's query parameters.
fn authorize_over_http(authorize_url: &str) -> Vec<(String, String)> {
    let client = no_redirects();
    let page = client.get(authorize_url).send().unwrap();
    assert_eq!(page.status(), 200);
    let cookie = page.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let html = page.text().unwrap();
    let mut form: Vec<(String, String)> = html
        .split("<input type=\"hidden\" name=\"")
        .skip(1)
        .map(|rest| {
            let name = rest.split('"').next().unwrap().to_string();
            let value = rest
                .split("value=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap();
            (name, unescape(value))
        })
        .collect();
    form.extend([
        ("username".into(), "alice".into()),
        ("password".into(), PASSWORD.into()),
        ("decision".into(), "allow".into()),
    ]);
    let base = authorize_url.split('?').next().unwrap();
    let resp = client
        .post(base)
        .header("cookie", cookie)
        .form(&form)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 303);
    let to = url_query(resp.headers()["location"].to_str().unwrap());
    assert!(to.iter().any(|(k, _)| k == "code"), "{to:?}");
    to
}

fn unescape(s: &str) -> String {
    s.replace("&#x2f;", "/")
        .replace("&#x27;", "'")
        .replace("&#39;", "'")
        .replace("&quot;", "\"")
        .replace("&#34;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

fn url_query(url: &str) -> Vec<(String, String)> {
    let q = url.split_once('?').map(|(_, q)| q).unwrap_or("");
    reqwest::Url::parse(&format!("http://x/?{q}"))
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn get<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn authorize_url(endpoint: &str, client_id: &str, redirect_uri: &str) -> String {
    let mut url = reqwest::Url::parse(endpoint).unwrap();
    url.query_pairs_mut().extend_pairs([
        ("response_type", "code"),
        ("client_id", client_id),
        ("redirect_uri", redirect_uri),
        ("code_challenge", CHALLENGE),
        ("code_challenge_method", "S256"),
        ("state", "s-42"),
    ]);
    url.into()
}

/// The metadata lists only what works: each endpoint answers, each grant issues a token.
#[test]
fn discovery_lists_endpoints_that_answer_and_grants_that_work() {
    let (_tmp, dir) = data_dir();
    std::fs::create_dir_all(&dir).unwrap();
    add_user(&dir);
    let secret = add_client(&dir, &["svc"]).expect("secret");
    add_client(
        &dir,
        &[
            "spa",
            "--kind",
            "public",
            "--redirect-uri",
            "http://127.0.0.1:1/cb",
        ],
    );
    let s = Server::start(&dir);
    let d = metadata(&s, "/.well-known/oauth-authorization-server");
    assert_eq!(d, metadata(&s, "/.well-known/openid-configuration"));
    assert_eq!(
        d["issuer"], s.base,
        "no issuer configured: the bound address"
    );

    let c = http();
    let jwks: Value = c
        .get(d["jwks_uri"].as_str().unwrap())
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(!jwks["keys"].as_array().unwrap().is_empty());
    for key in [
        "revocation_endpoint",
        "introspection_endpoint",
        "token_endpoint",
    ] {
        let r = c
            .post(d[key].as_str().unwrap())
            .form(&[("x", "y")])
            .send()
            .unwrap();
        assert!(
            r.status() == 400 || r.status() == 401,
            "{key} answers as an OAuth endpoint: {}",
            r.status()
        );
    }

    let token_url = d["token_endpoint"].as_str().unwrap();
    let mut refresh = None;
    for grant in d["grant_types_supported"].as_array().unwrap() {
        let grant = grant.as_str().unwrap();
        let resp = match grant {
            "password" => c
                .post(token_url)
                .basic_auth("svc", Some(&secret))
                .form(&[
                    ("grant_type", "password"),
                    ("username", "alice"),
                    ("password", PASSWORD),
                ])
                .send(),
            "client_credentials" => c
                .post(token_url)
                .basic_auth("svc", Some(&secret))
                .form(&[("grant_type", "client_credentials")])
                .send(),
            "authorization_code" => {
                let url = authorize_url(
                    d["authorization_endpoint"].as_str().unwrap(),
                    "spa",
                    "http://127.0.0.1:1/cb",
                );
                let back = authorize_over_http(&url);
                assert_eq!(get(&back, "state"), Some("s-42"));
                assert_eq!(get(&back, "iss"), Some(s.base.as_str()));
                c.post(token_url)
                    .form(&[
                        ("grant_type", "authorization_code"),
                        ("client_id", "spa"),
                        ("code", get(&back, "code").unwrap()),
                        ("code_verifier", VERIFIER),
                        ("redirect_uri", "http://127.0.0.1:1/cb"),
                    ])
                    .send()
            }
            // Checked below, with the refresh token one of the grants above gave.
            "refresh_token" => continue,
            other => panic!("metadata lists a grant this test does not know: {other}"),
        };
        let body: Value = resp.unwrap().json().unwrap();
        let access = body["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("{grant}: {body}"));
        if let Some(r) = body["refresh_token"].as_str() {
            refresh = Some((grant.to_string(), r.to_string()));
        }
        let me = c
            .get(s.url("/api/v1/me"))
            .bearer_auth(access)
            .send()
            .unwrap();
        assert_eq!(me.status(), 200, "{grant}");
    }
    let (from, refresh) = refresh.expect("some grant gave a refresh token");
    let req = c.post(token_url);
    let req = if from == "authorization_code" {
        req.form(&[
            ("grant_type", "refresh_token"),
            ("client_id", "spa"),
            ("refresh_token", &refresh),
        ])
    } else {
        req.basic_auth("svc", Some(&secret)).form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh.as_str()),
        ])
    };
    let body: Value = req.send().unwrap().json().unwrap();
    assert!(body["access_token"].is_string(), "refresh_token: {body}");
}

/// `--issuer` is what tokens and the metadata say; a bad one stops the start.
#[test]
fn the_issuer_flag_names_the_tokens_and_the_metadata() {
    let (_tmp, dir) = data_dir();
    std::fs::create_dir_all(&dir).unwrap();
    add_user(&dir);
    let out = cli(
        &dir,
        &["serve", "--listen", "127.0.0.1:0", "--issuer", "tokenwatch"],
        "",
    );
    assert_ne!(out.status, 0);
    assert!(
        out.stderr.contains("issuer") && out.stderr.contains("not an absolute URL"),
        "{}",
        out.stderr
    );
    let out = cli(
        &dir,
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--issuer",
            "https://id.example.test?x",
        ],
        "",
    );
    assert!(
        out.stderr.contains("no query or fragment"),
        "{}",
        out.stderr
    );

    let s = Server::start_with(&dir, &["--issuer", "https://id.example.test/"]);
    let d = metadata(&s, "/.well-known/openid-configuration");
    assert_eq!(d["issuer"], "https://id.example.test/");
    assert_eq!(d["token_endpoint"], "https://id.example.test/oauth/token");
    let body: Value = http()
        .post(s.url("/oauth/token"))
        .form(&[
            ("grant_type", "password"),
            ("username", "alice"),
            ("password", PASSWORD),
        ])
        .send()
        .unwrap()
        .json()
        .unwrap();
    let access = body["access_token"].as_str().unwrap();
    s.stop();
    // The CLI's offline verifier, given the same issuer by the variable, agrees.
    let verify = std::process::Command::new(tokenwatch_e2e::binary())
        .arg("--data-dir")
        .arg(&dir)
        .args(["token", "verify"])
        .env("TOKENWATCH_ISSUER", "https://id.example.test/")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    verify
        .stdin
        .as_ref()
        .unwrap()
        .write_all(access.as_bytes())
        .unwrap();
    let out = verify.wait_with_output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["claims"]["iss"], "https://id.example.test/", "{v}");
    assert_eq!(v["valid"], true, "{v}");

    // An imported key may not be bound to tokenwatch's issuer, in any spelling.
    for spelling in ["https://id.example.test", "HTTPS://ID.example.test/"] {
        let out = std::process::Command::new(tokenwatch_e2e::binary())
            .arg("--data-dir")
            .arg(&dir)
            .args([
                "keys",
                "import-hmac",
                "--kid",
                "k1",
                "--issuer",
                spelling,
                "--secret-stdin",
            ])
            .env("TOKENWATCH_ISSUER", "https://id.example.test/")
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                c.stdin
                    .take()
                    .unwrap()
                    .write_all(b"a-shared-secret-of-at-least-32-bytes-long")?;
                c.wait_with_output()
            })
            .unwrap();
        assert!(!out.status.success(), "{spelling}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("own issuer"),
            "{spelling}"
        );
    }
}

/// `clients add` refuses what the flow could not use safely.
#[test]
fn clients_add_checks_grants_and_redirect_uris() {
    let (_tmp, dir) = data_dir();
    std::fs::create_dir_all(&dir).unwrap();
    for (args, says) in [
        (
            &["p1", "--kind", "public"][..],
            "at least one --redirect-uri",
        ),
        (
            &[
                "p2",
                "--kind",
                "public",
                "--redirect-uri",
                "https://a.example/cb",
                "--grant-types",
                "authorization_code,password",
            ][..],
            "may not use the password grant",
        ),
        (
            &[
                "c1",
                "--redirect-uri",
                "http://app.example/cb",
                "--grant-types",
                "authorization_code",
            ][..],
            "use https",
        ),
        (
            &[
                "c2",
                "--redirect-uri",
                "https://a.example/cb#frag",
                "--grant-types",
                "authorization_code",
            ][..],
            "fragment",
        ),
        (
            &["c3", "--grant-types", "implicit"][..],
            "unknown grant type",
        ),
        (
            &["c4", "--redirect-uri", "https://a.example/cb"][..],
            "add it to --grant-types",
        ),
    ] {
        let mut all = vec!["clients", "add"];
        all.extend(args);
        let out = cli(&dir, &all, "");
        assert_ne!(out.status, 0, "{args:?}");
        assert!(out.stderr.contains(says), "{args:?}: {}", out.stderr);
    }
    let out = cli(
        &dir,
        &[
            "clients",
            "add",
            "spa",
            "--kind",
            "public",
            "--redirect-uri",
            "https://a.example/cb",
        ],
        "",
    );
    assert_eq!(out.status, 0, "{}", out.stderr);
    assert!(!out.stdout.contains("client_secret"));
    assert!(out
        .stdout
        .contains("grant_types: authorization_code refresh_token"));
}

/// A one-page app on 127.0.0.1 that only has to be there for the browser to land on.
fn callback_server() -> (String, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/callback", listener.local_addr().unwrap());
    let handle = std::thread::spawn(move || {
        for stream in listener.incoming().take(8) {
            let Ok(mut stream) = stream else { continue };
            let mut first = String::new();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let _ = reader.read_line(&mut first);
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
            }
            let body = "<!doctype html><title>app</title><h1 id=\"landed\">back in the app</h1>";
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (url, handle)
}

fn chromium() -> PathBuf {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("Debian's chromium package is needed (.ci/run installs it)")
}

/// The flow a browser app runs, in a real Chromium: the login page (focus on the
/// username, no script, a CSP that still lets the form lead back to the app), a
/// wrong password shown as an alert, then the code back at the app, exchanged
/// with the verifier, and the access token used on the API.
#[test]
fn pkce_flow_in_chromium_from_login_to_the_api() {
    let chromium = chromium();
    let (_tmp, dir) = data_dir();
    std::fs::create_dir_all(&dir).unwrap();
    add_user(&dir);
    let (callback, _app) = callback_server();
    add_client(
        &dir,
        &["spa", "--kind", "public", "--redirect-uri", &callback],
    );
    let s = Server::start(&dir);

    let profile = tempfile::tempdir().unwrap();
    let opts = LaunchOptions::default_builder()
        .path(Some(chromium))
        .headless(true)
        .sandbox(false)
        .user_data_dir(Some(profile.path().to_path_buf()))
        .idle_browser_timeout(Duration::from_secs(120))
        .args(
            [
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
            ]
            .iter()
            .map(OsStr::new)
            .collect(),
        )
        .build()
        .unwrap();
    let browser = Browser::new(opts).expect("launching headless chromium");
    let tab = browser.new_tab().unwrap();
    let url = authorize_url(&s.url("/oauth/authorize"), "spa", &callback);
    tab.navigate_to(&url).unwrap();
    tab.wait_for_element("#authorize-form").unwrap();
    let eval = |expr: &str| {
        tab.evaluate(expr, false)
            .unwrap()
            .value
            .unwrap_or(Value::Null)
    };
    assert_eq!(
        eval("document.activeElement.id"),
        "username",
        "focus starts on the username"
    );
    assert_eq!(
        eval("document.querySelector('label[for=password]').control.id"),
        "password"
    );
    assert_eq!(eval("document.scripts.length"), 0);

    // A wrong password: the page again, with an alert the username field points to.
    tab.type_str("alice").unwrap();
    tab.wait_for_element("#password").unwrap().click().unwrap();
    tab.type_str("not the password").unwrap();
    tab.wait_for_element("#allow").unwrap().click().unwrap();
    tab.wait_for_element("#authorize-error").unwrap();
    assert_eq!(
        eval("document.activeElement.id"),
        "password",
        "focus goes back to the password"
    );
    assert_eq!(
        eval("document.querySelector('#username').getAttribute('aria-describedby')"),
        "authorize-error"
    );

    tab.type_str(PASSWORD).unwrap();
    tab.press_key("Enter").unwrap();
    let landed = wait_for("the browser back at the app", || {
        let url = tab.get_url();
        url.starts_with(&callback).then_some(url)
    });
    tab.wait_for_element("#landed").unwrap();
    let back = url_query(&landed);
    assert_eq!(get(&back, "state"), Some("s-42"));
    assert_eq!(get(&back, "iss"), Some(s.base.as_str()));

    let body: Value = http()
        .post(s.url("/oauth/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("client_id", "spa"),
            ("code", get(&back, "code").unwrap()),
            ("code_verifier", VERIFIER),
            ("redirect_uri", &callback),
        ])
        .send()
        .unwrap()
        .json()
        .unwrap();
    let access = body["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("{body}"));
    let me: Value = http()
        .get(s.url("/api/v1/me"))
        .bearer_auth(access)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(me["username"], "alice");
    assert_eq!(me["client_id"], "spa");
}
