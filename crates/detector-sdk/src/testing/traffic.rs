//! Realistic benign traffic, seeded, so that every detector's tests run over
//! the same ordinary days, and tools to mix an attack in and replay the
//! stream through a detector the way the host does (batches plus ticks).
//!
//! What a generated day holds, shaped like the events the server records
//! (kinds, reasons and fields as `crates/server/src/oauth.rs` and
//! `bearer.rs` write them):
//!
//! - a few hundred users (default 300), each with a usual network (an
//!   office NAT shared by many, or a home line), a usual User-Agent and a
//!   time zone with working hours; some on a phone app that moves between
//!   Wi-Fi and mobile data; a few also work from home on some days;
//! - logins (`auth.login.success` + `token.issued`) with occasional typos:
//!   `auth.login.failure` `bad_password`, a mistyped username
//!   (`unknown_user`), now and then someone who forgot the password and
//!   tries four to six times before getting it;
//! - `access.granted` on `GET /api/v1/me` every couple of minutes while a
//!   session lasts, with the access token refreshed (`token.refreshed`, new
//!   `jti`) every 15 minutes; some introspection (`token.verified`) from the
//!   resource server's own IP;
//! - clients that come back with yesterday's access token: one
//!   `access.denied` `expired`, then a refresh; refresh tokens that expired
//!   after 7 days (`token.rejected` `refresh_expired`), then a login;
//! - logouts (`token.revoked` of the refresh token, sometimes of the access
//!   token too);
//! - five service accounts (`client_credentials`) calling around the clock;
//! - background noise: requests without a token (`missing_token`), a
//!   misconfigured client sending a malformed token a few times a day, a
//!   developer trying a staging token (`bad_signature`) now and then, clock
//!   skew (`not_yet_valid`).
//!
//! ```
//! use detector_sdk::testing::traffic::{self, Traffic};
//! let day = Traffic::default().generate();
//! assert!(day.len() > 10_000);
//! assert!(day.windows(2).all(|w| w[0].time_us <= w[1].time_us));
//! assert!(day.iter().all(|e| e.id < traffic::ATTACK_ID_BASE));
//! ```

use super::{collect, AlertData, BatchBuf, EventData};
use crate::{Detector, Result, Severity};

/// Microseconds per second.
pub const SEC: i64 = 1_000_000;
/// Microseconds per minute.
pub const MIN: i64 = 60 * SEC;
/// Microseconds per hour.
pub const HOUR: i64 = 60 * MIN;
/// Microseconds per day.
pub const DAY: i64 = 24 * HOUR;
/// 2024-03-04T00:00:00Z, a Monday: where generated traffic starts.
pub const START_US: i64 = 1_709_510_400 * SEC;
/// Attack events in tests take ids from here up, so they never collide
/// with the generated ones (which count from 1).
pub const ATTACK_ID_BASE: i64 = 1_000_000_000;
/// The resource server that introspects tokens.
pub const RESOURCE_SERVER_IP: &str = "10.20.0.5";

const ACCESS_TTL: i64 = 15 * MIN;
const REFRESH_TTL: i64 = 7 * DAY;

/// A small, fast, seeded generator (SplitMix64); no dependency needed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Uniform in `lo..hi` (microseconds or anything else).
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo).max(1) as u64) as i64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    /// Exponentially distributed around `mean` (for gaps between requests).
    pub fn exp(&mut self, mean: i64) -> i64 {
        let u = ((self.next_u64() >> 11) as f64 + 1.0) / ((1u64 << 53) as f64 + 1.0);
        (-u.ln() * mean as f64) as i64
    }

    /// A random lowercase hex string of `n` digits.
    pub fn hex(&mut self, n: usize) -> String {
        let mut s = String::with_capacity(n);
        while s.len() < n {
            s.push_str(&format!("{:016x}", self.next_u64()));
        }
        s.truncate(n);
        s
    }

    /// One element of a non-empty slice.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// Settings of the generated traffic.
#[derive(Clone, Debug)]
pub struct Traffic {
    /// Seed: the same settings and seed give the same events.
    pub seed: u64,
    /// Human users.
    pub users: usize,
    /// Days generated, starting on a Monday at [`START_US`].
    pub days: u32,
    /// Mean time between two API calls of one session.
    pub call_gap_us: i64,
}

impl Default for Traffic {
    fn default() -> Self {
        Traffic {
            seed: 2024,
            users: 300,
            days: 1,
            call_gap_us: 2 * MIN,
        }
    }
}

/// One realistic day with the default settings and `seed`.
pub fn day(seed: u64) -> Vec<EventData> {
    Traffic {
        seed,
        ..Traffic::default()
    }
    .generate()
}

const FIRST: &[&str] = &[
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory",
    "nina", "oscar", "peggy", "rupert", "sybil", "trent", "ursula", "victor", "wendy",
];
const LAST: &[&str] = &[
    "adams", "baker", "clark", "diaz", "evans", "fox", "garcia", "hill", "ito", "jones", "khan",
    "lee", "moore", "nguyen", "ortiz", "patel",
];
const DESKTOP_UAS: &[&str] = &[
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/122.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_3) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.3 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:123.0) Gecko/20100101 Firefox/123.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:123.0) Gecko/20100101 Firefox/123.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/122.0.0.0 Safari/537.36 Edg/122.0.0.0",
];
const MOBILE_UAS: &[&str] = &[
    "AcmeApp/3.4.1 (iPhone; iOS 17.3.1; Scale/3.00)",
    "AcmeApp/3.4.0 (Android 14; Pixel 8)",
];
const OFFICE_IPS: &[&str] = &["198.51.100.10", "198.51.100.11", "198.51.100.12"];

struct User {
    username: String,
    subject: String,
    /// Usual IP: an office NAT or a home line.
    usual_ip: String,
    /// Second place some users work from on some days.
    home_ip: Option<String>,
    /// Mobile-data IP prefix of phone users (one carrier /16).
    mobile_net: Option<(u8, u8)>,
    user_agent: String,
    /// Local start of the working day, in hours after UTC midnight.
    start_utc_h: i64,
    work_len_h: i64,
}

#[derive(Default)]
struct Client {
    access: Option<(String, String, i64)>,
    refresh: Option<(String, i64)>,
}

struct Gen {
    rng: Rng,
    call_gap: i64,
    events: Vec<EventData>,
    next_jti: u64,
}

fn base(kind: &str, ok: bool, t: i64, ip: &str, ua: &str, method: &str, path: &str) -> EventData {
    EventData {
        id: 0,
        time_us: t,
        kind: kind.into(),
        outcome: if ok { "success" } else { "failure" }.into(),
        client_ip: Some(ip.into()),
        user_agent: Some(ua.into()),
        method: Some(method.into()),
        path: Some(path.into()),
        source: "server".into(),
        ..EventData::default()
    }
}

impl Gen {
    fn new_token(&mut self) -> (String, String) {
        self.next_jti += 1;
        let jti = format!("{:08x}-{}", self.next_jti, self.rng.hex(12));
        (jti, self.rng.hex(16))
    }

    fn token_event(&mut self, kind: &str, t: i64, u: &User, ip: &str, c: &mut Client) {
        let (jti, fp) = self.new_token();
        let mut ev = base(kind, true, t, ip, &u.user_agent, "POST", "/oauth/token");
        ev.subject = Some(u.subject.clone());
        ev.username = Some(u.username.clone());
        ev.jti = Some(jti.clone());
        ev.kid = Some("k-2024-01".into());
        ev.alg = Some("EdDSA".into());
        ev.token_fp = Some(fp.clone());
        self.events.push(ev);
        c.access = Some((jti, fp, t + ACCESS_TTL));
    }

    fn login(&mut self, mut t: i64, u: &User, ip: &str, c: &mut Client) -> i64 {
        let r = &mut self.rng;
        let (typo_user, bad_passwords) = if r.chance(0.005) {
            (false, 4 + r.below(3))
        } else if r.chance(0.015) {
            (false, 2 + r.below(2))
        } else if r.chance(0.06) {
            (false, 1)
        } else {
            (r.chance(0.02), 0)
        };
        if typo_user {
            let mut name: Vec<char> = u.username.chars().collect();
            name.swap(1, 2);
            let mut ev = base(
                "auth.login.failure",
                false,
                t,
                ip,
                &u.user_agent,
                "POST",
                "/oauth/token",
            );
            ev.reason = Some("unknown_user".into());
            ev.username = Some(name.into_iter().collect());
            self.events.push(ev);
            t += self.rng.range(4 * SEC, 20 * SEC);
        }
        for _ in 0..bad_passwords {
            let mut ev = base(
                "auth.login.failure",
                false,
                t,
                ip,
                &u.user_agent,
                "POST",
                "/oauth/token",
            );
            ev.reason = Some("bad_password".into());
            ev.username = Some(u.username.clone());
            self.events.push(ev);
            t += self.rng.range(4 * SEC, 30 * SEC);
        }
        let mut ev = base(
            "auth.login.success",
            true,
            t,
            ip,
            &u.user_agent,
            "POST",
            "/oauth/token",
        );
        ev.subject = Some(u.subject.clone());
        ev.username = Some(u.username.clone());
        self.events.push(ev);
        self.token_event("token.issued", t, u, ip, c);
        c.refresh = Some((self.rng.hex(16), t + REFRESH_TTL));
        t + self.rng.range(200_000, 2 * SEC)
    }

    fn refresh(&mut self, t: i64, u: &User, ip: &str, c: &mut Client) {
        self.token_event("token.refreshed", t, u, ip, c);
        if let Some((fp, _)) = &mut c.refresh {
            *fp = self.rng.hex(16);
        }
    }

    fn session(&mut self, mut t: i64, len: i64, u: &User, mut ip: String, c: &mut Client) {
        let end = t + len;
        let resume = c.refresh.as_ref().is_some_and(|(_, exp)| *exp > t) && self.rng.chance(0.85);
        if resume {
            if let Some((jti, fp, exp)) = c.access.clone() {
                if exp <= t && self.rng.chance(0.5) {
                    // The client tries its stale access token first.
                    let mut ev = base(
                        "access.denied",
                        false,
                        t,
                        &ip,
                        &u.user_agent,
                        "GET",
                        "/api/v1/me",
                    );
                    ev.reason = Some("expired".into());
                    ev.subject = Some(u.subject.clone());
                    ev.jti = Some(jti);
                    ev.kid = Some("k-2024-01".into());
                    ev.alg = Some("EdDSA".into());
                    ev.token_fp = Some(fp);
                    self.events.push(ev);
                    t += self.rng.range(100_000, 2 * SEC);
                }
            }
            self.refresh(t, u, &ip, c);
        } else {
            if let Some((fp, exp)) = c.refresh.clone() {
                if exp <= t {
                    let mut ev = base(
                        "token.rejected",
                        false,
                        t,
                        &ip,
                        &u.user_agent,
                        "POST",
                        "/oauth/token",
                    );
                    ev.reason = Some("refresh_expired".into());
                    ev.token_fp = Some(fp);
                    self.events.push(ev);
                    t += self.rng.range(SEC, 10 * SEC);
                }
            }
            t = self.login(t, u, &ip, c);
        }
        // A phone user switches between Wi-Fi and mobile data once.
        let switch_at = u
            .mobile_net
            .filter(|_| self.rng.chance(0.5))
            .map(|net| (t + self.rng.range(0, len.max(1)), net));
        let mut switched = false;
        loop {
            t += self.rng.exp(self.call_gap).max(2 * SEC);
            if t >= end {
                break;
            }
            if let Some((at, (a, b))) = switch_at {
                if !switched && t >= at {
                    switched = true;
                    ip = format!("100.{a}.{b}.{}", 1 + self.rng.below(254));
                }
            }
            if c.access
                .as_ref()
                .is_none_or(|(_, _, exp)| *exp - 30 * SEC <= t)
            {
                self.refresh(t, u, &ip, c);
                t += self.rng.range(50_000, 500_000);
            }
            let Some((jti, fp, _)) = c.access.clone() else {
                break;
            };
            let mut ev = base(
                "access.granted",
                true,
                t,
                &ip,
                &u.user_agent,
                "GET",
                "/api/v1/me",
            );
            ev.subject = Some(u.subject.clone());
            ev.username = Some(u.username.clone());
            ev.jti = Some(jti.clone());
            ev.kid = Some("k-2024-01".into());
            ev.alg = Some("EdDSA".into());
            ev.token_fp = Some(fp.clone());
            self.events.push(ev.clone());
            if self.rng.chance(0.08) {
                ev.kind = "token.verified".into();
                ev.time_us += 40_000;
                ev.client_ip = Some(RESOURCE_SERVER_IP.into());
                ev.user_agent = Some("acme-resource-server/1.8".into());
                ev.method = Some("POST".into());
                ev.path = Some("/oauth/introspect".into());
                self.events.push(ev);
            }
        }
        if self.rng.chance(0.15) {
            // Logout: revoke the refresh token, and sometimes the access token.
            let t = end + self.rng.range(0, MIN);
            if let Some((fp, _)) = c.refresh.take() {
                let mut ev = base(
                    "token.revoked",
                    true,
                    t,
                    &ip,
                    &u.user_agent,
                    "POST",
                    "/oauth/revoke",
                );
                ev.token_fp = Some(fp);
                self.events.push(ev);
            }
            if let Some((jti, fp, exp)) = c.access.take() {
                if exp > t && self.rng.chance(0.5) {
                    let mut ev = base(
                        "token.revoked",
                        true,
                        t + 100_000,
                        &ip,
                        &u.user_agent,
                        "POST",
                        "/oauth/revoke",
                    );
                    ev.subject = Some(u.subject.clone());
                    ev.username = Some(u.username.clone());
                    ev.jti = Some(jti);
                    ev.token_fp = Some(fp);
                    self.events.push(ev);
                }
            }
        }
    }

    fn service(&mut self, k: usize, days: u32) {
        let ip = format!("10.30.0.{}", 10 + k);
        let ua = "python-requests/2.31.0";
        let subject = format!("svc-report-{k}");
        let mut t = START_US + self.rng.range(0, 5 * MIN);
        let end = START_US + i64::from(days) * DAY;
        let mut token: Option<(String, String, i64)> = None;
        while t < end {
            if token.as_ref().is_none_or(|(_, _, exp)| *exp - MIN <= t) {
                let (jti, fp) = self.new_token();
                let mut ev = base("token.issued", true, t, &ip, ua, "POST", "/oauth/token");
                ev.subject = Some(subject.clone());
                ev.jti = Some(jti.clone());
                ev.kid = Some("k-2024-01".into());
                ev.alg = Some("EdDSA".into());
                ev.token_fp = Some(fp.clone());
                self.events.push(ev);
                token = Some((jti, fp, t + HOUR));
                t += 100_000;
            }
            if let Some((jti, fp, _)) = &token {
                let mut ev = base("access.granted", true, t, &ip, ua, "GET", "/api/v1/me");
                ev.subject = Some(subject.clone());
                ev.jti = Some(jti.clone());
                ev.kid = Some("k-2024-01".into());
                ev.alg = Some("EdDSA".into());
                ev.token_fp = Some(fp.clone());
                self.events.push(ev);
            }
            t += self.rng.range(40 * SEC, 80 * SEC);
        }
    }

    fn noise(&mut self, day: i64) {
        let d0 = START_US + day * DAY;
        for _ in 0..20 {
            let ip = format!("203.0.113.{}", 1 + self.rng.below(254));
            let mut ev = base(
                "access.denied",
                false,
                d0 + self.rng.range(0, DAY),
                &ip,
                "curl/8.5.0",
                "GET",
                "/api/v1/me",
            );
            ev.reason = Some("missing_token".into());
            self.events.push(ev);
        }
        // A misconfigured client, a developer with a staging token, clock skew.
        let odd = [
            ("malformed", "192.0.2.44", 3),
            ("bad_signature", "192.0.2.45", 2),
            ("not_yet_valid", "192.0.2.46", 2),
            ("unknown_kid", "192.0.2.47", 1),
        ];
        for (reason, ip, n) in odd {
            for i in 0..n {
                let t = d0 + i * (DAY / n) + self.rng.range(8 * HOUR, 8 * HOUR + DAY / n / 2);
                let mut ev = base(
                    "access.denied",
                    false,
                    t,
                    ip,
                    "PostmanRuntime/7.36.1",
                    "GET",
                    "/api/v1/me",
                );
                ev.reason = Some(reason.into());
                ev.token_fp = Some(self.rng.hex(16));
                if reason != "malformed" {
                    ev.kid = Some(
                        if reason == "unknown_kid" {
                            "k-staging"
                        } else {
                            "k-2024-01"
                        }
                        .into(),
                    );
                    ev.alg = Some("EdDSA".into());
                }
                self.events.push(ev);
            }
        }
    }
}

impl Traffic {
    /// Generate the events, sorted by time, ids counting from 1.
    pub fn generate(&self) -> Vec<EventData> {
        let mut rng = Rng::new(self.seed);
        let users: Vec<User> = (0..self.users)
            .map(|i| {
                let username = format!("{}.{}{i}", rng.pick(FIRST), rng.pick(LAST));
                let in_office = rng.chance(0.6);
                let home = format!(
                    "{}.{}.{}.{}",
                    [81, 86, 92, 176, 217][rng.below(5) as usize],
                    rng.below(256),
                    rng.below(256),
                    1 + rng.below(254)
                );
                let mobile = rng.chance(0.15);
                let usual_ip = if in_office {
                    rng.pick(OFFICE_IPS).to_string()
                } else {
                    home.clone()
                };
                User {
                    username,
                    subject: format!("usr_{:06x}", rng.below(1 << 24)),
                    home_ip: (in_office && rng.chance(0.3)).then_some(home),
                    mobile_net: mobile.then(|| (64 + rng.below(64) as u8, rng.below(256) as u8)),
                    user_agent: if mobile {
                        rng.pick(MOBILE_UAS)
                    } else {
                        rng.pick(DESKTOP_UAS)
                    }
                    .to_string(),
                    usual_ip,
                    // Time zones from UTC-8 to UTC+9, days starting 7-10 local.
                    start_utc_h: (7 + rng.below(4) as i64)
                        - [-8, -5, 0, 1, 2, 9][rng.below(6) as usize],
                    work_len_h: 8 + rng.below(2) as i64,
                }
            })
            .collect();
        let mut g = Gen {
            rng: Rng::new(self.seed.wrapping_mul(31).wrapping_add(7)),
            call_gap: self.call_gap_us.max(SEC),
            events: Vec::new(),
            next_jti: 0,
        };
        for u in &users {
            let mut client = Client::default();
            for day in 0..i64::from(self.days) {
                let weekday = day % 7 < 5;
                if !weekday && !g.rng.chance(0.1) {
                    continue;
                }
                let sessions = if weekday {
                    1 + g.rng.below(3) as i64
                } else {
                    1
                };
                let day_start = START_US + day * DAY + u.start_utc_h * HOUR;
                let span = u.work_len_h * HOUR / sessions;
                let from_home = u.home_ip.is_some() && g.rng.chance(0.3);
                for s in 0..sessions {
                    let t = day_start + s * span + g.rng.range(0, 30 * MIN);
                    let len = g.rng.range(span / 4, span * 3 / 4);
                    let ip = if from_home {
                        u.home_ip.clone().unwrap_or_default()
                    } else {
                        u.usual_ip.clone()
                    };
                    g.session(t, len, u, ip, &mut client);
                }
            }
        }
        for k in 0..5 {
            g.service(k, self.days);
        }
        for day in 0..i64::from(self.days) {
            g.noise(day);
        }
        let mut events = g.events;
        events.sort_by_key(|e| e.time_us);
        for (i, e) in events.iter_mut().enumerate() {
            e.id = i as i64 + 1;
        }
        events
    }
}

/// Merge `attack` events (ids from [`ATTACK_ID_BASE`]) into `benign`,
/// keeping time order (benign first on a tie).
pub fn mix(benign: &[EventData], attack: &[EventData]) -> Vec<EventData> {
    let mut all: Vec<EventData> = benign.iter().chain(attack).cloned().collect();
    all.sort_by_key(|e| e.time_us);
    all
}

/// Feed `events` to `d` as the host would: in batches of at most `batch`
/// events, with a `tick` whenever event time passes the next multiple of
/// `tick_us`, and a last tick `final_tick_after_us` after the last event
/// (so that every incident ends). Returns every alert emitted, updates
/// included, in order.
pub fn replay<D: Detector>(
    d: &mut D,
    events: &[EventData],
    batch: usize,
    tick_us: i64,
    final_tick_after_us: i64,
) -> Result<Vec<AlertData>> {
    let mut alerts = Vec::new();
    let Some(first) = events.first() else {
        return Ok(alerts);
    };
    let mut next_tick = first.time_us - first.time_us.rem_euclid(tick_us) + tick_us;
    let mut start = 0;
    while start < events.len() {
        let mut end = start;
        while end < events.len() && end - start < batch.max(1) && events[end].time_us < next_tick {
            end += 1;
        }
        if end > start {
            let buf = BatchBuf::new(&events[start..end]);
            let (r, mut got) = collect(|out| d.process(&buf.batch(), out));
            r?;
            alerts.append(&mut got);
            start = end;
        }
        if start < events.len() && events[start].time_us >= next_tick {
            let (r, mut got) = collect(|out| d.tick(next_tick, out));
            r?;
            alerts.append(&mut got);
            // Skip empty stretches to the tick just after the next event.
            let t = events[start].time_us;
            next_tick = (t - t.rem_euclid(tick_us) + tick_us).max(next_tick + tick_us);
        }
    }
    let last = events[events.len() - 1].time_us;
    let (r, mut got) = collect(|out| d.tick(last + final_tick_after_us, out));
    r?;
    alerts.append(&mut got);
    Ok(alerts)
}

/// The alerts as the store would hold them: emits with the same
/// `group_key` fold into one (first rule, highest severity, evidence ids
/// merged without repeats, newest summary), in order of first emit. The
/// second value is how many emits each one took.
///
/// (The store folds only into an alert that is still open; tests model an
/// analyst who has not closed any.)
pub fn as_stored(alerts: &[AlertData]) -> Vec<(AlertData, usize)> {
    let mut out: Vec<(AlertData, usize)> = Vec::new();
    for a in alerts {
        match out.iter_mut().find(|(s, _)| s.group_key == a.group_key) {
            Some((s, n)) => {
                *n += 1;
                s.severity = s.severity.max(a.severity);
                for id in &a.evidence {
                    if !s.evidence.contains(id) {
                        s.evidence.push(*id);
                    }
                }
                s.summary.clone_from(&a.summary);
                if a.subject.is_some() {
                    s.subject.clone_from(&a.subject);
                }
                if a.client_ip.is_some() {
                    s.client_ip.clone_from(&a.client_ip);
                }
            }
            None => out.push((a.clone(), 1)),
        }
    }
    out
}

/// A short description of alerts for assertion messages.
pub fn describe(alerts: &[AlertData]) -> String {
    alerts
        .iter()
        .map(|a| {
            format!(
                "[{:?} {} {}] {}",
                a.severity, a.rule, a.group_key, a.summary
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Shorthand to build attack events: `EventData` with id, time, kind,
/// outcome (from the kind's usual outcome), client IP, user agent.
pub fn event(id: i64, time_us: i64, kind: &str, ip: &str, ua: &str) -> EventData {
    let ok = matches!(
        kind,
        "auth.login.success"
            | "token.issued"
            | "token.refreshed"
            | "token.revoked"
            | "token.verified"
            | "access.granted"
    );
    let (method, path) = match kind {
        "access.granted" | "access.denied" => ("GET", "/api/v1/me"),
        "token.verified" => ("POST", "/oauth/introspect"),
        "token.revoked" => ("POST", "/oauth/revoke"),
        _ => ("POST", "/oauth/token"),
    };
    let mut ev = base(kind, ok, time_us, ip, ua, method, path);
    ev.id = id;
    ev
}

/// Severity shorthand for assertions.
pub fn sev(a: &AlertData) -> Severity {
    a.severity
}

/// Feed `n` events made by `make(i, rng)` to `d` in batches of `chunk`,
/// calling `check(d)` after every batch: for tests that flood a detector
/// with random IPs or usernames and check that its state stays capped.
pub fn flood<D: Detector>(
    d: &mut D,
    n: usize,
    chunk: usize,
    mut make: impl FnMut(usize, &mut Rng) -> EventData,
    mut check: impl FnMut(&D),
) -> Result<usize> {
    let mut rng = Rng::new(n as u64);
    let mut alerts = 0;
    let mut i = 0;
    while i < n {
        let events: Vec<EventData> = (i..(i + chunk).min(n)).map(|j| make(j, &mut rng)).collect();
        i += events.len();
        alerts += super::run_batch(d, &events)?.len();
        check(d);
    }
    Ok(alerts)
}

/// A random IPv4 address outside the ranges the generated traffic uses.
pub fn random_ip(rng: &mut Rng) -> String {
    format!(
        "{}.{}.{}.{}",
        1 + rng.below(60),
        rng.below(256),
        rng.below(256),
        1 + rng.below(254)
    )
}

/// The first user who logs in during `events`: `(username, subject, time
/// of that login, IP, User-Agent)`.
pub fn first_login(events: &[EventData]) -> (String, String, i64, String, String) {
    let e = events
        .iter()
        .find(|e| e.kind == "auth.login.success")
        .expect("the traffic has a login");
    (
        e.username.clone().unwrap_or_default(),
        e.subject.clone().unwrap_or_default(),
        e.time_us,
        e.client_ip.clone().unwrap_or_default(),
        e.user_agent.clone().unwrap_or_default(),
    )
}
