//! The command-line subcommands other than `serve`.

use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use audit_store::{kinds, AuditStore, NewEvent, Outcome};
use serde_json::json;
use token_core::{AccessRequest, Alg, IssuerBinding, KeyRing, TokenService};

use crate::cli::{
    self, AuditCmd, ClientKindArg, ClientsCmd, ExceptionsCmd, ExportArgs, ExportWhat, KeysCmd,
    LockoutsCmd, PluginsCmd, RoleArg, TokenCmd, UsersCmd,
};
use crate::config::Settings;
use crate::datadir::DataDirLock;
use crate::state::{ClientKind, GrantType, NewClient, Role, StateDb};

/// A command that changes state: holds the data-dir lock and records what it did.
pub(crate) struct AdminSession {
    _lock: DataDirLock,
    pub(crate) store: AuditStore,
}

impl AdminSession {
    pub(crate) fn open(settings: &Settings) -> Result<AdminSession> {
        let lock = DataDirLock::acquire(&settings.data_dir)?;
        let store = AuditStore::open(settings.store_config()).context("opening the audit store")?;
        Ok(AdminSession { _lock: lock, store })
    }

    pub(crate) fn record(
        &self,
        action: &str,
        outcome: Outcome,
        detail: serde_json::Value,
    ) -> Result<()> {
        let mut ev = NewEvent::new(kinds::ADMIN_ACTION, outcome);
        ev.username = Some(operator());
        ev.method = Some("CLI".into());
        ev.path = Some(action.into());
        ev.detail = detail;
        self.store
            .writer()
            .record_blocking(ev)
            .context("recording the audit event")?;
        Ok(())
    }

    pub(crate) fn close(self) -> Result<()> {
        self.store.shutdown().context("closing the audit store")
    }
}

/// Who ran the command, as far as the operating system says.
fn operator() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .map(|u| format!("os:{u}"))
        .unwrap_or_else(|_| "os:unknown".into())
}

pub fn users(settings: &Settings, cmd: UsersCmd) -> Result<()> {
    match cmd {
        UsersCmd::Add { name, role, .. } => {
            let password = cli::read_secret_stdin("password")?;
            let role = match role {
                RoleArg::Admin => Role::Admin,
                RoleArg::Analyst => Role::Analyst,
                RoleArg::User => Role::User,
            };
            let session = AdminSession::open(settings)?;
            let state = StateDb::open(&settings.state_db_path())?;
            let user = state.add_user(&name, role, &password)?;
            session.record(
                "users add",
                Outcome::Success,
                json!({ "user": user.username, "role": role.as_str(), "subject": user.subject }),
            )?;
            session.close()?;
            cli::print_line(&format!(
                "added user {} ({}), subject {}",
                user.username,
                role.as_str(),
                user.subject
            ))
        }
    }
}

pub fn clients(settings: &Settings, cmd: ClientsCmd) -> Result<()> {
    match cmd {
        ClientsCmd::Add {
            client_id,
            kind,
            scope,
            grant_types,
            redirect_uris,
        } => {
            let kind = match kind {
                ClientKindArg::Confidential => ClientKind::Confidential,
                ClientKindArg::Public => ClientKind::Public,
                ClientKindArg::ResourceServer => ClientKind::ResourceServer,
            };
            let grant_types = grant_types
                .map(|gs| {
                    gs.iter()
                        .map(|g| g.trim().parse::<GrantType>())
                        .collect::<Result<Vec<_>, _>>()
                })
                .transpose()?;
            let new = NewClient {
                client_id: client_id.clone(),
                kind,
                scope,
                grant_types,
                redirect_uris,
            };
            let session = AdminSession::open(settings)?;
            let state = StateDb::open(&settings.state_db_path())?;
            let secret = state.add_client(&new)?;
            let client = state
                .find_client(&client_id)?
                .ok_or_else(|| anyhow!("client {client_id:?} vanished after it was added"))?;
            let grants: Vec<&str> = client.grant_types.iter().map(|g| g.as_str()).collect();
            session.record(
                "clients add",
                Outcome::Success,
                json!({ "client_id": client_id, "kind": kind.as_str(), "grant_types": grants,
                    "redirect_uris": client.redirect_uris }),
            )?;
            session.close()?;
            cli::print_line(&format!("client_id: {client_id}"))?;
            cli::print_line(&format!("grant_types: {}", grants.join(" ")))?;
            match secret {
                Some(secret) => {
                    cli::print_line(&format!("client_secret: {secret}"))?;
                    eprintln!("The secret is shown once; store it now.");
                }
                None => eprintln!("A public client has no secret: it uses PKCE."),
            }
            Ok(())
        }
    }
}

pub fn token_service(settings: &Settings, state: Arc<StateDb>) -> Result<TokenService> {
    let keys = KeyRing::load_or_create(&settings.jwt_key_dir(), settings.signing_alg)
        .context("loading the signing keys")?;
    for k in keys
        .keys()
        .iter()
        .filter(|k| k.verify_only && k.binding.is_none())
    {
        tracing::warn!(
            kid = %k.kid,
            "imported key {} is bound to no issuer and verifies nothing; import it again \
             with `tokenwatch keys import-hmac --kid {} --issuer <its issuer> --secret-stdin`",
            k.kid,
            k.kid
        );
    }
    Ok(TokenService::new(
        keys,
        settings.token_config(),
        state.clone(),
        state,
    ))
}

pub fn token(settings: &Settings, cmd: TokenCmd) -> Result<()> {
    match cmd {
        TokenCmd::Issue {
            sub,
            ttl,
            username,
            roles,
        } => {
            let session = AdminSession::open(settings)?;
            let state = Arc::new(StateDb::open(&settings.state_db_path())?);
            let tokens = token_service(settings, state)?;
            let issued = tokens
                .issue_access(&AccessRequest {
                    subject: sub.clone(),
                    username: username.clone(),
                    roles,
                    client_id: None,
                    scope: None,
                    session_id: None,
                    ttl: ttl.map(std::time::Duration::from_secs),
                    extra: serde_json::Map::new(),
                })
                .map_err(|e| anyhow!("{e}"))?;
            let mut ev = NewEvent::new(kinds::TOKEN_ISSUED, Outcome::Success);
            ev.subject = Some(sub);
            ev.username = username;
            ev.jti = Some(issued.jti.clone());
            ev.kid = Some(issued.kid.clone());
            ev.alg = Some(issued.alg.as_str().to_string());
            ev.token_fp = Some(issued.fingerprint.clone());
            ev.method = Some("CLI".into());
            ev.detail =
                json!({ "via": "cli", "operator": operator(), "expires_at": issued.expires_at });
            session.store.writer().record_blocking(ev)?;
            session.close()?;
            cli::print_line(issued.token.expose())
        }
        TokenCmd::Verify => {
            let raw = cli::read_secret_stdin("token")?;
            let state = Arc::new(StateDb::open(&settings.state_db_path())?);
            let tokens = token_service(settings, state)?;
            match tokens.verify(raw.trim()) {
                Ok(v) => {
                    let out = json!({ "valid": true, "kid": v.kid, "alg": v.alg.as_str(), "fingerprint": v.fingerprint, "claims": &*v.claims });
                    cli::print_line(&serde_json::to_string_pretty(&out)?)
                }
                Err(r) => {
                    let out = json!({ "valid": false, "reason": r.reason.as_str(), "message": r.message, "fingerprint": r.fingerprint });
                    cli::print_line(&serde_json::to_string_pretty(&out)?)?;
                    std::process::exit(2);
                }
            }
        }
    }
}

pub fn keys(settings: &Settings, cmd: KeysCmd) -> Result<()> {
    match cmd {
        KeysCmd::List => {
            let keys = KeyRing::load_or_create(&settings.jwt_key_dir(), settings.signing_alg)?;
            for k in keys.keys() {
                cli::print_line(&format!(
                    "{}\t{}\t{}\tcreated {}{}{}",
                    k.kid,
                    k.alg.as_str(),
                    if k.active { "active" } else { "verify-only" },
                    k.created_at,
                    k.retired_at
                        .map(|r| format!(", retired {r}"))
                        .unwrap_or_default(),
                    binding_text(&k)
                ))?;
            }
            Ok(())
        }
        KeysCmd::Rotate { alg } => {
            let alg: Alg = match alg {
                Some(a) => a.parse().map_err(|_| anyhow!("unknown algorithm {a:?}: expected HS256, HS384, HS512, RS256, ES256 or EdDSA"))?,
                None => settings.signing_alg,
            };
            let session = AdminSession::open(settings)?;
            let mut keys = KeyRing::load_or_create(&settings.jwt_key_dir(), settings.signing_alg)?;
            let info = keys.rotate(alg)?;
            session.record(
                "keys rotate",
                Outcome::Success,
                json!({ "kid": info.kid, "alg": info.alg.as_str() }),
            )?;
            session.close()?;
            cli::print_line(&format!(
                "new active key {} ({})",
                info.kid,
                info.alg.as_str()
            ))
        }
        KeysCmd::ImportHmac {
            kid,
            alg,
            issuer,
            audience,
            ..
        } => {
            let alg: Alg = alg
                .parse()
                .map_err(|_| anyhow!("unknown algorithm {alg:?}"))?;
            if !matches!(alg, Alg::HS256 | Alg::HS384 | Alg::HS512) {
                bail!("import-hmac takes HS256, HS384 or HS512");
            }
            let binding = IssuerBinding::new(issuer, audience)?;
            let secret = cli::read_secret_stdin("secret")?;
            let session = AdminSession::open(settings)?;
            let state = Arc::new(StateDb::open(&settings.state_db_path())?);
            let tokens = token_service(settings, state)?;
            let info = tokens.import_hmac(&kid, alg, secret.as_bytes(), &binding)?;
            session.record(
                "keys import-hmac",
                Outcome::Success,
                json!({ "kid": info.kid, "alg": info.alg.as_str(), "issuer": binding.issuer(), "audience": binding.audience() }),
            )?;
            session.close()?;
            cli::print_line(&format!(
                "imported verification key {} ({}) for tokens of{}",
                info.kid,
                info.alg.as_str(),
                binding_text(&info)
            ))
        }
    }
}

/// ` issuer "…"[, audience "…"]` of an imported key, or a warning when it has none.
fn binding_text(k: &token_core::KeyInfo) -> String {
    match (&k.binding, k.verify_only) {
        (Some(b), _) => format!(
            " issuer {:?}{}",
            b.issuer(),
            b.audience()
                .map(|a| format!(", audience {a:?}"))
                .unwrap_or_default()
        ),
        (None, true) => " UNBOUND: verifies nothing until imported again with --issuer".into(),
        (None, false) => String::new(),
    }
}

pub fn audit(settings: &Settings, cmd: AuditCmd) -> Result<()> {
    match cmd {
        AuditCmd::Verify => {
            let report = audit_store::verify_chain(&settings.store_config())
                .context("verifying the audit chain")?;
            cli::print_line(&report.to_string())?;
            if report.first_problem.is_some() {
                std::process::exit(1);
            }
            Ok(())
        }
        AuditCmd::AcceptLoss { reason } => {
            let _lock = DataDirLock::acquire(&settings.data_dir)?;
            let (store, loss) =
                AuditStore::open_accepting_loss(settings.store_config(), &reason, &operator())
                    .context("opening the audit store")?;
            store.shutdown().context("closing the audit store")?;
            match loss {
                None => cli::print_line(
                    "nothing to accept: the audit record extends its newest signed checkpoint",
                ),
                Some(l) => cli::print_line(&format!(
                    "recorded as audit event {} (audit.loss_accepted): {}",
                    l.event_id, l.message
                )),
            }
        }
        AuditCmd::VerifyExport { csv, manifest } => {
            let m = crate::admin::reports::verify_export(
                &settings.jwt_key_dir(),
                settings.signing_alg,
                &csv,
                &manifest,
            )?;
            cli::print_line(&format!(
                "OK: {} matches its signed manifest ({} report, {} rows, sha256 {}, by {} at {})",
                csv.display(),
                m["report"].as_str().unwrap_or("?"),
                m["rows"],
                m["sha256"].as_str().unwrap_or("?"),
                m["generated_by"].as_str().unwrap_or("?"),
                m["generated_at"].as_str().unwrap_or("?"),
            ))?;
            let r = &m["record"];
            if let (Some(first), Some(last)) = (r["first_id"].as_i64(), r["last_id"].as_i64()) {
                cli::print_line(&format!(
                    "read from the audit record's events {first}..={last}, chain hash at {last}: {} \
                     (check it with `tokenwatch audit verify`)",
                    r["last_hash"].as_str().unwrap_or("?")
                ))?;
            }
            Ok(())
        }
    }
}

pub fn export(settings: &Settings, args: ExportArgs) -> Result<()> {
    let filter = event_filter(&args)?;
    let session = AdminSession::open(settings)?;
    let reader = session.store.reader()?;
    let mut sink: Box<dyn std::io::Write> = match &args.out {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let exported = match args.what {
        ExportWhat::Events => reader.export_events_csv(&filter, &mut sink)?,
        ExportWhat::Alerts => reader.export_alerts_csv(&Default::default(), &mut sink)?,
    };
    let rows = exported.rows;
    sink.flush()?;
    drop(sink);
    let mut ev = NewEvent::new(kinds::ADMIN_EXPORT, Outcome::Success);
    ev.username = Some(operator());
    ev.method = Some("CLI".into());
    ev.detail = json!({ "what": format!("{:?}", args.what).to_lowercase(), "rows": rows,
        "filter": serde_json::to_value(&filter).unwrap_or_default(), "record": exported.record });
    session.store.writer().record_blocking(ev)?;
    session.close()?;
    match &exported.record {
        Some(c) => eprintln!(
            "exported {rows} rows from the record's events {}..={} (chain hash at {}: {})",
            c.first_id, c.last_id, c.last_id, c.last_hash
        ),
        None => eprintln!("exported {rows} rows (the record holds no events)"),
    }
    Ok(())
}

fn parse_time(s: &str) -> Result<i64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .with_context(|| format!("{s:?} is not an RFC 3339 time such as 2026-11-23T00:00:00Z"))?;
    Ok((t.unix_timestamp_nanos() / 1000) as i64)
}

fn event_filter(args: &ExportArgs) -> Result<audit_store::EventFilter> {
    let outcome = match args.outcome.as_deref() {
        None => None,
        Some("success") => Some(Outcome::Success),
        Some("failure") => Some(Outcome::Failure),
        Some(other) => bail!("--outcome {other:?}: expected success or failure"),
    };
    Ok(audit_store::EventFilter {
        from_us: args.from.as_deref().map(parse_time).transpose()?,
        to_us: args.to.as_deref().map(parse_time).transpose()?,
        kind: args.kind.clone(),
        outcome,
        reason: args.reason.clone(),
        subject_or_username: args.user.clone(),
        client_ip: args.ip.clone(),
        jti: args.jti.clone(),
        ..Default::default()
    })
}

pub fn plugins(settings: &Settings, cmd: PluginsCmd) -> Result<()> {
    match cmd {
        PluginsCmd::List => plugins_list(settings),
        PluginsCmd::Check { file } => match crate::detection::check_isolated(&file) {
            Ok(info) => cli::print_line(&describe_plugin(&info)),
            Err(e) => {
                cli::print_line(&format!("refused: {e}"))?;
                std::process::exit(1);
            }
        },
        PluginsCmd::Backtest {
            file,
            from,
            to,
            config,
        } => plugins_backtest(settings, &file, from.as_deref(), to.as_deref(), config),
    }
}

fn describe_plugin(info: &plugin_host::PluginInfo) -> String {
    format!(
        "ok: {} {} (detector ABI {}.{}) from {}: {}",
        info.name,
        info.version,
        info.abi_major,
        info.abi_minor,
        info.file.display(),
        info.description
    )
}

fn plugins_list(settings: &Settings) -> Result<()> {
    let dir = &settings.plugin_dir;
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return cli::print_line(&format!(
            "no plugin folder at {} yet: `tokenwatch serve` creates it with the built-in detectors",
            dir.display()
        ))
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let mut files: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .is_some_and(|x| x == std::env::consts::DLL_EXTENSION)
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return cli::print_line(&format!("no plugins in {}", dir.display()));
    }
    let state = crate::state::StateDb::open(&settings.state_db_path()).ok();
    let mut refused = 0;
    for file in files {
        let quarantined = state
            .as_ref()
            .and_then(|s| crate::detection::quarantine_reason(s, &file));
        if let Some(reason) = quarantined {
            refused += 1;
            cli::print_line(&format!(
                "quarantined: {}: {reason} (re-enable it in the console, or replace the file)",
                file.display()
            ))?;
            continue;
        }
        match crate::detection::check_isolated(&file) {
            Ok(info) => cli::print_line(&describe_plugin(&info))?,
            Err(e) => {
                refused += 1;
                cli::print_line(&format!("refused: {e}"))?;
            }
        }
    }
    if refused > 0 {
        eprintln!("{refused} plugin file(s) would be refused");
    }
    Ok(())
}

fn plugins_backtest(
    settings: &Settings,
    file: &std::path::Path,
    from: Option<&str>,
    to: Option<&str>,
    config: Option<std::path::PathBuf>,
) -> Result<()> {
    // Checked in a separate process first: a file that crashes while loading
    // is refused before this process maps it.
    let info = crate::detection::check_isolated(file).map_err(|e| anyhow!("refused: {e}"))?;
    let config = match config {
        Some(path) => read_plugin_config(&path)?,
        None => {
            let json = plugin_host::config_json(file, settings.plugin_config.get(&info.name))?;
            serde_json::from_str(&json)?
        }
    };
    let from_us = from.map(parse_time).transpose()?;
    let to_us = to.map(parse_time).transpose()?;
    let session = AdminSession::open(settings)?;
    let reader = session.store.reader()?;

    let mut cursor = 0;
    let mut read_error = None;
    let mut events_read = 0u64;
    let batches = std::iter::from_fn(|| loop {
        let page = match reader.events_after(cursor, 4096) {
            Ok(page) => page,
            Err(e) => {
                read_error = Some(e);
                return None;
            }
        };
        let last = page.last()?;
        cursor = last.id;
        let batch: Vec<_> = page
            .into_iter()
            .filter(|e| from_us.is_none_or(|f| e.time_us >= f))
            .filter(|e| to_us.is_none_or(|t| e.time_us < t))
            .map(crate::detection::event_record)
            .collect();
        if !batch.is_empty() {
            events_read += batch.len() as u64;
            return Some(batch);
        }
    });
    let alerts = plugin_host::backtest(file, &config, batches)?;
    if let Some(e) = read_error {
        return Err(e).context("reading stored events");
    }
    session.record(
        "plugins backtest",
        Outcome::Success,
        json!({ "plugin": info.name, "file": file.display().to_string(), "from": from, "to": to,
                "events": events_read, "alerts": alerts.len() }),
    )?;
    session.close()?;
    for a in &alerts {
        cli::print_line(&format!(
            "{}  {:<8}  {}/{}  group={}  subject={}  ip={}  evidence={}  {}",
            format_time_us(a.time_us),
            a.severity.as_str(),
            a.plugin,
            a.rule,
            a.group_key,
            a.subject.as_deref().unwrap_or("-"),
            a.client_ip.as_deref().unwrap_or("-"),
            a.evidence.len(),
            a.summary
        ))?;
    }
    eprintln!(
        "backtest of {} over {events_read} events: {} alert(s) would have been raised; nothing was stored",
        info.name,
        alerts.len()
    );
    Ok(())
}

fn read_plugin_config(path: &std::path::Path) -> Result<serde_json::Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    if path.extension().is_some_and(|x| x == "json") {
        serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
    } else {
        let value: toml::Value = toml::from_str(&text)
            .with_context(|| format!("{} is not valid TOML", path.display()))?;
        Ok(serde_json::to_value(value)?)
    }
}

pub(crate) fn format_time_us(us: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "not a valid time".into())
}

/// An exception's expiry from a `--expires-in` duration: bounded like the console's,
/// with an error naming the flag.
fn exception_expiry(text: &str) -> Result<i64> {
    let secs = parse_duration_secs(text).context("--expires-in")?;
    let max = crate::response::MAX_LIFETIME_SECS;
    if secs > max {
        bail!(
            "--expires-in: {text:?} is longer than an exception may last ({} days)",
            max / 86_400
        );
    }
    Ok(crate::state::now_secs() + secs)
}

pub fn exceptions(settings: &Settings, cmd: ExceptionsCmd) -> Result<()> {
    let state = StateDb::open(&settings.state_db_path())?;
    match cmd {
        ExceptionsCmd::List => {
            let now = crate::state::now_secs();
            for e in state.list_exceptions()? {
                let status = if e.revoked {
                    "revoked"
                } else if e.is_active(now) {
                    "active"
                } else {
                    "expired"
                };
                cli::print_line(&format!(
                    "#{}  {status:<7}  detector={}  user={}  ip={}  expires={}  by={}  reason={}",
                    e.id,
                    e.detector,
                    e.user.as_deref().unwrap_or("*"),
                    e.ip.as_deref().unwrap_or("*"),
                    e.expires_at
                        .map(|t| format_time_us(t.saturating_mul(1_000_000)))
                        .unwrap_or_else(|| "never".into()),
                    e.created_by,
                    e.reason
                ))?;
            }
            Ok(())
        }
        ExceptionsCmd::Add {
            detector,
            user,
            ip,
            reason,
            expires_in,
        } => {
            let expires_at = expires_in.as_deref().map(exception_expiry).transpose()?;
            let session = AdminSession::open(settings)?;
            let new = crate::state::NewException {
                detector,
                user,
                ip,
                reason,
                created_by: operator(),
                expires_at,
            };
            let added = state.add_exception(&new, crate::response::Authority::Admin);
            let (outcome, detail) = match &added {
                Ok(e) => (
                    Outcome::Success,
                    serde_json::to_value(e).unwrap_or_default(),
                ),
                Err(err) => (
                    Outcome::Failure,
                    json!({ "refused": err.to_string(), "detector": new.detector,
                            "user": new.user, "ip": new.ip, "expires_at": new.expires_at }),
                ),
            };
            session.record("exceptions add", outcome, detail)?;
            session.close()?;
            let e = added?;
            cli::print_line(&format!("added exception #{}", e.id))
        }
        ExceptionsCmd::Edit {
            id,
            reason,
            expires_in,
            no_expiry,
        } => {
            let current = state
                .list_exceptions()?
                .into_iter()
                .find(|e| e.id == id)
                .with_context(|| format!("no exception #{id}"))?;
            let reason = reason.unwrap_or(current.reason);
            let expires_at = match (expires_in, no_expiry) {
                (Some(d), _) => Some(exception_expiry(&d)?),
                (None, true) => None,
                (None, false) => current.expires_at,
            };
            let session = AdminSession::open(settings)?;
            let changed = state.update_exception(
                id,
                &reason,
                expires_at,
                crate::response::Authority::Admin,
            )?;
            session.record(
                "exceptions edit",
                if changed {
                    Outcome::Success
                } else {
                    Outcome::Failure
                },
                json!({ "id": id, "reason": reason, "expires_at": expires_at }),
            )?;
            session.close()?;
            if !changed {
                bail!("exception #{id} is no longer in force; add a new one");
            }
            cli::print_line(&format!("updated exception #{id}"))
        }
        ExceptionsCmd::Revoke { id } => {
            let session = AdminSession::open(settings)?;
            let revoked = state.revoke_exception(id)?;
            let outcome = if revoked {
                Outcome::Success
            } else {
                Outcome::Failure
            };
            session.record("exceptions revoke", outcome, json!({ "id": id }))?;
            session.close()?;
            if !revoked {
                bail!("no active exception #{id}");
            }
            cli::print_line(&format!("revoked exception #{id}"))
        }
    }
}

pub fn lockouts(settings: &Settings, cmd: LockoutsCmd) -> Result<()> {
    let state = StateDb::open(&settings.state_db_path())?;
    match cmd {
        LockoutsCmd::List => {
            for l in state.list_lockouts()? {
                cli::print_line(&format!(
                    "{} {}  until {}  (lockout #{} in a row)  {}",
                    l.kind,
                    l.key,
                    format_time_us(l.until * 1_000_000),
                    l.level,
                    l.reason
                ))?;
            }
            Ok(())
        }
        LockoutsCmd::Lift { user, ip } => {
            let (kind, key) = match (user, ip) {
                (Some(u), _) => ("user", u),
                (None, Some(ip)) => ("ip", ip),
                (None, None) => bail!("name a --user or an --ip"),
            };
            let session = AdminSession::open(settings)?;
            let lifted = state.lift_lockout(kind, &key)?;
            if lifted {
                let mut ev = NewEvent::new(kinds::LOCKOUT_LIFTED, Outcome::Success);
                if kind == "user" {
                    ev.username = Some(key.clone());
                } else {
                    ev.client_ip = Some(key.clone());
                }
                ev.method = Some("CLI".into());
                ev.detail = json!({ "lock": kind, "key": key, "by": operator() });
                session
                    .store
                    .writer()
                    .record_blocking(ev)
                    .context("recording the audit event")?;
            }
            session.close()?;
            if !lifted {
                bail!("{kind} {key} is not locked");
            }
            cli::print_line(&format!("lifted the lockout of {kind} {key}"))
        }
    }
}

/// `90`, `30s`, `15m`, `12h` or `7d` as seconds.
fn parse_duration_secs(text: &str) -> Result<i64> {
    let text = text.trim();
    let (number, unit) = match text.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&text[..i], c),
        _ => (text, 's'),
    };
    let n: i64 = number
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .with_context(|| format!("{text:?}: expected a duration such as 30m, 12h or 7d"))?;
    let unit_secs = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        other => bail!("{text:?}: unknown unit {other:?}; use s, m, h or d"),
    };
    n.checked_mul(unit_secs).context("duration too long")
}
