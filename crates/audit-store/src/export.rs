//! CSV export helpers: stable columns, RFC 3339 times, formula-injection defence.
//!
//! # Formula injection
//! Spreadsheets execute a cell that starts with `=`, `+`, `-`, `@`, tab or CR, and a
//! spreadsheet whose list separator is `;` (or `,`) splits a cell like
//! `x;=HYPERLINK(...)` and executes its second part. So every CSV tokenwatch writes goes
//! through [`SafeCsv`]: every field quoted, and in every field a formula character at
//! the start of the cell or of any `;`- or `,`-separated part (after spaces) gets a
//! single quote `'` before it (OWASP guidance), which spreadsheets show as text. The
//! original value is always available through the API and the database.

use crate::Outcome;

/// Event CSV columns, in order. Stable: new columns are only ever appended.
pub const CSV_EVENT_COLUMNS: &[&str] = &[
    "id",
    "time",
    "kind",
    "outcome",
    "reason",
    "subject",
    "username",
    "client_ip",
    "user_agent",
    "method",
    "path",
    "jti",
    "kid",
    "alg",
    "token_fp",
    "source",
    "detail",
    "hash",
];

/// Alert CSV columns, in order. Stable: new columns are only ever appended.
/// `evidence` is the supporting event ids separated by spaces.
pub const CSV_ALERT_COLUMNS: &[&str] = &[
    "id",
    "time",
    "updated_at",
    "detector",
    "rule",
    "severity",
    "status",
    "subject",
    "client_ip",
    "summary",
    "group_key",
    "count",
    "evidence",
    "status_by",
    "status_at",
    "status_note",
];

/// Per-user summary CSV columns (`tokenwatch` admin reports). `user` is the username,
/// else the token subject; `last_ip` is the client IP of the user's newest event.
pub const CSV_USER_SUMMARY_COLUMNS: &[&str] = &[
    "user",
    "logins_ok",
    "logins_failed",
    "tokens_issued",
    "failures",
    "events",
    "first_seen",
    "last_seen",
    "last_ip",
];

/// Per-client-IP summary CSV columns; `users` counts distinct users seen from the IP.
pub const CSV_IP_SUMMARY_COLUMNS: &[&str] = &[
    "client_ip",
    "logins_ok",
    "logins_failed",
    "tokens_issued",
    "failures",
    "events",
    "first_seen",
    "last_seen",
    "users",
];

/// What an export wrote, and the part of the record it was read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exported {
    /// Data rows written (the header not counted).
    pub rows: u64,
    /// The record's events as the export saw them (one read snapshot); `None` when
    /// the record holds no events.
    pub record: Option<ChainRange>,
}

/// A stretch of the hash chain: every exported event row has an id in
/// `first_id..=last_id`, and `last_hash` (hex) is the chain hash at `last_id`, which
/// `tokenwatch audit verify` and the signed checkpoints vouch for.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ChainRange {
    pub first_id: i64,
    pub last_id: i64,
    pub last_hash: String,
}

/// UTC RFC 3339 with microseconds, e.g. `2024-05-01T12:00:00.000123Z`.
pub fn rfc3339_us(t: i64) -> String {
    // Out of the representable range: only a tampered row could hold this.
    try_rfc3339_us(t).unwrap_or_else(|| format!("invalid-time:{t}"))
}

/// [`rfc3339_us`], or `None` for a time outside years 0000-9999, for a caller that
/// must never show a time it could not compute.
pub fn try_rfc3339_us(t: i64) -> Option<String> {
    let mut buf = [0u8; RFC3339_US_LEN];
    write_rfc3339_us(t, &mut buf).map(str::to_owned)
}

pub(crate) const RFC3339_US_LEN: usize = 27;

/// [`rfc3339_us`] into a caller's buffer, without allocating (the export loop
/// writes a million of these). `None` for times outside years 0000-9999.
pub(crate) fn write_rfc3339_us(t: i64, buf: &mut [u8; RFC3339_US_LEN]) -> Option<&str> {
    let d = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(t) * 1000).ok()?;
    let year = u32::try_from(d.year()).ok().filter(|y| *y <= 9999)?;
    let mut put = |at: usize, width: usize, mut v: u32| {
        for i in (at..at + width).rev() {
            buf[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, year);
    put(5, 2, u32::from(u8::from(d.month())));
    put(8, 2, u32::from(d.day()));
    put(11, 2, u32::from(d.hour()));
    put(14, 2, u32::from(d.minute()));
    put(17, 2, u32::from(d.second()));
    put(20, 6, d.microsecond());
    for (i, c) in [
        (4, b'-'),
        (7, b'-'),
        (10, b'T'),
        (13, b':'),
        (16, b':'),
        (19, b'.'),
        (26, b'Z'),
    ] {
        buf[i] = c;
    }
    std::str::from_utf8(buf).ok()
}

/// The characters that make a spreadsheet evaluate a cell (or a part of one).
fn is_formula_start(b: u8) -> bool {
    matches!(b, b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r')
}

/// Byte offsets in `s` that need a `'` before them: a formula character at the start
/// of the cell or of a `;`- or `,`-separated part, spaces before it skipped.
fn formula_starts(s: &str) -> impl Iterator<Item = usize> + '_ {
    let mut part_start = true;
    s.bytes().enumerate().filter_map(move |(i, b)| {
        let hit = part_start && is_formula_start(b);
        if b == b';' || b == b',' {
            part_start = true;
        } else if b != b' ' {
            part_start = false;
        }
        hit.then_some(i)
    })
}

/// Neutralises a cell so no spreadsheet evaluates it or any separated part of it.
pub(crate) fn neutralize(s: &str) -> std::borrow::Cow<'_, str> {
    let mut hits = formula_starts(s).peekable();
    if hits.peek().is_none() {
        return s.into();
    }
    let mut out = String::with_capacity(s.len() + 4);
    let mut from = 0;
    for at in hits {
        out.push_str(&s[from..at]);
        out.push('\'');
        from = at;
    }
    out.push_str(&s[from..]);
    out.into()
}

/// The one CSV writer of tokenwatch: RFC 4180, every field quoted, every field
/// neutralised (see the module docs). Exports, alert exports and report downloads all
/// write through it.
pub struct SafeCsv<W: std::io::Write> {
    inner: csv::Writer<W>,
}

impl<W: std::io::Write> SafeCsv<W> {
    pub fn new(out: W) -> Self {
        SafeCsv {
            inner: csv::WriterBuilder::new()
                .quote_style(csv::QuoteStyle::Always)
                .buffer_capacity(256 * 1024)
                .from_writer(out),
        }
    }

    /// Writes one field of the current record.
    pub fn field(&mut self, value: &str) -> Result<(), csv::Error> {
        self.inner.write_field(neutralize(value).as_bytes())
    }

    /// Ends the current record.
    pub fn end_record(&mut self) -> Result<(), csv::Error> {
        self.inner.write_record(None::<&[u8]>)
    }

    /// Writes a whole record.
    pub fn record<I, S>(&mut self, fields: I) -> Result<(), csv::Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        for f in fields {
            self.field(f.as_ref())?;
        }
        self.end_record()
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

pub(crate) fn outcome_str(o: Outcome) -> &'static str {
    o.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc_with_micros() {
        assert_eq!(rfc3339_us(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(rfc3339_us(-1), "1969-12-31T23:59:59.999999Z");
        assert!(rfc3339_us(i64::MAX).starts_with("invalid-time:"));
        assert_eq!(
            rfc3339_us(1_714_564_800_000_123),
            "2024-05-01T12:00:00.000123Z"
        );
    }

    #[test]
    fn formula_prefixes_are_quoted() {
        for (i, o) in [
            ("=1+1", "'=1+1"),
            ("+x", "'+x"),
            ("-2", "'-2"),
            ("@SUM", "'@SUM"),
            ("\tx", "'\tx"),
            ("\rx", "'\rx"),
            ("a=b", "a=b"),
            ("", ""),
            // A spreadsheet splitting on `;` or `,` would evaluate the second part.
            (
                "x;=HYPERLINK(\"http://e.invalid\")",
                "x;'=HYPERLINK(\"http://e.invalid\")",
            ),
            ("x,=1", "x,'=1"),
            ("x; @A1", "x; '@A1"),
            ("  =1", "  '=1"),
            ("a;b,-c;;+d", "a;b,'-c;;'+d"),
            ("a; b", "a; b"),
            ("é;=1", "é;'=1"),
        ] {
            assert_eq!(neutralize(i), o, "{i:?}");
        }
    }

    #[test]
    fn every_field_is_quoted_and_neutralised() {
        let mut out = Vec::new();
        let mut w = SafeCsv::new(&mut out);
        w.record(["1", "x;=1", "a\"b"]).unwrap();
        w.flush().unwrap();
        drop(w);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "\"1\",\"x;'=1\",\"a\"\"b\"\n"
        );
    }
}
