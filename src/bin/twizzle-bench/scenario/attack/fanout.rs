//! The server's own account of its fan-out: `twizzle_fanout_seconds`
//! (from an event's arrival at its sender's session to its hand-off to the
//! stream's last socket), scraped from `/metrics` at each phase's start and
//! end. The difference says how much of the honest latency a phase added
//! inside the server, apart from the kernel, the generator and whatever
//! else ran on the machine.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use super::http;

/// Cumulative bucket counts of the histogram, by upper bound in seconds.
#[derive(Debug, Clone, Default)]
pub struct Buckets(Vec<(f64, u64)>);

/// Scrapes the histogram from the metrics server at `addr`; `None` if it
/// could not be read.
pub async fn scrape(addr: SocketAddr) -> Option<Buckets> {
    let source = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let stream = http::connect(addr, source).await.ok()?;
    let mut buf = Vec::new();
    let answer = http::get(&stream, &mut buf, addr, "/metrics", "")
        .await
        .ok()?;
    if answer.status != 200 {
        return None;
    }
    let text = String::from_utf8_lossy(&buf);
    Some(parse(&text))
}

/// The buckets of `twizzle_fanout_seconds` in a metrics text.
fn parse(text: &str) -> Buckets {
    let mut buckets: Vec<(f64, u64)> = text
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("twizzle_fanout_seconds_bucket{le=\"")?;
            let (bound, rest) = rest.split_once("\"}")?;
            let bound = match bound {
                "+Inf" => f64::INFINITY,
                other => other.parse().ok()?,
            };
            let count = rest.split_whitespace().next()?.parse().ok()?;
            Some((bound, count))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    Buckets(buckets)
}

impl Buckets {
    /// What was observed between `earlier` and these.
    pub fn since(&self, earlier: &Buckets) -> Buckets {
        Buckets(
            self.0
                .iter()
                .map(|&(bound, count)| {
                    let before = earlier
                        .0
                        .iter()
                        .find(|(b, _)| *b == bound)
                        .map_or(0, |(_, c)| *c);
                    (bound, count.saturating_sub(before))
                })
                .collect(),
        )
    }

    /// Events observed.
    pub fn count(&self) -> u64 {
        self.0.last().map_or(0, |(_, count)| *count)
    }

    /// The upper bound, in seconds, of the bucket that holds the `q`
    /// quantile (0..=1); `None` without observations.
    pub fn quantile_bound(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = (q * total as f64).ceil().max(1.0) as u64;
        self.0
            .iter()
            .find(|(_, count)| *count >= rank)
            .map(|(bound, _)| *bound)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_read_and_subtracted() {
        let before = parse(
            "twizzle_fanout_seconds_bucket{le=\"0.0001\"} 5\n\
             twizzle_fanout_seconds_bucket{le=\"0.0002\"} 10\n\
             twizzle_fanout_seconds_bucket{le=\"+Inf\"} 10\n",
        );
        let after = parse(
            "# HELP twizzle_fanout_seconds x\n\
             twizzle_fanout_seconds_bucket{le=\"0.0001\"} 95\n\
             twizzle_fanout_seconds_bucket{le=\"0.0002\"} 109\n\
             twizzle_fanout_seconds_bucket{le=\"+Inf\"} 110\n",
        );
        let phase = after.since(&before);
        assert_eq!(phase.count(), 100);
        assert_eq!(phase.quantile_bound(0.5), Some(0.0001));
        assert_eq!(phase.quantile_bound(0.99), Some(0.0002));
        assert_eq!(phase.quantile_bound(1.0), Some(f64::INFINITY));
        assert_eq!(Buckets::default().quantile_bound(0.5), None);
    }
}
