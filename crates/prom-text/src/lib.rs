//! Prometheus text exposition (format 0.0.4) for tokenwatch.
//!
//! [`Histogram`] is what the request path and the audit writer observe into:
//! two relaxed atomic adds and a scan of a dozen bounds, no lock and no
//! allocation, so every request can be timed. Reading it for `/metrics` is
//! the rare side and may allocate.
//!
//! ```
//! use std::time::Duration;
//! let h = prom_text::Histogram::new(prom_text::LATENCY_BOUNDS);
//! h.observe(Duration::from_micros(700));
//! let mut out = String::new();
//! prom_text::header(&mut out, "demo_seconds", "histogram", "A demo.");
//! h.render(&mut out, "demo_seconds", "");
//! assert!(out.contains("demo_seconds_bucket{le=\"0.001\"} 1\n"));
//! assert!(out.contains("demo_seconds_count 1\n"));
//! ```

use std::borrow::Cow;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Bucket bounds in seconds for request and commit latencies: from 250 µs (a
/// cached token check) to 10 s (a request stuck behind a failing disk).
pub const LATENCY_BOUNDS: &[f64] = &[
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A histogram of durations with fixed bucket bounds.
pub struct Histogram {
    bounds: &'static [f64],
    bounds_ns: Box<[u64]>,
    /// Per-bucket counts (not cumulative); the last one is `+Inf`.
    counts: Box<[AtomicU64]>,
    sum_ns: AtomicU64,
}

impl Histogram {
    /// `bounds`: upper bounds in seconds, increasing.
    pub fn new(bounds: &'static [f64]) -> Histogram {
        assert!(
            bounds.windows(2).all(|w| w[0] < w[1]),
            "histogram bounds must increase"
        );
        Histogram {
            bounds,
            bounds_ns: bounds.iter().map(|b| (b * 1e9) as u64).collect(),
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
        }
    }

    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = self
            .bounds_ns
            .iter()
            .position(|&b| ns <= b)
            .unwrap_or(self.bounds_ns.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// How many durations were recorded.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// The `_bucket`, `_sum` and `_count` lines of this histogram. `labels` is
    /// either empty or `name="value",...` (already escaped) without braces.
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0u64;
        for (i, c) in self.counts.iter().enumerate() {
            cumulative += c.load(Ordering::Relaxed);
            let le = match self.bounds.get(i) {
                Some(b) => b.to_string(),
                None => "+Inf".to_string(),
            };
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
            );
        }
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        // The +Inf bucket is the count, read once so the two always agree.
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
    }
}

/// The `# HELP` and `# TYPE` lines of a metric family.
pub fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A label value escaped for the text format (backslash, quote, newline).
pub fn escape_label(v: &str) -> Cow<'_, str> {
    if !v.contains(['\\', '"', '\n']) {
        return Cow::Borrowed(v);
    }
    Cow::Owned(
        v.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them_and_buckets_are_cumulative() {
        let h = Histogram::new(&[0.001, 0.01]);
        h.observe(Duration::from_micros(1000)); // exactly on a bound: le is inclusive
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_secs(3));
        let mut out = String::new();
        h.render(&mut out, "x_seconds", "family=\"api\"");
        assert_eq!(
            out,
            "x_seconds_bucket{family=\"api\",le=\"0.001\"} 1\n\
             x_seconds_bucket{family=\"api\",le=\"0.01\"} 2\n\
             x_seconds_bucket{family=\"api\",le=\"+Inf\"} 3\n\
             x_seconds_sum{family=\"api\"} 3.006\n\
             x_seconds_count{family=\"api\"} 3\n"
        );
        assert_eq!(h.count(), 3);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label("x\ny"), "x\\ny");
        assert!(matches!(escape_label("plain"), Cow::Borrowed(_)));
    }
}
