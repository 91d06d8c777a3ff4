//! Static assets, embedded at compile time from `web/`.

use actix_web::http::header;
use actix_web::{web, HttpResponse};

use super::AdminError;

struct Asset {
    path: &'static str,
    mime: &'static str,
    bytes: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        path: "app.css",
        mime: "text/css; charset=utf-8",
        bytes: include_bytes!("../../../../web/static/app.css"),
    },
    Asset {
        path: "app.js",
        mime: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../../../web/static/app.js"),
    },
    Asset {
        path: "chart.umd.min.js",
        mime: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../../../web/vendor/chartjs/chart.umd.min.js"),
    },
];

pub async fn serve(path: web::Path<String>) -> Result<HttpResponse, AdminError> {
    let asset = ASSETS
        .iter()
        .find(|a| a.path == path.as_str())
        .ok_or(AdminError::NotFound)?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .content_type(asset.mime)
        .body(asset.bytes))
}
