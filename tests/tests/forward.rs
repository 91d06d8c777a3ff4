//! Forwarding alerts to a real rsyslog on 127.0.0.1, as RFC 5424 + CEF over
//! TCP and UDP; a collector outage (while tokenwatch runs, and across a
//! tokenwatch restart) is caught up from the store.
//!
//! Needs `rsyslogd`; CI installs it and sets TOKENWATCH_REQUIRE_RSYSLOG=1 so
//! a missing one fails instead of skipping.

use std::path::Path;
use std::time::Duration;

use tokenwatch_e2e::syslog::{free_port, lines, metric, raise_alert, rsyslogd, Rsyslog};
use tokenwatch_e2e::{cli, data_dir, http, wait_for_secs as wait_for, Server};

/// rsyslogd with TCP and UDP inputs on 127.0.0.1, every message appended to
/// `dir/received.log` as `input|facility|severity|app|msgid|msg`.
fn start_collector(bin: &Path, dir: &Path, tcp: u16, udp: u16) -> Rsyslog {
    let config = format!(
        r#"global(workDirectory="{work}")
module(load="imtcp")
module(load="imudp")
template(name="tw" type="string" string="%inputname%|%syslogfacility%|%syslogseverity%|%app-name%|%msgid%|%msg%\n")
ruleset(name="tw") {{ action(type="omfile" file="{out}" template="tw") }}
input(type="imtcp" address="127.0.0.1" port="{tcp}" ruleset="tw")
input(type="imudp" address="127.0.0.1" port="{udp}" ruleset="tw")
"#,
        work = dir.display(),
        out = dir.join("received.log").display(),
    );
    Rsyslog::start(bin, dir, &config, &[tcp])
}

fn received(dir: &Path) -> Vec<String> {
    lines(&dir.join("received.log"))
}

fn metrics(s: &Server) -> String {
    http()
        .get(s.url("/metrics"))
        .send()
        .and_then(|r| r.text())
        .unwrap_or_default()
}

fn delivered(lines: &[String], input: &str, alert_id: i64) -> Option<String> {
    lines
        .iter()
        .find(|l| l.starts_with(input) && l.contains(&format!("externalId={alert_id} ")))
        .cloned()
}

#[test]
fn alerts_reach_rsyslog_over_tcp_and_udp_and_an_outage_loses_nothing() {
    let Some(bin) = rsyslogd() else { return };
    let (tmp, dir) = data_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let rs_dir = tmp.path().join("rsyslog");
    std::fs::create_dir_all(&rs_dir).unwrap();
    let (tcp, udp) = (free_port(), free_port());
    let config = tmp.path().join("tokenwatch.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[forward]]
name = "siem-tcp"
target = "tcp://127.0.0.1:{tcp}"
retry_secs = 1
facility = 13

[[forward]]
name = "siem-udp"
target = "udp://127.0.0.1:{udp}"
retry_secs = 1
"#
        ),
    )
    .unwrap();
    let out = cli(&dir, &["sources", "add", "edge"], "");
    assert_eq!(out.status, 0, "{}", out.stderr);
    let key = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("api_key: "))
        .unwrap()
        .to_string();
    let cfg = ["--config", config.to_str().unwrap()];

    // The collector is down when the first alert is raised.
    let s = Server::start_with(&dir, &cfg);
    let first = raise_alert(&s, &key, "victim-1");
    std::thread::sleep(Duration::from_secs(2));
    assert!(received(&rs_dir).is_empty());
    // /metrics says the TCP collector is unreachable and the alert is waiting.
    const UP: &str = "tokenwatch_forward_up{forwarder=\"siem-tcp\"}";
    const BACKLOG: &str = "tokenwatch_forward_backlog{forwarder=\"siem-tcp\",stream=\"alerts\"}";
    const SENT: &str = "tokenwatch_forward_sent_total{forwarder=\"siem-tcp\",stream=\"alerts\"}";
    const FAILURES: &str = "tokenwatch_forward_failures_total{forwarder=\"siem-tcp\"}";
    wait_for("the outage in /metrics", 30, || {
        let m = metrics(&s);
        (metric(&m, UP)? == 0 && metric(&m, BACKLOG)? >= 1 && metric(&m, FAILURES)? >= 1)
            .then_some(())
    });

    // It comes back: the alert arrives over TCP, caught up from the store.
    let rs = start_collector(&bin, &rs_dir, tcp, udp);
    let line = wait_for("the first alert over TCP", 30, || {
        delivered(&received(&rs_dir), "imtcp", first)
    });
    // facility 13 (log audit), severity 3 (err) for a high alert, parsed as RFC 5424.
    assert!(
        line.starts_with("imtcp|13|3|tokenwatch|alert|CEF:0|tokenwatch|tokenwatch|"),
        "{line}"
    );
    assert!(line.contains("|brute-force:brute-force|"), "{line}");
    assert!(line.contains("cs1=brute-force"), "{line}");
    assert!(line.contains("src=198.51.100.9"), "{line}");

    wait_for("the recovery in /metrics", 30, || {
        let m = metrics(&s);
        (metric(&m, UP)? == 1 && metric(&m, BACKLOG)? == 0 && metric(&m, SENT)? >= 1).then_some(())
    });

    // While it is up, both transports deliver.
    let second = raise_alert(&s, &key, "victim-2");
    wait_for("the second alert over TCP and UDP", 30, || {
        let lines = received(&rs_dir);
        (delivered(&lines, "imtcp", second).is_some()
            && delivered(&lines, "imudp", second).is_some())
        .then_some(())
    });

    // Down again, and tokenwatch restarts before it is back: the cursor in
    // state.db remembers what was not delivered.
    rs.stop();
    let third = raise_alert(&s, &key, "victim-3");
    std::thread::sleep(Duration::from_secs(2));
    s.stop();
    let _rs = start_collector(&bin, &rs_dir, tcp, udp);
    let s = Server::start_with(&dir, &cfg);
    wait_for("the third alert after the restart", 30, || {
        delivered(&received(&rs_dir), "imtcp", third)
    });
    s.stop();

    let tcp_lines: Vec<_> = received(&rs_dir)
        .into_iter()
        .filter(|l| l.starts_with("imtcp"))
        .collect();
    for id in [first, second, third] {
        assert!(
            tcp_lines
                .iter()
                .any(|l| l.contains(&format!("externalId={id} "))),
            "alert {id} missing over TCP: {tcp_lines:#?}"
        );
    }
}
