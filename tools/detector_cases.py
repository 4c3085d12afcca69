"""References for the poisoned-data detectors on both backdoored digits CNNs and their
poisoned training sets (tests/fixtures/detectors/<model>__<detector>.npy), at fc1 by
predicted class; the activations from torch (float32, as the engine computes them):

- spectral_signature: numpy's SVD of each class's centred activations (float64), the
  squared projection on the top right singular vector;
- activation_clustering: scikit-learn's PCA(10) then KMeans(2, n_init=10,
  random_state=0) per class, as the Adversarial Robustness Toolbox's ActivationDefence
  runs it; saved as each input's cluster (0/1, scikit-learn's numbering) and, in
  `…__classes.npy`, its predicted class.

Outside CI (torch, scikit-learn). From the repository root:

    ~/captum-venv/bin/python tools/detector_cases.py
"""

import os
import sys

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA

sys.path.insert(0, os.path.dirname(__file__))
from captum_baseline import load  # noqa: E402

torch.set_num_threads(2)
OUT = "tests/fixtures/detectors"


def main():
    os.makedirs(OUT, exist_ok=True)
    for model_name, data in (("digits_cnn_backdoor", "digits_backdoor"), ("digits_cnn_backdoor2", "digits_backdoor2")):
        m = load(model_name)
        x = torch.from_numpy(np.load(f"data/{data}_train_x.npy"))
        acts = {}
        m.fc1.register_forward_hook(lambda mod, i, o: acts.__setitem__("fc1", o.detach()))
        with torch.no_grad():
            pred = m(x).argmax(1).numpy()
        reps = acts["fc1"].numpy().astype(np.float64)
        spectral = np.zeros(len(x))
        clusters = np.zeros(len(x))
        for c in np.unique(pred):
            idx = np.where(pred == c)[0]
            r = reps[idx] - reps[idx].mean(0)
            _, _, vt = np.linalg.svd(r, full_matrices=False)
            spectral[idx] = (r @ vt[0]) ** 2
            reduced = PCA(n_components=10).fit_transform(reps[idx])
            clusters[idx] = KMeans(n_clusters=2, n_init=10, random_state=0).fit_predict(reduced)
        np.save(f"{OUT}/{model_name}__spectral_signature.npy", spectral)
        np.save(f"{OUT}/{model_name}__activation_clustering.npy", clusters)
        np.save(f"{OUT}/{model_name}__classes.npy", pred.astype(np.int64))


if __name__ == "__main__":
    main()
