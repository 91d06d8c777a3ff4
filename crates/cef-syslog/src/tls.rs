//! The TLS side of the sender (RFC 5425): the handshake, checked before the
//! first byte of a message is sent, and the collector's answers afterwards.

use std::io::{ErrorKind, Read};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

use crate::SendError;

/// How long a fresh TLS 1.3 connection waits for the collector to refuse it.
const TLS13_REFUSAL_WAIT: Duration = Duration::from_millis(500);

/// What a `tls://` sender trusts and whom it expects: a rustls client
/// configuration (CA, optional client certificate) and the name the
/// collector's certificate must carry.
#[derive(Clone)]
pub struct TlsClient {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
}

impl TlsClient {
    /// `server_name` is a DNS name or an IP address, usually the target's host
    /// ([`crate::Target::host`]).
    pub fn new(config: ClientConfig, server_name: &str) -> Result<TlsClient, SendError> {
        let server_name = ServerName::try_from(server_name.to_owned())
            .map_err(|_| SendError::BadServerName(server_name.to_owned()))?;
        Ok(TlsClient {
            config: Arc::new(config),
            server_name,
        })
    }

    /// Completes the handshake, so a collector whose certificate is not trusted
    /// (or that refuses ours) is refused before any message is written.
    pub(crate) fn handshake(
        &self,
        mut tcp: TcpStream,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<StreamOwned<ClientConnection, TcpStream>, SendError> {
        let mut conn = ClientConnection::new(self.config.clone(), self.server_name.clone())
            .map_err(|source| SendError::Tls { addr, source })?;
        tcp.set_read_timeout(Some(timeout))
            .map_err(|source| SendError::Connect { addr, source })?;
        while conn.is_handshaking() {
            conn.complete_io(&mut tcp).map_err(|e| io_error(addr, e))?;
        }
        let mut stream = StreamOwned::new(conn, tcp);
        if stream.conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3) {
            // In TLS 1.3 the client finishes first: a collector that rejects our
            // certificate (or its absence) says so only after our Finished. Give
            // it a moment, or the first batch would be written into a connection
            // that is already refused and counted as sent.
            await_refusal(&mut stream, addr)?;
        }
        Ok(stream)
    }
}

/// A rustls failure travels inside an `io::Error`; bring it out so the message
/// says what TLS objected to (an unknown issuer, a name mismatch, an alert).
pub(crate) fn io_error(addr: SocketAddr, e: std::io::Error) -> SendError {
    let is_tls = e
        .get_ref()
        .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some());
    if is_tls {
        let inner = e.into_inner().expect("checked above");
        let source = *inner.downcast::<rustls::Error>().expect("checked above");
        return SendError::Tls { addr, source };
    }
    if e.kind() == ErrorKind::UnexpectedEof {
        return SendError::Closed { addr };
    }
    SendError::Io { addr, source: e }
}

fn await_refusal(
    s: &mut StreamOwned<ClientConnection, TcpStream>,
    addr: SocketAddr,
) -> Result<(), SendError> {
    let io = |source| SendError::Io { addr, source };
    let previous = s.sock.read_timeout().map_err(io)?;
    s.sock
        .set_read_timeout(Some(TLS13_REFUSAL_WAIT))
        .map_err(io)?;
    let result = match s.conn.read_tls(&mut s.sock) {
        Ok(0) => Err(SendError::Closed { addr }),
        Ok(_) => process(s, addr),
        // Silence: nothing to refuse.
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Ok(()),
        Err(source) => Err(SendError::Io { addr, source }),
    };
    s.sock.set_read_timeout(previous).map_err(io)?;
    result
}

/// Handles what the collector sent (session tickets, an alert, a close) and
/// throws away any application data: syslog collectors do not talk back.
fn process(
    s: &mut StreamOwned<ClientConnection, TcpStream>,
    addr: SocketAddr,
) -> Result<(), SendError> {
    let state = s
        .conn
        .process_new_packets()
        .map_err(|source| SendError::Tls { addr, source })?;
    if state.peer_has_closed() {
        return Err(SendError::Closed { addr });
    }
    let mut sink = [0u8; 512];
    let mut left = state.plaintext_bytes_to_read();
    while left > 0 {
        match s.conn.reader().read(&mut sink) {
            Ok(0) => break,
            Ok(n) => left = left.saturating_sub(n),
            Err(_) => break,
        }
    }
    Ok(())
}

/// After a batch: reads whatever the collector sent without waiting, so an
/// alert or a close is noticed before the batch counts as delivered.
pub(crate) fn check_open(
    s: &mut StreamOwned<ClientConnection, TcpStream>,
    addr: SocketAddr,
) -> Result<(), SendError> {
    let io = |source| SendError::Io { addr, source };
    s.sock.set_nonblocking(true).map_err(io)?;
    let result = loop {
        match s.conn.read_tls(&mut s.sock) {
            Ok(0) => break Err(SendError::Closed { addr }),
            Ok(_) => {
                if let Err(e) = process(s, addr) {
                    break Err(e);
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => break Ok(()),
            Err(source) => break Err(SendError::Io { addr, source }),
        }
    };
    s.sock.set_nonblocking(false).map_err(io)?;
    result
}
