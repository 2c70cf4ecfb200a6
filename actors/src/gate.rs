//! The gate actor: how often one client address may knock.
//!
//! The HTTP layer asks it once per request, before the request goes any
//! further: a WebSocket handshake draws on the client's handshake budget,
//! any other request on its request budget. A client over either is
//! answered 429 with when to come back, and costs nobody else anything.
//! Budgets are kept per address (per /64 for IPv6, which one subscriber
//! usually holds whole) and forgotten once full again, so memory follows
//! the clients of the last moments, within [`MAX_TRACKED_CLIENTS`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::rate::TokenBucket;

/// Client addresses tracked at once; past it, new addresses share one
/// budget, so a flood of addresses cannot grow memory without bound.
pub const MAX_TRACKED_CLIENTS: usize = 100_000;
/// How often budgets that are full again are forgotten.
const FORGET_INTERVAL: Duration = Duration::from_secs(30);

/// One rate: `per_sec` sustained, bursts of `burst`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Sustained per second.
    pub per_sec: f64,
    /// Saved up at most.
    pub burst: f64,
}

/// What the gate holds each client address to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GateSettings {
    /// WebSocket handshakes.
    pub handshakes: Rate,
    /// Every other HTTP request.
    pub requests: Rate,
}

/// What a client is knocking for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Knock {
    /// A WebSocket handshake.
    Handshake,
    /// Any other HTTP request.
    Request,
}

/// Lets one request of `client` through, or says when to come back.
#[derive(Message, Debug)]
#[rtype(result = "Result<(), Refused>")]
pub struct Pass {
    /// The client address (see the server's client address rules).
    pub client: IpAddr,
    /// What for.
    pub knock: Knock,
}

/// A client over its budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// Which budget: `handshakes per client` or `requests per client`.
    pub limit: &'static str,
    /// When a request would pass again.
    pub retry_after: Duration,
}

/// The address budgets are kept under: the address, or its /64 for IPv6.
pub fn client_key(client: IpAddr) -> IpAddr {
    match client {
        IpAddr::V4(_) => client,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut octets = v6.octets();
                octets[8..].fill(0);
                IpAddr::from(octets)
            }
        },
    }
}

/// The budgets of one kind of knock.
struct Budgets {
    rate: Rate,
    /// What the limit is called in answers and logs.
    limit: &'static str,
    by_client: HashMap<IpAddr, TokenBucket>,
    /// Shared by the clients that came when [`MAX_TRACKED_CLIENTS`] were tracked.
    overflow: TokenBucket,
}

impl Budgets {
    fn new(rate: Rate, limit: &'static str, now: Instant) -> Budgets {
        Budgets {
            rate,
            limit,
            by_client: HashMap::new(),
            overflow: TokenBucket::new(rate.per_sec, rate.burst, now),
        }
    }

    fn pass(&mut self, client: IpAddr, now: Instant) -> Result<(), Refused> {
        let key = client_key(client);
        let tracked = self.by_client.len() < MAX_TRACKED_CLIENTS;
        let bucket = match self.by_client.get_mut(&key) {
            Some(bucket) => bucket,
            None if tracked => self
                .by_client
                .entry(key)
                .or_insert_with(|| TokenBucket::new(self.rate.per_sec, self.rate.burst, now)),
            None => &mut self.overflow,
        };
        if bucket.take(now) {
            return Ok(());
        }
        Err(Refused {
            limit: self.limit,
            retry_after: bucket.retry_after(now),
        })
    }

    fn forget_full(&mut self, now: Instant) {
        self.by_client.retain(|_, bucket| !bucket.full(now));
    }
}

/// Keeps each client address's handshake and request budgets.
pub struct Gate {
    handshakes: Budgets,
    requests: Budgets,
}

impl Gate {
    /// A gate holding clients to `settings`.
    pub fn new(settings: GateSettings) -> Gate {
        let now = Instant::now();
        Gate {
            handshakes: Budgets::new(settings.handshakes, "handshakes per client", now),
            requests: Budgets::new(settings.requests, "requests per client", now),
        }
    }
}

impl Actor for Gate {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(FORGET_INTERVAL, |gate, _| {
            let now = Instant::now();
            gate.handshakes.forget_full(now);
            gate.requests.forget_full(now);
        });
    }
}

impl Handler<Pass> for Gate {
    type Result = Result<(), Refused>;

    fn handle(&mut self, msg: Pass, _: &mut Self::Context) -> Self::Result {
        let budgets = match msg.knock {
            Knock::Handshake => &mut self.handshakes,
            Knock::Request => &mut self.requests,
        };
        budgets.pass(msg.client, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_are_kept_per_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:3:4:5:6".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::1".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(client_key(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn each_client_has_its_own_budget_and_full_ones_are_forgotten() {
        let t0 = Instant::now();
        let rate = Rate {
            per_sec: 1.0,
            burst: 2.0,
        };
        let mut budgets = Budgets::new(rate, "requests per client", t0);
        let (one, two): (IpAddr, IpAddr) =
            ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        assert!(budgets.pass(one, t0).is_ok());
        assert!(budgets.pass(one, t0).is_ok());
        let refused = budgets.pass(one, t0).unwrap_err();
        assert_eq!(refused.limit, "requests per client");
        assert!(refused.retry_after > Duration::from_millis(900));
        assert!(
            budgets.pass(two, t0).is_ok(),
            "another client is not affected"
        );
        budgets.forget_full(t0 + Duration::from_secs(5));
        assert!(budgets.by_client.is_empty());
    }
}
