//! Rollup counts for the chart aggregates.
//!
//! Counting 10 million rows for "top IPs this month" cannot answer in well under a
//! second, so the derived index database keeps
//! `rollup(dim, level, bucket_us, value, outcome, n)`: outcome counts per
//! minute/hour/day, and per-IP, per-user and per-reason counts per hour/day. The
//! indexer thread ([`crate::index`]) adds each batch of events in the same transaction
//! that copies them into the index and advances its watermark: the rollup holds exactly
//! the events with `id <= watermark`. A query adds up whole buckets from the rollup,
//! counts the partial buckets at the range's edges from the index, and counts events
//! above the watermark from the record, all inside one read transaction, so the answer
//! is exact.

use rusqlite::{params, Connection};

use crate::StoreError;

pub(crate) const MINUTE: i64 = 60_000_000;
pub(crate) const HOUR: i64 = 3_600_000_000;
pub(crate) const DAY: i64 = 86_400_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Dim {
    All = 0,
    Ip = 1,
    User = 2,
    Reason = 3,
}

impl Dim {
    pub const EVERY: [Dim; 4] = [Dim::All, Dim::Ip, Dim::User, Dim::Reason];

    /// Bucket widths kept for this dimension, widest first. Per-minute rows for IPs or
    /// users would be nearly one row per event, so those stop at the hour.
    pub fn levels(self) -> &'static [i64] {
        match self {
            Dim::All => &[DAY, HOUR, MINUTE],
            _ => &[DAY, HOUR],
        }
    }

    /// SQL expression of the dimension's value over `events`.
    pub fn value_sql(self) -> &'static str {
        match self {
            Dim::All => "''",
            Dim::Ip => "client_ip",
            Dim::User => "coalesce(username, subject)",
            Dim::Reason => "reason",
        }
    }
}

pub(crate) fn floor_to(t: i64, width: i64) -> i64 {
    t - t.rem_euclid(width)
}

/// SQL for `floor_to(time_us, ?width)` that also holds for negative times.
pub(crate) fn floor_sql(width: i64) -> String {
    format!("(time_us - ((time_us % {width}) + {width}) % {width})")
}

/// The rollup's `outcome` column: `outcome = 'failure'` over the event columns.
pub(crate) fn outcome_sql_code(o: crate::Outcome) -> i64 {
    match o {
        crate::Outcome::Success => 0,
        crate::Outcome::Failure => 1,
    }
}

/// Adds the events `(after, upto]` of `src` (a table with the event columns: the
/// record or the index's copy) to the rollup, with set-based SQL: one pass over the
/// events per dimension at its finest level into `temp.rollup_batch`, then every level
/// from that much smaller table.
pub(crate) fn add(conn: &Connection, src: &str, after: i64, upto: i64) -> Result<(), StoreError> {
    conn.execute_batch(
        "CREATE TEMP TABLE IF NOT EXISTS rollup_batch (
             bucket_us INTEGER NOT NULL, value TEXT NOT NULL, outcome INTEGER NOT NULL, n INTEGER NOT NULL)",
    )?;
    for dim in Dim::EVERY {
        let levels = dim.levels();
        let finest = levels[levels.len() - 1];
        conn.prepare_cached("DELETE FROM temp.rollup_batch")?
            .execute([])?;
        let v = dim.value_sql();
        conn.prepare_cached(&format!(
            "INSERT INTO temp.rollup_batch
             SELECT {b}, {v}, outcome = 'failure', count(*) FROM {src}
             WHERE id > ?1 AND id <= ?2 AND {v} IS NOT NULL GROUP BY 1, 2, 3",
            b = floor_sql(finest)
        ))?
        .execute([after, upto])?;
        for &level in levels {
            let b = floor_sql(level).replace("time_us", "bucket_us");
            conn.prepare_cached(&format!(
                "INSERT INTO rollup(dim, level, bucket_us, value, outcome, n)
                 SELECT ?1, ?2, {b}, value, outcome, sum(n) FROM temp.rollup_batch
                 WHERE 1 GROUP BY 3, 4, 5
                 ON CONFLICT(dim, level, bucket_us, value, outcome) DO UPDATE SET n = n + excluded.n"
            ))?
            .execute(params![dim as i64, level])?;
        }
    }
    Ok(())
}

/// Removes the counts of the events `(after, upto]` of `src` (about to be deleted).
pub(crate) fn subtract(
    conn: &Connection,
    src: &str,
    after: i64,
    upto: i64,
) -> Result<(), StoreError> {
    let (lo, hi): (Option<i64>, Option<i64>) = conn.query_row(
        &format!("SELECT min(time_us), max(time_us) FROM {src} WHERE id > ?1 AND id <= ?2"),
        [after, upto],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let (Some(lo), Some(hi)) = (lo, hi) else {
        return Ok(());
    };
    for dim in Dim::EVERY {
        for &level in dim.levels() {
            let v = dim.value_sql();
            let sql = format!(
                "WITH d AS (SELECT {b} AS b, {v} AS v, outcome = 'failure' AS o, count(*) AS c
                            FROM {src} WHERE id > ?3 AND id <= ?4 AND {v} IS NOT NULL GROUP BY 1, 2, 3)
                 UPDATE rollup SET n = rollup.n - d.c FROM d
                 WHERE rollup.dim = ?1 AND rollup.level = ?2 AND rollup.bucket_us = d.b
                   AND rollup.value = d.v AND rollup.outcome = d.o",
                b = floor_sql(level)
            );
            conn.execute(&sql, params![dim as i64, level, after, upto])?;
            conn.execute(
                "DELETE FROM rollup WHERE dim = ?1 AND level = ?2 AND bucket_us >= ?3 AND bucket_us <= ?4 AND n <= 0",
                params![dim as i64, level, floor_to(lo, level), hi],
            )?;
        }
    }
    Ok(())
}

/// How a time range splits into whole rollup buckets and raw edges.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Plan {
    /// (level, from, to): whole buckets of `level` in `[from, to)`.
    pub pieces: Vec<(i64, i64, i64)>,
    /// Ranges to count from `events` directly.
    pub raw: Vec<(i64, i64)>,
}

pub(crate) fn plan(from: i64, to: i64, levels: &[i64]) -> Plan {
    let mut p = Plan::default();
    split(from, to, levels, &mut p);
    p
}

fn split(from: i64, to: i64, levels: &[i64], p: &mut Plan) {
    if from >= to {
        return;
    }
    let Some((&l, rest)) = levels.split_first() else {
        p.raw.push((from, to));
        return;
    };
    let s = floor_to(from.saturating_add(l - 1), l);
    let e = floor_to(to, l);
    if s < e {
        p.pieces.push((l, s, e));
        split(from, s, rest, p);
        split(e, to, rest, p);
    } else {
        split(from, to, rest, p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_splits_into_days_hours_and_raw_edges() {
        let from = DAY + 90 * MINUTE + 5; // day 1, 01:30:00.000005
        let to = 4 * DAY + 2 * HOUR + 10; // day 4, 02:00:00.00001
        let p = plan(from, to, &[DAY, HOUR]);
        assert_eq!(
            p.pieces,
            vec![
                (DAY, 2 * DAY, 4 * DAY),
                (HOUR, DAY + 2 * HOUR, 2 * DAY),
                (HOUR, 4 * DAY, 4 * DAY + 2 * HOUR)
            ]
        );
        assert_eq!(
            p.raw,
            vec![(from, DAY + 2 * HOUR), (4 * DAY + 2 * HOUR, to)]
        );
        let covered: i64 = p.pieces.iter().map(|(_, a, b)| b - a).sum::<i64>()
            + p.raw.iter().map(|(a, b)| b - a).sum::<i64>();
        assert_eq!(covered, to - from);
    }

    #[test]
    fn floor_handles_negative_times() {
        assert_eq!(floor_to(-1, MINUTE), -MINUTE);
        assert_eq!(floor_to(MINUTE + 1, MINUTE), MINUTE);
    }
}
