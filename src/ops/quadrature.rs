//! Integration rules for integrated gradients, exactly as Captum builds them
//! (captum/attr/_utils/approximation_methods.py): Riemann alphas come from a float32
//! `torch.linspace`, step sizes are `1/n` (the trapezoid halves the first and last, so its
//! weights sum to (n−1)/n), and Gauss–Legendre maps numpy's `leggauss` nodes to [0, 1].

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    RiemannLeft,
    RiemannRight,
    RiemannMiddle,
    RiemannTrapezoid,
    GaussLegendre,
}

impl Rule {
    pub const NAMES: &'static [&'static str] = &[
        "riemann_left",
        "riemann_right",
        "riemann_middle",
        "riemann_trapezoid",
        "gausslegendre",
    ];

    pub fn parse(name: &str) -> Option<Rule> {
        Some(match name.to_lowercase().as_str() {
            "riemann_left" => Rule::RiemannLeft,
            "riemann_right" => Rule::RiemannRight,
            "riemann_middle" => Rule::RiemannMiddle,
            "riemann_trapezoid" => Rule::RiemannTrapezoid,
            "gausslegendre" | "gauss_legendre" => Rule::GaussLegendre,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Rule::RiemannLeft => "riemann_left",
            Rule::RiemannRight => "riemann_right",
            Rule::RiemannMiddle => "riemann_middle",
            Rule::RiemannTrapezoid => "riemann_trapezoid",
            Rule::GaussLegendre => "gausslegendre",
        }
    }

    /// The fewest steps the rule accepts (Captum asserts n > 1 for Riemann rules).
    pub fn min_steps(self) -> usize {
        if self == Rule::GaussLegendre { 1 } else { 2 }
    }

    /// (alphas, step sizes) for `n` steps, both as Captum hands them to float32 tensors.
    pub fn points(self, n: usize) -> (Vec<f32>, Vec<f32>) {
        match self {
            Rule::GaussLegendre => {
                let (x, w) = leggauss(n);
                (
                    x.iter().map(|x| (0.5 * (1.0 + x)) as f32).collect(),
                    w.iter().map(|w| (0.5 * w) as f32).collect(),
                )
            }
            _ => {
                let nf = n as f64;
                let mut steps = vec![1.0 / nf; n];
                let alphas = match self {
                    Rule::RiemannTrapezoid => {
                        steps[0] /= 2.0;
                        steps[n - 1] /= 2.0;
                        linspace_f32(0.0, 1.0, n)
                    }
                    Rule::RiemannLeft => linspace_f32(0.0, (1.0 - 1.0 / nf) as f32, n),
                    Rule::RiemannMiddle => linspace_f32((1.0 / (2.0 * nf)) as f32, (1.0 - 1.0 / (2.0 * nf)) as f32, n),
                    _ => linspace_f32((1.0 / nf) as f32, 1.0, n),
                };
                (alphas, steps.iter().map(|s| *s as f32).collect())
            }
        }
    }
}

/// torch.linspace on CPU in float32: the first half counts up from `start`, the second
/// half down from `end`, so both ends are exact.
fn linspace_f32(start: f32, end: f32, n: usize) -> Vec<f32> {
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f32;
    let half = n / 2;
    (0..n)
        .map(|i| {
            if i < half {
                start + step * i as f32
            } else {
                end - step * (n - i - 1) as f32
            }
        })
        .collect()
}

/// Gauss–Legendre nodes (ascending) and weights on [-1, 1], by Newton's method on the
/// Legendre polynomial (agrees with numpy's leggauss to ~1e-15).
pub fn leggauss(n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut x = vec![0.0; n];
    let mut w = vec![0.0; n];
    for i in 0..n.div_ceil(2) {
        // Tricomi's initial guess for the i-th largest root.
        let mut z = (std::f64::consts::PI * (i as f64 + 0.75) / (n as f64 + 0.5)).cos();
        let mut dp = 0.0;
        for _ in 0..100 {
            let (p, d) = legendre(n, z);
            dp = d;
            let dz = p / d;
            z -= dz;
            if dz.abs() < 1e-16 {
                break;
            }
        }
        let (_, d) = legendre(n, z);
        if d != 0.0 {
            dp = d;
        }
        let weight = 2.0 / ((1.0 - z * z) * dp * dp);
        x[i] = -z;
        x[n - 1 - i] = z;
        w[i] = weight;
        w[n - 1 - i] = weight;
    }
    (x, w)
}

/// P_n(z) and P_n'(z).
fn legendre(n: usize, z: f64) -> (f64, f64) {
    let (mut p0, mut p1) = (1.0, z);
    if n == 0 {
        return (1.0, 0.0);
    }
    for k in 2..=n {
        let kf = k as f64;
        let p2 = ((2.0 * kf - 1.0) * z * p1 - (kf - 1.0) * p0) / kf;
        p0 = p1;
        p1 = p2;
    }
    let d = n as f64 * (z * p1 - p0) / (z * z - 1.0);
    (p1, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauss_legendre_integrates_polynomials() {
        let (x, w) = leggauss(5);
        // exact for degree ≤ 9
        let integral: f64 = x.iter().zip(&w).map(|(x, w)| w * x.powi(8)).sum();
        assert!((integral - 2.0 / 9.0).abs() < 1e-14);
        assert!(x.windows(2).all(|p| p[0] < p[1]));
    }

    #[test]
    fn trapezoid_weights_sum_to_n_minus_one_over_n() {
        let (a, s) = Rule::RiemannTrapezoid.points(50);
        assert_eq!(a[0], 0.0);
        assert_eq!(a[49], 1.0);
        let total: f32 = s.iter().sum();
        assert!((total - 0.98).abs() < 1e-6);
    }
}
