//! `compare`: one scenario against our server and the peer, in alternating
//! rounds, side by side.

use serde_json::{json, Value};

use super::{context, ours, peer};
use crate::cli::Options;
use crate::report;
use crate::target::Target;

/// Runs `o.rounds` rounds of both servers, prints them side by side under
/// `title`, and returns every run as JSON.
pub(super) async fn run(o: &Options, fd_limit: u64, title: &str) -> Result<Value, String> {
    let (ours, peer) = (ours(o)?, peer(o)?);
    let mut ours_runs = Vec::new();
    let mut peer_runs = Vec::new();
    let mut runs = Vec::new();
    for round in 0..o.rounds {
        // Alternate which goes first, so neither always gets the warmer machine.
        let order: [&Target; 2] = if round.is_multiple_of(2) {
            [&ours, &peer]
        } else {
            [&peer, &ours]
        };
        for target in order {
            let figures = super::run(o, target, fd_limit).await?;
            let mut entry = figures.to_json();
            entry["round"] = json!(round + 1);
            runs.push(entry);
            if target.label == ours.label {
                ours_runs.push(figures);
            } else {
                peer_runs.push(figures);
            }
        }
    }
    report::print_compare(title, &ours_runs, &peer_runs);
    Ok(json!({"context": context(o, fd_limit), "runs": runs}))
}
