//! CEF (ArcSight Common Event Format) messages inside RFC 5424 syslog frames,
//! sent over TCP (RFC 6587 octet-counted framing) or UDP (one datagram each).
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
    #[error("invalid syslog target {0:?}: expected tcp://HOST:PORT or udp://HOST:PORT")]
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
    Tcp,
    Udp,
}

/// Where to send: parsed from `tcp://host:port` or `udp://host:port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub protocol: Protocol,
    pub host_port: String,
}

impl std::str::FromStr for Target {
    type Err = SendError;
    fn from_str(s: &str) -> Result<Target, SendError> {
        let (protocol, rest) = if let Some(r) = s.strip_prefix("tcp://") {
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

/// UDP datagrams are cut at this size (rsyslog's default maximum message size).
pub const MAX_UDP_MESSAGE: usize = 8192;

enum Conn {
    Tcp(TcpStream),
    Udp(UdpSocket),
}

/// A connection to one collector, opened lazily and re-opened after a failure.
pub struct Sender {
    target: Target,
    addr: Option<SocketAddr>,
    conn: Option<Conn>,
    timeout: Duration,
}

impl Sender {
    pub fn new(target: Target, timeout: Duration) -> Sender {
        Sender {
            target,
            addr: None,
            conn: None,
            timeout,
        }
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
        let conn = match self.target.protocol {
            Protocol::Tcp => {
                let s = TcpStream::connect_timeout(&addr, self.timeout)
                    .map_err(|source| SendError::Connect { addr, source })?;
                s.set_write_timeout(Some(self.timeout))
                    .and_then(|_| s.set_nodelay(true))
                    .map_err(|source| SendError::Connect { addr, source })?;
                Conn::Tcp(s)
            }
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
    /// Over TCP the batch is written octet-counted (`LEN SP MSG`, RFC 6587 §3.4.1)
    /// and then the connection is checked for a close by the collector, so a
    /// collector that went away is noticed before the caller counts the batch
    /// as delivered. On any error the connection is dropped and re-opened on
    /// the next call: the caller retries the whole batch (at-least-once).
    pub fn send_all<S: AsRef<str>>(&mut self, messages: &[S]) -> Result<(), SendError> {
        self.connect()?;
        let addr = self.addr.expect("resolved by connect");
        let result = match self.conn.as_mut().expect("connected") {
            Conn::Tcp(s) => {
                let mut buf = Vec::with_capacity(messages.len() * 256);
                for m in messages {
                    let m = m.as_ref();
                    buf.extend_from_slice(format!("{} ", m.len()).as_bytes());
                    buf.extend_from_slice(m.as_bytes());
                }
                s.write_all(&buf)
                    .and_then(|_| s.flush())
                    .map_err(|source| SendError::Io { addr, source })
                    .and_then(|_| check_open(s, addr))
            }
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
}
