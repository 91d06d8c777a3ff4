//! The benches' HTTP/1.1 keep-alive client: one blocking connection per thread.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};

pub struct Connection {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
    line: String,
}

impl Connection {
    pub fn open(addr: SocketAddr) -> Connection {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_nodelay(true).ok();
        Connection {
            writer: stream.try_clone().expect("clone"),
            reader: BufReader::new(stream),
            line: String::new(),
        }
    }

    /// Sends `request` (whole, head and body) and reads the answer; panics on
    /// anything but a 200, with the body.
    pub fn exchange(&mut self, request: &[u8]) -> Vec<u8> {
        self.writer.write_all(request).expect("write");
        let mut content_length = 0usize;
        let mut status_ok = false;
        loop {
            self.line.clear();
            self.reader.read_line(&mut self.line).expect("read");
            if self.line.starts_with("HTTP/1.1 ") {
                status_ok = self.line.starts_with("HTTP/1.1 200");
            }
            let lower = self.line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                content_length = v.trim().parse().unwrap_or(0);
            }
            if self.line == "\r\n" {
                break;
            }
        }
        let mut body = vec![0u8; content_length];
        self.reader.read_exact(&mut body).expect("body");
        assert!(
            status_ok,
            "non-200 response during the benchmark: {}",
            String::from_utf8_lossy(&body)
        );
        body
    }
}
