//! Poisoned-data detectors in representation space, scoring each input of a dataset
//! from its activations at a layer, class by class (the class each input is predicted
//! as, or its label): spectral signatures (Tran et al. 2018) and activation clustering
//! (Chen et al. 2018, as the Adversarial Robustness Toolbox's `ActivationDefence` runs it
//! by default: PCA to 10 dimensions, 2-means, the smaller cluster suspicious).

use super::linalg::{gram, symmetric_eigen, top_eigen};
use super::rng::Rng;
use super::{GivenParam, ParamKind, ParamSpec, ParamValue, Params};
use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq)]
pub enum Detector {
    /// Per class, the squared projection of each centred representation on the top
    /// singular vector of the class's centred representations.
    SpectralSignature { by_label: bool },
    /// Per class, k-means (k-means++ starts, the best of `restarts` by inertia) on the
    /// representations projected on their top `dims` principal directions.
    ActivationClustering {
        by_label: bool,
        dims: usize,
        clusters: usize,
        seed: u64,
    },
}

pub struct DetectorInfo {
    pub name: &'static str,
    pub params: &'static [ParamSpec],
    pub reference: &'static str,
    pub summary: &'static str,
}

const BY: ParamSpec = ParamSpec {
    name: "by",
    kind: ParamKind::Choice(&["prediction", "label"]),
    default: Some("prediction"),
    setting: None,
};

pub const DETECTORS: &[DetectorInfo] = &[
    DetectorInfo {
        name: "spectral_signature",
        params: &[BY],
        reference: "Tran, Li & Madry 2018, Spectral Signatures in Backdoor Attacks",
        summary: "per class, the squared projection of the centred representation on its top singular vector (AT LAYER l): poisoned samples score high",
    },
    DetectorInfo {
        name: "activation_clustering",
        params: &[
            BY,
            ParamSpec {
                name: "dims",
                kind: ParamKind::Int { min: 1, max: 4096 },
                default: Some("10"),
                setting: None,
            },
            ParamSpec {
                name: "clusters",
                kind: ParamKind::Int { min: 2, max: 64 },
                default: Some("2"),
                setting: None,
            },
            ParamSpec {
                name: "seed",
                kind: ParamKind::Int { min: 0, max: i64::MAX },
                default: Some("0"),
                setting: Some("seed"),
            },
        ],
        reference: "Chen et al. 2018, Detecting Backdoor Attacks … by Activation Clustering (ART ActivationDefence defaults: PCA to 10, 2-means, smaller cluster)",
        summary: "per class, k-means on the representation reduced to `dims` principal directions (AT LAYER l): the members of the smallest cluster are suspicious",
    },
];

pub fn detector_info(name: &str) -> Option<&'static DetectorInfo> {
    DETECTORS.iter().find(|d| d.name.eq_ignore_ascii_case(name))
}

pub fn resolve_detector(
    info: &DetectorInfo,
    given: &[GivenParam],
    setting: &dyn Fn(&str) -> Option<ParamValue>,
) -> Result<Detector> {
    let params = Params::resolve(info.name, info.params, given, setting)?;
    let by_label = params.text("by").eq_ignore_ascii_case("label");
    Ok(match info.name {
        "spectral_signature" => Detector::SpectralSignature { by_label },
        _ => Detector::ActivationClustering {
            by_label,
            dims: params.num("dims") as usize,
            clusters: params.num("clusters") as usize,
            seed: params.num("seed") as u64,
        },
    })
}

impl Detector {
    pub fn name(&self) -> &'static str {
        match self {
            Detector::SpectralSignature { .. } => "spectral_signature",
            Detector::ActivationClustering { .. } => "activation_clustering",
        }
    }
    pub fn by_label(&self) -> bool {
        match self {
            Detector::SpectralSignature { by_label } | Detector::ActivationClustering { by_label, .. } => *by_label,
        }
    }
}

impl std::fmt::Display for Detector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let by = if self.by_label() { "label" } else { "prediction" };
        match self {
            Detector::SpectralSignature { .. } => write!(f, "spectral_signature(by = '{by}')"),
            Detector::ActivationClustering {
                dims, clusters, seed, ..
            } => write!(
                f,
                "activation_clustering(by = '{by}', dims = {dims}, clusters = {clusters}, seed = {seed})"
            ),
        }
    }
}

/// What a detector says of one input.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Verdict {
    /// Higher: more suspicious.
    pub score: f64,
    /// Activation clustering: the input's cluster (0 the largest of its class), the
    /// share of its class that cluster holds, and whether it is the smallest.
    pub cluster: Option<usize>,
    pub share: Option<f64>,
    pub suspicious: Option<bool>,
}

/// Each input's verdict: `reps` n × dim representations, `classes` each input's class.
pub fn detect(detector: &Detector, reps: &[f32], dim: usize, classes: &[usize]) -> Result<Vec<Verdict>> {
    let n = classes.len();
    if reps.len() != n * dim {
        return Err(Error::model("internal: representations of the wrong size"));
    }
    let mut out = vec![Verdict::default(); n];
    let mut present: Vec<usize> = classes.to_vec();
    present.sort_unstable();
    present.dedup();
    for c in present {
        let members: Vec<usize> = (0..n).filter(|&i| classes[i] == c).collect();
        let centred = centred(reps, dim, &members);
        match detector {
            Detector::SpectralSignature { .. } => {
                let (_, v) = top_eigen(gram(&centred, members.len(), dim, true), dim);
                for (k, &i) in members.iter().enumerate() {
                    let p: f64 = centred[k * dim..(k + 1) * dim].iter().zip(&v).map(|(a, b)| a * b).sum();
                    out[i].score = p * p;
                }
            }
            Detector::ActivationClustering {
                dims, clusters, seed, ..
            } => {
                let reduced = project(&centred, members.len(), dim, *dims);
                let d = (*dims).min(dim);
                let assign = kmeans(&reduced, members.len(), d, *clusters, *seed ^ c as u64);
                // Clusters numbered by size, largest first (ties: the lower old number).
                let mut sizes = vec![0usize; *clusters];
                for &a in &assign {
                    sizes[a] += 1;
                }
                let mut by_size: Vec<usize> = (0..*clusters).collect();
                by_size.sort_by(|&a, &b| sizes[b].cmp(&sizes[a]).then(a.cmp(&b)));
                let rank: Vec<usize> = (0..*clusters)
                    .map(|k| by_size.iter().position(|&x| x == k).unwrap_or(0))
                    .collect();
                let smallest = (0..*clusters)
                    .filter(|&k| sizes[k] > 0)
                    .min_by(|&a, &b| sizes[a].cmp(&sizes[b]).then(b.cmp(&a)));
                for (k, &i) in members.iter().enumerate() {
                    let share = sizes[assign[k]] as f64 / members.len() as f64;
                    out[i] = Verdict {
                        score: 1.0 - share,
                        cluster: Some(rank[assign[k]]),
                        share: Some(share),
                        suspicious: Some(members.len() > 1 && Some(assign[k]) == smallest && share < 0.5),
                    };
                }
            }
        }
    }
    Ok(out)
}

/// The members' representations minus their mean, in f64 (members × dim).
fn centred(reps: &[f32], dim: usize, members: &[usize]) -> Vec<f64> {
    let mut mean = vec![0.0f64; dim];
    for &i in members {
        for (m, v) in mean.iter_mut().zip(&reps[i * dim..(i + 1) * dim]) {
            *m += *v as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= members.len().max(1) as f64);
    members
        .iter()
        .flat_map(|&i| {
            reps[i * dim..(i + 1) * dim]
                .iter()
                .zip(&mean)
                .map(|(v, m)| *v as f64 - m)
        })
        .collect()
}

/// Centred rows (rows × dim) on their top `k` principal directions (rows × min(k, dim)).
fn project(centred: &[f64], rows: usize, dim: usize, k: usize) -> Vec<f64> {
    let (values, vectors) = symmetric_eigen(gram(centred, rows, dim, true), dim);
    let mut order: Vec<usize> = (0..dim).collect();
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
    let k = k.min(dim);
    let mut out = Vec::with_capacity(rows * k);
    for r in 0..rows {
        let row = &centred[r * dim..(r + 1) * dim];
        for &e in &order[..k] {
            out.push((0..dim).map(|j| row[j] * vectors[j * dim + e]).sum());
        }
    }
    out
}

fn distance2(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum()
}

/// k-means by Lloyd's iterations from greedy k-means++ starts, the best of ten starts by
/// inertia (scikit-learn's `n_init = 10`); returns each row's cluster.
fn kmeans(x: &[f64], rows: usize, dim: usize, k: usize, seed: u64) -> Vec<usize> {
    if rows <= k {
        return (0..rows).collect();
    }
    let row = |r: usize| &x[r * dim..(r + 1) * dim];
    let mut best: Option<(f64, Vec<usize>)> = None;
    for start in 0..10u64 {
        let mut rng = Rng::new(seed, start);
        let mut centres: Vec<Vec<f64>> = vec![row(rng.below(rows)).to_vec()];
        while centres.len() < k {
            let d: Vec<f64> = (0..rows)
                .map(|r| {
                    centres
                        .iter()
                        .map(|c| distance2(row(r), c))
                        .fold(f64::INFINITY, f64::min)
                })
                .collect();
            let total: f64 = d.iter().sum();
            // Greedy k-means++ (scikit-learn's): 2 + ⌊ln k⌋ candidates drawn ∝ D², the
            // one leaving the least potential kept.
            let trials = 2 + (k as f64).ln() as usize;
            let mut chosen: Option<(f64, usize)> = None;
            for _ in 0..trials {
                let pick = if total > 0.0 {
                    let mut t = rng.uniform() * total;
                    (0..rows)
                        .find(|&r| {
                            t -= d[r];
                            t < 0.0
                        })
                        .unwrap_or(rows - 1)
                } else {
                    rng.below(rows)
                };
                let potential: f64 = (0..rows).map(|r| d[r].min(distance2(row(r), row(pick)))).sum();
                if chosen.is_none_or(|(p, _)| potential < p) {
                    chosen = Some((potential, pick));
                }
            }
            centres.push(row(chosen.map_or(rows - 1, |(_, r)| r)).to_vec());
        }
        let mut assign = vec![0usize; rows];
        for _ in 0..300 {
            let mut changed = false;
            for (r, a) in assign.iter_mut().enumerate() {
                let nearest = (0..k)
                    .min_by(|&p, &q| distance2(row(r), &centres[p]).total_cmp(&distance2(row(r), &centres[q])))
                    .unwrap_or(0);
                if *a != nearest {
                    *a = nearest;
                    changed = true;
                }
            }
            for (c, centre) in centres.iter_mut().enumerate() {
                let members: Vec<usize> = (0..rows).filter(|&r| assign[r] == c).collect();
                if members.is_empty() {
                    continue;
                }
                for (j, v) in centre.iter_mut().enumerate() {
                    *v = members.iter().map(|&r| row(r)[j]).sum::<f64>() / members.len() as f64;
                }
            }
            if !changed {
                break;
            }
        }
        let inertia: f64 = (0..rows).map(|r| distance2(row(r), &centres[assign[r]])).sum();
        if best.as_ref().is_none_or(|(b, _)| inertia < *b) {
            best = Some((inertia, assign));
        }
    }
    best.map(|(_, a)| a).unwrap_or_else(|| vec![0; rows])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_blobs_split_and_the_outlier_direction_scores() {
        // Class 0: 8 points near the origin and 2 far along x — the 2 are the smaller
        // cluster, and the top singular direction is x, so they score highest.
        let mut reps = Vec::new();
        for i in 0..8 {
            reps.extend([0.01 * i as f32, 0.02 * (i % 3) as f32]);
        }
        reps.extend([5.0f32, 0.0, 5.1, 0.01]);
        let classes = vec![0usize; 10];
        let ac = detect(
            &Detector::ActivationClustering {
                by_label: false,
                dims: 2,
                clusters: 2,
                seed: 0,
            },
            &reps,
            2,
            &classes,
        )
        .unwrap();
        let flagged: Vec<usize> = (0..10).filter(|&i| ac[i].suspicious == Some(true)).collect();
        assert_eq!(flagged, vec![8, 9]);
        assert_eq!(ac[8].share, Some(0.2));
        let ss = detect(&Detector::SpectralSignature { by_label: false }, &reps, 2, &classes).unwrap();
        let mut order: Vec<usize> = (0..10).collect();
        order.sort_by(|&a, &b| ss[b].score.total_cmp(&ss[a].score));
        assert_eq!(&order[..2], &[9, 8]);
    }
}
