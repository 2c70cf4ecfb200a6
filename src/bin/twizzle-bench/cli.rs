//! The command line: a scenario and its options, each with a default that
//! runs in seconds on a laptop.

use std::iter::Peekable;
use std::path::PathBuf;

/// What load to put on the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// Streams with one paced sender and many viewers each.
    Fanout,
    /// The same, with the rate limit lifted and senders sending flat out.
    Saturate,
    /// Many idle viewer sockets; what each one costs the server.
    Idle,
    /// An honest stream while attackers hit every per-client and per-stream limit.
    Attack,
    /// One stream on a cluster of nodes on one NATS: its sender on node 1,
    /// its viewers spread over every node; beside one node on NATS.
    Cluster,
}

impl Scenario {
    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Fanout => "fanout",
            Scenario::Saturate => "saturate",
            Scenario::Idle => "idle",
            Scenario::Attack => "attack",
            Scenario::Cluster => "cluster",
        }
    }

    fn parse(word: &str) -> Option<Scenario> {
        match word {
            "fanout" => Some(Scenario::Fanout),
            "saturate" => Some(Scenario::Saturate),
            "idle" => Some(Scenario::Idle),
            "attack" => Some(Scenario::Attack),
            "cluster" => Some(Scenario::Cluster),
            _ => None,
        }
    }
}

/// Another server to run a scenario against: its name and how it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its column in the tables and its `target` in the JSON.
    pub name: String,
    /// How to start it.
    pub start: PeerStart,
}

/// How another server starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerStart {
    /// A command, split on spaces (`--peer-cmd`).
    Command(String),
    /// The Node peer in this folder (`--peer`).
    Node(PathBuf),
}

/// Upper bounds on the options, so a typo cannot start an endless run.
const MAX_SECS: f64 = 3600.0;
const MAX_RATE: f64 = 100_000.0;
const MAX_THREADS: usize = 64;
const MAX_ROUNDS: usize = 20;
const MAX_SOURCES: usize = 250;
const MAX_NODES: usize = 9;
/// Longest `--peer-name`, so a name cannot widen the tables without end.
const MAX_NAME: usize = 24;

/// Everything the command line asked for.
#[derive(Debug, Clone)]
pub struct Options {
    /// The scenario to run.
    pub scenario: Scenario,
    /// Run it against our server and the other servers, alternating, side by side.
    pub compare: bool,
    /// Streams (fanout, saturate: default 1; idle: sockets / 100).
    pub streams: Option<usize>,
    /// Viewers per stream (fanout 500, saturate 200; attack: honest viewers,
    /// 20; cluster: over all nodes, 600).
    pub viewers: Option<usize>,
    /// Events per second per sender (fanout; attack: the honest sender).
    pub rate: f64,
    /// Seconds of sending (fanout 10, saturate 5), of holding the sockets
    /// open (idle 5), or of each attack phase but the frame flood (attack 15).
    pub secs: Option<f64>,
    /// Attack: socket upgrades one address tries at full speed.
    pub attack_sockets: usize,
    /// Attack: sender sockets one user tries to open on one stream.
    pub sender_sockets: usize,
    /// Attack: seconds of the maximum-size frame flood.
    pub flood_secs: f64,
    /// Idle sockets in all (idle).
    pub sockets: usize,
    /// Cluster: nodes on the one NATS.
    pub nodes: usize,
    /// Client threads that run the viewers.
    pub threads: usize,
    /// Loopback source addresses the client sockets are spread over (127.0.0.2, …).
    pub sources: usize,
    /// Longest wait for the last deliveries after the senders stop.
    pub drain_secs: f64,
    /// Saturate: events the average viewer may be behind before the sender
    /// waits (0: none, the socket's backpressure only).
    pub window: u64,
    /// The command that starts our server, instead of the binary next to this one.
    pub server_cmd: Option<String>,
    /// The Node peer's folder (with `node_modules`): `node DIR/server.mjs`,
    /// the server named `peer`.
    pub peer: Option<PathBuf>,
    /// Commands that start other servers, in the order given.
    pub peer_cmds: Vec<String>,
    /// The names of the servers `peer_cmds` start, the nth for the nth.
    pub peer_names: Vec<String>,
    /// Extra `NAME=VALUE` environment for the servers, after the scenario's own.
    pub env: Vec<(String, String)>,
    /// Alternating rounds of `compare`.
    pub rounds: usize,
    /// Where to write the figures as JSON too.
    pub json: Option<PathBuf>,
}

/// The `--help` text.
pub fn usage() -> String {
    let threads = default_threads();
    format!(
        "twizzle-bench: load generator for the twizzle stream broker

Usage:
  twizzle-bench fanout   [options]   S streams x 1 paced sender x V viewers
  twizzle-bench saturate [options]   the same, rate limit lifted, senders flat out
  twizzle-bench idle     [options]   C idle viewer sockets: memory per socket
  twizzle-bench attack   [options]   an honest stream while attackers hit every
                                     limit, with the server's default limits
  twizzle-bench cluster  [options]   N nodes on one nats-server (from PATH): 1 sender
                                     on node 1, V viewers spread over the nodes;
                                     then the same load on one node on NATS
  twizzle-bench compare [fanout|saturate|idle] [options] --peer DIR
                                     ours and the Node peer, alternating, side by side
  twizzle-bench compare [fanout|saturate|idle] [options]
                --peer-cmd CMD --peer-name NAME [--peer-cmd CMD --peer-name NAME ...] [--peer DIR]
                                     ours and several other servers: each round runs
                                     all of them, each round starting one later

Each run starts the server as a child process on a free loopback port, with a
fresh data directory and a fake WCA served by the benchmark, and stops it at
the end.

Options:
  --streams S        streams (fanout/saturate 1; idle: sockets/100)
  --viewers V        viewers per stream (fanout 500, saturate 200; attack:
                     the honest stream's, 20; cluster: over all nodes, 600)
  --nodes N          cluster: nodes (default 3, at most 9)
  --rate E           events per second per sender (fanout, and attack's honest
                     sender; default 30)
  --secs D           seconds of sending (fanout 10, saturate 5), of holding
                     the idle sockets open (idle 5), or of each attack phase
                     but the frame flood (attack 15)
  --sockets C        idle sockets in all (idle; default 2000)
  --attack-sockets N attack: upgrades one address tries at full speed (3000)
  --sender-sockets N attack: sender sockets one user tries on one stream (300)
  --flood-secs D     attack: seconds of the maximum-size frame flood (60)
  --threads T        client threads running the viewers (default {threads})
  --sources N        loopback source addresses 127.0.0.2.. to spread sockets over (default 4)
  --drain-secs X     longest wait for the last deliveries after sending (default 10)
  --window N         saturate: keep the sender at most N events ahead of the
                     average viewer (default 0: no limit, only the socket's
                     backpressure, so a server that reads faster than it
                     relays is flooded)
  --server-cmd CMD   start our server with CMD (split on spaces, no shell)
                     instead of twizzle-api-server next to this binary
  --peer DIR         the Node peer's folder, after `npm ci`: runs `node DIR/server.mjs`
                     (alone: benchmark the peer; with compare: the column `peer`)
  --peer-cmd CMD     start another server with CMD (split on spaces, no shell);
                     repeatable with compare, one column each
  --peer-name NAME   the name of a --peer-cmd server in the table and the JSON:
                     the first --peer-name names the first --peer-cmd, and so on
                     (letters, digits, - _ .; needed when compare has several
                     other servers; one alone is `peer` by default)
  --env NAME=VALUE   extra environment for the servers (repeatable)
  --rounds R         compare: rounds, each running every server, each round
                     starting one server later; medians shown (default 1)
  --json FILE        write the figures as JSON too
  --help             print this
"
    )
}

/// Client threads by default: half the cores, the other half for the server.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

/// What the command line asked for: options, or the help text.
pub enum Parsed {
    /// Run with these options.
    Run(Box<Options>),
    /// Print this and exit.
    Help(String),
}

/// Parses the arguments (without the program name).
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Parsed, String> {
    let mut args = args.into_iter().peekable();
    let first = args.next().ok_or("no scenario given; see --help")?;
    if first == "--help" || first == "-h" {
        return Ok(Parsed::Help(usage()));
    }
    let (scenario, compare) = scenario_of(&first, &mut args)?;
    let mut options = Options::defaults(scenario, compare);
    while let Some(arg) = args.next() {
        if arg == "--help" || arg == "-h" {
            return Ok(Parsed::Help(usage()));
        }
        let body = arg
            .strip_prefix("--")
            .ok_or_else(|| format!("unexpected argument {arg:?}; see --help"))?;
        let (name, value) = match body.split_once('=') {
            Some((name, value)) => (name.to_owned(), value.to_owned()),
            None => {
                let value = args
                    .next()
                    .ok_or_else(|| format!("--{body} needs a value"))?;
                (body.to_owned(), value)
            }
        };
        options.set(&name, value)?;
    }
    options.check()?;
    Ok(Parsed::Run(Box::new(options)))
}

/// The scenario the first word names, and whether it is a comparison (for
/// `compare`, the scenario is the next word if it names one).
fn scenario_of(
    first: &str,
    args: &mut Peekable<impl Iterator<Item = String>>,
) -> Result<(Scenario, bool), String> {
    if first == "compare" {
        return Ok(match args.peek().and_then(|w| Scenario::parse(w)) {
            Some(scenario) => {
                args.next();
                (scenario, true)
            }
            None => (Scenario::Fanout, true),
        });
    }
    let scenario =
        Scenario::parse(first).ok_or_else(|| format!("unknown scenario {first:?}; see --help"))?;
    Ok((scenario, false))
}

impl Options {
    /// Every option at its default.
    fn defaults(scenario: Scenario, compare: bool) -> Options {
        Options {
            scenario,
            compare,
            streams: None,
            viewers: None,
            rate: 30.0,
            secs: None,
            sockets: 2000,
            nodes: 3,
            attack_sockets: 3000,
            sender_sockets: 300,
            flood_secs: 60.0,
            threads: default_threads(),
            sources: 4,
            drain_secs: 10.0,
            window: 0,
            server_cmd: None,
            peer: None,
            peer_cmds: Vec::new(),
            peer_names: Vec::new(),
            env: Vec::new(),
            rounds: 1,
            json: None,
        }
    }

    /// Sets the option `--name` to `value`.
    fn set(&mut self, name: &str, value: String) -> Result<(), String> {
        let flag = format!("--{name}");
        match name {
            "streams" => self.streams = Some(count(&flag, &value, 1_000_000)?),
            "viewers" => self.viewers = Some(count(&flag, &value, 1_000_000)?),
            "rate" => self.rate = number(&flag, &value, MAX_RATE)?,
            "secs" => self.secs = Some(number(&flag, &value, MAX_SECS)?),
            "sockets" => self.sockets = count(&flag, &value, 1_000_000)?,
            "nodes" => {
                self.nodes = count(&flag, &value, MAX_NODES)?;
                if self.nodes < 2 {
                    return Err(format!("{flag}: a cluster has 2 nodes or more"));
                }
            }
            "attack-sockets" => self.attack_sockets = count(&flag, &value, 1_000_000)?,
            "sender-sockets" => self.sender_sockets = count(&flag, &value, 100_000)?,
            "flood-secs" => self.flood_secs = number(&flag, &value, MAX_SECS)?,
            "threads" => self.threads = count(&flag, &value, MAX_THREADS)?,
            "sources" => self.sources = count(&flag, &value, MAX_SOURCES)?,
            "drain-secs" => self.drain_secs = number(&flag, &value, MAX_SECS)?,
            "window" => {
                self.window = match value.trim() {
                    "0" => 0,
                    _ => count(&flag, &value, 1_000_000)? as u64,
                }
            }
            "server-cmd" => self.server_cmd = Some(value),
            "peer" => self.peer = Some(PathBuf::from(value)),
            "peer-cmd" => self.peer_cmds.push(value),
            "peer-name" => self.peer_names.push(value),
            "env" => {
                let (k, v) = value
                    .split_once('=')
                    .ok_or_else(|| format!("--env expects NAME=VALUE, got {value:?}"))?;
                self.env.push((k.to_owned(), v.to_owned()));
            }
            "rounds" => self.rounds = count(&flag, &value, MAX_ROUNDS)?,
            "json" => self.json = Some(PathBuf::from(value)),
            _ => return Err(format!("unknown option {flag}; see --help")),
        }
        Ok(())
    }

    /// Whether any server other than ours was given.
    fn has_peers(&self) -> bool {
        self.peer.is_some() || !self.peer_cmds.is_empty()
    }

    /// The other servers, in column order: each `--peer-cmd` as given, then
    /// the Node peer of `--peer`; or why their names do not work.
    pub fn peers(&self) -> Result<Vec<Peer>, String> {
        if self.peer_names.len() > self.peer_cmds.len() {
            return Err(format!(
                "{} --peer-name for {} --peer-cmd: each --peer-name names the --peer-cmd of the same position",
                self.peer_names.len(),
                self.peer_cmds.len()
            ));
        }
        let alone = self.peer_cmds.len() + usize::from(self.peer.is_some()) == 1;
        let mut peers = Vec::new();
        for (i, command) in self.peer_cmds.iter().enumerate() {
            let name = match self.peer_names.get(i) {
                Some(name) => name.clone(),
                None if alone => "peer".to_owned(),
                None => {
                    return Err(format!(
                        "--peer-cmd {command:?} has no name: with several other servers, name each --peer-cmd with a --peer-name"
                    ))
                }
            };
            peers.push(Peer {
                name,
                start: PeerStart::Command(command.clone()),
            });
        }
        if let Some(dir) = &self.peer {
            peers.push(Peer {
                name: "peer".to_owned(),
                start: PeerStart::Node(dir.clone()),
            });
        }
        for (i, peer) in peers.iter().enumerate() {
            check_name(&peer.name)?;
            if peers[..i].iter().any(|p| p.name == peer.name) {
                return Err(format!(
                    "two servers are named {:?} (--peer is named peer): give each --peer-cmd a --peer-name of its own",
                    peer.name
                ));
            }
        }
        Ok(peers)
    }

    /// Refuses options that do not go together.
    fn check(&self) -> Result<(), String> {
        let peers = self.peers()?;
        if self.scenario == Scenario::Attack && (self.compare || self.has_peers()) {
            return Err(
                "attack checks our server's limits as SPEC sets them: it runs against our server only (--server-cmd at most)"
                    .to_owned(),
            );
        }
        if self.scenario == Scenario::Cluster && (self.compare || self.has_peers()) {
            return Err(
                "cluster runs our server's cluster mode, which the peer has not: --server-cmd at most"
                    .to_owned(),
            );
        }
        if self.scenario == Scenario::Cluster && self.streams.is_some_and(|s| s != 1) {
            return Err("cluster runs one stream; --streams does not apply".to_owned());
        }
        if self.compare && !self.has_peers() {
            return Err(
                "compare needs another server: --peer DIR (after `npm ci` there) or --peer-cmd CMD (repeatable)"
                    .to_owned(),
            );
        }
        if !self.compare && self.server_cmd.is_some() && self.has_peers() {
            return Err(
                "give either --server-cmd or --peer/--peer-cmd for a single run, or use compare"
                    .to_owned(),
            );
        }
        if !self.compare && peers.len() > 1 {
            return Err(
                "a single run takes one server: give one of --peer and --peer-cmd, or use compare"
                    .to_owned(),
            );
        }
        Ok(())
    }
}

/// Refuses a server name that is not a plain word, or is ours.
fn check_name(name: &str) -> Result<(), String> {
    let plain = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if name.is_empty() || name.len() > MAX_NAME || !plain {
        return Err(format!(
            "--peer-name: expected 1 to {MAX_NAME} letters, digits, '-', '_' or '.', got {name:?}"
        ));
    }
    if name == "ours" {
        return Err("--peer-name: ours is our server's name".to_owned());
    }
    Ok(())
}

fn count(flag: &str, value: &str, max: usize) -> Result<usize, String> {
    match value.trim().replace('_', "").parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!(
            "{flag}: expected a whole number from 1 to {max}, got {value:?}"
        )),
    }
}

fn number(flag: &str, value: &str, max: f64) -> Result<f64, String> {
    match value.trim().parse::<f64>() {
        Ok(n) if n.is_finite() && n > 0.0 && n <= max => Ok(n),
        _ => Err(format!(
            "{flag}: expected a number above 0 and at most {max}, got {value:?}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Options, String> {
        match parse(args.iter().map(|s| s.to_string()))? {
            Parsed::Run(options) => Ok(*options),
            Parsed::Help(_) => Err("help".to_owned()),
        }
    }

    #[test]
    fn scenarios_and_options_parse() {
        let o = run(&["fanout", "--viewers", "5000", "--rate=30", "--secs", "20"]).unwrap();
        assert_eq!(o.scenario, Scenario::Fanout);
        assert_eq!(o.viewers, Some(5000));
        assert_eq!(o.secs, Some(20.0));
        let o = run(&["compare", "idle", "--peer", "/tmp/peer", "--env", "A=b=c"]).unwrap();
        assert!(o.compare);
        assert_eq!(o.scenario, Scenario::Idle);
        assert_eq!(o.env, vec![("A".to_owned(), "b=c".to_owned())]);
        assert_eq!(
            run(&["compare", "--peer", "x"]).unwrap().scenario,
            Scenario::Fanout
        );
    }

    #[test]
    fn bad_input_is_refused() {
        assert!(run(&["compare"]).unwrap_err().contains("--peer"));
        assert!(run(&["fanout", "--secs", "0"]).is_err());
        assert!(run(&["fanout", "--secs", "1e9"]).is_err());
        assert!(run(&["fanout", "--nope", "1"]).is_err());
        assert!(run(&["nope"]).is_err());
        assert!(run(&["fanout", "--viewers"]).is_err());
        assert!(run(&["--help"]).is_err());
        assert!(run(&["compare", "attack", "--peer", "x"]).is_err());
        assert!(run(&["attack", "--peer", "x"]).is_err());
    }

    #[test]
    fn one_peer_is_named_peer() {
        let o = run(&["compare", "--peer-cmd", "/old/twizzle-api-server --x"]).unwrap();
        assert_eq!(
            o.peers().unwrap(),
            vec![Peer {
                name: "peer".to_owned(),
                start: PeerStart::Command("/old/twizzle-api-server --x".to_owned()),
            }]
        );
        let o = run(&["compare", "--peer", "/tmp/peer"]).unwrap();
        assert_eq!(
            o.peers().unwrap(),
            vec![Peer {
                name: "peer".to_owned(),
                start: PeerStart::Node(PathBuf::from("/tmp/peer")),
            }]
        );
        let o = run(&["fanout", "--peer-cmd", "x", "--peer-name", "limit"]).unwrap();
        assert_eq!(o.peers().unwrap()[0].name, "limit");
    }

    #[test]
    fn several_peers_parse_in_order() {
        let o = run(&[
            "compare",
            "saturate",
            "--peer-cmd",
            "/l/twizzle-limit",
            "--peer",
            "/tmp/peer",
            "--peer-name=limit",
            "--peer-cmd",
            "/old/server",
            "--peer-name",
            "before",
        ])
        .unwrap();
        let names: Vec<String> = o.peers().unwrap().into_iter().map(|p| p.name).collect();
        assert_eq!(names, ["limit", "before", "peer"]);
        assert_eq!(
            o.peers().unwrap()[1].start,
            PeerStart::Command("/old/server".to_owned())
        );
    }

    #[test]
    fn bad_peer_names_are_refused() {
        let refused = |args: &[&str]| run(args).unwrap_err();
        assert!(refused(&["compare", "--peer-cmd", "a", "--peer-cmd", "b"]).contains("--peer-name"));
        assert!(refused(&["compare", "--peer-cmd", "a", "--peer", "p"]).contains("--peer-name"));
        assert!(refused(&["compare", "--peer", "p", "--peer-name", "x"]).contains("--peer-name"));
        assert!(refused(&[
            "compare",
            "--peer-cmd",
            "a",
            "--peer-name",
            "x",
            "--peer-cmd",
            "b",
            "--peer-name",
            "x"
        ])
        .contains("\"x\""));
        assert!(refused(&[
            "compare",
            "--peer-cmd",
            "a",
            "--peer-name",
            "peer",
            "--peer",
            "p"
        ])
        .contains("\"peer\""));
        assert!(refused(&["compare", "--peer-cmd", "a", "--peer-name", "ours"]).contains("ours"));
        assert!(refused(&["compare", "--peer-cmd", "a", "--peer-name", "a b"]).contains("letters"));
        assert!(refused(&["compare", "--peer-cmd", "a", "--peer-name", ""]).contains("letters"));
        assert!(refused(&[
            "fanout",
            "--peer-cmd",
            "a",
            "--peer-name",
            "x",
            "--peer",
            "p"
        ])
        .contains("single run"));
    }

    #[test]
    fn cluster_options_parse() {
        let o = run(&["cluster", "--viewers", "1500", "--rate", "30"]).unwrap();
        assert_eq!(o.scenario, Scenario::Cluster);
        assert_eq!((o.viewers, o.rate, o.nodes), (Some(1500), 30.0, 3));
        assert_eq!(run(&["cluster", "--nodes", "5"]).unwrap().nodes, 5);
        assert!(run(&["cluster", "--nodes", "1"]).is_err());
        assert!(run(&["cluster", "--nodes", "10"]).is_err());
        assert!(run(&["cluster", "--streams", "2"]).is_err());
        assert!(run(&["cluster", "--peer", "x"]).is_err());
        assert!(run(&["compare", "cluster", "--peer", "x"]).is_err());
    }

    #[test]
    fn attack_options_parse() {
        let o = run(&["attack", "--flood-secs", "5", "--sender-sockets", "40"]).unwrap();
        assert_eq!(o.scenario, Scenario::Attack);
        assert_eq!(o.flood_secs, 5.0);
        assert_eq!(o.sender_sockets, 40);
        assert_eq!(o.attack_sockets, 3000);
    }
}
