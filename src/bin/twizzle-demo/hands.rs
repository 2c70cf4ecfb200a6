//! The cube's orientation as hands hold it: a slow sway about an upright
//! pose, turned further about during inspection, as unit quaternions.

use std::f64::consts::TAU;

use rand::Rng;

/// How long the cube takes to turn from the sway of solving to that of
/// inspection and back, in seconds.
const RAMP: f64 = 0.8;

/// A unit quaternion `(x, y, z, w)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quaternion {
    /// The x component.
    pub x: f64,
    /// The y component.
    pub y: f64,
    /// The z component.
    pub z: f64,
    /// The scalar component.
    pub w: f64,
}

impl Quaternion {
    /// The rotation by `angle` radians about the unit `axis`.
    fn about(axis: [f64; 3], angle: f64) -> Quaternion {
        let (s, c) = (angle / 2.0).sin_cos();
        Quaternion {
            x: axis[0] * s,
            y: axis[1] * s,
            z: axis[2] * s,
            w: c,
        }
    }

    /// `self` then `other`, as a product `self * other`.
    fn then(self, o: Quaternion) -> Quaternion {
        Quaternion {
            w: self.w * o.w - self.x * o.x - self.y * o.y - self.z * o.z,
            x: self.w * o.x + self.x * o.w + self.y * o.z - self.z * o.y,
            y: self.w * o.y - self.x * o.z + self.y * o.w + self.z * o.x,
            z: self.w * o.z + self.x * o.y - self.y * o.x + self.z * o.w,
        }
    }

    /// Each component to 4 decimals, as the client sends them (the length
    /// stays within 1e-4 of 1).
    pub fn rounded(self) -> Quaternion {
        // Adding 0 turns a -0 into 0, which reads better on the wire.
        let r = |v: f64| (v * 10_000.0).round() / 10_000.0 + 0.0;
        Quaternion {
            x: r(self.x),
            y: r(self.y),
            z: r(self.z),
            w: r(self.w),
        }
    }
}

/// One slow wave: amplitude in radians, period in seconds, and phase.
#[derive(Debug, Clone, Copy)]
struct Wave {
    amplitude: f64,
    period: f64,
    phase: f64,
}

impl Wave {
    fn at(self, t: f64) -> f64 {
        self.amplitude * (TAU * t / self.period + self.phase).sin()
    }
}

/// The hands of one solve: its sway, and when inspection is.
#[derive(Debug, Clone)]
pub struct Hands {
    /// About the vertical: the cube turned left and right.
    yaw: [Wave; 2],
    /// About the left-right axis: tipped toward and away from the solver.
    pitch: [Wave; 2],
    /// About the front-back axis.
    roll: Wave,
    /// Inspection, in seconds from the start of the solve.
    inspection: (f64, f64),
}

impl Hands {
    /// Hands with a sway of their own, inspecting during `inspection`.
    pub fn new(rng: &mut impl Rng, inspection: (f64, f64)) -> Hands {
        let mut wave = |amplitude: f64, period: f64| Wave {
            amplitude: amplitude * rng.random_range(0.7..1.3),
            period: period * rng.random_range(0.8..1.25),
            phase: rng.random_range(0.0..TAU),
        };
        Hands {
            yaw: [wave(0.25, 6.5), wave(0.06, 1.7)],
            pitch: [wave(0.15, 4.9), wave(0.03, 1.3)],
            roll: wave(0.08, 5.7),
            inspection,
        }
    }

    /// How far into inspection the hands are at `t`: 0 while solving, 1
    /// while inspecting, eased in between.
    fn inspecting(&self, t: f64) -> f64 {
        let (from, to) = self.inspection;
        let ease = |x: f64| {
            let x = x.clamp(0.0, 1.0);
            x * x * (3.0 - 2.0 * x)
        };
        ease((t - from) / RAMP).min(ease((to - t) / RAMP))
    }

    /// The orientation at `t` seconds from the start of the solve.
    pub fn at(&self, t: f64) -> Quaternion {
        // Inspecting, the solver turns the cube to look at its sides and
        // tips it to see the bottom.
        let inspecting = self.inspecting(t);
        let yaw = self.yaw[0].at(t) * (1.0 + 3.0 * inspecting) + self.yaw[1].at(t);
        let pitch = self.pitch[0].at(t) * (1.0 + 2.0 * inspecting) + self.pitch[1].at(t);
        let roll = self.roll.at(t);
        Quaternion::about([0.0, 1.0, 0.0], yaw)
            .then(Quaternion::about([1.0, 0.0, 0.0], pitch))
            .then(Quaternion::about([0.0, 0.0, 1.0], roll))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    impl Quaternion {
        fn norm(self) -> f64 {
            (self.x * self.x + self.y * self.y + self.z * self.z + self.w * self.w).sqrt()
        }
    }

    /// The angle between two unit quaternions' rotations, in radians.
    fn angle(a: Quaternion, b: Quaternion) -> f64 {
        let dot = (a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w)
            .abs()
            .min(1.0);
        2.0 * dot.acos()
    }

    #[test]
    fn orientations_are_unit_and_move_smoothly() {
        let mut rng = StdRng::seed_from_u64(3);
        let hands = Hands::new(&mut rng, (5.0, 12.0));
        let mut last = hands.at(0.0);
        let mut widest_solving: f64 = 0.0;
        let mut widest_inspecting: f64 = 0.0;
        let upright = Quaternion::about([0.0, 1.0, 0.0], 0.0);
        for step in 1..=1000 {
            let t = f64::from(step) * 0.04;
            let q = hands.at(t);
            assert!((q.norm() - 1.0).abs() < 1e-9, "unit at {t}");
            assert!(
                (q.rounded().norm() - 1.0).abs() < 1e-3,
                "rounded, still unit"
            );
            // At 25 samples a second, no jump: under 4° between samples.
            assert!(angle(q, last) < 4f64.to_radians(), "smooth at {t}");
            last = q;
            let off = angle(q, upright);
            if (6.0..11.0).contains(&t) {
                widest_inspecting = widest_inspecting.max(off);
            } else if !(4.0..13.0).contains(&t) {
                widest_solving = widest_solving.max(off);
            }
        }
        assert!(widest_solving > 0.05, "the cube sways: {widest_solving}");
        assert!(widest_solving < 1.0, "but stays upright: {widest_solving}");
        assert!(
            widest_inspecting > widest_solving,
            "and is turned about inspecting"
        );
    }

    #[test]
    fn rounding_keeps_four_decimals() {
        let q = Quaternion {
            x: 0.123_456,
            y: -0.000_04,
            z: 0.5,
            w: 0.857_1,
        }
        .rounded();
        assert_eq!((q.x, q.y, q.z, q.w), (0.1235, 0.0, 0.5, 0.8571));
        assert!(q.y.is_sign_positive(), "no -0 on the wire");
    }
}
