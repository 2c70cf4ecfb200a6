//! What the benchmark measures besides its own sockets: a latency histogram,
//! and a process's memory and CPU time read from `/proc` (Linux only).

use std::sync::OnceLock;
use std::time::Instant;

/// The one clock every sender and viewer reads: senders stamp events with
/// microseconds since this instant, viewers subtract. One process, so one clock.
pub fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Microseconds since [`epoch`].
pub fn now_us() -> u64 {
    epoch().elapsed().as_micros() as u64
}

/// Sub-buckets per power of two: values are kept to within 1/64 (about 1.6%).
const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
/// Values up to 2^40 µs (12 days) have a bucket; larger ones land in the last.
const MAX_EXP: u32 = 40;
const BUCKETS: usize = ((MAX_EXP - SUB_BITS + 2) as usize) * SUB as usize;

/// A log-linear histogram of microsecond values: fixed size, no allocation per value.
#[derive(Clone)]
pub struct Histogram {
    /// Counts per bucket.
    counts: Box<[u64]>,
    /// Number of values recorded.
    total: u64,
    /// Largest value recorded, exactly.
    max: u64,
    /// Sum of the values, for the mean.
    sum: u128,
}

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            total: 0,
            max: 0,
            sum: 0,
        }
    }
}

fn bucket_of(value: u64) -> usize {
    if value < SUB {
        return value as usize;
    }
    let exp = (63 - value.leading_zeros()).min(MAX_EXP);
    let sub = (value >> (exp - SUB_BITS)) & (SUB - 1);
    ((exp - SUB_BITS + 1) as usize) * SUB as usize + sub as usize
}

/// The middle of a bucket's range, as the value it stands for.
fn value_of(bucket: usize) -> u64 {
    let sub_count = SUB as usize;
    if bucket < sub_count {
        return bucket as u64;
    }
    let exp = (bucket / sub_count) as u32 + SUB_BITS - 1;
    let sub = (bucket % sub_count) as u64;
    let low = (SUB + sub) << (exp - SUB_BITS);
    low + (1u64 << (exp - SUB_BITS)) / 2
}

impl Histogram {
    /// Records one value.
    pub fn record(&mut self, value: u64) {
        self.counts[bucket_of(value)] += 1;
        self.total += 1;
        self.max = self.max.max(value);
        self.sum += u128::from(value);
    }

    /// Adds another histogram's values to this one.
    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts.iter()) {
            *mine += theirs;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
        self.sum += other.sum;
    }

    /// The largest value recorded.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The mean, or 0 without values.
    pub fn mean(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.sum as f64 / self.total as f64
        }
    }

    /// The value below which `q` (0..=1) of the values lie; 0 without values.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        if rank == self.total {
            return self.max;
        }
        let mut seen = 0;
        for (bucket, &count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return value_of(bucket).min(self.max);
            }
        }
        self.max
    }
}

/// Clock ticks per second of `/proc/*/stat` CPU times: `getconf CLK_TCK`,
/// else 100 (what Linux uses on every common architecture).
pub fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.trim().parse::<f64>().ok())
            .filter(|ticks| *ticks > 0.0)
            .unwrap_or(100.0)
    })
}

/// The fields of a `/proc/.../stat` line after the command name, which may hold spaces.
fn stat_fields(text: &str) -> Option<Vec<&str>> {
    let after = &text[text.rfind(')')? + 1..];
    Some(after.split_whitespace().collect())
}

/// User plus system CPU seconds of a `/proc/.../stat` file (a process or one thread).
pub fn cpu_secs_of(stat_path: &str) -> Option<f64> {
    let text = std::fs::read_to_string(stat_path).ok()?;
    let fields = stat_fields(&text)?;
    // After the name: state is field 3 of the line, so utime (14) and stime (15) are at 11 and 12.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

/// CPU seconds (user + system) a process has used so far.
pub fn process_cpu_secs(pid: u32) -> Option<f64> {
    cpu_secs_of(&format!("/proc/{pid}/stat"))
}

/// CPU seconds this process has used so far.
pub fn own_cpu_secs() -> f64 {
    cpu_secs_of("/proc/self/stat").unwrap_or(0.0)
}

/// CPU seconds of each thread of this process, by thread ID.
pub fn own_thread_cpu_secs() -> Vec<(u32, f64)> {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    dir.filter_map(|entry| {
        let entry = entry.ok()?;
        let tid: u32 = entry.file_name().to_str()?.parse().ok()?;
        Some((tid, cpu_secs_of(&format!("/proc/self/task/{tid}/stat"))?))
    })
    .collect()
}

/// CPU seconds the whole machine has been busy (all CPUs, all processes),
/// from the first line of `/proc/stat`.
pub fn machine_busy_secs() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().next()?.strip_prefix("cpu ")?;
    let ticks: Vec<f64> = line
        .split_whitespace()
        .map(|n| n.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let busy = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| ticks.get(i))
        .sum::<f64>();
    Some(busy / clock_ticks())
}

/// A `kB` line of `/proc/<pid>/status`, e.g. `VmRSS` or `VmHWM`, in kilobytes.
fn status_kb(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Resident memory of a process now, in kilobytes.
pub fn rss_kb(pid: u32) -> Option<u64> {
    status_kb(pid, "VmRSS")
}

/// The most resident memory a process has had, in kilobytes.
pub fn peak_rss_kb(pid: u32) -> Option<u64> {
    status_kb(pid, "VmHWM")
}

/// Number of threads of a process.
pub fn thread_count(pid: u32) -> Option<u64> {
    status_kb(pid, "Threads")
}

/// Sockets a process holds open now (its descriptors that are sockets:
/// connections and listeners), from `/proc/<pid>/fd`.
pub fn socket_fds(pid: u32) -> Option<u64> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    let sockets = dir
        .filter_map(Result::ok)
        .filter_map(|entry| std::fs::read_link(entry.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("socket:"))
        .count();
    Some(sockets as u64)
}

/// The soft and hard limits on open files of this process.
pub fn open_files_limit() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    let mut numbers = line["Max open files".len()..].split_whitespace();
    let soft = numbers.next()?.parse().ok()?;
    let hard = numbers.next()?.parse().ok()?;
    Some((soft, hard))
}

/// Raises this process's soft limit on open files to its hard limit (the
/// server under test inherits it). Returns the soft limit in force afterwards.
pub fn raise_open_files_limit() -> Option<u64> {
    if let Err(e) = twizzle_api_server::connection::raise_open_file_limit() {
        log::warn!("could not raise the open-files limit: {e}");
    }
    open_files_limit().map(|(soft, _)| soft)
}

/// The slope of the least-squares line through `points` (y per x), if x varies.
pub fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_the_bucket_precision() {
        let mut h = Histogram::default();
        for v in 1..=100_000u64 {
            h.record(v);
        }
        for (q, want) in [(0.5, 50_000.0), (0.99, 99_000.0), (0.999, 99_900.0)] {
            let got = h.quantile(q) as f64;
            assert!((got - want).abs() / want < 0.02, "q{q}: {got} vs {want}");
        }
        assert_eq!(h.max(), 100_000);
        assert_eq!(h.quantile(1.0), 100_000);
        assert_eq!(Histogram::default().quantile(0.5), 0);
        let mut small = Histogram::default();
        small.record(3);
        assert_eq!(small.quantile(0.5), 3);
        let mut huge = Histogram::default();
        huge.record(u64::MAX);
        assert!(huge.quantile(0.5) >= 1 << MAX_EXP);
    }

    #[test]
    fn every_bucket_maps_back_into_itself() {
        for bucket in 0..BUCKETS - 1 {
            assert_eq!(bucket_of(value_of(bucket)), bucket);
        }
    }

    #[test]
    fn slope_of_a_line() {
        let points = [(0.0, 10.0), (100.0, 30.0), (200.0, 50.0)];
        assert!((slope(&points).unwrap() - 0.2).abs() < 1e-9);
        assert!(slope(&points[..1]).is_none());
    }
}
