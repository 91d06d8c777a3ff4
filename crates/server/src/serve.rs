//! `tokenwatch serve`: opens the data directory, bootstraps keys and the first
//! admin, and runs the HTTP server until it is told to stop.

use std::sync::Arc;
use std::time::Duration;

use actix_web::middleware::DefaultHeaders;
use actix_web::{web, App, HttpServer};
use anyhow::{Context, Result};
use audit_store::{kinds, AuditStore, NewEvent, Outcome};
use serde_json::json;

use crate::app::AppState;
use crate::config::Settings;
use crate::datadir::DataDirLock;
use crate::detection::Detection;
use crate::metrics::Metrics;
use crate::state::{Role, StateDb};

/// Opens everything a server needs in `settings.data_dir` (the caller holds
/// the lock), without the detectors.
pub fn open_app_state(settings: &Settings) -> Result<web::Data<AppState>> {
    open_app_state_with(settings, false)
}

/// As [`open_app_state`]; with `detectors`, also loads the plugin folder and
/// starts feeding committed events to it.
pub fn open_app_state_with(settings: &Settings, detectors: bool) -> Result<web::Data<AppState>> {
    let state = Arc::new(StateDb::open(&settings.state_db_path())?);
    let tokens = Arc::new(crate::commands::token_service(settings, state.clone())?);
    let store =
        Arc::new(AuditStore::open(settings.store_config()).context("opening the audit store")?);
    bootstrap_admin(&state, &store)?;
    let detection = if detectors {
        Some(Detection::start(settings, &store, state.clone())?)
    } else {
        None
    };
    Ok(web::Data::new(AppState {
        settings: settings.clone(),
        tokens,
        state,
        audit: store.writer(),
        store,
        metrics: Metrics::default(),
        detection,
        admin: Default::default(),
        ingest_limits: settings.ingest.clone(),
        ingest: Default::default(),
        forward: Default::default(),
        codes: Default::default(),
    }))
}

pub fn run(mut settings: Settings, demo: bool) -> Result<()> {
    if demo {
        if settings.tls.is_some() {
            anyhow::bail!(
                "--demo drives the server over plain HTTP; run it without --tls-cert / --tls-key"
            );
        }
        // The demo's clients come from documentation ranges via X-Forwarded-For.
        for local in ["127.0.0.1/32", "::1/128"] {
            settings.trusted_proxies.push(local.parse()?);
        }
    }
    // Before anything is opened: a bad certificate or key stops the start here.
    let tls = settings.tls.as_ref().map(crate::tls::load).transpose()?;
    let lock = DataDirLock::acquire(&settings.data_dir)?;
    let _log_guard = crate::logging::init(
        Some(&settings.data_dir),
        &settings.log_level,
        settings.log_format,
    );
    // Bound before the token service exists: an issuer derived from the listen
    // address must name the port actually bound when --listen asked for port 0.
    let listener =
        bind(settings.listen).with_context(|| format!("listening on {}", settings.listen))?;
    if settings.issuer_from_listen {
        settings.issuer = crate::config::issuer_for_listen(listener.local_addr()?);
        if tls.is_some() {
            // The listener answers only HTTPS, so that is the scheme clients use.
            settings.issuer = settings.issuer.replacen("http://", "https://", 1);
        }
        if settings.listen.ip().is_unspecified() {
            tracing::warn!(issuer = %settings.issuer, "no issuer configured and listening on every address: tokens name a loopback issuer; set `issuer` to the URL clients use");
        }
    }
    let data = open_app_state_with(&settings, true)?;
    let store = data.store.clone();
    spawn_housekeeping(data.state.clone());
    crate::response::spawn_lapse_sweep(data.state.clone(), data.audit.clone());
    let forwarders =
        crate::forward::start(&settings.forward, &store, data.state.clone(), &data.forward)?;

    let app_data = data.clone();
    let https = tls.is_some();
    let server = HttpServer::new(move || {
        let mut headers = DefaultHeaders::new()
            .add(("X-Content-Type-Options", "nosniff"))
            .add(("Referrer-Policy", "no-referrer"))
            .add(("X-Frame-Options", "DENY"))
            .add((
                "Content-Security-Policy",
                "default-src 'none'; frame-ancestors 'none'",
            ));
        if https {
            // Browsers that saw the console over HTTPS never fall back to HTTP.
            headers = headers.add(("Strict-Transport-Security", "max-age=31536000"));
        }
        App::new()
            .wrap(headers)
            // Outermost, so every answer is timed, refusals by the others included.
            .wrap(crate::request_timer::RequestTimer::new(app_data.clone()))
            .configure(|cfg| crate::routes::configure(cfg, &app_data))
    });
    let (server, reloader) = match tls {
        Some((config, cert)) => {
            let files = settings.tls.clone().context("TLS files")?;
            let server = server
                .listen_rustls_0_23(listener, config)
                .with_context(|| format!("listening on {}", settings.listen))?;
            let reloader = crate::tls::spawn_reloader(files, cert, data.audit.clone())?;
            (server, Some(reloader))
        }
        None => (
            server
                .listen(listener)
                .with_context(|| format!("listening on {}", settings.listen))?,
            None,
        ),
    };
    let scheme = if https { "https" } else { "http" };
    for addr in server.addrs() {
        // Tests and scripts read this line to learn the port when --listen used port 0.
        crate::cli::print_line(&format!("tokenwatch listening on {scheme}://{addr}"))?;
    }
    tracing::info!(listen = %settings.listen, issuer = %settings.issuer, data_dir = %settings.data_dir.display(), "tokenwatch serving");
    if demo {
        let addr = *server
            .addrs()
            .first()
            .context("the server is not listening on any address")?;
        crate::demo::spawn(addr, data.state.clone(), data.tokens.clone())?;
        data.audit
            .record_blocking(crate::demo::setup_event())
            .context("recording the demo setup")?;
    }
    actix_web::rt::System::new().block_on(server.run())?;

    // The last AppState reference goes first: it stops the detectors, whose
    // alerts still go through the store's writer.
    drop(reloader);
    drop(forwarders);
    drop(data);
    match Arc::try_unwrap(store) {
        Ok(store) => store.shutdown().context("closing the audit store")?,
        Err(_) => tracing::warn!("audit store still in use at shutdown; its writer drains on drop"),
    }
    drop(lock);
    Ok(())
}

/// A listening socket as actix-web's own `bind` makes it: SO_REUSEADDR, so a
/// restart is not refused while the last run's connections sit in TIME_WAIT.
fn bind(addr: std::net::SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// On an empty user table, creates `admin` with a random password printed once.
fn bootstrap_admin(state: &StateDb, store: &AuditStore) -> Result<()> {
    if state.user_count()? > 0 {
        return Ok(());
    }
    let password = crate::random_token(18);
    let user = state.add_user("admin", Role::Admin, &password)?;
    let mut ev = NewEvent::new(kinds::ADMIN_ACTION, Outcome::Success);
    ev.username = Some("system".into());
    ev.path = Some("bootstrap admin".into());
    ev.detail = json!({ "user": user.username, "role": "admin", "subject": user.subject });
    store.writer().record_blocking(ev)?;
    // Printed, never logged: the log files outlive this terminal.
    println!("================================================================");
    println!(" First start: created user 'admin' with one-time password:");
    println!("   {password}");
    println!(" It is shown only this once. Store it now.");
    println!("================================================================");
    Ok(())
}

/// Drops revocations and refresh tokens whose tokens have expired anyway.
fn spawn_housekeeping(state: Arc<StateDb>) {
    let spawned = std::thread::Builder::new()
        .name("tokenwatch-housekeeping".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_secs(600));
            let now = crate::state::now_secs();
            use token_core::{RefreshStore, RevocationStore};
            if let Err(e) = RevocationStore::purge_expired(state.as_ref(), now) {
                tracing::warn!(error = %e, "purging expired revocations failed");
            }
            if let Err(e) = RefreshStore::purge_expired(state.as_ref(), now) {
                tracing::warn!(error = %e, "purging expired refresh tokens failed");
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "could not start housekeeping thread");
    }
}
