"""TCAV references: Captum 0.9's `TCAV` itself on the shipped digits CNN, with the
engine's classifier (its deterministic L2 logistic regression, re-implemented here) and
the engine's random sets (its generator, tools/engine_rng.py), so that the CAVs, the
sign counts and the t-tests can be compared exactly. Concepts are test digits with a
bar pasted on the top rows (`top_bar`), a blanked top (`blank_top`) and a bar on the
left (`left_bar`); TCAV of class 7 and of class 1 at fc1 over all 397 test digits, 10
random sets. Writes tests/fixtures/tcav/<concept>_<target>.npy (the per-set sign counts,
then scipy's t-test p-value against the random ones) and random_<target>.npy. Outside CI (torch, captum, scipy):

    ~/captum-venv/bin/python tools/tcav_cases.py
"""

import os
import sys
import tempfile
import warnings

import numpy as np
import torch
from captum.attr import LayerGradientXActivation
from captum.concept import TCAV, Concept
from captum.concept._utils.classifier import Classifier
from scipy.stats import ttest_ind
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, os.path.dirname(__file__))
from captum_baseline import load  # noqa: E402
from engine_rng import EngineRng  # noqa: E402

warnings.filterwarnings("ignore")
torch.set_num_threads(2)
OUT = "tests/fixtures/tcav"


def engine_cav(pos, neg):
    """src/ops/concepts.rs `cav`: L2 (α = 0.01) logistic regression, full-batch gradient
    descent from zero, step 1/(¼·λmax·1.01 + α), 500 steps; concept rows first."""
    alpha = 0.01
    x = np.concatenate([pos, neg])
    y = np.concatenate([np.ones(len(pos)), -np.ones(len(neg))])
    n, dim = x.shape
    xb = np.concatenate([x, np.ones((n, 1))], 1)
    v = np.ones(dim + 1)
    lam = 0.0
    for _ in range(50):
        nxt = xb.T @ (xb @ v) / n
        norm = np.linalg.norm(nxt)
        if norm == 0:
            break
        lam = norm / np.linalg.norm(v)
        v = nxt / norm
    step = 1.0 / (0.25 * lam * 1.01 + alpha)
    w, b = np.zeros(dim), 0.0
    for _ in range(500):
        z = y * (x @ w + b)
        s = -y / (1.0 + np.exp(z)) / n
        gw = alpha * w + x.T @ s
        gb = s.sum()
        w = w - step * gw
        b = b - step * gb
    return w


class EngineClassifier(Classifier):
    def __init__(self):
        self.w = None
        self.cls = None

    def train_and_eval(self, dataloader, **kwargs):
        xs, ys = [], []
        for x, y in dataloader:
            xs.append(x)
            ys.append(y)
        x = torch.cat(xs).double().numpy().reshape(len(torch.cat(ys)), -1)
        y = torch.cat(ys).numpy()
        self.cls = sorted(set(y.tolist()))
        a = self.cls[0]
        self.w = engine_cav(x[y == a], x[y != a])
        return {"accs": torch.tensor(1.0)}

    def weights(self):
        return torch.tensor(np.stack([self.w, -self.w]))

    def classes(self):
        return self.cls


def main():
    os.makedirs(OUT, exist_ok=True)
    cnn = load("digits_cnn").double()
    x = torch.from_numpy(np.load("data/digits_test_x.npy")).double()
    top = x[0:40].clone()
    top[:, 0, 0:2, 1:7] = 1.0
    blank = x[40:80].clone()
    blank[:, 0, 0:3, 0:8] = 0.0
    left = x[80:120].clone()
    left[:, 0, 1:7, 0:2] = 1.0
    loader = lambda t: DataLoader(TensorDataset(t), batch_size=64)  # noqa: E731
    concepts = [Concept(0, "top_bar", loader(top)), Concept(1, "blank_top", loader(blank)), Concept(2, "left_bar", loader(left))]
    n_random = 10
    randoms = []
    for r in range(n_random + 1):
        pick = EngineRng(0, 0x7CA70000 + r).permutation(len(x))[:40]
        randoms.append(Concept(100 + r, f"random_{r}", loader(x[pick])))
    sets = [[c, randoms[r]] for c in concepts for r in range(1, n_random + 1)]
    sets += [[randoms[0], randoms[r]] for r in range(1, n_random + 1)]
    for target in (7, 1):
        with tempfile.TemporaryDirectory() as save:
            tcav = TCAV(cnn, ["fc1"], classifier=EngineClassifier(), layer_attr_method=LayerGradientXActivation(cnn, None, multiply_by_inputs=False), save_path=save)
            out = tcav.interpret(x, sets, target=target)
        lists = {}
        for c in concepts + [randoms[0]]:
            scores = [float(v["fc1"]["sign_count"][0]) for k, v in out.items() if k.startswith(f"{c.id}-")]
            lists[c.name if c.id < 100 else "random"] = scores
        for name, scores in lists.items():
            # [the sign counts per random set …, the t-test's p-value against the random
            # CAVs' (scipy's ttest_ind, NaN for the random row itself)]
            p = ttest_ind(scores, lists["random"]).pvalue if name != "random" else float("nan")
            np.save(f"{OUT}/{name}_{target}.npy", np.array(scores + [p]))
            print(target, name, np.round(np.mean(scores), 4), p)


if __name__ == "__main__":
    main()
