//! A real rsyslogd as the collector of the forwarding tests: found on the
//! machine, run in the foreground with a private configuration, stopped on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The rsyslogd binary, or `None` (a skip) when it is not installed; with
/// TOKENWATCH_REQUIRE_RSYSLOG set, a missing one fails the test instead.
pub fn rsyslogd() -> Option<PathBuf> {
    let found = [
        "/usr/sbin/rsyslogd",
        "/sbin/rsyslogd",
        "/usr/local/sbin/rsyslogd",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists());
    if found.is_none() {
        assert!(
            std::env::var("TOKENWATCH_REQUIRE_RSYSLOG").is_err(),
            "rsyslogd is required (apt-get install rsyslog)"
        );
        eprintln!("SKIP: rsyslogd not found (apt-get install rsyslog)");
    }
    found
}

/// Whether rsyslog's GnuTLS network stream driver (Debian: rsyslog-gnutls) is
/// installed; like [`rsyslogd`], a skip unless TOKENWATCH_REQUIRE_RSYSLOG is set.
pub fn rsyslog_gtls() -> bool {
    let found = [
        "/usr/lib/x86_64-linux-gnu/rsyslog",
        "/usr/lib/aarch64-linux-gnu/rsyslog",
        "/usr/lib/rsyslog",
        "/usr/lib64/rsyslog",
    ]
    .iter()
    .any(|d| Path::new(d).join("lmnsd_gtls.so").exists());
    if !found {
        assert!(
            std::env::var("TOKENWATCH_REQUIRE_RSYSLOG").is_err(),
            "rsyslog's TLS driver is required (apt-get install rsyslog-gnutls)"
        );
        eprintln!("SKIP: rsyslog's TLS driver not found (apt-get install rsyslog-gnutls)");
    }
    found
}

/// A running rsyslogd; killed on drop.
pub struct Rsyslog {
    child: Child,
}

impl Rsyslog {
    /// Starts rsyslogd with `config` (written to `dir/rsyslog.conf`) and waits
    /// until every port in `tcp_ports` accepts connections.
    pub fn start(bin: &Path, dir: &Path, config: &str, tcp_ports: &[u16]) -> Rsyslog {
        let conf = dir.join("rsyslog.conf");
        std::fs::write(&conf, config).expect("writing rsyslog.conf");
        let child = Command::new(bin)
            .arg("-n")
            .arg("-f")
            .arg(&conf)
            .arg("-i")
            .arg(dir.join("rsyslogd.pid"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting rsyslogd");
        let mut rs = Rsyslog { child };
        let deadline = Instant::now() + Duration::from_secs(20);
        for port in tcp_ports {
            while std::net::TcpStream::connect(("127.0.0.1", *port)).is_err() {
                if let Ok(Some(status)) = rs.child.try_wait() {
                    panic!("rsyslogd exited ({status}); check {}", conf.display());
                }
                assert!(
                    Instant::now() < deadline,
                    "rsyslogd did not listen on {port}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        rs
    }

    /// Stops it with SIGTERM, so it flushes its files.
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port free for both TCP and UDP at the time of asking.
pub fn free_port() -> u16 {
    loop {
        let t = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = t.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// The lines of a file rsyslog writes (none while it does not exist).
pub fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// The value of the Prometheus sample named exactly `series` (name and labels).
pub fn metric(text: &str, series: &str) -> Option<i64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// Reports enough failed logins for `user` that brute-force raises an alert; returns its id.
pub fn raise_alert(s: &crate::Server, key: &str, user: &str) -> i64 {
    let line = format!(
        r#"{{"kind":"auth.login.failure","outcome":"failure","reason":"bad_password","username":"{user}","client_ip":"198.51.100.9"}}"#
    );
    let r = crate::http()
        .post(s.url("/api/v1/events"))
        .bearer_auth(key)
        .body(vec![line; 12].join("\n"))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let reader = audit_store::AuditReader::open(&s.data_dir.join("audit.db")).unwrap();
    crate::wait_for_secs(&format!("a brute-force alert for {user}"), 30, || {
        reader
            .list_alerts(&audit_store::AlertFilter::default(), None, 100)
            .unwrap()
            .items
            .into_iter()
            .find(|a| a.subject.as_deref() == Some(user) || a.summary.contains(user))
            .map(|a| a.id)
    })
}
