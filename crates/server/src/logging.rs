//! Operational logs: the console plus daily-rolling files under `<data>/logs`,
//! written by a background thread so a slow disk never stalls a request.

use std::path::Path;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter};

/// Keep the returned guard alive for as long as logs should be flushed.
pub fn init(data_dir: Option<&Path>, level: &str) -> Option<WorkerGuard> {
    let filter =
        EnvFilter::try_from_env("TOKENWATCH_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    let console = fmt::layer().with_writer(std::io::stderr).with_target(false);
    match data_dir {
        Some(dir) => {
            let appender = tracing_appender::rolling::daily(dir.join("logs"), "tokenwatch.log");
            let (writer, guard) = tracing_appender::non_blocking(appender);
            let file = fmt::layer().with_writer(writer).with_ansi(false);
            let _ = tracing_subscriber::registry()
                .with(filter)
                .with(console)
                .with(file)
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
