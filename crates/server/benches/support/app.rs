//! A fresh data dir and the server's real `AppState` for a bench, and a token for it.

use actix_web::{web, HttpResponse};
use token_core::AccessRequest;
use tokenwatch::app::AppState;
use tokenwatch::config::{FileConfig, Overrides, Settings};

/// The state `serve` would open on an empty data dir with `file`'s settings; the
/// directory lives as long as the returned guard.
pub fn open(file: FileConfig) -> (tempfile::TempDir, web::Data<AppState>) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let settings = Settings::resolve(
        file,
        &Overrides {
            listen: Some("127.0.0.1:0".into()),
            data_dir: Some(tmp.path().join("data")),
            ..Default::default()
        },
    )
    .expect("settings");
    tokenwatch::datadir::ensure(&settings.data_dir).expect("data dir");
    let data = tokenwatch::serve::open_app_state(&settings).expect("app state");
    (tmp, data)
}

/// An access token for the bench user, as `/oauth/token` would issue it.
#[allow(dead_code)] // not every bench authenticates
pub fn access_token(data: &AppState) -> String {
    let issued = data
        .tokens
        .issue_access(&AccessRequest {
            subject: "bench-user".into(),
            username: Some("bench".into()),
            roles: vec!["user".into()],
            client_id: None,
            scope: None,
            session_id: None,
            ttl: None,
            extra: serde_json::Map::new(),
        })
        .expect("issue");
    issued.token.expose().to_string()
}

/// The baseline's `GET /api/v1/me`: no authentication, no audit, and the same body
/// type, serialized the same way, as the real route.
#[allow(dead_code)] // not every bench has a baseline route
pub async fn bare_me() -> HttpResponse {
    let roles = ["user".to_string()];
    HttpResponse::Ok().json(tokenwatch::routes::Me {
        sub: "bench-user",
        username: Some("bench"),
        roles: &roles,
        scope: None,
        client_id: None,
        exp: 1_800_000_000,
    })
}
