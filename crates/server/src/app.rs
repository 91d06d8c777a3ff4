//! The shared application state and the one place where an auth decision is
//! turned into a committed audit event.

use std::sync::Arc;

use actix_web::web;
use audit_store::{AuditStore, AuditWriter, NewEvent};
use token_core::TokenService;

use crate::config::Settings;
use crate::detection::Detection;
use crate::metrics::Metrics;
use crate::state::StateDb;

pub struct AppState {
    pub settings: Settings,
    pub tokens: Arc<TokenService>,
    pub state: Arc<StateDb>,
    pub store: Arc<AuditStore>,
    pub audit: AuditWriter,
    pub metrics: Metrics,
    /// The detector plugins; `None` when the server runs without them (benches).
    pub detection: Option<Detection>,
    /// Sessions, login back-off and report manifests of the admin UI.
    pub admin: crate::admin::AdminUi,
    /// Limits and per-source rate buckets of `POST /api/v1/events`.
    pub ingest_limits: crate::ingest_api::IngestLimits,
    pub ingest: crate::ingest_api::IngestState,
    /// Delivery counters of the `[[forward]]` collectors.
    pub forward: crate::forward::ForwardStatus,
    /// Authorization codes in flight and recently used (memory only, 60 s each).
    pub codes: crate::oauth::code::CodeStore,
}

/// The audit store could not commit the event; the decision must not be acted on.
#[derive(Debug, thiserror::Error)]
#[error("audit store unavailable: {0}")]
pub struct AuditUnavailable(pub String);

impl AppState {
    /// Records `ev` and returns once it is committed. Callers answer the client
    /// only after this succeeds: a decision that was not recorded is not made.
    pub async fn record(&self, ev: NewEvent) -> Result<i64, AuditUnavailable> {
        self.metrics.count_event(&ev);
        self.audit.record(ev).await.map_err(|e| {
            tracing::error!(error = %e, "audit event could not be committed; failing the request closed");
            AuditUnavailable(e.to_string())
        })
    }

    /// Records several events of one decision; all are committed before it returns.
    pub async fn record_all(&self, events: Vec<NewEvent>) -> Result<(), AuditUnavailable> {
        let pending = events.into_iter().map(|ev| self.record(ev));
        for result in futures_util::future::join_all(pending).await {
            result?;
        }
        Ok(())
    }
}

pub type Data = web::Data<AppState>;
