//! `tokenwatch serve --demo`: a newcomer sees traffic, alerts and a lockout
//! without doing anything.

use std::time::{Duration, Instant};

use audit_store::{AlertFilter, AuditReader, EventFilter};
use tokenwatch_e2e::{data_dir, Server};

#[test]
fn demo_traffic_brings_the_detectors_to_life() {
    let (_tmp, dir) = data_dir();
    let s = Server::start_with(&dir, &["--demo"]);
    let reader = AuditReader::open(&dir.join("audit.db")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let detectors = loop {
        let alerts = reader
            .list_alerts(&AlertFilter::default(), None, 100)
            .unwrap()
            .items;
        let mut names: Vec<String> = alerts.into_iter().map(|a| a.detector).collect();
        names.sort();
        names.dedup();
        if names.iter().any(|n| n == "brute-force") && names.iter().any(|n| n == "password-spray") {
            break names;
        }
        assert!(
            Instant::now() < deadline,
            "demo raised only {names:?} within two minutes"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(detectors.len() >= 2, "{detectors:?}");

    // Ordinary users log in from their own (documentation-range) addresses.
    let logins = reader
        .query_events(
            &EventFilter {
                kind: Some("auth.login.success".into()),
                ..Default::default()
            },
            None,
            500,
        )
        .unwrap()
        .items;
    let mut ips: Vec<_> = logins.iter().filter_map(|e| e.client_ip.clone()).collect();
    ips.sort();
    ips.dedup();
    assert!(
        ips.len() >= 3,
        "demo users come from several addresses: {ips:?}"
    );
    assert!(ips.iter().all(|ip| ip != "127.0.0.1"), "{ips:?}");
    // The attack got a response, and the response is on the record.
    let locks = reader
        .query_events(
            &EventFilter {
                kind: Some("lockout.applied".into()),
                ..Default::default()
            },
            None,
            10,
        )
        .unwrap()
        .items;
    assert!(!locks.is_empty());
    drop(s);
}
