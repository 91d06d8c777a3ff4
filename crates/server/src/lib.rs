//! The `tokenwatch` server: the actix-web application (OAuth endpoints, the
//! bearer-token middleware, health and metrics) and the command line.
//!
//! It is glue: token decisions come from `token-core`, durable audit events go
//! through `audit-store`. Every decision is committed before it is answered.

pub mod admin;
pub mod app;
pub mod bearer;
pub mod cli;
pub mod clients;
pub mod commands;
pub mod config;
pub mod datadir;
pub mod demo;
pub mod detection;
pub mod forward;
pub mod ingest;
pub mod ingest_api;
pub mod ingest_file;
pub mod logging;
pub mod metrics;
pub mod oauth;
pub mod passwords;
pub mod request_meta;
pub mod request_timer;
pub mod response;
pub mod routes;
pub mod serve;
pub mod sources;
pub mod state;
mod tls;

use clap::Parser;

/// A random URL-safe string of `bytes` bytes of entropy.
pub fn random_token(bytes: usize) -> String {
    use base64::Engine;
    let mut buf = vec![0u8; bytes];
    rand::Rng::fill(&mut rand::rngs::OsRng, buf.as_mut_slice());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}

/// Entry point of the binary; errors are printed with their cause chain.
pub fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: cli::Cli) -> anyhow::Result<()> {
    use cli::Command;
    if let Command::DetectWorker { check } = &cli.command {
        // Everything it needs comes from `serve` on stdin, not from the config.
        return match check {
            Some(file) => detection::check_worker(file),
            None => detection::run_worker(),
        };
    }
    let serve_args = match &cli.command {
        Command::Serve(a) => Some(a),
        _ => None,
    };
    let settings = cli::settings(&cli, serve_args)?;
    if serve_args.is_none() {
        let _ = logging::init(None, "warn", settings.log_format);
    }
    match cli.command {
        Command::Serve(a) => serve::run(settings, a.demo),
        Command::Users(cmd) => commands::users(&settings, cmd),
        Command::Clients(cmd) => commands::clients(&settings, cmd),
        Command::Token(cmd) => commands::token(&settings, cmd),
        Command::Keys(cmd) => commands::keys(&settings, cmd),
        Command::Audit(cmd) => commands::audit(&settings, cmd),
        Command::Export(args) => commands::export(&settings, args),
        Command::Plugins(cmd) => commands::plugins(&settings, cmd),
        Command::Exceptions(cmd) => commands::exceptions(&settings, cmd),
        Command::Lockouts(cmd) => commands::lockouts(&settings, cmd),
        Command::Sources(cmd) => ingest_file::sources(&settings, cmd),
        Command::Ingest(args) => ingest_file::ingest(&settings, args),
        Command::DetectWorker { .. } => Ok(()),
    }
}
