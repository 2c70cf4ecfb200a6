//! A 3x3x3 cube under face turns, and its state in the "Twizzle binary"
//! form the browser client sends as a move event's `binaryState`.
//!
//! For the demo sender (`twizzle-demo`), which streams a solve the way the
//! client streams a smart cube, and for the tests that check what it sends.
//! The server itself never interprets a move.
//!
//! # The client's move event
//!
//! The twizzle.net/stream client sends, for every move of the cube,
//! `{"latestMove": M, "timeStamp": T, "binaryState": S}` where:
//!
//! - `M` is the move as cubing.js's `BlockMove` serializes to JSON:
//!   `{"type": "blockMove", "family": "R", "amount": -1}` for `R'` (a smart
//!   cube reports quarter turns, so `amount` is 1 or -1; layers are set only
//!   for wide and slice moves, which a face turn is not);
//! - `T` is a time in milliseconds, a whole number (the client floors it);
//! - `S` is the cube's state after the move, encoded with cubing.js's
//!   `reid3x3x3ToTwizzleBinary` (11 bytes) and written as lowercase hex
//!   bytes separated by spaces (`bufferToSpacedHex`): the solved cube is
//!   `00 00 00 00 00 00 00 00 00 10 00`.
//!
//! # The binary form
//!
//! Pieces are numbered in Reid's order, the order of cubing.js's 3x3x3
//! puzzle: edges `UF UR UB UL DF DR DB DL FR FL BR BL`, corners
//! `UFR URB UBL ULF DRF DFL DLB DBR`, centers `U L F R B D`. A state says,
//! for each position, which piece is there and how it is twisted: an edge or
//! corner's orientation is the index, in the piece's own name, of its sticker
//! on the position's first face (its U or D face, or F or B for the middle
//! edges); a center's is its number of clockwise quarter turns. The 88 bits
//! are, most significant first: the edge permutation's lexicographic index
//! (29 bits), the edge orientations as a base-2 number (12), the corner
//! permutation's index (16), the corner orientations in base 3 (13), the
//! puzzle's orientation (3 bits for the center on top, 2 for the one on the
//! left), 1 bit that center orientation is included, and the center
//! orientations in base 4 (12). States are normalized to the puzzle's
//! orientation first; face turns never move the centers, so here the
//! orientation is always 0, 0.
//!
//! This is written from that description of the format, not from cubing.js's
//! code; the unit tests check it against the vectors of cubing.js's own
//! tests (the solved cube, superflips, a two-swap, a center turned 180°,
//! twisted corners, and whole-cube rotations).

use std::fmt;

use serde_json::{json, Value};

/// A face of the cube, in Reid's center order (the order of the bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Face {
    /// Up.
    U,
    /// Left.
    L,
    /// Front.
    F,
    /// Right.
    R,
    /// Back.
    B,
    /// Down.
    D,
}

impl Face {
    /// Every face, in center order.
    pub const ALL: [Face; 6] = [Face::U, Face::L, Face::F, Face::R, Face::B, Face::D];

    /// Its place in the center order.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Its letter in move notation.
    pub fn letter(self) -> char {
        ['U', 'L', 'F', 'R', 'B', 'D'][self.index()]
    }

    /// The face of this letter.
    pub fn from_letter(letter: &str) -> Option<Face> {
        Face::ALL
            .into_iter()
            .find(|face| letter.len() == 1 && letter.starts_with(face.letter()))
    }

    /// The face across the cube.
    pub fn opposite(self) -> Face {
        match self {
            Face::U => Face::D,
            Face::D => Face::U,
            Face::L => Face::R,
            Face::R => Face::L,
            Face::F => Face::B,
            Face::B => Face::F,
        }
    }

    /// Its outward direction, with x to the right, y up and z to the front.
    fn normal(self) -> [i8; 3] {
        match self {
            Face::U => [0, 1, 0],
            Face::D => [0, -1, 0],
            Face::R => [1, 0, 0],
            Face::L => [-1, 0, 0],
            Face::F => [0, 0, 1],
            Face::B => [0, 0, -1],
        }
    }

    fn from_normal(v: [i8; 3]) -> Face {
        Face::ALL
            .into_iter()
            .find(|face| face.normal() == v)
            .expect("a face direction")
    }

    /// Where a clockwise quarter turn of `turned` (as seen from outside it)
    /// takes a sticker facing `self`: a rotation of -90° about `turned`'s
    /// normal n, which takes v to n(n·v) - n×v.
    pub fn after_turn(self, turned: Face) -> Face {
        let n = turned.normal();
        let v = self.normal();
        let dot = n[0] * v[0] + n[1] * v[1] + n[2] * v[2];
        let cross = [
            n[1] * v[2] - n[2] * v[1],
            n[2] * v[0] - n[0] * v[2],
            n[0] * v[1] - n[1] * v[0],
        ];
        Face::from_normal([
            n[0] * dot - cross[0],
            n[1] * dot - cross[1],
            n[2] * dot - cross[2],
        ])
    }
}

/// The edge positions in Reid's order, each by its faces, first face first.
const EDGES: [[Face; 2]; 12] = {
    use Face::*;
    [
        [U, F],
        [U, R],
        [U, B],
        [U, L],
        [D, F],
        [D, R],
        [D, B],
        [D, L],
        [F, R],
        [F, L],
        [B, R],
        [B, L],
    ]
};

/// The corner positions in Reid's order, faces clockwise from U or D.
const CORNERS: [[Face; 3]; 8] = {
    use Face::*;
    [
        [U, F, R],
        [U, R, B],
        [U, B, L],
        [U, L, F],
        [D, R, F],
        [D, F, L],
        [D, L, B],
        [D, B, R],
    ]
};

/// A turn of one face: `amount` clockwise quarter turns, negative for
/// counterclockwise (`R` is 1, `R'` is -1, `R2` is 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Move {
    /// The face turned.
    pub face: Face,
    /// Clockwise quarter turns; negative for counterclockwise.
    pub amount: i8,
}

impl Move {
    /// `amount` quarter turns of `face`.
    pub fn new(face: Face, amount: i8) -> Move {
        Move { face, amount }
    }

    /// The move that undoes this one.
    pub fn inverse(self) -> Move {
        Move::new(self.face, -self.amount)
    }

    /// The move as the client sends it in `latestMove`: cubing.js's
    /// `BlockMove` in JSON.
    pub fn to_json(self) -> Value {
        json!({"type": "blockMove", "family": self.face.letter().to_string(), "amount": self.amount})
    }

    /// A face turn from a `latestMove` as the client sends it; `None` for
    /// anything else (another kind of move, a wide or slice move).
    pub fn from_json(value: &Value) -> Option<Move> {
        if value.get("type")? != "blockMove"
            || value.get("innerLayer").is_some()
            || value.get("outerLayer").is_some()
        {
            return None;
        }
        let face = Face::from_letter(value.get("family")?.as_str()?)?;
        let amount = i8::try_from(value.get("amount")?.as_i64()?).ok()?;
        Some(Move::new(face, amount))
    }
}

impl fmt::Display for Move {
    /// Move notation: `R`, `R'`, `R2`, `R2'`, `R3`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.face.letter())?;
        let turns = self.amount.unsigned_abs();
        if turns != 1 {
            write!(f, "{turns}")?;
        }
        if self.amount < 0 {
            f.write_str("'")?;
        }
        Ok(())
    }
}

/// Which piece is at a position, and how it is twisted there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    piece: u8,
    twist: u8,
}

/// A 3x3x3 cube whose centers stay in place: the state face turns reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cube {
    edges: [Slot; 12],
    corners: [Slot; 8],
    /// Clockwise quarter turns of each center, in center order, mod 4.
    centers: [u8; 6],
}

impl Default for Cube {
    fn default() -> Cube {
        Cube::solved()
    }
}

/// Where each position of an orbit takes its piece from under one
/// clockwise quarter turn, and the twist it adds.
fn quarter_turn<const N: usize, const K: usize>(
    positions: &[[Face; K]; N],
    face: Face,
) -> [(usize, u8); N] {
    let mut table = [(0, 0); N];
    for (to, target) in positions.iter().enumerate() {
        table[to] = (to, 0);
        if !target.contains(&face) {
            continue;
        }
        for (from, source) in positions.iter().enumerate() {
            let moved = source.map(|f| f.after_turn(face));
            if moved.iter().all(|f| target.contains(f)) {
                let twist = moved
                    .iter()
                    .position(|f| *f == target[0])
                    .expect("the moved piece covers the position");
                table[to] = (from, twist as u8);
            }
        }
    }
    table
}

/// `slots` after a turn given by its `table`, with `twists` orientations.
fn permute<const N: usize>(slots: &[Slot; N], table: &[(usize, u8); N], twists: u8) -> [Slot; N] {
    std::array::from_fn(|to| {
        let (from, twist) = table[to];
        Slot {
            piece: slots[from].piece,
            twist: (slots[from].twist + twist) % twists,
        }
    })
}

impl Cube {
    /// The solved cube.
    pub fn solved() -> Cube {
        Cube {
            edges: std::array::from_fn(|i| Slot {
                piece: i as u8,
                twist: 0,
            }),
            corners: std::array::from_fn(|i| Slot {
                piece: i as u8,
                twist: 0,
            }),
            centers: [0; 6],
        }
    }

    /// Whether every piece is home and untwisted, centers included.
    pub fn is_solved(&self) -> bool {
        *self == Cube::solved()
    }

    /// Applies `m`.
    pub fn apply(&mut self, m: Move) {
        let quarters = m.amount.rem_euclid(4);
        let edges = quarter_turn(&EDGES, m.face);
        let corners = quarter_turn(&CORNERS, m.face);
        for _ in 0..quarters {
            self.edges = permute(&self.edges, &edges, 2);
            self.corners = permute(&self.corners, &corners, 3);
            let center = &mut self.centers[m.face.index()];
            *center = (*center + 1) % 4;
        }
    }

    /// The parts of its binary form.
    pub fn components(&self) -> Components {
        Components {
            ep_lex: lex_index(&self.edges.map(|s| s.piece)),
            eo_mask: base(2, self.edges.iter().map(|s| s.twist)),
            cp_lex: lex_index(&self.corners.map(|s| s.piece)),
            co_mask: base(3, self.corners.iter().map(|s| s.twist)),
            po_idx_u: 0,
            po_idx_l: 0,
            mo_support: true,
            mo_mask: base(4, self.centers.iter().copied()),
        }
    }

    /// Its binary form as the client sends it (`binaryState`): 11 bytes in
    /// lowercase hex, separated by spaces.
    pub fn binary_state(&self) -> String {
        spaced_hex(&self.components().pack())
    }
}

/// The lexicographic index of a permutation among all permutations of its
/// length (the identity is 0).
fn lex_index(permutation: &[u8]) -> u32 {
    let n = permutation.len();
    let mut index = 0u32;
    for i in 0..n.saturating_sub(1) {
        let smaller_after = permutation[i + 1..]
            .iter()
            .filter(|&&p| p < permutation[i])
            .count();
        index = index * (n - i) as u32 + smaller_after as u32;
    }
    index
}

/// `digits` as a number in `radix`, the first digit the most significant.
fn base(radix: u32, digits: impl Iterator<Item = u8>) -> u32 {
    digits.fold(0, |acc, digit| acc * radix + u32::from(digit))
}

/// The parts of the binary form, in the order of its bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Components {
    /// The edge permutation's lexicographic index (29 bits).
    pub ep_lex: u32,
    /// The edge orientations, base 2 (12 bits).
    pub eo_mask: u32,
    /// The corner permutation's lexicographic index (16 bits).
    pub cp_lex: u32,
    /// The corner orientations, base 3 (13 bits).
    pub co_mask: u32,
    /// Which center is on top, in center order (3 bits).
    pub po_idx_u: u32,
    /// Which center is on the left, among the four that can be (2 bits).
    pub po_idx_l: u32,
    /// Whether center orientation is included (1 bit).
    pub mo_support: bool,
    /// The center orientations, base 4 (12 bits).
    pub mo_mask: u32,
}

impl Components {
    /// The 11 bytes: every part in its bit length, most significant first.
    pub fn pack(&self) -> [u8; 11] {
        let parts = [
            (self.ep_lex, 29),
            (self.eo_mask, 12),
            (self.cp_lex, 16),
            (self.co_mask, 13),
            (self.po_idx_u, 3),
            (self.po_idx_l, 2),
            (u32::from(self.mo_support), 1),
            (self.mo_mask, 12),
        ];
        let bits = parts.iter().fold(0u128, |acc, &(value, width)| {
            (acc << width) | u128::from(value & ((1 << width) - 1))
        });
        let mut bytes = [0; 11];
        bytes.copy_from_slice(&bits.to_be_bytes()[16 - 11..]);
        bytes
    }
}

/// Bytes as lowercase hex pairs separated by spaces, as cubing.js writes them.
pub fn spaced_hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    //! The vectors are those of cubing.js's tests of its binary 3x3x3 form
    //! (`src/cubing/protocol/binary/binary3x3x3.test.ts`). Some of their
    //! algorithms use slice moves and whole-cube rotations, which the cube
    //! here has not: they are played as face turns on a cube that stays
    //! put while the notation's frame turns, which is the same state once
    //! normalized to the puzzle's orientation, as the binary form is.

    use super::*;

    /// One step of an algorithm, before any repetition.
    #[derive(Debug, Clone)]
    enum Step {
        Face(Face, i8),
        /// `M`, `E` or `S`, or a rotation `x`, `y` or `z`, with its amount.
        Other(char, i8),
        Group(Vec<Step>, i8),
        Commutator(Vec<Step>, Vec<Step>),
    }

    fn invert(steps: &[Step]) -> Vec<Step> {
        steps
            .iter()
            .rev()
            .map(|step| match step {
                Step::Face(face, n) => Step::Face(*face, -n),
                Step::Other(c, n) => Step::Other(*c, -n),
                Step::Group(steps, n) => Step::Group(steps.clone(), -n),
                Step::Commutator(a, b) => Step::Commutator(b.clone(), a.clone()),
            })
            .collect()
    }

    /// Parses an algorithm in the notation the vectors use.
    fn parse(text: &str) -> Vec<Step> {
        let chars: Vec<char> = text.chars().collect();
        let mut at = 0;
        let steps = parse_sequence(&chars, &mut at);
        assert_eq!(at, chars.len(), "unparsed rest of {text:?}");
        steps
    }

    fn parse_sequence(chars: &[char], at: &mut usize) -> Vec<Step> {
        let mut steps = Vec::new();
        while *at < chars.len() {
            let c = chars[*at];
            match c {
                ' ' => *at += 1,
                ')' | ']' | ',' => break,
                '(' => {
                    *at += 1;
                    let inner = parse_sequence(chars, at);
                    assert_eq!(chars[*at], ')');
                    *at += 1;
                    steps.push(Step::Group(inner, parse_amount(chars, at)));
                }
                '[' => {
                    *at += 1;
                    let a = parse_sequence(chars, at);
                    assert_eq!(chars[*at], ',');
                    *at += 1;
                    let b = parse_sequence(chars, at);
                    assert_eq!(chars[*at], ']');
                    *at += 1;
                    steps.push(Step::Commutator(a, b));
                }
                _ => {
                    *at += 1;
                    let amount = parse_amount(chars, at);
                    steps.push(match Face::from_letter(&c.to_string()) {
                        Some(face) => Step::Face(face, amount),
                        None => {
                            assert!("MESxyz".contains(c), "unknown move {c}");
                            Step::Other(c, amount)
                        }
                    });
                }
            }
        }
        steps
    }

    fn parse_amount(chars: &[char], at: &mut usize) -> i8 {
        let mut amount = 0i8;
        let mut digits = false;
        while let Some(d) = chars.get(*at).and_then(|c| c.to_digit(10)) {
            amount = amount * 10 + d as i8;
            digits = true;
            *at += 1;
        }
        if !digits {
            amount = 1;
        }
        if chars.get(*at) == Some(&'\'') {
            *at += 1;
            amount = -amount;
        }
        amount
    }

    /// A cube that stays put, and which of its faces each notation face
    /// names now (rotations turn the frame, not the cube).
    struct Player {
        cube: Cube,
        frame: [Face; 6],
    }

    impl Player {
        fn new() -> Player {
            Player {
                cube: Cube::solved(),
                frame: Face::ALL,
            }
        }

        fn play(&mut self, steps: &[Step]) {
            for step in steps {
                match step {
                    Step::Face(face, n) => self.cube.apply(Move::new(self.frame[face.index()], *n)),
                    Step::Other(c, n) => {
                        for _ in 0..n.rem_euclid(4) {
                            self.quarter(*c);
                        }
                    }
                    Step::Group(inner, n) => {
                        let inner = if *n < 0 { invert(inner) } else { inner.clone() };
                        for _ in 0..n.unsigned_abs() {
                            self.play(&inner);
                        }
                    }
                    Step::Commutator(a, b) => {
                        self.play(a);
                        self.play(b);
                        self.play(&invert(a));
                        self.play(&invert(b));
                    }
                }
            }
        }

        /// One quarter of a slice move or rotation.
        fn quarter(&mut self, c: char) {
            use Face::*;
            // A slice turns the two faces beside it the other way and the
            // whole cube its way: M = R L' x', E = U D' y', S = F' B z.
            let (turns, rotation): (&[(Face, i8)], Face) = match c {
                'x' => (&[], R),
                'y' => (&[], U),
                'z' => (&[], F),
                'M' => (&[(R, 1), (L, -1)], L),
                'E' => (&[(U, 1), (D, -1)], D),
                'S' => (&[(F, -1), (B, 1)], F),
                _ => unreachable!("parsed"),
            };
            for &(face, n) in turns {
                self.cube.apply(Move::new(self.frame[face.index()], n));
            }
            // The rotation takes what faced f to where f faces after the turn.
            let before = self.frame;
            for face in Face::ALL {
                self.frame[face.after_turn(rotation).index()] = before[face.index()];
            }
        }

        /// The binary form, with the puzzle's orientation: the center on
        /// top, and the one on the left among those that are neither on
        /// top nor below.
        fn binary(&self) -> [u8; 11] {
            let mut components = self.cube.components();
            let up = self.frame[Face::U.index()].index();
            let down = self.frame[Face::D.index()].index();
            let left = self.frame[Face::L.index()].index();
            components.po_idx_u = up as u32;
            components.po_idx_l = (left - usize::from(up < left) - usize::from(down < left)) as u32;
            components.pack()
        }
    }

    fn binary_for(alg: &str) -> [u8; 11] {
        let mut player = Player::new();
        player.play(&parse(alg));
        player.binary()
    }

    #[test]
    fn the_solved_cube() {
        assert_eq!(binary_for(""), [0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0]);
        assert_eq!(
            Cube::solved().binary_state(),
            "00 00 00 00 00 00 00 00 00 10 00"
        );
        assert!(Cube::solved().is_solved());
    }

    #[test]
    fn cubing_js_vectors() {
        let vectors: [(&str, [u8; 11]); 5] = [
            // Superflip, centers unturned.
            (
                "((M' U')4 [U2, M' E2 M] x y)3",
                [0, 0, 0, 7, 255, 128, 0, 0, 0, 16, 0],
            ),
            // A simpler superflip, which turns centers.
            ("((M' U')4 x y)3", [0, 0, 0, 7, 255, 128, 0, 0, 0, 26, 170]),
            // The last two edges and the last two corners swapped.
            (
                "L2 F2 U' R2 U F2 L2 D2 L2 D2 L2 U B2 D B2 U'",
                [0, 0, 0, 8, 0, 0, 0, 128, 0, 16, 33],
            ),
            // The top center turned 180°.
            ("(R' U' R U')5", [0, 0, 0, 0, 0, 0, 0, 0, 0, 24, 0]),
            // Corners twisted.
            (
                "(L U L' U L U2 L' R' U' R U' R' U2' R z)4",
                [0, 0, 0, 0, 0, 0, 0, 66, 128, 16, 0],
            ),
        ];
        for (alg, expected) in vectors {
            assert_eq!(binary_for(alg), expected, "{alg}");
        }
    }

    #[test]
    fn whole_cube_rotations_set_the_puzzle_orientation_only() {
        assert_eq!(binary_for("z y"), [0, 0, 0, 0, 0, 0, 0, 0, 0, 176, 0]);
        assert_eq!(binary_for("x2 z'"), [0, 0, 0, 0, 0, 0, 0, 0, 1, 240, 0]);
    }

    #[test]
    fn a_move_and_its_inverse_cancel() {
        let scramble = parse("D' R2 D L2 B2 L2 D' R2 F' L2 R' F D F' D' L' U2 F' R");
        let moves: Vec<Move> = scramble
            .iter()
            .map(|step| match step {
                Step::Face(face, n) => Move::new(*face, *n),
                other => panic!("a face turn, not {other:?}"),
            })
            .collect();
        let mut cube = Cube::solved();
        for m in &moves {
            cube.apply(*m);
            assert!(!cube.is_solved() || m.amount % 4 == 0);
        }
        assert_ne!(cube.binary_state(), Cube::solved().binary_state());
        for m in moves.iter().rev() {
            cube.apply(m.inverse());
        }
        assert!(cube.is_solved());
        // Four quarter turns of a face are nothing, centers included.
        let mut cube = Cube::solved();
        for _ in 0..4 {
            cube.apply(Move::new(Face::R, 1));
        }
        assert!(cube.is_solved());
        cube.apply(Move::new(Face::R, 1));
        assert_eq!(cube.components().mo_mask, 1 << 4, "R's center turned once");
    }

    #[test]
    fn moves_in_json_and_notation() {
        let m = Move::new(Face::R, -1);
        assert_eq!(
            m.to_json(),
            json!({"type": "blockMove", "family": "R", "amount": -1})
        );
        assert_eq!(Move::from_json(&m.to_json()), Some(m));
        assert_eq!(m.to_string(), "R'");
        assert_eq!(Move::new(Face::U, 2).to_string(), "U2");
        assert_eq!(Move::new(Face::F, 1).to_string(), "F");
        for not_a_face_turn in [
            json!({"type": "blockMove", "family": "M", "amount": 1}),
            json!({"type": "blockMove", "family": "R", "amount": 1, "innerLayer": 2}),
            json!({"type": "pause"}),
            json!("R"),
        ] {
            assert_eq!(Move::from_json(&not_a_face_turn), None, "{not_a_face_turn}");
        }
    }

    #[test]
    fn spaced_hex_is_lowercase_pairs() {
        assert_eq!(spaced_hex(&[0, 0, 32, 255, 250, 170]), "00 00 20 ff fa aa");
    }
}
