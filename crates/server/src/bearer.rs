//! A reusable actix-web middleware that protects routes with bearer tokens
//! (RFC 6750). Every protected request is a decision and is committed to the
//! audit store (`access.granted` / `access.denied`) before the handler runs or
//! the refusal is sent; if the event cannot be committed the request fails closed.
//!
//! ```ignore
//! App::new().service(
//!     web::scope("/api").wrap(BearerAuth::new(tokens, audit_writer)).route("/me", web::get().to(me)),
//! )
//! ```
//! Handlers read the caller with `web::ReqData<Authenticated>`.

use std::future::{ready, Future, Ready};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;

use actix_web::body::{BoxBody, EitherBody};
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::http::header;
use actix_web::{HttpMessage, HttpResponse};
use audit_store::{kinds, AuditWriter, NewEvent, Outcome};
use serde_json::json;
use token_core::{KeyOrigin, Rejection, TokenService, VerifiedToken};

use crate::request_meta::RequestMeta;

/// Why a protected request was refused.
enum Denied {
    /// No bearer token: a challenge without an error (RFC 6750 §3.1).
    NoToken,
    /// Two or more Authorization headers: `invalid_request`, 400.
    Duplicate,
    Invalid(Box<Rejection>),
}

/// The verified caller of a protected route.
#[derive(Clone)]
pub struct Authenticated(pub Arc<VerifiedToken>);

type EventHook = Arc<dyn Fn(&NewEvent) + Send + Sync>;

#[derive(Clone)]
pub struct BearerAuth {
    tokens: Arc<TokenService>,
    audit: AuditWriter,
    on_event: Option<EventHook>,
    realm: &'static str,
}

impl BearerAuth {
    pub fn new(tokens: Arc<TokenService>, audit: AuditWriter) -> Self {
        BearerAuth {
            tokens,
            audit,
            on_event: None,
            realm: "tokenwatch",
        }
    }

    /// Called with every event before it is recorded (the server counts them for /metrics).
    pub fn on_event(mut self, hook: impl Fn(&NewEvent) + Send + Sync + 'static) -> Self {
        self.on_event = Some(Arc::new(hook));
        self
    }
}

impl<S, B> Transform<S, ServiceRequest> for BearerAuth
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: 'static,
{
    type Response = ServiceResponse<EitherBody<B, BoxBody>>;
    type Error = actix_web::Error;
    type Transform = BearerAuthService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(BearerAuthService {
            inner: Rc::new(service),
            config: self.clone(),
        }))
    }
}

pub struct BearerAuthService<S> {
    inner: Rc<S>,
    config: BearerAuth,
}

/// What the Authorization header held.
enum Presented<'a> {
    Missing,
    /// More than one Authorization header: which one counts is ambiguous, so none does.
    Duplicate,
    Token(&'a str),
}

/// The audit reason of a request with two or more Authorization headers.
pub const DUPLICATE_AUTHORIZATION: &str = "duplicate_authorization";

fn presented_token(req: &ServiceRequest) -> Presented<'_> {
    let mut values = req.headers().get_all(header::AUTHORIZATION);
    let value = match (values.next(), values.next()) {
        (None, _) => return Presented::Missing,
        (Some(_), Some(_)) => return Presented::Duplicate,
        (Some(value), None) => value,
    };
    // UTF-8 rather than `HeaderValue::to_str`'s visible-ASCII check, which walks the
    // token byte by byte: the verifier's strict base64url parse refuses anything else.
    match std::str::from_utf8(value.as_bytes()).ok().and_then(|v| {
        let (scheme, rest) = v.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
    }) {
        Some(token) if !token.is_empty() => Presented::Token(token),
        _ => Presented::Missing,
    }
}

const DUPLICATE_MESSAGE: &str = "send exactly one Authorization header";

/// The RFC 6750 §3 answer: 401 with a challenge, or 400 `invalid_request` for a
/// request that is malformed as a request (two Authorization headers).
fn refusal_response(denied: &Denied, realm: &str) -> HttpResponse {
    let (mut resp, challenge, body) = match denied {
        Denied::NoToken => (
            HttpResponse::Unauthorized(),
            format!("Bearer realm=\"{realm}\""),
            json!({ "error": "unauthorized", "error_description": "a bearer token is required" }),
        ),
        Denied::Duplicate => (
            HttpResponse::BadRequest(),
            format!(
                "Bearer realm=\"{realm}\", error=\"invalid_request\", error_description=\"{DUPLICATE_AUTHORIZATION}\""
            ),
            json!({ "error": "invalid_request", "error_description": DUPLICATE_MESSAGE }),
        ),
        Denied::Invalid(r) => (
            HttpResponse::Unauthorized(),
            format!(
                "Bearer realm=\"{realm}\", error=\"invalid_token\", error_description=\"{}\"",
                r.reason.as_str()
            ),
            json!({ "error": "invalid_token", "error_description": r.reason.as_str() }),
        ),
    };
    resp.insert_header((header::WWW_AUTHENTICATE, challenge))
        .json(body)
}

pub fn rejection_event(meta: &RequestMeta, kind: &str, r: &Rejection) -> NewEvent {
    with_rejection(meta.event(kind, Outcome::Failure), r)
}

fn with_rejection(mut ev: NewEvent, r: &Rejection) -> NewEvent {
    ev.reason = Some(r.reason.as_str().to_string());
    ev.subject = r.subject.clone();
    ev.jti = r.jti.clone();
    ev.kid = r.kid.clone();
    ev.alg = r.alg.clone();
    ev.token_fp = Some(r.fingerprint.clone());
    ev
}

impl<S, B> Service<ServiceRequest> for BearerAuthService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: 'static,
{
    type Response = ServiceResponse<EitherBody<B, BoxBody>>;
    type Error = actix_web::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>>>>;

    actix_web::dev::forward_ready!(inner);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        let meta = RequestMeta::from_service_request(&req);
        let decision = match presented_token(&req) {
            Presented::Missing => Err(Denied::NoToken),
            Presented::Duplicate => Err(Denied::Duplicate),
            Presented::Token(t) => self
                .config
                .tokens
                .verify(t)
                .map_err(|r| Denied::Invalid(Box::new(r))),
        };
        let event = match &decision {
            Ok(v) => {
                let mut ev = meta.into_event(kinds::ACCESS_GRANTED, Outcome::Success);
                ev.subject = Some(v.claims.sub.clone());
                ev.username = v.claims.username.clone();
                ev.jti = Some(v.claims.jti.clone());
                ev.kid = Some(v.kid.clone());
                ev.alg = Some(v.alg.as_str().to_string());
                ev.token_fp = Some(v.fingerprint.clone());
                if v.origin == KeyOrigin::Imported {
                    ev.detail = json!({ "key": v.origin.as_str(), "iss": v.claims.iss });
                }
                ev
            }
            Err(Denied::Duplicate) => {
                let mut ev = meta.into_event(kinds::ACCESS_DENIED, Outcome::Failure);
                ev.reason = Some(DUPLICATE_AUTHORIZATION.into());
                ev.detail = json!({ "message": DUPLICATE_MESSAGE });
                ev
            }
            Err(Denied::Invalid(rejection)) => {
                let mut ev = with_rejection(
                    meta.into_event(kinds::ACCESS_DENIED, Outcome::Failure),
                    rejection,
                );
                ev.detail = json!({ "message": rejection.message });
                ev
            }
            Err(Denied::NoToken) => {
                let mut ev = meta.into_event(kinds::ACCESS_DENIED, Outcome::Failure);
                ev.reason = Some("missing_token".into());
                ev
            }
        };
        if let Some(hook) = &self.config.on_event {
            hook(&event);
        }
        // Queued now, awaited below: the boxed future then holds a small handle instead
        // of the event (224 bytes instead of 1 216). From 1 KiB up, each allocation of
        // it made glibc's malloc consolidate its free lists, once per request.
        let recorded = self.config.audit.submit(event);
        let decision = decision.map(Arc::new);
        let inner = self.inner.clone();
        let realm = self.config.realm;
        let fut = async move {
            let recorded = match recorded {
                Ok(ack) => ack.await,
                Err(e) => Err(e),
            };
            if let Err(e) = recorded {
                tracing::error!(error = %e, "access decision could not be audited; failing closed");
                let resp = HttpResponse::ServiceUnavailable()
                    .json(json!({ "error": "temporarily_unavailable", "error_description": "the audit store cannot record this request" }));
                return Ok(req.into_response(resp).map_into_right_body());
            }
            match decision {
                Ok(verified) => {
                    req.extensions_mut().insert(Authenticated(verified));
                    inner
                        .call(req)
                        .await
                        .map(ServiceResponse::map_into_left_body)
                }
                Err(denied) => {
                    let resp = refusal_response(&denied, realm);
                    Ok(req.into_response(resp).map_into_right_body())
                }
            }
        };
        Box::pin(fut)
    }
}
