//! The shared benign traffic looks like what the server records.

use std::collections::{BTreeMap, HashMap, HashSet};

use detector_sdk::testing::traffic::{self, Traffic};

#[test]
fn a_day_has_every_kind_of_ordinary_event_in_sane_proportions() {
    let day = traffic::day(1);
    let mut kinds: BTreeMap<(String, Option<String>), usize> = BTreeMap::new();
    for e in &day {
        *kinds.entry((e.kind.clone(), e.reason.clone())).or_default() += 1;
    }
    eprintln!("{} events: {kinds:#?}", day.len());
    let n = |k: &str, r: Option<&str>| {
        kinds
            .get(&(k.to_string(), r.map(str::to_string)))
            .copied()
            .unwrap_or(0)
    };
    assert!(day.len() > 20_000, "{}", day.len());
    assert!(n("auth.login.success", None) >= 300);
    assert!(n("auth.login.failure", Some("bad_password")) >= 10);
    assert!(n("auth.login.failure", Some("unknown_user")) >= 2);
    assert!(n("token.refreshed", None) > n("auth.login.success", None));
    assert!(n("access.granted", None) > 10 * n("auth.login.success", None));
    assert!(n("token.verified", None) > 0);
    assert!(n("token.revoked", None) > 0);
    assert!(n("access.denied", Some("missing_token")) == 20);
    assert!(n("access.denied", Some("malformed")) == 3);
    // Every generated id is unique and time never goes backwards.
    let ids: HashSet<i64> = day.iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), day.len());
    assert!(day.windows(2).all(|w| w[0].time_us <= w[1].time_us));
}

#[test]
fn several_days_bring_back_yesterdays_tokens_and_expired_refresh_tokens() {
    let days = Traffic {
        days: 10,
        users: 100,
        ..Traffic::default()
    }
    .generate();
    let expired = days
        .iter()
        .filter(|e| e.reason.as_deref() == Some("expired"))
        .count();
    let refresh_expired = days
        .iter()
        .filter(|e| e.reason.as_deref() == Some("refresh_expired"))
        .count();
    assert!(expired >= 50, "{expired}");
    assert!(refresh_expired >= 5, "{refresh_expired}");
    // Each access token is used by one client: one User-Agent.
    let mut ua_per_jti: HashMap<&str, HashSet<&str>> = HashMap::new();
    for e in days.iter().filter(|e| e.kind == "access.granted") {
        ua_per_jti
            .entry(e.jti.as_deref().unwrap())
            .or_default()
            .insert(e.user_agent.as_deref().unwrap());
    }
    assert!(ua_per_jti.values().all(|s| s.len() == 1));
}

#[test]
fn the_same_seed_gives_the_same_traffic() {
    assert_eq!(traffic::day(9), traffic::day(9));
    assert_ne!(traffic::day(9), traffic::day(10));
}
