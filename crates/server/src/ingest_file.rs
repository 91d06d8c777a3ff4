//! `tokenwatch sources ...` and `tokenwatch ingest FILE`: managing ingest API
//! keys, and importing JSON-lines security logs, resumably.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};

use anyhow::{bail, Context, Result};
use audit_store::{NewEvent, Outcome};
use serde_json::json;

use crate::cli::{self, IngestArgs, SourcesCmd};
use crate::commands::{format_time_us, AdminSession};
use crate::config::Settings;
use crate::ingest::{map_log_line, parse_value, within_retention, KindPolicy};
use crate::sources::FilePosition;
use crate::state::{sha256_hex, StateDb};

/// Events committed per transaction (and per saved file position).
const IMPORT_BATCH: usize = 1000;
/// Refused lines printed one by one before only counting them.
const MAX_PRINTED_ERRORS: usize = 20;

fn fmt_time(secs: i64) -> String {
    format_time_us(secs.saturating_mul(1_000_000))
}

pub fn sources(settings: &Settings, cmd: SourcesCmd) -> Result<()> {
    match cmd {
        SourcesCmd::Add { name } => {
            let session = AdminSession::open(settings)?;
            let state = StateDb::open(&settings.state_db_path())?;
            let key = state.add_source(&name)?;
            session.record("sources add", Outcome::Success, json!({ "source": name }))?;
            session.close()?;
            cli::print_line(&format!("source: {name}"))?;
            cli::print_line(&format!("api_key: {key}"))?;
            eprintln!(
                "The key is shown once and stored only as a hash; store it now. Send it as \
                 `Authorization: Bearer <key>` (or `X-Tokenwatch-Key: <key>`) to POST /api/v1/events."
            );
            Ok(())
        }
        SourcesCmd::List => {
            let state = StateDb::open(&settings.state_db_path())?;
            let sources = state.list_sources()?;
            if sources.is_empty() {
                return cli::print_line(
                    "no ingest sources (add one with `tokenwatch sources add NAME`)",
                );
            }
            cli::print_line("NAME\tKEY\tCREATED\tSTATUS")?;
            for s in sources {
                let status = match s.revoked_at {
                    Some(t) => format!("revoked {}", fmt_time(t)),
                    None => "active".into(),
                };
                cli::print_line(&format!(
                    "{}\t{}…\t{}\t{}",
                    s.name,
                    s.key_hint,
                    fmt_time(s.created_at),
                    status
                ))?;
            }
            Ok(())
        }
        SourcesCmd::Revoke { name } => {
            let session = AdminSession::open(settings)?;
            let state = StateDb::open(&settings.state_db_path())?;
            if !state.revoke_source(&name)? {
                session.close()?;
                bail!("no active source named {name:?} (see `tokenwatch sources list`)");
            }
            session.record(
                "sources revoke",
                Outcome::Success,
                json!({ "source": name }),
            )?;
            session.close()?;
            cli::print_line(&format!(
                "revoked source {name}; its key is refused from now on"
            ))
        }
    }
}

/// Reads one line including its `\n`; returns the bytes read (0 at the end).
fn read_line(r: &mut impl BufRead, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    buf.clear();
    r.read_until(b'\n', buf)
}

pub fn ingest(settings: &Settings, args: IngestArgs) -> Result<()> {
    crate::state::validate_name(&args.source, "source name")?;
    let path = std::fs::canonicalize(&args.file)
        .with_context(|| format!("cannot open {}", args.file.display()))?;
    let key = path.display().to_string();
    let mut file = File::open(&path).with_context(|| format!("cannot open {key}"))?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);

    let mut first = Vec::new();
    read_line(&mut BufReader::new(&mut file), &mut first)
        .with_context(|| format!("reading {key}"))?;
    let head = sha256_hex(&first);

    let session = AdminSession::open(settings)?;
    let state = StateDb::open(&settings.state_db_path())?;
    let (mut offset, mut line_no) = match state.file_position(&key)? {
        Some(p) if args.from_start => {
            eprintln!(
                "--from-start: reading {key} from the beginning (was at line {})",
                p.line
            );
            (0, 0)
        }
        Some(p) if p.head_sha256 == head && p.byte_offset <= len => (p.byte_offset, p.line),
        Some(_) => {
            eprintln!(
                "{key} is not the file imported before (its first line differs, or it is shorter): reading it from the start"
            );
            (0, 0)
        }
        None => (0, 0),
    };
    let start_line = line_no;
    if offset == len {
        session.close()?;
        return cli::print_line(&format!(
            "nothing new in {key} (already imported up to line {line_no})"
        ));
    }
    file.seek(SeekFrom::Start(offset))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);

    let bar = indicatif::ProgressBar::with_draw_target(
        Some(len),
        indicatif::ProgressDrawTarget::stderr(),
    );
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({bytes_per_sec}, {eta}) {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_position(offset);

    let writer = session.store.writer();
    let mut batch: Vec<NewEvent> = Vec::with_capacity(IMPORT_BATCH);
    let (mut imported, mut rejected) = (0u64, 0u64);
    let mut buf = Vec::new();
    let mut pending_offset = offset;
    let flush = |batch: &mut Vec<NewEvent>, pos: FilePosition| -> Result<u64> {
        let n = batch.len() as u64;
        if !batch.is_empty() {
            writer
                .record_many_blocking(std::mem::take(batch))
                .context("committing imported events")?;
        }
        // Saved after the commit: a crash in between re-imports at most one batch.
        state.set_file_position(&key, &pos)?;
        Ok(n)
    };
    loop {
        let n = read_line(&mut reader, &mut buf).with_context(|| format!("reading {key}"))?;
        if n == 0 {
            break;
        }
        let complete = buf.ends_with(b"\n");
        let text = String::from_utf8_lossy(&buf);
        let trimmed = text.trim();
        let this_line = line_no + 1;
        if !trimmed.is_empty() {
            let parsed = serde_json::from_str::<serde_json::Value>(trimmed);
            if !complete && parsed.is_err() {
                // A line still being written: leave it for the next run.
                break;
            }
            let result = parsed
                .map_err(|e| format!("invalid JSON: {e}"))
                .and_then(|v| {
                    if v["event"]["kind"] == "alert" {
                        return Err("an alert line (event.kind: alert) of a security log: alerts are raised by the detectors here, not imported as events".to_string());
                    }
                    let now = now_us();
                    parse_value(map_log_line(v), &args.source, KindPolicy::AnyKnown, now)
                        .and_then(|ev| within_retention(ev, settings.audit_retention, now))
                });
            match result {
                Ok(ev) => batch.push(ev),
                Err(e) => {
                    rejected += 1;
                    if rejected as usize <= MAX_PRINTED_ERRORS {
                        bar.suspend(|| eprintln!("{key}:{this_line}: {e}"));
                    }
                }
            }
        }
        line_no = this_line;
        pending_offset += n as u64;
        bar.set_position(pending_offset);
        if batch.len() >= IMPORT_BATCH {
            imported += flush(
                &mut batch,
                FilePosition {
                    head_sha256: head.clone(),
                    byte_offset: pending_offset,
                    line: line_no,
                },
            )?;
            offset = pending_offset;
        }
    }
    if pending_offset != offset || !batch.is_empty() {
        imported += flush(
            &mut batch,
            FilePosition {
                head_sha256: head.clone(),
                byte_offset: pending_offset,
                line: line_no,
            },
        )?;
    }
    bar.finish_and_clear();
    if rejected as usize > MAX_PRINTED_ERRORS {
        eprintln!(
            "… and {} more refused lines",
            rejected as usize - MAX_PRINTED_ERRORS
        );
    }
    session.record(
        "ingest",
        Outcome::Success,
        json!({
            "file": key, "source": args.source, "imported": imported, "rejected": rejected,
            "from_line": start_line + 1, "to_line": line_no,
        }),
    )?;
    session.close()?;
    cli::print_line(&format!(
        "imported {imported} events from {key} (lines {}-{line_no}), refused {rejected}",
        start_line + 1
    ))
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}
