//! What the server and its detection process say to each other: one JSON
//! object per line, commands on the child's stdin, reports on its stdout.
//! A crash note (which plugin was running when a fatal signal arrived) goes
//! to stderr as one short line, written from the signal handler.

use std::collections::HashMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Server -> detection process.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Command {
    /// First line: where to read and how to run.
    Init {
        audit_db: PathBuf,
        private_copy_dir: PathBuf,
        plugin_config: HashMap<String, serde_json::Value>,
        tick_ms: u64,
        budget_ms: u64,
        limit_ms: u64,
    },
    /// Load the plugin file into `slot`; a running slot with the same plugin
    /// name is replaced once the new one is created (else it keeps running).
    Load {
        slot: u32,
        file: PathBuf,
        /// Where the plugin starts when it has no stored cursor: set for the
        /// first process's initial loads (the newest event when `serve` started,
        /// so events committed while detection was starting are analysed);
        /// `None` for a plugin dropped in later (it starts at the newest event).
        start_after: Option<i64>,
    },
    /// Stop the plugin in `slot` and destroy its state.
    Unload { slot: u32 },
}

/// One alert as it crosses the boundary (plugin-host's `AlertRecord`).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct WireAlert {
    pub rule: String,
    pub severity: String,
    pub subject: Option<String>,
    pub client_ip: Option<String>,
    pub summary: String,
    pub group_key: String,
    pub evidence: Vec<i64>,
    pub time_us: i64,
}

/// Detection process -> server.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub(crate) enum Report {
    /// The plugin in `slot` is created and reads events after `after`.
    /// `fresh`: it had no cursor yet (a new plugin starts at the newest event).
    Loaded {
        slot: u32,
        name: String,
        version: String,
        description: String,
        after: i64,
        fresh: bool,
        /// A slot this one replaced (same plugin name), now stopped.
        replaced: Option<u32>,
    },
    /// The file was refused; a slot it would have replaced keeps running.
    Refused {
        slot: u32,
        name: Option<String>,
        reason: String,
    },
    /// One call finished: what it found and how far the plugin has analysed.
    Result {
        slot: u32,
        /// The plugin's cursor after this call (unchanged for a tick).
        cursor: i64,
        events: u64,
        ns: u64,
        alerts: Vec<WireAlert>,
        rejected: Vec<String>,
        error: Option<String>,
    },
    /// A call has run past the time budget (sent once per call).
    Slow { slot: u32, call: String, ms: u64 },
    /// A call ran past the hard limit; the process exits right after this.
    Hung { slot: u32, call: String, ms: u64 },
    /// The slot is stopped and its state destroyed.
    Unloaded { slot: u32 },
    /// Once a second from the watchdog: the process is alive. `head` is the
    /// newest event id it has read.
    Beat { head: i64 },
}

/// The stderr line the fatal-signal handler writes: `PREFIX <slot> <signal>`.
pub(crate) const FAULT_PREFIX: &str = "tokenwatch-detect-fault";

/// Parses a fault note: `(slot, signal)`.
pub(crate) fn parse_fault(line: &str) -> Option<(u32, i32)> {
    let rest = line.strip_prefix(FAULT_PREFIX)?.trim();
    let mut it = rest.split_whitespace();
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_round_trip_as_single_lines() {
        let r = Report::Result {
            slot: 3,
            cursor: 42,
            events: 7,
            ns: 100,
            alerts: vec![WireAlert {
                rule: "r\nx".into(),
                severity: "high".into(),
                subject: None,
                client_ip: Some("10.0.0.1".into()),
                summary: "s".into(),
                group_key: "g".into(),
                evidence: vec![1, 2],
                time_us: 5,
            }],
            rejected: vec![],
            error: None,
        };
        let line = serde_json::to_string(&r).unwrap();
        assert!(!line.contains('\n'));
        match serde_json::from_str::<Report>(&line).unwrap() {
            Report::Result { cursor, alerts, .. } => {
                assert_eq!(cursor, 42);
                assert_eq!(alerts[0].rule, "r\nx");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(parse_fault("tokenwatch-detect-fault 4 11"), Some((4, 11)));
        assert_eq!(parse_fault("something else"), None);
    }
}
