//! `tokenwatch serve --demo`: realistic traffic against the server's own HTTP
//! endpoints, so a newcomer sees the dashboard and the detectors come alive.
//!
//! Ordinary users log in from their usual address and browser, call
//! `/api/v1/me` and refresh; now and then one mistypes a password. Every
//! `ATTACK_EVERY` one of the attacks the built-in detectors know is mixed in.
//! Client addresses come from documentation ranges (RFC 5737) through
//! `X-Forwarded-For`, which demo mode trusts from 127.0.0.1 only.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use audit_store::{kinds, NewEvent, Outcome};
use base64::Engine;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use token_core::{AccessRequest, TokenService};

use crate::state::{Role, StateDb};

const USERS: [&str; 12] = [
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "niaj",
    "oscar",
];
const USER_AGENTS: [&str; 4] = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/131.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 Version/18.0 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "inventory-service/2.3 (python-requests/2.32)",
];
const ATTACKER_UA: &str = "python-requests/2.31.0";
/// Ordinary requests between two attacks.
const ATTACK_EVERY: u32 = 60;
const PAUSE: Duration = Duration::from_millis(60);

struct DemoUser {
    name: &'static str,
    password: String,
    ip: String,
    user_agent: &'static str,
}

struct Session {
    access: String,
    refresh: String,
}

/// Starts the traffic thread. It runs until the process exits.
pub fn spawn(addr: SocketAddr, state: Arc<StateDb>, tokens: Arc<TokenService>) -> Result<()> {
    let users = create_users(&state)?;
    std::thread::Builder::new()
        .name("tokenwatch-demo".into())
        .spawn(move || {
            let base = format!("http://{addr}");
            let mut demo = Demo {
                base,
                users,
                tokens,
                rng: StdRng::from_entropy(),
                agent: ureq::AgentBuilder::new()
                    .timeout(Duration::from_secs(10))
                    .build(),
            };
            demo.run();
        })?;
    tracing::warn!("demo mode: generating traffic, including attacks, against this server");
    Ok(())
}

/// Demo users get random passwords that only the traffic thread knows.
fn create_users(state: &StateDb) -> Result<Vec<DemoUser>> {
    let mut users = Vec::new();
    for (i, name) in USERS.iter().enumerate() {
        let password = crate::random_token(18);
        match state.find_user(name)? {
            Some(_) => {
                state.set_password(name, &password)?;
            }
            None => {
                state.add_user(name, Role::User, &password)?;
            }
        }
        users.push(DemoUser {
            name,
            password,
            ip: format!("198.51.100.{}", 10 + i),
            user_agent: USER_AGENTS[i % USER_AGENTS.len()],
        });
    }
    Ok(users)
}

/// The audit event saying that demo mode created or reset the demo users.
pub fn setup_event() -> NewEvent {
    let mut ev = NewEvent::new(kinds::ADMIN_ACTION, Outcome::Success);
    ev.username = Some("system".into());
    ev.path = Some("demo users".into());
    ev.detail = json!({ "users": USERS });
    ev
}

struct Demo {
    base: String,
    users: Vec<DemoUser>,
    tokens: Arc<TokenService>,
    rng: StdRng,
    agent: ureq::Agent,
}

/// A response's status and JSON body; transport errors are status 0.
struct Reply {
    status: u16,
    body: Value,
}

impl Demo {
    fn run(&mut self) {
        let mut attacks = [
            Demo::brute_force as fn(&mut Demo),
            Demo::password_spray,
            Demo::token_replay,
            Demo::refresh_reuse,
            Demo::forged_tokens,
            Demo::expired_storm,
            Demo::new_device,
        ]
        .into_iter()
        .cycle();
        let mut n = 0u32;
        loop {
            n += 1;
            // The first attack comes quickly, so alerts show within a minute.
            if n % ATTACK_EVERY == 20 {
                if let Some(attack) = attacks.next() {
                    attack(self);
                }
            } else {
                self.ordinary();
            }
            std::thread::sleep(PAUSE);
        }
    }

    fn post_form(&self, path: &str, ip: &str, ua: &str, form: &[(&str, &str)]) -> Reply {
        let req = self
            .agent
            .post(&format!("{}{path}", self.base))
            .set("X-Forwarded-For", ip)
            .set("User-Agent", ua);
        reply(req.send_form(form))
    }

    fn get_me(&self, ip: &str, ua: &str, token: &str) -> Reply {
        let req = self
            .agent
            .get(&format!("{}/api/v1/me", self.base))
            .set("X-Forwarded-For", ip)
            .set("User-Agent", ua)
            .set("Authorization", &format!("Bearer {token}"));
        reply(req.call())
    }

    fn login(&self, name: &str, password: &str, ip: &str, ua: &str) -> Option<Session> {
        let r = self.post_form(
            "/oauth/token",
            ip,
            ua,
            &[
                ("grant_type", "password"),
                ("username", name),
                ("password", password),
            ],
        );
        session(&r)
    }

    fn refresh(&self, refresh: &str, ip: &str, ua: &str) -> Reply {
        self.post_form(
            "/oauth/token",
            ip,
            ua,
            &[("grant_type", "refresh_token"), ("refresh_token", refresh)],
        )
    }

    fn pick_user(&mut self) -> usize {
        self.rng.gen_range(0..self.users.len())
    }

    /// A user's ordinary visit: maybe a typo, a login, a few API calls, a refresh.
    fn ordinary(&mut self) {
        let i = self.pick_user();
        let typo = self.rng.gen_bool(0.08);
        let calls = self.rng.gen_range(1..4);
        let refresh = self.rng.gen_bool(0.3);
        let u = &self.users[i];
        if typo {
            self.login(u.name, "not-my-password", &u.ip, u.user_agent);
        }
        let Some(s) = self.login(u.name, &u.password, &u.ip, u.user_agent) else {
            return;
        };
        for _ in 0..calls {
            self.get_me(&u.ip, u.user_agent, &s.access);
        }
        if refresh {
            let r = self.refresh(&s.refresh, &u.ip, u.user_agent);
            if let Some(next) = session(&r) {
                self.get_me(&u.ip, u.user_agent, &next.access);
            }
        }
    }

    /// Many wrong passwords for one privileged-sounding account, from a handful
    /// of addresses. Not a demo user: the lockout it triggers would otherwise
    /// drown the dashboard in that user's refused logins.
    fn brute_force(&mut self) {
        let victim = *["root", "administrator", "svc-backup", "oracle"]
            .choose(&mut self.rng)
            .unwrap_or(&"root");
        for k in 0..14 {
            let ip = format!("203.0.113.{}", 50 + k % 3);
            self.login(victim, &format!("Password{k}!"), &ip, ATTACKER_UA);
        }
    }

    /// One address trying one common password across many accounts.
    fn password_spray(&mut self) {
        let ip = format!("203.0.113.{}", self.rng.gen_range(100..200));
        let mut names: Vec<&str> = USERS.to_vec();
        names.shuffle(&mut self.rng);
        for name in names {
            self.login(name, "Winter2026!", &ip, ATTACKER_UA);
        }
        for n in 0..4 {
            self.login(&format!("admin{n}"), "Winter2026!", &ip, ATTACKER_UA);
        }
    }

    /// A stolen access token used from somewhere else.
    fn token_replay(&mut self) {
        let i = self.pick_user();
        let u = &self.users[i];
        let Some(s) = self.login(u.name, &u.password, &u.ip, u.user_agent) else {
            return;
        };
        self.get_me(&u.ip, u.user_agent, &s.access);
        for _ in 0..3 {
            self.get_me("192.0.2.66", ATTACKER_UA, &s.access);
        }
    }

    /// A rotated refresh token presented again.
    fn refresh_reuse(&mut self) {
        let i = self.pick_user();
        let u = &self.users[i];
        let Some(s) = self.login(u.name, &u.password, &u.ip, u.user_agent) else {
            return;
        };
        self.refresh(&s.refresh, &u.ip, u.user_agent);
        self.refresh(&s.refresh, "192.0.2.77", ATTACKER_UA);
    }

    /// `alg: none`, a forged signature and garbage, from one address.
    fn forged_tokens(&mut self) {
        let b64 = |v: &Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string().as_bytes())
        };
        let claims = json!({ "sub": "admin", "roles": ["admin"], "exp": 4_102_444_800i64 });
        let none = format!(
            "{}.{}.",
            b64(&json!({"alg": "none", "typ": "JWT"})),
            b64(&claims)
        );
        let forged = format!(
            "{}.{}.{}",
            b64(&json!({"alg": "HS256", "typ": "JWT"})),
            b64(&claims),
            "c2lnbmF0dXJl"
        );
        let ip = "192.0.2.99";
        for _ in 0..4 {
            self.get_me(ip, ATTACKER_UA, &none);
            self.get_me(ip, ATTACKER_UA, &forged);
            self.get_me(ip, ATTACKER_UA, "not-a-token");
        }
    }

    /// A client that keeps presenting a token that expired long ago.
    fn expired_storm(&mut self) {
        let i = self.pick_user();
        let (name, ip, ua) = {
            let u = &self.users[i];
            (u.name, u.ip.clone(), u.user_agent)
        };
        let req = AccessRequest {
            subject: format!("demo-{name}"),
            username: Some(name.to_string()),
            ..Default::default()
        };
        let an_hour_ago = token_core::unix_now() - 3600;
        let Ok(old) = self.tokens.issue_access_at(&req, an_hour_ago) else {
            return;
        };
        for _ in 0..25 {
            self.get_me(&ip, ua, old.token.expose());
        }
    }

    /// A user's correct password from a network and browser never seen for them.
    fn new_device(&mut self) {
        let i = self.pick_user();
        let u = &self.users[i];
        if let Some(s) = self.login(u.name, &u.password, "192.0.2.200", ATTACKER_UA) {
            self.get_me("192.0.2.200", ATTACKER_UA, &s.access);
        }
    }
}

fn reply(result: Result<ureq::Response, ureq::Error>) -> Reply {
    let response = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(ureq::Error::Transport(_)) => {
            return Reply {
                status: 0,
                body: Value::Null,
            }
        }
    };
    let status = response.status();
    let body = response.into_json().unwrap_or(Value::Null);
    Reply { status, body }
}

fn session(r: &Reply) -> Option<Session> {
    if r.status != 200 {
        return None;
    }
    Some(Session {
        access: r.body["access_token"].as_str()?.to_string(),
        refresh: r.body["refresh_token"].as_str()?.to_string(),
    })
}
