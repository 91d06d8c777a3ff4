//! The `tokenwatch` command line. Secrets are read from standard input, never
//! taken as arguments, so they stay out of shell history and `ps`.

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{FileConfig, Overrides, Settings};

#[derive(Parser, Debug)]
#[command(
    name = "tokenwatch",
    version,
    about = "Issue and verify JWTs, audit every decision, detect attacks on them"
)]
pub struct Cli {
    /// Configuration file (default: ./tokenwatch.toml when it exists).
    #[arg(long, global = true, env = "TOKENWATCH_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where keys, the audit store and state live (default: ./data).
    #[arg(long, global = true, env = "TOKENWATCH_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Folder of detector plugins (default: <data-dir>/plugins).
    #[arg(long, global = true, env = "TOKENWATCH_PLUGIN_DIR")]
    pub plugin_dir: Option<PathBuf>,
    /// The audit chain and checkpoint keys (default: <data-dir>/keys/audit). Keep them
    /// apart from the data: another volume or a secret mount.
    #[arg(long, global = true, env = "TOKENWATCH_AUDIT_KEY_DIR")]
    pub audit_key_dir: Option<PathBuf>,
    /// Signed checkpoints of the audit chain (default: <data-dir>/checkpoints).
    #[arg(long, global = true, env = "TOKENWATCH_CHECKPOINT_DIR")]
    pub checkpoint_dir: Option<PathBuf>,
    /// A further folder that receives a signed copy of every checkpoint; repeat the
    /// flag, or separate folders with ':' in the variable.
    #[arg(
        long = "checkpoint-mirror",
        global = true,
        env = "TOKENWATCH_CHECKPOINT_MIRRORS",
        value_delimiter = ':'
    )]
    pub checkpoint_mirrors: Vec<PathBuf>,
    /// Log lines as `text` (default) or `json` (one object per line).
    #[arg(long, global = true, env = "TOKENWATCH_LOG_FORMAT", value_enum)]
    pub log_format: Option<crate::logging::LogFormat>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the server: OAuth endpoints, protected API, metrics.
    Serve(ServeArgs),
    /// Manage users (people who log in with a password).
    #[command(subcommand)]
    Users(UsersCmd),
    /// Manage OAuth clients and resource servers.
    #[command(subcommand)]
    Clients(ClientsCmd),
    /// Issue or check a token from the command line.
    #[command(subcommand)]
    Token(TokenCmd),
    /// List or rotate signing keys.
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Check the audit trail's integrity.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Export audit events or alerts as CSV.
    Export(ExportArgs),
    /// Analyst exceptions: silence a detector for a user or an IP range, with a reason and an expiry.
    #[command(subcommand)]
    Exceptions(ExceptionsCmd),
    /// Accounts locked and client IPs throttled in response to alerts.
    #[command(subcommand)]
    Lockouts(LockoutsCmd),
    /// Inspect detector plugins: list the folder, check a file, backtest over history.
    #[command(subcommand)]
    Plugins(PluginsCmd),
    /// Ingest sources: services that report events to POST /api/v1/events with an API key.
    #[command(subcommand)]
    Sources(SourcesCmd),
    /// Import a JSON-lines security log (ECS lines as tokenwatch writes them, or
    /// generic JSON lines); resumable: a rerun continues where the last one stopped.
    Ingest(IngestArgs),
    /// The detection process `serve` starts and supervises (not for direct use).
    #[command(hide = true)]
    DetectWorker {
        /// Only load this file, print what it is as JSON, and exit.
        #[arg(long)]
        check: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum SourcesCmd {
    /// Add a source; its API key is printed once and stored only as a hash.
    Add { name: String },
    /// List sources (never their keys).
    List,
    /// Revoke a source's key now.
    Revoke { name: String },
}

#[derive(Args, Debug)]
pub struct IngestArgs {
    /// The JSON-lines file.
    pub file: PathBuf,
    /// The `source` recorded on the imported events.
    #[arg(long, default_value = "import")]
    pub source: String,
    /// Ignore the saved position and read the file from its first line.
    #[arg(long)]
    pub from_start: bool,
}

#[derive(Subcommand, Debug)]
pub enum ExceptionsCmd {
    /// Add an exception; alerts it covers are not raised.
    Add {
        /// Plugin name (e.g. brute-force), or * for every detector.
        #[arg(long)]
        detector: String,
        /// Username or subject the exception covers.
        #[arg(long)]
        user: Option<String>,
        /// Client IP address or CIDR range the exception covers.
        #[arg(long)]
        ip: Option<String>,
        /// Why, for the next analyst.
        #[arg(long)]
        reason: String,
        /// How long it lasts, e.g. 30m, 12h, 7d (default: until revoked).
        #[arg(long)]
        expires_in: Option<String>,
    },
    /// List every exception, with whether it still applies.
    List,
    /// Change an active exception's reason and/or expiry.
    Edit {
        id: i64,
        #[arg(long)]
        reason: Option<String>,
        /// New lifetime from now, e.g. 30m, 12h, 7d.
        #[arg(long, conflicts_with = "no_expiry")]
        expires_in: Option<String>,
        /// Make it last until revoked.
        #[arg(long)]
        no_expiry: bool,
    },
    /// Stop an exception now.
    Revoke { id: i64 },
}

#[derive(Subcommand, Debug)]
pub enum LockoutsCmd {
    /// List running lockouts.
    List,
    /// End a lockout now.
    Lift {
        #[arg(long, conflicts_with = "ip", required_unless_present = "ip")]
        user: Option<String>,
        #[arg(long)]
        ip: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum PluginsCmd {
    /// List the plugin folder: what each file is, or why it would be refused.
    List,
    /// Load one plugin file and report what it is, or why it is refused.
    Check { file: PathBuf },
    /// Run a plugin over stored events and print the alerts it would have
    /// raised. Nothing is stored except an audit event saying the history was read.
    Backtest {
        file: PathBuf,
        /// Start of the time range, RFC 3339 (default: the oldest event).
        #[arg(long)]
        from: Option<String>,
        /// End of the time range, RFC 3339 (default: now).
        #[arg(long)]
        to: Option<String>,
        /// Plugin config as a TOML or JSON file (default: `<file stem>.toml`
        /// beside the plugin, else `[plugins.NAME]` of tokenwatch.toml).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on (default 127.0.0.1:8080; port 0 picks a free port).
    #[arg(long, env = "TOKENWATCH_LISTEN")]
    pub listen: Option<String>,
    /// Serve HTTPS with this PEM certificate chain (with --tls-key); a changed file
    /// is picked up while the server runs.
    #[arg(long, env = "TOKENWATCH_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert (mode 600: readable by its owner only).
    #[arg(long, env = "TOKENWATCH_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// The issuer (`iss`) of tokenwatch's tokens and the base URL of its discovery
    /// document, e.g. https://auth.example.com (default: http://<listen address>).
    /// Other commands read TOKENWATCH_ISSUER or the config file's `issuer`.
    #[arg(long, env = ISSUER_ENV)]
    pub issuer: Option<String>,
    /// Generate realistic traffic, attacks included, against this server so the
    /// dashboard and detectors come alive. Creates demo users. Not for production.
    #[arg(long)]
    pub demo: bool,
}

#[derive(Subcommand, Debug)]
pub enum UsersCmd {
    /// Add a user; the password is read from standard input.
    Add {
        name: String,
        #[arg(long, value_enum, default_value = "user")]
        role: RoleArg,
        /// Read the password from standard input (required: passwords are never arguments).
        #[arg(long, required = true)]
        password_stdin: bool,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum RoleArg {
    Admin,
    Analyst,
    User,
}

#[derive(Subcommand, Debug)]
pub enum ClientsCmd {
    /// Register a client; its secret (a public client has none) is printed once.
    Add {
        client_id: String,
        /// `public`: a browser or mobile app with no secret; it may use only the
        /// authorization-code grant with PKCE (and refresh tokens).
        #[arg(long, value_enum, default_value = "confidential")]
        kind: ClientKindArg,
        /// The scope the client may ask for (space-separated).
        #[arg(long)]
        scope: Option<String>,
        /// Grants the client may use, comma-separated: authorization_code,
        /// refresh_token, password, client_credentials (default: confidential
        /// password,client_credentials,refresh_token; public
        /// authorization_code,refresh_token). Leave out `password` to switch the
        /// password grant off for this client.
        #[arg(long, value_delimiter = ',')]
        grant_types: Option<Vec<String>>,
        /// A redirect URI of the authorization-code flow, matched exactly; repeat
        /// for several.
        #[arg(long = "redirect-uri")]
        redirect_uris: Vec<String>,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum ClientKindArg {
    Confidential,
    Public,
    ResourceServer,
}

#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Issue an access token for a subject and print it.
    Issue {
        #[arg(long)]
        sub: String,
        /// Lifetime in seconds (default: the configured access-token lifetime).
        #[arg(long)]
        ttl: Option<u64>,
        #[arg(long)]
        username: Option<String>,
        #[arg(long = "role")]
        roles: Vec<String>,
    },
    /// Read a token from standard input; print its claims or why it is refused.
    /// A diagnostic: it records nothing in the audit trail.
    Verify,
}

#[derive(Subcommand, Debug)]
pub enum KeysCmd {
    /// List signing and verification keys.
    List,
    /// Make a new active signing key; older keys keep verifying until their tokens expire.
    Rotate {
        #[arg(long)]
        alg: Option<String>,
    },
    /// Add a verification-only shared HMAC secret (read from stdin) for tokens made elsewhere, e.g. by PyJWT.
    /// It verifies only tokens whose `iss` is --issuer (never tokenwatch's own issuer), and grants no roles.
    ImportHmac {
        #[arg(long)]
        kid: String,
        #[arg(long, default_value = "HS256")]
        alg: String,
        /// The issuer (`iss`) of the tokens this secret signs; tokens claiming any other issuer are refused.
        #[arg(long)]
        issuer: String,
        /// The audience (`aud`) those tokens must contain (default: tokenwatch's own audience).
        #[arg(long)]
        audience: Option<String>,
        #[arg(long, required = true)]
        secret_stdin: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum AuditCmd {
    /// Verify the hash chain against the signed checkpoints; names the first bad row.
    Verify,
    /// Record that audit history was lost, so the server can start again on a record
    /// that no longer extends its signed checkpoints (rows cut off, an older backup
    /// restored, the database deleted). Writes an `audit.loss_accepted` event naming
    /// the missing range, the reason and who ran it, and a signed `loss` checkpoint;
    /// `audit verify` reports the loss from then on. Does nothing when nothing was lost.
    AcceptLoss {
        /// Why the history was lost (kept in the record).
        #[arg(long)]
        reason: String,
    },
    /// Check a CSV report downloaded from the admin UI against its signed
    /// manifest: signature (keys of the data directory), SHA-256, size, rows.
    VerifyExport {
        /// The downloaded CSV file.
        csv: PathBuf,
        /// The manifest (a JWS) downloaded with it.
        manifest: PathBuf,
    },
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    #[arg(value_enum)]
    pub what: ExportWhat,
    /// Output file (default: standard output).
    #[arg(long, short)]
    pub out: Option<PathBuf>,
    /// Start of the time range, RFC 3339 (e.g. 2026-11-23T00:00:00Z).
    #[arg(long)]
    pub from: Option<String>,
    /// End of the time range, RFC 3339.
    #[arg(long)]
    pub to: Option<String>,
    #[arg(long)]
    pub kind: Option<String>,
    #[arg(long)]
    pub outcome: Option<String>,
    #[arg(long)]
    pub reason: Option<String>,
    /// Subject or username.
    #[arg(long)]
    pub user: Option<String>,
    #[arg(long)]
    pub ip: Option<String>,
    #[arg(long)]
    pub jti: Option<String>,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum ExportWhat {
    Events,
    Alerts,
}

const ISSUER_ENV: &str = "TOKENWATCH_ISSUER";

pub fn settings(cli: &Cli, serve: Option<&ServeArgs>) -> Result<Settings> {
    let file = FileConfig::load(cli.config.as_deref())?;
    let overrides = Overrides {
        listen: serve.and_then(|s| s.listen.clone()),
        tls_cert: serve.and_then(|s| s.tls_cert.clone()),
        tls_key: serve.and_then(|s| s.tls_key.clone()),
        data_dir: cli.data_dir.clone(),
        plugin_dir: cli.plugin_dir.clone(),
        audit_key_dir: cli.audit_key_dir.clone(),
        checkpoint_dir: cli.checkpoint_dir.clone(),
        checkpoint_mirrors: (!cli.checkpoint_mirrors.is_empty())
            .then(|| cli.checkpoint_mirrors.clone()),
        log_format: cli.log_format,
        // Commands other than `serve` (token issue, keys import-hmac) need the same
        // issuer as the server: the variable applies to them too.
        issuer: match serve {
            Some(s) => s.issuer.clone(),
            None => std::env::var(ISSUER_ENV).ok().filter(|v| !v.is_empty()),
        },
    };
    Ok(Settings::resolve(file, &overrides)?)
}

pub fn read_secret_stdin(what: &str) -> Result<String> {
    let mut s = String::new();
    std::io::stdin()
        .read_to_string(&mut s)
        .with_context(|| format!("reading the {what} from standard input"))?;
    let s = s.trim_end_matches(['\n', '\r']).to_string();
    if s.is_empty() {
        bail!("no {what} on standard input");
    }
    Ok(s)
}

pub fn print_line(line: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}
