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
//! Fitted as Gunther does: with C(N) = X(N)/X(1), the deviation from linear
//! N/C(N) − 1 = σ·(N − 1) + κ·N·(N − 1) is linear in σ and κ, so least squares
//! (through the origin) gives both; λ = X(1).

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
        let lambda = points.iter().find(|(n, _)| *n == 1.0)?.1;
        if lambda <= 0.0 || points.len() < 3 {
            return None;
        }
        // Normal equations of y = σ·a + κ·b, no intercept.
        let (mut aa, mut ab, mut bb, mut ay, mut by) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for &(n, x) in points.iter().filter(|(n, _)| *n > 1.0) {
            let y = n / (x / lambda) - 1.0;
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
        let mut sigma = (ay * bb - by * ab) / det;
        let mut kappa = (aa * by - ab * ay) / det;
        // Negative coefficients have no meaning (better than linear is noise):
        // clamp, and refit the other alone.
        if kappa < 0.0 {
            kappa = 0.0;
            sigma = (ay / aa).max(0.0);
        } else if sigma < 0.0 {
            sigma = 0.0;
            kappa = (by / bb).max(0.0);
        }
        let mut fit = Self {
            lambda,
            sigma,
            kappa,
            r2: 0.0,
        };
        let mean = points.iter().map(|p| p.1).sum::<f64>() / points.len() as f64;
        let total: f64 = points.iter().map(|p| (p.1 - mean).powi(2)).sum();
        let residual: f64 = points.iter().map(|p| (p.1 - fit.at(p.0)).powi(2)).sum();
        fit.r2 = if total > 0.0 {
            1.0 - residual / total
        } else {
            1.0
        };
        Some(fit)
    }

    /// The fitted throughput at `n` clones.
    pub fn at(&self, n: f64) -> f64 {
        self.lambda * n / (1.0 + self.sigma * (n - 1.0) + self.kappa * n * (n - 1.0))
    }

    /// Where throughput peaks (`None`: it never does, κ = 0).
    pub fn peak(&self) -> Option<f64> {
        (self.kappa > 0.0).then(|| ((1.0 - self.sigma) / self.kappa).sqrt())
    }
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
        assert!((fit.sigma - 0.05).abs() < 1e-9, "{fit:?}");
        assert!((fit.kappa - 0.002).abs() < 1e-9, "{fit:?}");
        assert!((fit.r2 - 1.0).abs() < 1e-9);
        let peak = fit.peak().unwrap();
        assert!((peak - (0.95f64 / 0.002).sqrt()).abs() < 1e-6);
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
    fn linear_scaling_is_sigma_and_kappa_zero() {
        let points = curve(800.0, 0.0, 0.0, &[1.0, 2.0, 4.0]);
        let fit = Fit::of(&points).unwrap();
        assert!(fit.sigma.abs() < 1e-9 && fit.kappa.abs() < 1e-9);
        assert_eq!(fit.peak(), None);
        assert!((efficiency(800.0, 4.0, 3200.0) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn needs_one_clone_and_two_more_points() {
        assert_eq!(Fit::of(&[(1.0, 10.0), (2.0, 19.0)]), None);
        assert_eq!(Fit::of(&[(2.0, 10.0), (4.0, 19.0), (8.0, 30.0)]), None);
    }
}
