//! Operational logs: the console (stderr) plus daily-rolling files under
//! `<data>/logs`, written by a background thread so a slow disk never stalls a
//! request. As text (the default) or one JSON object per line (`log_format`,
//! `--log-format`, `TOKENWATCH_LOG_FORMAT`), for journald, Docker or Filebeat.
//! Colour codes only ever go to a terminal: never into files, pipes or the journal.

use std::io::IsTerminal;
use std::path::Path;

use serde::Deserialize;
use tracing::Subscriber;
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer};

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `fields.message`, ...).
    Json,
}

fn layer<S, W>(format: LogFormat, writer: W, ansi: bool) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    match format {
        LogFormat::Text => fmt::layer()
            .with_writer(writer)
            .with_target(false)
            .with_ansi(ansi)
            .boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .with_writer(writer)
            .with_target(false)
            .with_ansi(false)
            .boxed(),
    }
}

/// Colour on stderr only when it is a terminal and `NO_COLOR` is not set
/// (<https://no-color.org>).
fn console_colour() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Keep the returned guard alive for as long as logs should be flushed.
pub fn init(data_dir: Option<&Path>, level: &str, format: LogFormat) -> Option<WorkerGuard> {
    let filter =
        EnvFilter::try_from_env("TOKENWATCH_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    let console = layer(format, std::io::stderr, console_colour());
    match data_dir {
        Some(dir) => {
            let appender = tracing_appender::rolling::daily(dir.join("logs"), "tokenwatch.log");
            let (writer, guard) = tracing_appender::non_blocking(appender);
            let _ = tracing_subscriber::registry()
                .with(filter)
                .with(console)
                .with(layer(format, writer, false))
                .try_init();
            Some(guard)
        }
        None => {
            let _ = tracing_subscriber::registry()
                .with(filter)
                .with(console)
                .try_init();
            None
        }
    }
}
