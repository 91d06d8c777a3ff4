//! CEF (ArcSight Common Event Format) messages inside RFC 5424 syslog frames,
//! sent over TLS (RFC 5425), TCP (RFC 6587 octet-counted framing) or UDP (one
//! datagram each).
//!
//! This crate knows nothing of tokenwatch's types: the caller builds a [`Cef`]
//! record, wraps it in a [`SyslogFrame`] and hands the bytes to a [`Sender`].
//! Splunk, QRadar, Wazuh and rsyslog all accept this combination unchanged.
//!
//! ```
//! use cef_syslog::{Cef, SyslogFrame, Facility, Severity};
//! let cef = Cef::new("tokenwatch", "tokenwatch", "0.1.0", "brute-force:burst", "Brute force on alice", 8)
//!     .ext("suser", "alice")
//!     .ext("src", "203.0.113.7");
//! let frame = SyslogFrame {
//!     facility: Facility::AUTHPRIV,
//!     severity: Severity::Error,
//!     time_us: 1_700_000_000_000_000,
//!     hostname: "host1",
//!     app_name: "tokenwatch",
//!     msg_id: "alert",
//! };
//! let line = frame.render(&cef.to_string());
//! // PRI 83 = facility 10 (authpriv) * 8 + severity 3 (error); PROCID is this process's id.
//! assert!(line.starts_with("<83>1 2023-11-14T22:13:20.000000Z host1 tokenwatch "));
//! assert!(line.contains(" alert - CEF:0|tokenwatch|tokenwatch|0.1.0|brute-force:burst|"));
//! assert!(line.ends_with("|8|suser=alice src=203.0.113.7"));
//! ```

use std::fmt;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::time::Duration;

mod tls;
pub use tls::TlsClient;

/// Why a message could not be sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    #[error("cannot resolve syslog target {target:?}: {source}")]
    Resolve {
        target: String,
        source: std::io::Error,
    },
    #[error("cannot connect to syslog collector {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("sending to syslog collector {addr} failed: {source}")]
    Io {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("syslog collector {addr} closed the connection")]
    Closed { addr: SocketAddr },
    #[error("TLS with syslog collector {addr} failed: {source}")]
    Tls {
        addr: SocketAddr,
        source: rustls::Error,
    },
    #[error("{0:?} is not a host name or IP address a TLS certificate can be checked against")]
    BadServerName(String),
    #[error("a tls:// target needs TLS settings (a CA file); none were given")]
    NoTlsSettings,
    #[error(
        "invalid syslog target {0:?}: expected tls://HOST:PORT, tcp://HOST:PORT or udp://HOST:PORT"
    )]
    BadTarget(String),
}

/// A CEF record: seven header fields and `key=value` extensions.
#[derive(Clone, Debug)]
pub struct Cef {
    vendor: String,
    product: String,
    version: String,
    signature_id: String,
    name: String,
    severity: u8,
    ext: Vec<(String, String)>,
}

impl Cef {
    /// `severity` is CEF's 0 (lowest) to 10 (highest); larger values are clamped.
    pub fn new(
        vendor: &str,
        product: &str,
        version: &str,
        signature_id: &str,
        name: &str,
        severity: u8,
    ) -> Cef {
        Cef {
            vendor: vendor.into(),
            product: product.into(),
            version: version.into(),
            signature_id: signature_id.into(),
            name: name.into(),
            severity: severity.min(10),
            ext: Vec::new(),
        }
    }

    /// Adds an extension. Keys must be CEF keys (letters and digits); a key
    /// with anything else is dropped rather than corrupting the record.
    #[must_use]
    pub fn ext(mut self, key: &str, value: impl Into<String>) -> Cef {
        if !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric()) {
            self.ext.push((key.into(), value.into()));
        }
        self
    }

    /// Adds an extension only when `value` is `Some`.
    #[must_use]
    pub fn ext_opt(self, key: &str, value: Option<impl Into<String>>) -> Cef {
        match value {
            Some(v) => self.ext(key, v),
            None => self,
        }
    }
}

/// Header fields escape `\` and `|`; line breaks become spaces (a header is one line).
fn escape_header(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '|' => out.push_str("\\|"),
            '\r' | '\n' => out.push(' '),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
}

/// Extension values escape `\`, `=` and line breaks (CEF spec, "Character Encoding").
fn escape_ext(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '=' => out.push_str("\\="),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
}

impl fmt::Display for Cef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::with_capacity(256);
        s.push_str("CEF:0|");
        for h in [
            &self.vendor,
            &self.product,
            &self.version,
            &self.signature_id,
            &self.name,
        ] {
            escape_header(h, &mut s);
            s.push('|');
        }
        s.push_str(&self.severity.to_string());
        s.push('|');
        for (i, (k, v)) in self.ext.iter().enumerate() {
            if i > 0 {
                s.push(' ');
            }
            s.push_str(k);
            s.push('=');
            escape_ext(v, &mut s);
        }
        f.write_str(&s)
    }
}

/// Syslog facility code (RFC 5424 §6.2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Facility(pub u8);

impl Facility {
    pub const AUTH: Facility = Facility(4);
    pub const AUTHPRIV: Facility = Facility(10);
    pub const LOG_AUDIT: Facility = Facility(13);
    pub const LOCAL0: Facility = Facility(16);
}

/// Syslog severity (RFC 5424 §6.2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Severity {
    Emergency = 0,
    Alert = 1,
    Critical = 2,
    Error = 3,
    Warning = 4,
    Notice = 5,
    Informational = 6,
    Debug = 7,
}

/// The RFC 5424 header of one message. Header fields must be printable
/// US-ASCII without spaces; anything else is replaced by `_`, and an empty
/// field becomes the NILVALUE `-`.
pub struct SyslogFrame<'a> {
    pub facility: Facility,
    pub severity: Severity,
    /// UTC unix microseconds.
    pub time_us: i64,
    pub hostname: &'a str,
    pub app_name: &'a str,
    pub msg_id: &'a str,
}

fn header_field(s: &str, max: usize, out: &mut String) {
    if s.is_empty() {
        out.push('-');
        return;
    }
    for c in s.chars().take(max) {
        out.push(if c.is_ascii_graphic() { c } else { '_' });
    }
}

impl SyslogFrame<'_> {
    /// `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - MSG`, without framing.
    pub fn render(&self, msg: &str) -> String {
        let pri = u16::from(self.facility.0.min(23)) * 8 + self.severity as u16;
        let mut s = String::with_capacity(msg.len() + 96);
        s.push_str(&format!("<{pri}>1 {} ", rfc3339_us(self.time_us)));
        header_field(self.hostname, 255, &mut s);
        s.push(' ');
        header_field(self.app_name, 48, &mut s);
        s.push_str(&format!(" {} ", std::process::id()));
        header_field(self.msg_id, 32, &mut s);
        s.push_str(" - ");
        s.push_str(msg);
        s
    }
}

fn rfc3339_us(time_us: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(time_us) * 1000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

/// Transport to a collector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// RFC 5425: the same octet-counted frames as [`Protocol::Tcp`], inside TLS.
    Tls,
    Tcp,
    Udp,
}

/// Where to send: parsed from `tls://host:port`, `tcp://host:port` or `udp://host:port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub protocol: Protocol,
    pub host_port: String,
}

impl std::str::FromStr for Target {
    type Err = SendError;
    fn from_str(s: &str) -> Result<Target, SendError> {
        let (protocol, rest) = if let Some(r) = s.strip_prefix("tls://") {
            (Protocol::Tls, r)
        } else if let Some(r) = s.strip_prefix("tcp://") {
            (Protocol::Tcp, r)
        } else if let Some(r) = s.strip_prefix("udp://") {
            (Protocol::Udp, r)
        } else {
            return Err(SendError::BadTarget(s.into()));
        };
        if rest
            .rsplit_once(':')
            .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        {
            return Err(SendError::BadTarget(s.into()));
        }
        Ok(Target {
            protocol,
            host_port: rest.into(),
        })
    }
}

impl Target {
    /// The host part, without the port and without the brackets of an IPv6 literal:
    /// what a collector's certificate is checked against unless told otherwise.
    pub fn host(&self) -> &str {
        let host = self
            .host_port
            .rsplit_once(':')
            .map_or(self.host_port.as_str(), |(h, _)| h);
        host.strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
    }
}

/// UDP datagrams are cut at this size (rsyslog's default maximum message size).
pub const MAX_UDP_MESSAGE: usize = 8192;

enum Conn {
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
    Tcp(TcpStream),
    Udp(UdpSocket),
}

/// A connection to one collector, opened lazily and re-opened after a failure.
pub struct Sender {
    target: Target,
    tls: Option<TlsClient>,
    addr: Option<SocketAddr>,
    conn: Option<Conn>,
    timeout: Duration,
}

impl Sender {
    /// A sender for a `tcp://` or `udp://` target (a `tls://` one needs [`Sender::with_tls`]).
    pub fn new(target: Target, timeout: Duration) -> Sender {
        Sender {
            target,
            tls: None,
            addr: None,
            conn: None,
            timeout,
        }
    }

    /// A sender for a `tls://` target: the collector's certificate is checked
    /// against `tls`'s CA and server name before anything is sent.
    pub fn with_tls(target: Target, timeout: Duration, tls: TlsClient) -> Sender {
        let mut sender = Sender::new(target, timeout);
        sender.tls = Some(tls);
        sender
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    fn resolve(&mut self) -> Result<SocketAddr, SendError> {
        let resolve_err = |source| SendError::Resolve {
            target: self.target.host_port.clone(),
            source,
        };
        let addr = self
            .target
            .host_port
            .to_socket_addrs()
            .map_err(resolve_err)?
            .next()
            .ok_or_else(|| {
                resolve_err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no address",
                ))
            })?;
        self.addr = Some(addr);
        Ok(addr)
    }

    fn connect(&mut self) -> Result<(), SendError> {
        if self.conn.is_some() {
            return Ok(());
        }
        let addr = self.resolve()?;
        let tcp = |timeout| -> Result<TcpStream, SendError> {
            let s = TcpStream::connect_timeout(&addr, timeout)
                .map_err(|source| SendError::Connect { addr, source })?;
            s.set_write_timeout(Some(timeout))
                .and_then(|_| s.set_nodelay(true))
                .map_err(|source| SendError::Connect { addr, source })?;
            Ok(s)
        };
        let conn = match self.target.protocol {
            Protocol::Tls => {
                let tls = self.tls.as_ref().ok_or(SendError::NoTlsSettings)?;
                let stream = tls.handshake(tcp(self.timeout)?, addr, self.timeout)?;
                Conn::Tls(Box::new(stream))
            }
            Protocol::Tcp => Conn::Tcp(tcp(self.timeout)?),
            Protocol::Udp => {
                let bind: SocketAddr = if addr.is_ipv4() {
                    "0.0.0.0:0".parse().expect("valid")
                } else {
                    "[::]:0".parse().expect("valid")
                };
                let s = UdpSocket::bind(bind)
                    .and_then(|s| s.connect(addr).map(|_| s))
                    .map_err(|source| SendError::Connect { addr, source })?;
                Conn::Udp(s)
            }
        };
        self.conn = Some(conn);
        Ok(())
    }

    /// Sends every message, each one a complete RFC 5424 line (see [`SyslogFrame::render`]).
    ///
    /// Over TCP and TLS the batch is written octet-counted (`LEN SP MSG`, RFC 6587
    /// §3.4.1, RFC 5425 §4.3) and then the connection is checked for a close by
    /// the collector, so a collector that went away is noticed before the caller
    /// counts the batch as delivered. On any error the connection is dropped and
    /// re-opened on the next call: the caller retries the whole batch (at-least-once).
    pub fn send_all<S: AsRef<str>>(&mut self, messages: &[S]) -> Result<(), SendError> {
        self.connect()?;
        let addr = self.addr.expect("resolved by connect");
        let result = match self.conn.as_mut().expect("connected") {
            Conn::Tls(s) => s
                .write_all(&octet_counted(messages))
                .and_then(|_| s.flush())
                .map_err(|e| tls::io_error(addr, e))
                .and_then(|_| tls::check_open(s, addr)),
            Conn::Tcp(s) => s
                .write_all(&octet_counted(messages))
                .and_then(|_| s.flush())
                .map_err(|source| SendError::Io { addr, source })
                .and_then(|_| check_open(s, addr)),
            Conn::Udp(s) => messages.iter().try_for_each(|m| {
                let b = m.as_ref().as_bytes();
                s.send(&b[..b.len().min(MAX_UDP_MESSAGE)])
                    .map(|_| ())
                    .map_err(|source| SendError::Io { addr, source })
            }),
        };
        if result.is_err() {
            self.conn = None;
        }
        result
    }
}

impl Drop for Sender {
    /// Ends a TLS session with a close_notify, so the collector can tell a
    /// shutdown from a cut connection.
    fn drop(&mut self) {
        if let Some(Conn::Tls(s)) = self.conn.as_mut() {
            s.conn.send_close_notify();
            let _ = s.conn.write_tls(&mut s.sock);
        }
    }
}

/// `LEN SP MSG` for each message, one after the other.
fn octet_counted<S: AsRef<str>>(messages: &[S]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(messages.len() * 256);
    for m in messages {
        let m = m.as_ref();
        buf.extend_from_slice(format!("{} ", m.len()).as_bytes());
        buf.extend_from_slice(m.as_bytes());
    }
    buf
}

/// A collector that closed its end makes a non-blocking peek return 0 (EOF) or
/// a reset; one that is merely quiet makes it `WouldBlock`.
fn check_open(s: &mut TcpStream, addr: SocketAddr) -> Result<(), SendError> {
    let io = |source| SendError::Io { addr, source };
    s.set_nonblocking(true).map_err(io)?;
    let mut b = [0u8; 1];
    let r = s.peek(&mut b);
    s.set_nonblocking(false).map_err(io)?;
    match r {
        Ok(0) => Err(SendError::Closed { addr }),
        // Collectors do not talk back on plain syslog; drain anything they sent.
        Ok(_) => {
            let mut sink = [0u8; 512];
            s.set_nonblocking(true).map_err(io)?;
            let _ = s.read(&mut sink);
            s.set_nonblocking(false).map_err(io)?;
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
        Err(source) => Err(SendError::Io { addr, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_header_and_extension_values() {
        let cef = Cef::new("v|x", "p\\q", "1", "a|b", "line\nbreak", 42)
            .ext("msg", "a=b\\c\nd")
            .ext("bad key", "dropped");
        assert_eq!(
            cef.to_string(),
            "CEF:0|v\\|x|p\\\\q|1|a\\|b|line break|10|msg=a\\=b\\\\c\\nd"
        );
    }

    #[test]
    fn frame_pri_and_nilvalues() {
        let f = SyslogFrame {
            facility: Facility::LOG_AUDIT,
            severity: Severity::Notice,
            time_us: 0,
            hostname: "",
            app_name: "a b",
            msg_id: "event",
        };
        let s = f.render("x");
        assert!(
            s.starts_with("<109>1 1970-01-01T00:00:00.000000Z - a_b "),
            "{s}"
        );
        assert!(s.ends_with(" event - x"), "{s}");
    }

    #[test]
    fn targets() {
        assert_eq!(
            "tcp://127.0.0.1:514".parse::<Target>().unwrap().protocol,
            Protocol::Tcp
        );
        assert_eq!(
            "udp://[::1]:514".parse::<Target>().unwrap().protocol,
            Protocol::Udp
        );
        for bad in ["127.0.0.1:514", "tcp://127.0.0.1", "tcp://:1", "http://x:1"] {
            assert!(bad.parse::<Target>().is_err(), "{bad}");
        }
    }

    #[test]
    fn tcp_octet_counting_reaches_a_listener() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut got = String::new();
            s.read_to_string(&mut got).unwrap();
            got
        });
        let mut sender = Sender::new(
            format!("tcp://{addr}").parse().unwrap(),
            Duration::from_secs(2),
        );
        sender.send_all(&["hello", "wörld"]).unwrap();
        drop(sender);
        assert_eq!(t.join().unwrap(), "5 hello6 wörld");
    }

    #[test]
    fn tcp_refused_is_an_error() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let mut sender = Sender::new(
            format!("tcp://{addr}").parse().unwrap(),
            Duration::from_secs(2),
        );
        assert!(matches!(
            sender.send_all(&["x"]),
            Err(SendError::Connect { .. })
        ));
    }

    /// A one-connection TLS collector on 127.0.0.1: returns its address and a
    /// handle yielding everything it received in clear (or the handshake error).
    fn tls_collector(
        leaf: &test_pki::Leaf,
        dir: &std::path::Path,
    ) -> (
        SocketAddr,
        std::thread::JoinHandle<Result<String, rustls::Error>>,
    ) {
        let (cert, key) = leaf.write(dir, "collector");
        let key = std::sync::Arc::new(tls_files::load_certified_key(&cert, &key).unwrap());
        #[derive(Debug)]
        struct One(std::sync::Arc<rustls::sign::CertifiedKey>);
        impl rustls::server::ResolvesServerCert for One {
            fn resolve(
                &self,
                _: rustls::server::ClientHello<'_>,
            ) -> Option<std::sync::Arc<rustls::sign::CertifiedKey>> {
                Some(self.0.clone())
            }
        }
        let config =
            std::sync::Arc::new(tls_files::server_config(std::sync::Arc::new(One(key))).unwrap());
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (mut tcp, _) = l.accept().unwrap();
            let mut conn = rustls::ServerConnection::new(config).unwrap();
            while conn.is_handshaking() {
                if let Err(e) = conn.complete_io(&mut tcp) {
                    let inner = e
                        .into_inner()
                        .and_then(|i| i.downcast::<rustls::Error>().ok());
                    return Err(inner
                        .map(|b| *b)
                        .unwrap_or(rustls::Error::HandshakeNotComplete));
                }
            }
            let mut got = String::new();
            let _ = rustls::Stream::new(&mut conn, &mut tcp).read_to_string(&mut got);
            Ok(got)
        });
        (addr, t)
    }

    #[test]
    fn tls_frames_reach_a_collector_whose_certificate_is_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let ca = test_pki::Ca::new("collector CA");
        let ca_file = ca.write(dir.path(), "ca");
        let (addr, t) = tls_collector(&ca.issue("collector", &["127.0.0.1"]), dir.path());
        let target: Target = format!("tls://{addr}").parse().unwrap();
        assert_eq!(target.host(), "127.0.0.1");
        let tls = TlsClient::new(
            tls_files::client_config(&ca_file, None).unwrap(),
            target.host(),
        )
        .unwrap();
        let mut sender = Sender::with_tls(target, Duration::from_secs(5), tls);
        sender.send_all(&["hello", "wörld"]).unwrap();
        drop(sender);
        assert_eq!(t.join().unwrap().unwrap(), "5 hello6 wörld");
    }

    #[test]
    fn an_untrusted_collector_certificate_is_refused_before_anything_is_sent() {
        let dir = tempfile::tempdir().unwrap();
        let trusted = test_pki::Ca::new("trusted CA");
        let ca_file = trusted.write(dir.path(), "ca");
        let rogue = test_pki::Ca::new("rogue CA");
        let (addr, t) = tls_collector(&rogue.issue("collector", &["127.0.0.1"]), dir.path());
        let target: Target = format!("tls://{addr}").parse().unwrap();
        let tls = TlsClient::new(
            tls_files::client_config(&ca_file, None).unwrap(),
            target.host(),
        )
        .unwrap();
        let mut sender = Sender::with_tls(target, Duration::from_secs(5), tls);
        let err = sender.send_all(&["secret alert"]).unwrap_err();
        assert!(matches!(err, SendError::Tls { .. }), "{err}");
        assert!(err.to_string().contains("UnknownIssuer"), "{err}");
        // The collector saw a failed handshake and not one byte of the message.
        assert!(t.join().unwrap().is_err());
    }

    #[test]
    fn a_certificate_for_another_name_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = test_pki::Ca::new("collector CA");
        let ca_file = ca.write(dir.path(), "ca");
        let (addr, t) = tls_collector(&ca.issue("elsewhere", &["elsewhere.example"]), dir.path());
        let target: Target = format!("tls://{addr}").parse().unwrap();
        let tls = TlsClient::new(
            tls_files::client_config(&ca_file, None).unwrap(),
            "siem.example",
        )
        .unwrap();
        let mut sender = Sender::with_tls(target, Duration::from_secs(5), tls);
        let err = sender.send_all(&["x"]).unwrap_err();
        assert!(err.to_string().contains("not valid for name"), "{err}");
        assert!(t.join().unwrap().is_err());
    }

    #[test]
    fn target_hosts() {
        for (t, host) in [
            ("tls://siem.example:6514", "siem.example"),
            ("tls://[::1]:6514", "::1"),
            ("tcp://10.0.0.1:514", "10.0.0.1"),
        ] {
            assert_eq!(t.parse::<Target>().unwrap().host(), host);
        }
        assert!(TlsClient::new(
            rustls::ClientConfig::builder_with_provider(tls_files::provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
            "not a name!"
        )
        .is_err());
    }
}
