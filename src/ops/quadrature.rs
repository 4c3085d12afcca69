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

/// Up to this many points, the nodes come from Newton's method on the three-term
/// recurrence (numpy's leggauss to ~1e-15, O(n²)); above it, from the march along the
/// Legendre differential equation (O(n)).
const RECURRENCE_UP_TO: usize = 1000;

/// Gauss–Legendre nodes (ascending) and weights on [-1, 1].
pub fn leggauss(n: usize) -> (Vec<f64>, Vec<f64>) {
    if n <= RECURRENCE_UP_TO {
        leggauss_recurrence(n)
    } else {
        leggauss_march(n)
    }
}

/// Newton's method on P_n evaluated by its three-term recurrence: O(n) per evaluation,
/// O(n²) in all (agrees with numpy's leggauss to ~1e-15).
fn leggauss_recurrence(n: usize) -> (Vec<f64>, Vec<f64>) {
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

/// Nodes and weights in O(n), after Glaser, Liu and Rokhlin (2007): P_n satisfies
/// (1 − x²)u'' − 2xu' + n(n+1)u = 0, so its Taylor coefficients at any point follow from
/// its value and slope there by a two-term recurrence. Starting from x = 0, where both are
/// known in closed form, each root is found by Newton's method on the Taylor series about
/// the previous one (Tricomi's asymptotic formula gives the first guess), and the slope at
/// the root, which the weight needs, comes from the same series. The few roots nearest
/// ±1, where the series converges slowly, are polished on the recurrence.
fn leggauss_march(n: usize) -> (Vec<f64>, Vec<f64>) {
    let nf = n as f64;
    let half = n / 2;
    let mut x = vec![0.0; n];
    let mut w = vec![0.0; n];
    // The point to expand about: x = 0 with P_n(0) and P_n'(0).
    let (mut x0, mut u0, mut du0) = (0.0f64, 0.0f64, 0.0f64);
    {
        // P_n(0) = (−1)^(n/2) (n−1)!!/n!! for even n; P_n'(0) = (−1)^((n−1)/2) n!!/(n−1)!!
        // for odd n (0 is then a root). The ratios are built as products of fractions.
        let mut ratio = 1.0f64;
        let mut k = if n.is_multiple_of(2) { 2 } else { 3 };
        while k <= n {
            ratio *= (k - 1) as f64 / k as f64;
            k += 2;
        }
        if n.is_multiple_of(2) {
            u0 = if (n / 2).is_multiple_of(2) { ratio } else { -ratio };
        } else {
            let slope = 1.0 / ratio;
            du0 = if ((n - 1) / 2).is_multiple_of(2) { slope } else { -slope };
            x[half] = 0.0;
            w[half] = 2.0 / (du0 * du0);
        }
    }
    // The positive roots, from the middle outwards: root j (0-based from the largest)
    // has Tricomi's guess cos(π(j + 3/4)/(n + 1/2)) · (1 − 1/(8n²) + 1/(8n³)).
    let positives = half;
    let polish = 12.min(positives);
    for j in (0..positives).rev() {
        let theta = std::f64::consts::PI * (j as f64 + 0.75) / (nf + 0.5);
        let mut z = theta.cos() * (1.0 - 1.0 / (8.0 * nf * nf) + 1.0 / (8.0 * nf * nf * nf));
        let (root, slope) = if j < polish {
            // Near 1: Newton on the exact recurrence.
            for _ in 0..100 {
                let (p, d) = legendre(n, z);
                let dz = p / d;
                z -= dz;
                if dz.abs() < 1e-16 {
                    break;
                }
            }
            (z, legendre(n, z).1)
        } else {
            let mut slope = du0;
            for _ in 0..20 {
                let (p, d) = taylor(n, x0, u0, du0, z - x0);
                slope = d;
                let dz = p / d;
                z -= dz;
                if dz.abs() <= 1e-16 * z.abs().max(1e-300) {
                    break;
                }
            }
            (z, slope)
        };
        x0 = root;
        u0 = 0.0;
        du0 = slope;
        let weight = 2.0 / ((1.0 - root * root) * slope * slope);
        x[n - 1 - j] = root;
        w[n - 1 - j] = weight;
        x[j] = -root;
        w[j] = weight;
    }
    (x, w)
}

/// P_n(x0 + h) and P_n'(x0 + h) from P_n(x0) = `u` and P_n'(x0) = `du`, by the Taylor
/// series whose coefficients the Legendre equation gives: with a_k = P_n^(k)(x0)/k!,
/// (1 − x0²)(k+1)(k+2) a_(k+2) = 2(k+1)² x0 a_(k+1) − (n(n+1) − k(k+1)) a_k.
fn taylor(n: usize, x0: f64, u: f64, du: f64, h: f64) -> (f64, f64) {
    let nn = (n * (n + 1)) as f64;
    let scale = 1.0 - x0 * x0;
    // b_k = a_k h^k, summed with k b_k / h for the derivative.
    let (mut b0, mut b1) = (u, du * h);
    let (mut value, mut slope_h) = (b0 + b1, b1);
    for k in 0..200 {
        let kf = k as f64;
        let b2 = (2.0 * (kf + 1.0) * (kf + 1.0) * x0 * h * b1 - (nn - kf * (kf + 1.0)) * h * h * b0)
            / (scale * (kf + 1.0) * (kf + 2.0));
        value += b2;
        slope_h += (kf + 2.0) * b2;
        if k > 4 && b2.abs() <= 1e-18 * value.abs().max(slope_h.abs()) && b1.abs() <= 1e-17 * slope_h.abs() {
            break;
        }
        b0 = b1;
        b1 = b2;
    }
    (value, slope_h / h)
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

    /// The O(n) march agrees with Newton on the recurrence: nodes to ~2e-15; weights to
    /// 2e-13 relative at n = 1001, growing with n (the slope carried from root to root
    /// gathers rounding: 2e-11 at n = 20 000, and by the same growth ~1e-8 at a million,
    /// still below the float32 the rules are handed out in). Σw = 2 to 5e-13.
    #[test]
    fn the_march_agrees_with_the_recurrence() {
        for (n, weights) in [(1001, 1e-12), (1002, 1e-12), (4001, 1e-11), (20_000, 1e-10)] {
            let (xa, wa) = leggauss_march(n);
            let (xb, wb) = leggauss_recurrence(n);
            let dx = xa.iter().zip(&xb).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
            let dw = wa.iter().zip(&wb).map(|(a, b)| ((a - b) / b).abs()).fold(0.0, f64::max);
            assert!(dx < 1e-14, "n = {n}: nodes differ by {dx:e}");
            assert!(dw < weights, "n = {n}: weights differ by {dw:e} (relative)");
            let total: f64 = wa.iter().sum();
            assert!((total - 2.0).abs() < 1e-12, "n = {n}: Σw − 2 = {:e}", total - 2.0);
        }
    }

    #[test]
    fn a_million_points_in_well_under_a_second() {
        let started = std::time::Instant::now();
        let (x, w) = leggauss(1_000_000);
        let total: f64 = w.iter().sum();
        assert!((total - 2.0).abs() < 1e-10, "weights sum to {total}");
        // ∫ x⁴ over [-1, 1] = 2/5
        let quartic: f64 = x.iter().zip(&w).map(|(x, w)| w * x.powi(4)).sum();
        assert!((quartic - 0.4).abs() < 1e-10, "{quartic}");
        assert!(x.windows(2).all(|p| p[0] < p[1]));
        // Not a timing assertion (machines are noisy): a guard against O(n²) creeping back,
        // which takes hours here.
        assert!(started.elapsed().as_secs() < 60);
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
