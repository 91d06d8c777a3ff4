//! Times every request for `/metrics` (`tokenwatch_http_request_duration_seconds`
//! by route family, `tokenwatch_http_responses_total`). Wraps the whole app, so
//! refusals by inner middleware and unknown paths are timed too.
//!
//! The request path pays two clock reads and three relaxed atomic adds: the
//! future is a plain struct (no box), and the metrics are reached through an
//! `Rc` per worker (no atomic reference count per request).

use std::future::{ready, Future, Ready};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Instant;

use actix_web::dev::{forward_ready, Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::Error;

use crate::app::Data;
use crate::metrics::RouteFamily;

/// The middleware: `App::new().wrap(RequestTimer::new(data.clone()))`.
pub struct RequestTimer(Data);

impl RequestTimer {
    pub fn new(data: Data) -> RequestTimer {
        RequestTimer(data)
    }
}

impl<S, B> Transform<S, ServiceRequest> for RequestTimer
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
{
    type Response = ServiceResponse<B>;
    type Error = Error;
    type Transform = RequestTimerService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(RequestTimerService {
            service,
            data: Rc::new(self.0.clone()),
        }))
    }
}

pub struct RequestTimerService<S> {
    service: S,
    data: Rc<Data>,
}

impl<S, B> Service<ServiceRequest> for RequestTimerService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
{
    type Response = ServiceResponse<B>;
    type Error = Error;
    type Future = Timed<S::Future>;

    forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        let family = RouteFamily::of(req.path());
        Timed {
            inner: self.service.call(req),
            data: self.data.clone(),
            family,
            started: Instant::now(),
        }
    }
}

pin_project_lite::pin_project! {
    pub struct Timed<F> {
        #[pin]
        inner: F,
        data: Rc<Data>,
        family: RouteFamily,
        started: Instant,
    }
}

impl<F, B> Future for Timed<F>
where
    F: Future<Output = Result<ServiceResponse<B>, Error>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = std::task::ready!(this.inner.poll(cx));
        let status = match &out {
            Ok(res) => res.status(),
            Err(e) => e.as_response_error().status_code(),
        };
        this.data
            .metrics
            .observe_request(*this.family, this.started.elapsed(), status.as_u16());
        Poll::Ready(out)
    }
}
