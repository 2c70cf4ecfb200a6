//! `compare`: one scenario against our server and every other server given,
//! in rounds that each run all of them, side by side.

use serde_json::{json, Value};

use super::{context, others, ours};
use crate::cli::Options;
use crate::report::{self, Column, Figures};

/// Runs `o.rounds` rounds of every server, prints them side by side under
/// `title`, and returns every run, and each server's medians, as JSON.
pub(super) async fn run(o: &Options, fd_limit: u64, title: &str) -> Result<Value, String> {
    let mut targets = vec![ours(o)?];
    targets.extend(others(o)?);
    let mut figures: Vec<Vec<Figures>> = vec![Vec::new(); targets.len()];
    let mut runs = Vec::new();
    for round in 0..o.rounds {
        for i in round_order(targets.len(), round) {
            let run = super::run(o, &targets[i], fd_limit).await?;
            let mut entry = run.to_json();
            entry["round"] = json!(round + 1);
            runs.push(entry);
            figures[i].push(run);
        }
    }
    let columns: Vec<Column> = targets
        .iter()
        .zip(&figures)
        .map(|(target, runs)| Column {
            name: &target.label,
            runs,
        })
        .collect();
    report::print_compare(title, &columns);
    Ok(json!({
        "context": context(o, fd_limit),
        "servers": targets.iter().map(|t| t.label.as_str()).collect::<Vec<_>>(),
        "medians": report::medians_json(&columns),
        "runs": runs,
    }))
}

/// The order of the servers in round `round` (from 0): each round starts
/// one server later, so none always gets the coldest or warmest machine.
fn round_order(servers: usize, round: usize) -> Vec<usize> {
    (0..servers).map(|i| (i + round) % servers).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_rotate_who_goes_first() {
        assert_eq!(round_order(2, 0), [0, 1]);
        assert_eq!(round_order(2, 1), [1, 0]);
        assert_eq!(round_order(3, 0), [0, 1, 2]);
        assert_eq!(round_order(3, 1), [1, 2, 0]);
        assert_eq!(round_order(3, 2), [2, 0, 1]);
        assert_eq!(round_order(3, 3), [0, 1, 2]);
    }
}
