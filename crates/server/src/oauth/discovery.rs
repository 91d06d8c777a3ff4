//! Authorization server metadata (RFC 8414), served at
//! `/.well-known/oauth-authorization-server` and, for clients that only look
//! there (RFC 8414 §5), at `/.well-known/openid-configuration`.
//!
//! tokenwatch is an OAuth 2.0 authorization server, not an OpenID Provider: it
//! issues no ID token and has no userinfo endpoint, so the document has no
//! OpenID-only fields and no `openid` scope. Everything in it is what the
//! server does; `tests/tests/discovery.rs` calls every endpoint and grant listed.

use actix_web::http::header;
use actix_web::HttpResponse;
use serde_json::json;

use crate::app::Data;
use crate::state::GrantType;

pub async fn metadata(data: Data) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "public, max-age=300"))
        .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"))
        .json(document(&data))
}

/// The metadata document for this server's issuer and keys.
pub fn document(data: &Data) -> serde_json::Value {
    let issuer = data.settings.issuer.as_str();
    // Endpoints hang off the issuer; with a path in the issuer, a proxy in front
    // maps it to the server's root.
    let base = issuer.trim_end_matches('/');
    let at = |path: &str| format!("{base}{path}");
    let mut algs: Vec<String> = data
        .tokens
        .keys()
        .iter()
        .filter(|k| !k.verify_only)
        .map(|k| k.alg.as_str().to_string())
        .collect();
    algs.sort();
    algs.dedup();
    let client_auth = ["client_secret_basic", "client_secret_post"];
    json!({
        "issuer": issuer,
        "authorization_endpoint": at("/oauth/authorize"),
        "token_endpoint": at("/oauth/token"),
        "jwks_uri": at("/.well-known/jwks.json"),
        "revocation_endpoint": at("/oauth/revoke"),
        "introspection_endpoint": at("/oauth/introspect"),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": GrantType::ALL.iter().map(|g| g.as_str()).collect::<Vec<_>>(),
        "code_challenge_methods_supported": ["S256"],
        // "none": a public client, which sends only its client_id (and PKCE).
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "introspection_endpoint_auth_methods_supported": client_auth,
        // RFC 9207: the authorization response carries `iss`.
        "authorization_response_iss_parameter_supported": true,
        // Not registered metadata: the algorithms access tokens are signed with,
        // from the keys that sign (verify-only imported keys are not listed).
        "access_token_signing_alg_values_supported": algs,
    })
}
