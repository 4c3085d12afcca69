//! Testing with concept activation vectors (TCAV, Kim et al. 2018, as Captum's `TCAV`
//! computes it): a linear classifier separates a concept's activations at a layer from a
//! random set's; its normal, pointing to the concept, is the CAV. The TCAV score is the
//! fraction of inputs whose target output grows along the CAV (the gradient at the
//! layer · CAV > 0). Against n random sets a concept has n scores; n random-vs-random
//! CAVs give the scores chance gives, and a two-sided Student t-test between the two
//! lists (scipy's `ttest_ind`, as Captum's tutorial) says whether the concept matters.

/// The CAV separating `positive` (the concept, rows of `dim`) from `negative`: an
/// L2-regularised logistic regression (α = 0.01, the default of the SGD classifier
/// Captum trains), fitted by full-batch gradient descent with step 1/L — deterministic,
/// where Captum's stochastic classifier is not.
pub fn cav(positive: &[f64], negative: &[f64], dim: usize) -> Vec<f64> {
    const ALPHA: f64 = 0.01;
    let rows: Vec<(&[f64], f64)> = positive
        .chunks(dim)
        .map(|r| (r, 1.0))
        .chain(negative.chunks(dim).map(|r| (r, -1.0)))
        .collect();
    let n = rows.len() as f64;
    // L ≤ ¼·λmax(XᵀX / n) + α, with the bias as a column of ones; λmax by power iteration.
    let mut v = vec![1.0f64; dim + 1];
    let mut lambda = 0.0;
    for _ in 0..50 {
        let mut next = vec![0.0f64; dim + 1];
        for (x, _) in &rows {
            let xv: f64 = x.iter().zip(&v).map(|(a, b)| a * b).sum::<f64>() + v[dim];
            for (k, a) in x.iter().enumerate() {
                next[k] += a * xv / n;
            }
            next[dim] += xv / n;
        }
        let norm = next.iter().map(|a| a * a).sum::<f64>().sqrt();
        if norm == 0.0 {
            break;
        }
        lambda = norm / v.iter().map(|a| a * a).sum::<f64>().sqrt();
        v = next.iter().map(|a| a / norm).collect();
    }
    let step = 1.0 / (0.25 * lambda * 1.01 + ALPHA);
    let (mut w, mut b) = (vec![0.0f64; dim], 0.0f64);
    for _ in 0..500 {
        let mut gw: Vec<f64> = w.iter().map(|wk| ALPHA * wk).collect();
        let mut gb = 0.0;
        for (x, y) in &rows {
            let z = y * (x.iter().zip(&w).map(|(a, c)| a * c).sum::<f64>() + b);
            // d/dz log(1 + e^{−z}) = −1 / (1 + e^{z})
            let s = -y / (1.0 + z.exp()) / n;
            for (g, a) in gw.iter_mut().zip(x.iter()) {
                *g += s * a;
            }
            gb += s;
        }
        for (wk, g) in w.iter_mut().zip(&gw) {
            *wk -= step * g;
        }
        b -= step * gb;
    }
    w
}

/// The fraction of gradients (rows of `dim`) with a positive component along `cav`.
pub fn score(gradients: &[f64], cav: &[f64], dim: usize) -> f64 {
    let rows = gradients.len() / dim.max(1);
    if rows == 0 {
        return f64::NAN;
    }
    let positive = gradients
        .chunks(dim)
        .filter(|g| g.iter().zip(cav).map(|(a, b)| a * b).sum::<f64>() > 0.0)
        .count();
    positive as f64 / rows as f64
}

/// The two-sided p-value of Student's t-test for two independent samples with equal
/// variances (scipy.stats.ttest_ind's default); NaN when both samples are constant.
pub fn t_test(a: &[f64], b: &[f64]) -> f64 {
    let (na, nb) = (a.len() as f64, b.len() as f64);
    let (ma, mb) = (a.iter().sum::<f64>() / na, b.iter().sum::<f64>() / nb);
    let ss = a.iter().map(|x| (x - ma).powi(2)).sum::<f64>() + b.iter().map(|x| (x - mb).powi(2)).sum::<f64>();
    let df = na + nb - 2.0;
    let pooled = ss / df;
    let se = (pooled * (1.0 / na + 1.0 / nb)).sqrt();
    if se == 0.0 || !se.is_finite() {
        return f64::NAN;
    }
    let t = (ma - mb) / se;
    // P(|T| > t) = I_{df/(df+t²)}(df/2, 1/2)
    incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
}

fn ln_gamma(x: f64) -> f64 {
    // Lanczos (g = 7, n = 9), ~15 digits.
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + 7.5;
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// The regularised incomplete beta function I_x(a, b) (Lentz's continued fraction).
fn incomplete_beta(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let front = (ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln()).exp();
    if x > (a + 1.0) / (a + b + 2.0) {
        return 1.0 - incomplete_beta(b, a, 1.0 - x);
    }
    let tiny = 1e-300;
    let (mut c, mut d) = (1.0f64, 1.0 - (a + b) * x / (a + 1.0));
    d = if d.abs() < tiny { tiny } else { d };
    d = 1.0 / d;
    let mut f = d;
    for m in 1..300 {
        let m = m as f64;
        for numerator in [
            m * (b - m) * x / ((a + 2.0 * m - 1.0) * (a + 2.0 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2.0 * m) * (a + 2.0 * m + 1.0)),
        ] {
            d = 1.0 + numerator * d;
            d = if d.abs() < tiny { tiny } else { d };
            c = 1.0 + numerator / c;
            c = if c.abs() < tiny { tiny } else { c };
            d = 1.0 / d;
            f *= c * d;
        }
        if (c * d - 1.0).abs() < 1e-15 {
            break;
        }
    }
    front * f / a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t_test_matches_scipy() {
        // scipy.stats.ttest_ind([0.8, 0.9, 0.85, 0.95], [0.5, 0.6, 0.4, 0.55]).pvalue
        let p = t_test(&[0.8, 0.9, 0.85, 0.95], &[0.5, 0.6, 0.4, 0.55]);
        assert!((p - 0.000_506_160_484_022_104_4).abs() < 1e-12, "{p}");
        // … and ([1, 2, 3], [2, 3, 4, 5]).pvalue = 0.15783881063169597
        let p = t_test(&[1.0, 2.0, 3.0], &[2.0, 3.0, 4.0, 5.0]);
        assert!((p - 0.157_838_810_631_695_97).abs() < 1e-12, "{p}");
    }

    #[test]
    fn the_cav_points_to_the_concept() {
        // Concept along +x, random along −x: the CAV's x component is positive.
        let pos = [1.0, 0.1, 1.2, -0.1, 0.9, 0.0];
        let neg = [-1.0, 0.2, -1.1, -0.2, -0.8, 0.1];
        let w = cav(&pos, &neg, 2);
        assert!(w[0] > 0.0 && w[0].abs() > 5.0 * w[1].abs(), "{w:?}");
        assert_eq!(score(&[1.0, 0.0, -1.0, 0.0, 2.0, 5.0], &w, 2), 2.0 / 3.0);
    }
}
