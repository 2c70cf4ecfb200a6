//! One solve as it would be streamed from a smart cube: what happens when,
//! in seconds from its start, at a human pace.
//!
//! A reset, then a random 20-move scramble turned at a reading pace, an
//! inspection, and the solve: the scramble undone, in steps of a few quick
//! turns (8 to 12 a second) with pauses between them to look for the next
//! piece, and now and then a turn taken back, as when looking for a pair.
//! There is no solver here: undoing the scramble is what makes the solve
//! come out solved, and every detour undoes itself. A smart cube reports
//! quarter turns, so a half turn is two of them in quick succession.

use rand::Rng;
use twizzle_api_server::testkit::cube::{Face, Move};

/// Moves in a scramble, as a WCA scramble of the 3x3x3 has about.
pub const SCRAMBLE_MOVES: usize = 20;
/// Seconds the cube is still held after the last turn.
const HOLD_AFTER_SOLVE: f64 = 1.5;

/// What happens at one point of a solve.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// The cube is reset to solved (and its orientation tracked).
    Reset,
    /// One quarter turn.
    Turn(Move),
    /// A line for the terminal; nothing is sent.
    Say(String),
}

/// An action at its time, in seconds from the start of the solve.
#[derive(Debug, Clone, PartialEq)]
pub struct Timed {
    /// When, in seconds at a human pace.
    pub at: f64,
    /// What.
    pub action: Action,
}

/// One planned solve.
#[derive(Debug, Clone)]
pub struct Solve {
    /// Everything, in order of time.
    pub timeline: Vec<Timed>,
    /// When inspection starts and ends: the cube is turned about in the
    /// hands the most then.
    pub inspection: (f64, f64),
    /// Until when the cube is held (orientation is sent): a little after
    /// the last turn.
    pub held_until: f64,
    /// When the next solve may start: after a rest with the cube put down.
    pub ends_at: f64,
}

/// A random scramble: no face twice in a row, and no three turns on one
/// axis in a row (`U D U` is `U2 D`).
pub fn scramble(rng: &mut impl Rng) -> Vec<Move> {
    let mut moves: Vec<Move> = Vec::with_capacity(SCRAMBLE_MOVES);
    while moves.len() < SCRAMBLE_MOVES {
        let face = Face::ALL[rng.random_range(0..Face::ALL.len())];
        let last = moves.last().map(|m| m.face);
        let before = moves.len().checked_sub(2).map(|i| moves[i].face);
        if last == Some(face)
            || (last == Some(face.opposite())
                && before.is_some_and(|b| b == face || b == face.opposite()))
        {
            continue;
        }
        let amount = [1, -1, 2][rng.random_range(0..3)];
        moves.push(Move::new(face, amount));
    }
    moves
}

/// `m` as the quarter turns a smart cube reports: a half turn is two,
/// either way round.
fn quarters(m: Move, rng: &mut impl Rng) -> Vec<Move> {
    match m.amount.rem_euclid(4) {
        1 => vec![Move::new(m.face, 1)],
        3 => vec![Move::new(m.face, -1)],
        2 => {
            let way = if rng.random_bool(0.7) { 1 } else { -1 };
            vec![Move::new(m.face, way); 2]
        }
        _ => Vec::new(),
    }
}

/// Builds the timeline of a solve as it goes.
struct Plan {
    at: f64,
    timeline: Vec<Timed>,
}

impl Plan {
    fn wait(&mut self, secs: f64) {
        self.at += secs;
    }

    fn push(&mut self, action: Action) {
        self.timeline.push(Timed {
            at: self.at,
            action,
        });
    }
}

/// Plans one solve.
pub fn plan(rng: &mut impl Rng) -> Solve {
    let mut plan = Plan {
        at: 0.0,
        timeline: Vec::new(),
    };
    plan.push(Action::Reset);
    let scramble = scramble(rng);
    let notation: Vec<String> = scramble.iter().map(Move::to_string).collect();
    plan.push(Action::Say(format!("scrambling: {}", notation.join(" "))));
    plan.wait(1.0);
    // Reading the scramble: a move every third of a second or so.
    for m in &scramble {
        for (i, quarter) in quarters(*m, rng).into_iter().enumerate() {
            plan.wait(if i == 0 {
                rng.random_range(0.22..0.55)
            } else {
                rng.random_range(0.08..0.13)
            });
            plan.push(Action::Turn(quarter));
        }
    }
    plan.wait(rng.random_range(0.8..1.5));
    let inspection_start = plan.at;
    plan.push(Action::Say("inspecting".to_owned()));
    plan.wait(rng.random_range(5.0..9.0));
    let inspection = (inspection_start, plan.at);
    plan.push(Action::Say("solving".to_owned()));
    let solve_start = plan.at;

    let solution: Vec<Move> = scramble
        .iter()
        .rev()
        .flat_map(|m| quarters(m.inverse(), rng))
        .collect();
    let mut turns = 0;
    let mut left = &solution[..];
    let mut first = true;
    while !left.is_empty() {
        if !first {
            // Looking for the next piece; now and then a turn taken back.
            plan.wait(rng.random_range(0.3..1.2));
            if rng.random_bool(0.3) {
                turns += detour(&mut plan, rng);
                plan.wait(rng.random_range(0.2..0.6));
            }
        }
        first = false;
        let step = rng.random_range(3..=8).min(left.len());
        let tps: f64 = rng.random_range(8.0..12.0);
        for (i, m) in left[..step].iter().enumerate() {
            if i > 0 {
                plan.wait(rng.random_range(0.8..1.2) / tps);
            }
            plan.push(Action::Turn(*m));
            turns += 1;
        }
        left = &left[step..];
    }
    let took = plan.at - solve_start;
    plan.push(Action::Say(format!("solved: {turns} turns in {took:.2} s")));
    let held_until = plan.at + HOLD_AFTER_SOLVE;
    let ends_at = held_until + rng.random_range(3.0..5.0);
    Solve {
        timeline: plan.timeline,
        inspection,
        held_until,
        ends_at,
    }
}

/// A turn or a trigger taken back at once: `U` then `U'`, or `R U R'` then
/// `R U' R'`, as a solver looking for a pair does. Returns the turns made.
fn detour(plan: &mut Plan, rng: &mut impl Rng) -> usize {
    let way = if rng.random_bool(0.5) { 1 } else { -1 };
    let there: Vec<Move> = if rng.random_bool(0.6) {
        vec![Move::new(Face::U, way)]
    } else {
        let side = [Face::R, Face::L, Face::F][rng.random_range(0..3)];
        vec![
            Move::new(side, way),
            Move::new(Face::U, way),
            Move::new(side, -way),
        ]
    };
    let back: Vec<Move> = there.iter().rev().map(|m| m.inverse()).collect();
    for (i, m) in there.iter().enumerate() {
        if i > 0 {
            plan.wait(rng.random_range(0.08..0.12));
        }
        plan.push(Action::Turn(*m));
    }
    plan.wait(rng.random_range(0.25..0.5));
    for (i, m) in back.iter().enumerate() {
        if i > 0 {
            plan.wait(rng.random_range(0.08..0.12));
        }
        plan.push(Action::Turn(*m));
    }
    there.len() + back.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use twizzle_api_server::testkit::cube::Cube;

    #[test]
    fn scrambles_have_no_wasted_turns() {
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..200 {
            let moves = scramble(&mut rng);
            assert_eq!(moves.len(), SCRAMBLE_MOVES);
            for pair in moves.windows(2) {
                assert_ne!(pair[0].face, pair[1].face, "{moves:?}");
            }
            for three in moves.windows(3) {
                let axis = |f: Face| f.index().min(f.opposite().index());
                assert!(
                    !(axis(three[0].face) == axis(three[1].face)
                        && axis(three[1].face) == axis(three[2].face)),
                    "{moves:?}"
                );
            }
        }
    }

    #[test]
    fn a_solve_starts_with_a_reset_and_ends_solved_at_a_human_pace() {
        let mut rng = StdRng::seed_from_u64(2);
        for _ in 0..100 {
            let solve = plan(&mut rng);
            assert_eq!(solve.timeline[0].action, Action::Reset);
            let mut cube = Cube::solved();
            let mut times = Vec::new();
            for timed in &solve.timeline {
                if let Action::Turn(m) = timed.action {
                    assert!(m.amount == 1 || m.amount == -1, "quarter turns only");
                    cube.apply(m);
                    times.push(timed.at);
                }
            }
            assert!(cube.is_solved(), "the solve undoes the scramble");
            assert!(times.windows(2).all(|w| w[0] <= w[1]), "in order");
            let quickest = times
                .windows(2)
                .map(|w| w[1] - w[0])
                .fold(f64::INFINITY, f64::min);
            assert!(
                quickest >= 0.8 / 12.0 - 1e-9,
                "no faster than 12 turns a second: {quickest}"
            );
            let (from, to) = solve.inspection;
            assert!(to - from >= 5.0);
            assert!(
                !times.iter().any(|t| *t > from && *t < to),
                "no turn during inspection"
            );
            let last = *times.last().unwrap();
            assert!(last < solve.held_until && solve.held_until < solve.ends_at);
            // A solve of a 20-move scramble takes seconds, not minutes.
            assert!(last - to > 2.0 && last - to < 30.0, "{}", last - to);
        }
    }
}
