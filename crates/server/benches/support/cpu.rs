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

/// CPU time per live thread (tid → name, µs), from /proc; clock-tick resolution.
pub struct Threads(HashMap<u32, (String, f64)>);

impl Threads {
    pub fn now() -> Threads {
        // SAFETY: sysconf has no preconditions.
        let ticks_per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let mut out = HashMap::new();
        for task in std::fs::read_dir("/proc/self/task")
            .into_iter()
            .flatten()
            .flatten()
        {
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
                continue;
            };
            // "tid (name) state ..." where the name may itself hold spaces or parens.
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
            let ticks = |i: usize| {
                fields
                    .get(i)
                    .and_then(|f| f.parse::<f64>().ok())
                    .unwrap_or(0.0)
            };
            let Ok(tid) = task.file_name().to_string_lossy().parse() else {
                continue;
            };
            out.insert(
                tid,
                (
                    stat[open + 1..close].to_string(),
                    (ticks(11) + ticks(12)) * 1e6 / ticks_per_s,
                ),
            );
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

/// "name=µs" per request for every thread group that used CPU.
pub fn per_request(by_name: &BTreeMap<String, f64>, requests: f64) -> String {
    by_name
        .iter()
        .filter(|(_, us)| **us > 0.0)
        .map(|(name, us)| format!("{name}={:.1}", us / requests))
        .collect::<Vec<_>>()
        .join(" ")
}
