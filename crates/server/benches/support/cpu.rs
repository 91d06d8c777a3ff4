//! CPU accounting for the benches: the whole process, and per thread by name.

use std::collections::{BTreeMap, HashMap};

/// CPU time (user + system) this whole process has used, in µs.
pub fn process_us() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let us = |t: libc::timeval| t.tv_sec as f64 * 1e6 + t.tv_usec as f64;
    us(u.ru_utime) + us(u.ru_stime)
}

/// CPU time per live thread (tid → name, µs), from /proc: `schedstat`'s time on CPU
/// (exact, in ns) rather than `stat`'s clock ticks, which round a thread among hundreds
/// of clients down to nothing.
pub struct Threads(HashMap<u32, (String, f64)>);

impl Threads {
    pub fn now() -> Threads {
        let mut out = HashMap::new();
        for task in std::fs::read_dir("/proc/self/task")
            .into_iter()
            .flatten()
            .flatten()
        {
            let (Ok(name), Ok(schedstat)) = (
                std::fs::read_to_string(task.path().join("comm")),
                std::fs::read_to_string(task.path().join("schedstat")),
            ) else {
                continue;
            };
            let on_cpu_ns: f64 = schedstat
                .split(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0);
            let Ok(tid) = task.file_name().to_string_lossy().parse() else {
                continue;
            };
            out.insert(tid, (name.trim_end().to_string(), on_cpu_ns / 1e3));
        }
        Threads(out)
    }

    /// CPU used since `earlier`, summed by thread name (threads that ended are lost).
    pub fn since(&self, earlier: &Threads) -> BTreeMap<String, f64> {
        let mut by_name = BTreeMap::new();
        for (tid, (name, us)) in &self.0 {
            let before = earlier.0.get(tid).map_or(0.0, |t| t.1);
            *by_name.entry(group(name)).or_default() += us - before;
        }
        by_name
    }
}

/// actix names its workers "actix-rt|system:0|arbiter:N" (truncated by the kernel).
fn group(name: &str) -> String {
    if name.starts_with("actix-rt") {
        "actix-workers".into()
    } else {
        name.to_string()
    }
}

/// "name=µs" per request for every thread group that used a measurable share.
pub fn per_request(by_name: &BTreeMap<String, f64>, requests: f64) -> String {
    by_name
        .iter()
        .filter(|(_, us)| **us / requests >= 0.05)
        .map(|(name, us)| format!("{name}={:.1}", us / requests))
        .collect::<Vec<_>>()
        .join(" ")
}
