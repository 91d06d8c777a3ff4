//! HTTPS on the listener. The certificate is served from memory by a resolver
//! whose pair is swapped when the files on disk change, so a renewed certificate
//! (certbot, cert-manager, a secret mount) reaches new connections within
//! seconds, without a restart. A bad new pair is refused and the old one kept.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use audit_store::{kinds, AuditWriter, NewEvent, Outcome};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde_json::json;
use tls_files::TlsFileError;

use crate::config::TlsFiles;

/// How often the files are looked at: a stat of two files, nothing more.
const POLL: Duration = Duration::from_secs(1);

/// Hands every handshake the pair currently in force.
#[derive(Debug)]
pub(crate) struct ReloadingCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

impl ReloadingCert {
    fn swap(&self, key: CertifiedKey) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(key);
    }
}

/// The listener's rustls configuration and the resolver the reloader swaps.
/// Fails (and `serve` refuses to start) on a missing, unreadable, group- or
/// world-readable or mismatched pair.
pub(crate) fn load(files: &TlsFiles) -> Result<(rustls::ServerConfig, Arc<ReloadingCert>)> {
    let key = tls_files::load_certified_key(&files.cert, &files.key)
        .context("loading the HTTPS certificate (tls_cert / tls_key)")?;
    let resolver = Arc::new(ReloadingCert {
        current: RwLock::new(Arc::new(key)),
    });
    let config =
        tls_files::server_config(resolver.clone()).context("building the HTTPS configuration")?;
    Ok((config, resolver))
}

/// What identifies a version of a file: replaced (new inode), rewritten (mtime,
/// size) or re-pointed (a symlink swap, as Kubernetes secret mounts do; the
/// stat follows it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
    })
}

type Stamps = (Option<Stamp>, Option<Stamp>);

/// The running file watcher; dropping it stops it.
pub(crate) struct Reloader {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Reloader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts watching `files`; a changed pair that loads is served to every new
/// connection from then on.
pub(crate) fn spawn_reloader(
    files: TlsFiles,
    cert: Arc<ReloadingCert>,
    audit: AuditWriter,
) -> Result<Reloader> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = std::thread::Builder::new()
        .name("tokenwatch-tls-reload".into())
        .spawn(move || watch(&files, &cert, &audit, &flag))
        .context("starting the HTTPS certificate watcher")?;
    Ok(Reloader {
        stop,
        thread: Some(thread),
    })
}

fn watch(files: &TlsFiles, cert: &ReloadingCert, audit: &AuditWriter, stop: &AtomicBool) {
    let stamps = || (stamp(&files.cert), stamp(&files.key));
    let mut served: Stamps = stamps();
    let mut previous_poll = served;
    let mut reported: Option<Stamps> = None;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(POLL);
        let now = stamps();
        let settled = now == previous_poll;
        previous_poll = now;
        if now == served || reported == Some(now) {
            continue;
        }
        match tls_files::load_certified_key(&files.cert, &files.key) {
            Ok(key) => {
                let sha256 = tls_files::cert_sha256_hex(&key);
                cert.swap(key);
                served = now;
                reported = None;
                tracing::info!(cert = %files.cert.display(), %sha256, "HTTPS certificate reloaded; new connections get it");
                record(audit, files, Ok(&sha256));
            }
            // The certificate and key are rarely replaced in one step: a pair
            // that does not load is an error only once the files have stayed
            // the same for a whole poll.
            Err(e) if settled => {
                reported = Some(now);
                tracing::error!(error = %e, "the changed HTTPS certificate or key was refused; still serving the previous certificate");
                record(audit, files, Err(&e));
            }
            Err(_) => {}
        }
    }
}

fn record(audit: &AuditWriter, files: &TlsFiles, result: Result<&str, &TlsFileError>) {
    let mut ev = NewEvent::new(
        kinds::TLS_RELOAD,
        if result.is_ok() {
            Outcome::Success
        } else {
            Outcome::Failure
        },
    );
    ev.username = Some("system".into());
    let mut detail = json!({
        "cert": files.cert.display().to_string(),
        "key": files.key.display().to_string(),
    });
    match result {
        Ok(sha256) => detail["cert_sha256"] = json!(sha256),
        Err(e) => {
            ev.reason = Some(e.reason().into());
            detail["error"] = json!(e.to_string());
        }
    }
    ev.detail = detail;
    if let Err(e) = audit.record_blocking(ev) {
        tracing::error!(error = %e, "recording the HTTPS certificate reload in the audit trail failed");
    }
}
