//! The poisoned-data detectors against references on both backdoored digits CNNs and
//! their poisoned training sets, at fc1 by predicted class (tools/detector_cases.py):
//! spectral signatures against numpy's SVD of the same float32 activations (relative
//! error ≤ 1e-4 of the class's largest score), activation clustering against
//! scikit-learn's PCA(10) + KMeans(2, n_init = 10): per class, the two partitions agree
//! on ≥ 95 % of the inputs (up to the clusters' numbering), and in the backdoor's target
//! class the smaller cluster holds poisoned samples only. Not exactly everywhere: scikit-learn stops Lloyd's
//! iterations at a tolerance, so where two local optima lie close (a clean class split in
//! two halves) either may come out — in some classes ours has the lower inertia, in
//! others scikit-learn's.

use crate::common::{assert_errors, column_f64, fixture, npy, query, session};

fn setup(model: &str, data: &str) -> ialgebra::exec::Session {
    session(&format!(
        "LOAD MODEL m FROM 'models/{model}.safetensors' ARCH 'models/{model}.json';
         LOAD DATA train FROM 'data/{data}_train_x.npy' LABELS 'data/{data}_train_y.npy';"
    ))
}

#[test]
fn detectors_match_numpy_and_scikit_learn() {
    for (model, data) in [
        ("digits_cnn_backdoor", "digits_backdoor"),
        ("digits_cnn_backdoor2", "digits_backdoor2"),
    ] {
        let mut s = setup(model, data);
        let df = query(
            &mut s,
            "SELECT input, class, score FROM m(train) USING spectral_signature AT LAYER fc1 ORDER BY input",
        );
        let (got, class) = (column_f64(&df, "score"), column_f64(&df, "class"));
        let want = npy(&fixture(&format!("detectors/{model}__spectral_signature.npy"))).1;
        assert_eq!(got.len(), want.len());
        for c in 0..10 {
            let members: Vec<usize> = (0..got.len()).filter(|&i| class[i] == c as f64).collect();
            let scale = members.iter().map(|&i| want[i]).fold(0.0f64, f64::max);
            for &i in &members {
                assert!(
                    (got[i] - want[i]).abs() <= 1e-4 * scale,
                    "{model} spectral signature of input {i}: {} against {}",
                    got[i],
                    want[i]
                );
            }
        }
        let df = query(
            &mut s,
            "SELECT input, cluster FROM m(train) USING activation_clustering AT LAYER fc1 ORDER BY input",
        );
        let got = column_f64(&df, "cluster");
        let want = npy(&fixture(&format!("detectors/{model}__activation_clustering.npy"))).1;
        let classes = npy(&fixture(&format!("detectors/{model}__classes.npy"))).1;
        for c in 0..10 {
            let members: Vec<usize> = (0..got.len()).filter(|&i| classes[i] == c as f64).collect();
            let same = members.iter().filter(|&&i| got[i] == want[i]).count();
            let agree = same.max(members.len() - same) as f64 / members.len() as f64;
            assert!(agree >= 0.95, "{model} class {c}: the partitions agree on {agree}");
        }
        // In the backdoor's target class the smaller cluster is poisoned samples only.
        let target = if model.ends_with('2') { 7 } else { 0 };
        let poisoned = npy(&fixture(&format!("data/{data}_poison_indices.npy"))).1;
        let df = query(
            &mut s,
            &format!(
                "SELECT input FROM m(train) USING activation_clustering AT LAYER fc1 WHERE class = {target} AND suspicious"
            ),
        );
        let flagged = column_f64(&df, "input");
        assert!(flagged.len() >= 80, "{model}: {} flagged", flagged.len());
        assert!(
            flagged.iter().all(|i| poisoned.contains(i)),
            "{model}: a clean sample flagged"
        );
    }
}

#[test]
fn detector_relations_and_errors() {
    let mut s = setup("digits_cnn_backdoor", "digits_backdoor");
    // Activation clustering's columns; within the backdoor's target class (0) the
    // smaller cluster holds only poisoned samples (labels 0, all carrying the trigger).
    let df = query(
        &mut s,
        "SELECT cluster, count(*) AS n, min(cluster_share) AS share FROM m(train) USING activation_clustering AT LAYER fc1
         WHERE class = 0 GROUP BY cluster ORDER BY cluster",
    );
    assert_eq!(df.height(), 2);
    let n = column_f64(&df, "n");
    assert!(n[0] > n[1], "{n:?}");
    assert_errors(
        &mut s,
        &[
            ("SELECT * FROM m(train) USING spectral_signature", "needs a layer"),
            (
                "SELECT * FROM m(train) USING spectral_signature AT LAYER fc1 TARGET 3",
                "TARGET does not apply",
            ),
            (
                "SELECT * FROM m(train) USING activation_clustering(clusters = 1) AT LAYER fc1",
                "clusters",
            ),
            (
                "SELECT * FROM m(train[0]) JOIN m(train[1]) USING spectral_signature AT LAYER fc1",
                "not a JOIN",
            ),
        ],
    );
}
