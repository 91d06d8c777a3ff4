//! Server time of the admin console's heaviest reads on 10 million events:
//! the dashboard's numbers (what `/admin/dashboard` and `/admin/api/dashboard`
//! compute) for the last hour, day and week, and the event explorer's first
//! page, unfiltered and filtered. Goal: under 300 ms each.
//!
//! Uses the 10M-event database of the audit-store bench (create it once with
//! `cargo bench -p audit-store --bench store -- query`), `$AUDIT_BENCH_DIR` or
//! `~/.cache/tokenwatch-audit-bench-10m`. Times are relative to its newest
//! event. Baseline, in the same run: the same time-series numbers by a plain
//! `GROUP BY` over `events`. Best of 5.
//!
//! `cargo bench -p tokenwatch --bench console`

use std::path::PathBuf;
use std::time::{Duration, Instant};

use audit_store::{AuditReader, EventFilter, Outcome};
use tokenwatch::admin::pages::dashboard_numbers_for;

const HOUR: i64 = 3_600_000_000;

fn best_of<T>(n: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut best = Duration::MAX;
    let mut last = None;
    for _ in 0..n {
        let t = Instant::now();
        let v = f();
        best = best.min(t.elapsed());
        last = Some(v);
    }
    (best, last.expect("n > 0"))
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let dir = std::env::var_os("AUDIT_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/tokenwatch-audit-bench-10m")
        });
    let db = dir.join("audit.db");
    if !db.exists() {
        println!(
            "no benchmark database at {}: run `cargo bench -p audit-store --bench store -- query` once",
            db.display()
        );
        return;
    }
    let r = AuditReader::open(&db).expect("open the bench database");
    let newest = r
        .query_events(&EventFilter::default(), None, 1)
        .expect("first page")
        .items
        .first()
        .map(|e| e.time_us)
        .expect("events in the bench database");
    let to = newest + 1;
    // The baseline scans the index's copy of the columns, which has the time index the
    // record itself no longer carries (schema v3).
    let raw = rusqlite::Connection::open_with_flags(
        dir.join("audit-index.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open the audit index (start the store once to build it)");
    let events: i64 = raw
        .query_row("SELECT max(id) FROM ev", [], |r| r.get(0))
        .unwrap_or(0);
    println!("console reads on {events} events (server time, best of 5)\n");
    println!("| read | console | baseline GROUP BY | ratio | goal < 300 ms |");
    println!("|---|---|---|---|---|");
    for (name, span) in [
        ("dashboard, last hour", HOUR),
        ("dashboard, last day", 24 * HOUR),
        ("dashboard, last week", 7 * 24 * HOUR),
    ] {
        let from = to - span;
        let (t, d) = best_of(5, || {
            dashboard_numbers_for(&r, from, to).expect("dashboard")
        });
        let (b, n) = best_of(5, || {
            raw.query_row(
                "SELECT count(*), sum(outcome = 'failure') FROM ev WHERE time_us >= ?1 AND time_us < ?2",
                [from, to],
                |row| Ok((row.get::<_, i64>(0)?, row.get::<_, Option<i64>>(1)?.unwrap_or(0))),
            )
            .expect("baseline")
        });
        let json = serde_json::to_value(&d).expect("json");
        let total = json["totals"]["success"].as_i64().unwrap_or(0)
            + json["totals"]["failure"].as_i64().unwrap_or(0);
        assert_eq!(
            total, n.0,
            "the dashboard's totals must agree with a plain count"
        );
        assert_eq!(json["totals"]["failure"].as_i64(), Some(n.1));
        println!(
            "| {name} ({total} events) | {} | {} | {:.1}x | {} |",
            ms(t),
            ms(b),
            b.as_secs_f64() / t.as_secs_f64().max(1e-9),
            if t < Duration::from_millis(300) {
                "met"
            } else {
                "NOT met"
            }
        );
    }
    for (name, f) in [
        ("explorer first page, no filter", EventFilter::default()),
        (
            "explorer first page, failures",
            EventFilter {
                outcome: Some(Outcome::Failure),
                ..Default::default()
            },
        ),
        (
            "explorer first page, one day a week ago",
            EventFilter {
                from_us: Some(to - 8 * 24 * HOUR),
                to_us: Some(to - 7 * 24 * HOUR),
                ..Default::default()
            },
        ),
    ] {
        let (t, _) = best_of(5, || r.query_events(&f, None, 50).expect("page"));
        println!(
            "| {name} | {} | — | — | {} |",
            ms(t),
            if t < Duration::from_millis(300) {
                "met"
            } else {
                "NOT met"
            }
        );
    }
}
