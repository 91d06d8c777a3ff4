//! Who made a request, as recorded in every audit event. Only the path is kept,
//! never the query string: clients sometimes put tokens there.

use actix_web::HttpRequest;
use audit_store::{NewEvent, Outcome};

const MAX_USER_AGENT: usize = 512;
const MAX_PATH: usize = 1024;

#[derive(Clone, Debug, Default)]
pub struct RequestMeta {
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
    pub method: String,
    pub path: String,
}

impl RequestMeta {
    pub fn from_request(req: &HttpRequest) -> RequestMeta {
        Self::from_parts(req.peer_addr(), req.headers(), req.method(), req.path())
    }

    pub fn from_parts(
        peer: Option<std::net::SocketAddr>,
        headers: &actix_web::http::header::HeaderMap,
        method: &actix_web::http::Method,
        path: &str,
    ) -> RequestMeta {
        let user_agent = headers
            .get(actix_web::http::header::USER_AGENT)
            .map(|v| truncate(&String::from_utf8_lossy(v.as_bytes()), MAX_USER_AGENT));
        RequestMeta {
            client_ip: peer.map(|p| p.ip().to_string()),
            user_agent,
            method: method.as_str().to_string(),
            path: truncate(path, MAX_PATH),
        }
    }

    /// An audit event stamped with this request's origin.
    pub fn event(&self, kind: &str, outcome: Outcome) -> NewEvent {
        let mut ev = NewEvent::new(kind, outcome);
        ev.client_ip = self.client_ip.clone();
        ev.user_agent = self.user_agent.clone();
        ev.method = Some(self.method.clone());
        ev.path = Some(self.path.clone());
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
