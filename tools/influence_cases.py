"""TracIn references for INFLUENCE, in float64 torch: per-sample gradients of the
cross-entropy by autograd, one sample at a time, on both backdoored digits CNNs and their
poisoned training sets (tests/fixtures/influence/<case>.npy: a (test inputs × training
samples) matrix, or one value per training sample for self-influence). Outside CI
(needs torch; see tools/captum_baseline.py for the setup). From the repository root:

    ~/captum-venv/bin/python tools/influence_cases.py
"""

import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from captum_baseline import load  # noqa: E402

torch.set_num_threads(2)
OUT = "tests/fixtures/influence"


def grads(model, x, y, names):
    """Each sample's ∇θ CE(model(x), y) over the named layers' weights and biases. The
    loss's gradient at the logits, softmax − one-hot, is formed with the class's entry as
    minus the sum of the others: torch's own (p_y − 1 in float64) is quantised to ~1e-16
    and off by several times on the most confidently classified training samples, whose
    gradients are ~1e-16 — which the cosine form, blind to scale, then shows."""
    params = [p for n, p in model.named_parameters() if n.split(".")[0] in names]
    out = []
    for i in range(x.shape[0]):
        logits = model(x[i:i + 1])
        p = torch.softmax(logits.detach(), 1)
        seed = p.clone()
        others = p.clone()
        others[0, y[i]] = 0.0
        seed[0, y[i]] = -others.sum()
        g = torch.autograd.grad(logits, params, grad_outputs=seed)
        out.append(torch.cat([t.flatten() for t in g]))
    return torch.stack(out)


def main():
    os.makedirs(OUT, exist_ok=True)
    for model_name, data in (("digits_cnn_backdoor", "digits_backdoor"), ("digits_cnn_backdoor2", "digits_backdoor2")):
        m = load(model_name).double()
        tx = torch.from_numpy(np.load(f"data/{data}_train_x.npy")).double()
        ty = torch.from_numpy(np.load(f"data/{data}_train_y.npy")).long()
        test = torch.from_numpy(np.load("data/digits_test_x.npy")[:6]).double()
        if model_name == "digits_cnn_backdoor":
            test[5, 0, 6:8, 6:8] = 1.0  # the first backdoor's trigger (queries: WITH SET rows 6:8, cols 6:8 = 1.0)
        else:
            test[5, 0, 1:4, 0] = 1.0  # the second's (rows 1:4, cols 0:1)
        with torch.no_grad():
            pred = m(test).argmax(1)
        print(model_name, "test predictions", pred.tolist())
        for layers, names in (("last", ["fc2"]), ("all", ["conv1", "conv2", "fc1", "fc2"])):
            gt = grads(m, tx, ty, names)
            gs = grads(m, test, pred, names)
            dots = (gs @ gt.T).numpy()
            np.save(f"{OUT}/{model_name}__{layers}.npy", dots)
            if layers == "all":
                cos = (gs @ gt.T) / (gs.norm(dim=1)[:, None] * gt.norm(dim=1)[None, :])
                np.save(f"{OUT}/{model_name}__{layers}_cosine.npy", cos.numpy())
            if layers == "last" or model_name == "digits_cnn_backdoor":
                np.save(f"{OUT}/{model_name}__{layers}_self.npy", (gt * gt).sum(1).numpy())
            if model_name == "digits_cnn_backdoor" and layers == "last":
                gk = grads(m, test, torch.full_like(pred, 3), names)
                np.save(f"{OUT}/{model_name}__last_target3.npy", (gk @ gt.T).numpy())
            print(model_name, layers, dots.shape)


if __name__ == "__main__":
    main()
