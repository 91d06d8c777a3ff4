//! Who made a request, as recorded in every audit event. Only the path is kept,
//! never the query string: clients sometimes put tokens there.

use std::net::IpAddr;

use actix_web::dev::ServiceRequest;
use actix_web::http::header::HeaderMap;
use actix_web::{web, HttpRequest};
use audit_store::{NewEvent, Outcome};
use ipnet::IpNet;

const MAX_USER_AGENT: usize = 512;
const MAX_PATH: usize = 1024;

#[derive(Clone, Debug, Default)]
pub struct RequestMeta {
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
    pub method: String,
    pub path: String,
}

/// Reverse proxies whose `X-Forwarded-For` is believed, registered as app data.
/// Without it (or with it empty) the peer address is the client.
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies(pub Vec<IpNet>);

impl TrustedProxies {
    fn trusts(&self, ip: &IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(ip))
    }

    /// The client address: the peer, or when the peer is a trusted proxy, the
    /// rightmost `X-Forwarded-For` entry that is not itself a trusted proxy.
    /// Entries left of that were written by the client and prove nothing.
    pub fn client_ip(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        let peer = peer?;
        if !self.trusts(&peer) {
            return Some(peer);
        }
        let mut hops: Vec<IpAddr> = Vec::new();
        for value in headers.get_all("x-forwarded-for") {
            let Ok(text) = value.to_str() else {
                return Some(peer);
            };
            for part in text.split(',') {
                match part.trim().parse() {
                    Ok(ip) => hops.push(ip),
                    // A malformed chain cannot be trusted past this proxy.
                    Err(_) => return Some(peer),
                }
            }
        }
        Some(
            hops.into_iter()
                .rev()
                .find(|ip| !self.trusts(ip))
                .unwrap_or(peer),
        )
    }
}

impl RequestMeta {
    pub fn from_request(req: &HttpRequest) -> RequestMeta {
        let trusted = req.app_data::<web::Data<TrustedProxies>>();
        Self::from_parts(
            trusted.map(|t| t.as_ref()),
            req.peer_addr(),
            req.headers(),
            req.method(),
            req.path(),
        )
    }

    pub fn from_service_request(req: &ServiceRequest) -> RequestMeta {
        let trusted = req.app_data::<web::Data<TrustedProxies>>();
        Self::from_parts(
            trusted.map(|t| t.as_ref()),
            req.peer_addr(),
            req.headers(),
            req.method(),
            req.path(),
        )
    }

    pub fn from_parts(
        trusted: Option<&TrustedProxies>,
        peer: Option<std::net::SocketAddr>,
        headers: &HeaderMap,
        method: &actix_web::http::Method,
        path: &str,
    ) -> RequestMeta {
        let user_agent = headers
            .get(actix_web::http::header::USER_AGENT)
            .map(|v| truncate(&String::from_utf8_lossy(v.as_bytes()), MAX_USER_AGENT));
        let peer_ip = peer.map(|p| p.ip());
        let client_ip = match trusted {
            Some(t) => t.client_ip(peer_ip, headers),
            None => peer_ip,
        };
        RequestMeta {
            client_ip: client_ip.map(|ip| ip.to_string()),
            user_agent,
            method: method.as_str().to_string(),
            path: truncate(path, MAX_PATH),
        }
    }

    /// An audit event stamped with this request's origin.
    pub fn event(&self, kind: &str, outcome: Outcome) -> NewEvent {
        self.clone().into_event(kind, outcome)
    }

    /// [`RequestMeta::event`] for a request that records one event: moves, no copies.
    pub fn into_event(self, kind: &str, outcome: Outcome) -> NewEvent {
        let mut ev = NewEvent::new(kind, outcome);
        ev.client_ip = self.client_ip;
        ev.user_agent = self.user_agent;
        ev.method = Some(self.method);
        ev.path = Some(self.path);
        ev
    }
}

pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append(
                HeaderName::from_static("x-forwarded-for"),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let t = TrustedProxies(vec!["10.0.0.0/8".parse().unwrap()]);
        // From an untrusted peer the header is the attacker's own text.
        assert_eq!(
            t.client_ip(ip("198.51.100.9"), &headers(&["1.2.3.4"])),
            ip("198.51.100.9")
        );
        // Through our proxy: the rightmost untrusted hop, not a spoofed left entry.
        assert_eq!(
            t.client_ip(ip("10.0.0.5"), &headers(&["6.6.6.6, 203.0.113.7"])),
            ip("203.0.113.7")
        );
        assert_eq!(
            t.client_ip(ip("10.0.0.5"), &headers(&["203.0.113.7", "10.0.0.9"])),
            ip("203.0.113.7")
        );
        // A malformed chain stops at the proxy.
        assert_eq!(
            t.client_ip(ip("10.0.0.5"), &headers(&["<script>"])),
            ip("10.0.0.5")
        );
        assert_eq!(
            TrustedProxies::default().client_ip(ip("10.0.0.5"), &headers(&["1.2.3.4"])),
            ip("10.0.0.5")
        );
    }
}
