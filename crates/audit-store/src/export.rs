//! CSV export helpers: stable columns, RFC 3339 times, formula-injection defence.
//!
//! # Formula injection
//! Spreadsheets execute a cell that starts with `=`, `+`, `-`, `@`, tab or CR. Every
//! cell whose content can come from outside tokenwatch (usernames, user agents, paths,
//! reasons, detail JSON, alert summaries...) and starts with one of those characters is
//! prefixed with a single quote `'` (OWASP guidance), which spreadsheets show as text.
//! The original value is always available through the API and the database. Cells
//! tokenwatch itself produces (id, time, kind, outcome, hash) are written unchanged.

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

/// UTC RFC 3339 with microseconds, e.g. `2024-05-01T12:00:00.000123Z`.
pub(crate) fn rfc3339_us(t: i64) -> String {
    let mut buf = [0u8; RFC3339_US_LEN];
    match write_rfc3339_us(t, &mut buf) {
        Some(text) => text.to_owned(),
        // Out of the representable range: only a tampered row could hold this.
        None => format!("invalid-time:{t}"),
    }
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

/// Neutralises a cell from outside so no spreadsheet evaluates it.
pub(crate) fn neutralize(s: &str) -> std::borrow::Cow<'_, str> {
    match s.as_bytes().first() {
        Some(b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r') => format!("'{s}").into(),
        _ => s.into(),
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
        ] {
            assert_eq!(neutralize(i), o);
        }
    }
}
