//! Gunther's Universal Scalability Law: throughput at N clones is
//!
//! ```text
//! X(N) = λ·N / (1 + σ·(N − 1) + κ·N·(N − 1))
//! ```
//!
//! λ is one clone's throughput, σ the share of work that is serialised
//! (contention: a lock, one database, one load balancer everybody queues for) and
//! κ the cost of keeping N parts coherent with each other (crosstalk: every clone
//! talking to every other, cache invalidations fanned out). σ = κ = 0 is linear
//! scaling; κ > 0 makes the curve peak at N* = √((1 − σ)/κ) and fall after it.
//!
//! Fitted as the USL's own tools fit it (Gunther's book, the R package `usl`): by
//! least squares on the throughputs themselves, λ, σ and κ all free (σ, κ ≥ 0).
//! λ is then the one-clone throughput the whole curve says, not the one-clone point
//! alone, whose noise would otherwise bend every other point of the curve. Gunther's
//! linearisation — with C(N) = X(N)/X(1), N/C(N) − 1 = σ·(N − 1) + κ·N·(N − 1) —
//! gives the starting point.

use serde::Serialize;

#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct Fit {
    pub lambda: f64,
    pub sigma: f64,
    pub kappa: f64,
    /// How well the fitted curve explains the measured throughputs (1 = exactly).
    pub r2: f64,
}

impl Fit {
    /// Fits `(clones, throughput)` points; needs N = 1 and at least two other Ns.
    pub fn of(points: &[(f64, f64)]) -> Option<Self> {
        let x1 = points.iter().find(|(n, _)| *n == 1.0)?.1;
        if x1 <= 0.0 || points.len() < 3 {
            return None;
        }
        let start = linearised(points, x1)?;
        let (sigma, kappa) = minimise(|s, k| residual(points, s, k).1, start);
        let (lambda, residual) = residual(points, sigma, kappa);
        let mean = points.iter().map(|p| p.1).sum::<f64>() / points.len() as f64;
        let total: f64 = points.iter().map(|p| (p.1 - mean).powi(2)).sum();
        Some(Self {
            lambda,
            sigma,
            kappa,
            r2: if total > 0.0 {
                1.0 - residual / total
            } else {
                1.0
            },
        })
    }

    /// The fitted throughput at `n` clones.
    pub fn at(&self, n: f64) -> f64 {
        self.lambda * shape(n, self.sigma, self.kappa)
    }

    /// Where throughput peaks (`None`: it never does, κ = 0).
    pub fn peak(&self) -> Option<f64> {
        (self.kappa > 0.0).then(|| ((1.0 - self.sigma) / self.kappa).sqrt())
    }
}

/// The USL's shape at `n` for λ = 1.
fn shape(n: f64, sigma: f64, kappa: f64) -> f64 {
    n / (1.0 + sigma * (n - 1.0) + kappa * n * (n - 1.0))
}

/// For given σ and κ the best λ is a linear least-squares answer; that λ and the
/// sum of squared residuals it leaves.
fn residual(points: &[(f64, f64)], sigma: f64, kappa: f64) -> (f64, f64) {
    let (sigma, kappa) = (sigma.max(0.0), kappa.max(0.0));
    let (mut xg, mut gg) = (0.0, 0.0);
    for &(n, x) in points {
        let g = shape(n, sigma, kappa);
        xg += x * g;
        gg += g * g;
    }
    let lambda = xg / gg;
    let sum = points
        .iter()
        .map(|&(n, x)| (x - lambda * shape(n, sigma, kappa)).powi(2))
        .sum();
    (lambda, sum)
}

/// Gunther's linearised fit (least squares through the origin of
/// N/C(N) − 1 = σ·(N − 1) + κ·N·(N − 1)), clamped to σ, κ ≥ 0.
fn linearised(points: &[(f64, f64)], x1: f64) -> Option<(f64, f64)> {
    let (mut aa, mut ab, mut bb, mut ay, mut by) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for &(n, x) in points.iter().filter(|(n, _)| *n > 1.0) {
        let y = n / (x / x1) - 1.0;
        let (a, b) = (n - 1.0, n * (n - 1.0));
        aa += a * a;
        ab += a * b;
        bb += b * b;
        ay += a * y;
        by += b * y;
    }
    let det = aa * bb - ab * ab;
    if det.abs() < f64::EPSILON {
        return None;
    }
    let sigma = (ay * bb - by * ab) / det;
    let kappa = (aa * by - ab * ay) / det;
    Some(if kappa < 0.0 {
        ((ay / aa).max(0.0), 0.0)
    } else if sigma < 0.0 {
        (0.0, (by / bb).max(0.0))
    } else {
        (sigma, kappa)
    })
}

/// Nelder–Mead on (σ, κ) ≥ 0 (negative values are evaluated as 0 and clamped at the
/// end); a two-parameter problem, so a few hundred evaluations settle it.
fn minimise(f: impl Fn(f64, f64) -> f64, start: (f64, f64)) -> (f64, f64) {
    let at = |p: [f64; 2]| f(p[0].max(0.0), p[1].max(0.0));
    let step = |v: f64, min: f64| if v.abs() > min { v * 0.5 } else { min };
    let s = [start.0, start.1];
    let mut simplex = [
        s,
        [s[0] + step(s[0], 0.01), s[1]],
        [s[0], s[1] + step(s[1], 0.001)],
    ];
    let mut values = simplex.map(at);
    for _ in 0..2000 {
        let mut order = [0, 1, 2];
        order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
        let [best, middle, worst] = order;
        if (values[worst] - values[best]).abs() <= 1e-15 * values[best].abs().max(1e-300) {
            break;
        }
        let centre = [
            (simplex[best][0] + simplex[middle][0]) / 2.0,
            (simplex[best][1] + simplex[middle][1]) / 2.0,
        ];
        let towards = |t: f64| {
            [
                centre[0] + t * (simplex[worst][0] - centre[0]),
                centre[1] + t * (simplex[worst][1] - centre[1]),
            ]
        };
        let reflected = towards(-1.0);
        let r = at(reflected);
        if r < values[best] {
            let expanded = towards(-2.0);
            let e = at(expanded);
            (simplex[worst], values[worst]) = if e < r { (expanded, e) } else { (reflected, r) };
        } else if r < values[middle] {
            (simplex[worst], values[worst]) = (reflected, r);
        } else {
            let contracted = towards(if r < values[worst] { -0.5 } else { 0.5 });
            let c = at(contracted);
            if c < values[worst].min(r) {
                (simplex[worst], values[worst]) = (contracted, c);
            } else {
                // Shrink towards the best vertex.
                for i in [middle, worst] {
                    simplex[i] = [
                        (simplex[i][0] + simplex[best][0]) / 2.0,
                        (simplex[i][1] + simplex[best][1]) / 2.0,
                    ];
                    values[i] = at(simplex[i]);
                }
            }
        }
    }
    let best = (0..3)
        .min_by(|&a, &b| values[a].total_cmp(&values[b]))
        .expect("three vertices");
    (simplex[best][0].max(0.0), simplex[best][1].max(0.0))
}

/// Scaling efficiency at `n`: X(N) / (N · X(1)); 1 is linear.
pub fn efficiency(x1: f64, n: f64, xn: f64) -> f64 {
    xn / (n * x1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curve(lambda: f64, sigma: f64, kappa: f64, ns: &[f64]) -> Vec<(f64, f64)> {
        let truth = Fit {
            lambda,
            sigma,
            kappa,
            r2: 1.0,
        };
        ns.iter().map(|&n| (n, truth.at(n))).collect()
    }

    #[test]
    fn recovers_known_sigma_and_kappa() {
        let points = curve(1000.0, 0.05, 0.002, &[1.0, 2.0, 4.0, 8.0, 16.0]);
        let fit = Fit::of(&points).unwrap();
        assert!((fit.sigma - 0.05).abs() < 1e-6, "{fit:?}");
        assert!((fit.kappa - 0.002).abs() < 1e-7, "{fit:?}");
        assert!((fit.lambda - 1000.0).abs() < 1e-3, "{fit:?}");
        assert!((fit.r2 - 1.0).abs() < 1e-9);
        let peak = fit.peak().unwrap();
        assert!((peak - (0.95f64 / 0.002).sqrt()).abs() < 1e-2);
    }

    #[test]
    fn recovers_them_through_noise_and_says_how_well() {
        // ±2 % noise, alternating, on 1..8 clones.
        let mut points = curve(500.0, 0.1, 0.01, &[1.0, 2.0, 3.0, 4.0, 6.0, 8.0]);
        for (i, p) in points.iter_mut().enumerate().skip(1) {
            p.1 *= if i % 2 == 0 { 1.02 } else { 0.98 };
        }
        let fit = Fit::of(&points).unwrap();
        assert!((fit.sigma - 0.1).abs() < 0.03, "{fit:?}");
        assert!((fit.kappa - 0.01).abs() < 0.005, "{fit:?}");
        assert!(fit.r2 > 0.95 && fit.r2 < 1.0, "{fit:?}");
    }

    #[test]
    fn a_noisy_one_clone_point_does_not_bend_the_curve() {
        // The one-clone point 10 % low, the rest exact: the curve through all the
        // points is still the true one, and λ is the true one-clone throughput.
        let mut points = curve(400.0, 0.02, 0.004, &[1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0]);
        points[0].1 *= 0.9;
        let fit = Fit::of(&points).unwrap();
        assert!((fit.lambda - 400.0).abs() < 10.0, "{fit:?}");
        assert!((fit.sigma - 0.02).abs() < 0.01, "{fit:?}");
        assert!((fit.kappa - 0.004).abs() < 0.001, "{fit:?}");
        assert!(fit.r2 > 0.99, "{fit:?}");
        // Gunther's linearisation, which takes X(1) as exact, explains the points less well.
        let (sigma, kappa) = linearised(&points, points[0].1).unwrap();
        assert!(residual(&points, sigma, kappa).1 > residual(&points, fit.sigma, fit.kappa).1);
    }

    #[test]
    fn linear_scaling_is_sigma_and_kappa_zero() {
        let points = curve(800.0, 0.0, 0.0, &[1.0, 2.0, 4.0]);
        let fit = Fit::of(&points).unwrap();
        assert!(fit.sigma.abs() < 1e-9 && fit.kappa.abs() < 1e-9, "{fit:?}");
        assert_eq!(fit.peak(), None);
        assert!((efficiency(800.0, 4.0, 3200.0) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn needs_one_clone_and_two_more_points() {
        assert_eq!(Fit::of(&[(1.0, 10.0), (2.0, 19.0)]), None);
        assert_eq!(Fit::of(&[(2.0, 10.0), (4.0, 19.0), (8.0, 30.0)]), None);
    }
}
