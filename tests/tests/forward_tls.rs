//! Syslog over TLS (RFC 5425) into a real rsyslog with its GnuTLS driver: the
//! README's `[[forward]]` example as written (only the address, CA path and
//! retry changed), mutual TLS with a client certificate, and two collectors
//! tokenwatch must not deliver to: one whose certificate it does not trust,
//! one that requires a client certificate it was not given. Those get nothing,
//! count as failures in /metrics, and their cursors do not move.
//!
//! Needs `rsyslogd` and `rsyslog-gnutls`; CI installs them and sets
//! TOKENWATCH_REQUIRE_RSYSLOG=1 so a missing one fails instead of skipping.

use std::path::Path;

use tokenwatch_e2e::syslog::{
    free_port, lines, metric, raise_alert, rsyslog_gtls, rsyslogd, Rsyslog,
};
use tokenwatch_e2e::{cli, data_dir, http, serve_refused, wait_for_secs, workspace_root, Server};

/// The README's forwarding example, pointed at the test collector.
fn readme_example(port: u16, ca: &Path) -> String {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).unwrap();
    let marker = "<!-- forward-tls-example: run by tests/tests/forward_tls.rs -->";
    let block = readme
        .split_once(marker)
        .and_then(|(_, rest)| rest.split_once("```toml\n"))
        .and_then(|(_, rest)| rest.split_once("```"))
        .map(|(block, _)| block.to_string())
        .expect("the README's forward-tls-example block");
    for part in [
        "tls://siem.example:6514",
        "/etc/tokenwatch/siem-ca.pem",
        "retry_secs = 5",
    ] {
        assert!(block.contains(part), "the README example lost {part:?}");
    }
    block
        .replace(
            "tls://siem.example:6514",
            &format!("tls://127.0.0.1:{port}"),
        )
        .replace("/etc/tokenwatch/siem-ca.pem", ca.to_str().unwrap())
        .replace("retry_secs = 5", "retry_secs = 1")
}

fn cursor(data: &Path, name: &str) -> Option<i64> {
    let db = rusqlite::Connection::open_with_flags(
        data.join("state.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    db.query_row(
        "SELECT last_id FROM forward_cursors WHERE name = ?1",
        [name],
        |r| r.get(0),
    )
    .ok()
}

fn rsyslog_config(dir: &Path, pki: &Path, server_auth: u16, mutual: u16) -> String {
    format!(
        r#"global(workDirectory="{work}"
       DefaultNetstreamDriver="gtls"
       DefaultNetstreamDriverCAFile="{pki}/ca.pem"
       DefaultNetstreamDriverCertFile="{pki}/collector.pem"
       DefaultNetstreamDriverKeyFile="{pki}/collector.key")
module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1" StreamDriver.AuthMode="anon")
template(name="tw" type="string" string="%hostname%|%syslogfacility%|%app-name%|%msgid%|%msg%\n")
ruleset(name="server_auth") {{ action(type="omfile" file="{work}/server-auth.log" template="tw") }}
ruleset(name="mutual") {{ action(type="omfile" file="{work}/mutual.log" template="tw") }}
input(type="imtcp" address="127.0.0.1" port="{server_auth}" ruleset="server_auth")
input(type="imtcp" address="127.0.0.1" port="{mutual}" ruleset="mutual"
      StreamDriver.AuthMode="x509/name" PermittedPeer=["tokenwatch.client.example"])
"#,
        work = dir.display(),
        pki = pki.display(),
    )
}

#[test]
fn alerts_reach_rsyslog_over_tls_and_untrusted_collectors_get_nothing() {
    let Some(bin) = rsyslogd() else { return };
    if !rsyslog_gtls() {
        return;
    }
    let (tmp, dir) = data_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let (rs_dir, pki) = (tmp.path().join("rsyslog"), tmp.path().join("pki"));
    std::fs::create_dir_all(&rs_dir).unwrap();
    std::fs::create_dir_all(&pki).unwrap();
    let ca = test_pki::Ca::new("collector CA");
    let ca_file = ca.write(&pki, "ca");
    let other_ca = test_pki::Ca::new("another CA").write(&pki, "other-ca");
    ca.issue("siem.example", &["siem.example", "127.0.0.1"])
        .write(&pki, "collector");
    let (client_cert, client_key) = ca
        .issue("tokenwatch", &["tokenwatch.client.example"])
        .write(&pki, "client");

    let (server_auth, mutual) = (free_port(), free_port());
    let _rs = Rsyslog::start(
        &bin,
        &rs_dir,
        &rsyslog_config(&rs_dir, &pki, server_auth, mutual),
        &[server_auth, mutual],
    );

    let config = tmp.path().join("tokenwatch.toml");
    std::fs::write(
        &config,
        format!(
            r#"{readme}
[[forward]]
name = "siem-mtls"
target = "tls://127.0.0.1:{mutual}"
server_name = "siem.example"
ca_file = "{ca}"
client_cert = "{client_cert}"
client_key = "{client_key}"
hostname = "mtls-fwd"
retry_secs = 1

[[forward]]
name = "siem-no-client-cert"
target = "tls://127.0.0.1:{mutual}"
ca_file = "{ca}"
hostname = "nocert-fwd"
retry_secs = 1

[[forward]]
name = "siem-untrusted"
target = "tls://127.0.0.1:{server_auth}"
ca_file = "{other_ca}"
hostname = "untrusted-fwd"
retry_secs = 1
"#,
            readme = readme_example(server_auth, &ca_file),
            ca = ca_file.display(),
            other_ca = other_ca.display(),
            client_cert = client_cert.display(),
            client_key = client_key.display(),
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
    let s = Server::start_with(&dir, &["--config", config.to_str().unwrap()]);
    let alert = raise_alert(&s, &key, "victim-tls");
    let id = format!("externalId={alert} ");

    // The README's forwarder (server authentication only) and mutual TLS deliver.
    let line = wait_for_secs("the alert over TLS", 30, || {
        lines(&rs_dir.join("server-auth.log"))
            .into_iter()
            .find(|l| l.contains(&id))
    });
    assert!(
        line.contains("|10|tokenwatch|alert|CEF:0|tokenwatch|tokenwatch|"),
        "{line}"
    );
    assert!(line.contains("|brute-force:brute-force|"), "{line}");
    let line = wait_for_secs("the alert over mutual TLS", 30, || {
        lines(&rs_dir.join("mutual.log"))
            .into_iter()
            .find(|l| l.contains(&id))
    });
    assert!(line.starts_with("mtls-fwd|"), "{line}");

    // The other two fail, visibly, and keep their place.
    let failing = |name: &str| {
        let m = http()
            .get(s.url("/metrics"))
            .send()
            .and_then(|r| r.text())
            .unwrap_or_default();
        let up = metric(
            &m,
            &format!("tokenwatch_forward_up{{forwarder=\"{name}\"}}"),
        )?;
        let failures = metric(
            &m,
            &format!("tokenwatch_forward_failures_total{{forwarder=\"{name}\"}}"),
        )?;
        let backlog = metric(
            &m,
            &format!("tokenwatch_forward_backlog{{forwarder=\"{name}\",stream=\"alerts\"}}"),
        )?;
        (up == 0 && failures >= 2 && backlog >= 1).then_some(())
    };
    wait_for_secs("the untrusted collector failing in /metrics", 30, || {
        failing("siem-untrusted")
    });
    wait_for_secs("the collector wanting a client cert failing", 30, || {
        failing("siem-no-client-cert")
    });
    for name in ["siem-untrusted", "siem-no-client-cert"] {
        assert_eq!(cursor(&dir, &format!("{name}:alerts")), Some(0), "{name}");
    }
    assert!(cursor(&dir, "siem:alerts").unwrap() >= alert);
    assert!(cursor(&dir, "siem-mtls:alerts").unwrap() >= alert);
    let all: Vec<String> = [rs_dir.join("server-auth.log"), rs_dir.join("mutual.log")]
        .iter()
        .flat_map(|p| lines(p))
        .collect();
    for host in ["untrusted-fwd|", "nocert-fwd|"] {
        assert!(
            !all.iter().any(|l| l.starts_with(host)),
            "{host} delivered: {all:#?}"
        );
    }
    // The log says why.
    let logs = tokenwatch_e2e::all_file_bytes(&dir.join("logs"));
    let log = logs
        .iter()
        .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
        .collect::<String>();
    assert!(log.contains("UnknownIssuer"), "{log}");
    s.stop();
}

#[test]
fn tls_settings_are_checked_at_start() {
    let (tmp, dir) = data_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let ca = test_pki::Ca::new("collector CA");
    let ca_file = ca.write(tmp.path(), "ca");
    let (cert, _) = ca
        .issue("client", &["client.example"])
        .write(tmp.path(), "client");
    let (_, other_key) = ca
        .issue("other", &["other.example"])
        .write(tmp.path(), "other");
    let config = tmp.path().join("tokenwatch.toml");
    let check = |body: &str, expect: &str| {
        std::fs::write(&config, format!("[[forward]]\n{body}\n")).unwrap();
        let err = serve_refused(&dir, &[], &[("TOKENWATCH_CONFIG", &config)]);
        assert!(err.contains(expect), "{body}: {err}");
    };
    check(r#"target = "tls://127.0.0.1:6514""#, "needs `ca_file`");
    check(
        &format!(
            "target = \"tcp://127.0.0.1:514\"\nca_file = \"{}\"",
            ca_file.display()
        ),
        "applies only to a tls:// target",
    );
    check(
        &format!(
            "target = \"tls://127.0.0.1:6514\"\nca_file = \"{}\"\nclient_cert = \"{}\"",
            ca_file.display(),
            cert.display()
        ),
        "needs both `client_cert` and `client_key`",
    );
    check(
        &format!(
            "target = \"tls://127.0.0.1:6514\"\nca_file = \"{}\"\nclient_cert = \"{}\"\nclient_key = \"{}\"",
            ca_file.display(),
            cert.display(),
            other_key.display()
        ),
        "does not belong to the certificate",
    );
    check(
        &format!(
            "target = \"tls://127.0.0.1:6514\"\nca_file = \"{}\"",
            tmp.path().join("missing-ca.pem").display()
        ),
        "missing-ca.pem",
    );
}
