"""Reference values for EVALUATE's metrics on the shipped digits CNN (first 10 test
inputs, predicted targets), written to tests/fixtures/metrics/<case>.npy for
tests/metrics.rs. Optional, outside CI (needs torch, torchvision and captum; see
tools/captum_baseline.py for the setup). Run from the repository root:

    ~/captum-venv/bin/python tools/metric_cases.py

- infidelity and sensitivity_max: Captum 0.9's `captum.metrics` themselves, given the
  very perturbations the engine draws (its xoshiro256** generator, seeded per input id,
  is re-implemented below), so the comparison is exact rather than statistical;
- deletion and insertion: RISE's procedure written out in torch (point k of `steps` has
  the ⌊k·G/steps⌋ most attributed units set to the substrate / put back, ties by lower
  index; AUC = (Σs − s₀/2 − s_last/2)/steps of the softmax probability of the target);
- pixel_flipping and faithfulness_correlation: Quantus 0.6 itself ("black" = the input's
  minimum, 0 on these digits), its np.random.choice answering with the engine's subsets;
- sparseness and complexity: Quantus' formulas in numpy (Gini of |a|/max|a| + 1e-7;
  entropy of |a|/Σ|a|).
"""

import math
import os
import sys
import warnings

import numpy as np
import torch
import torchvision.transforms.functional as TF
from captum.attr import IntegratedGradients, Saliency
from captum.metrics import infidelity, sensitivity_max

sys.path.insert(0, os.path.dirname(__file__))
from captum_baseline import load  # noqa: E402
from engine_rng import EngineRng as Rng  # noqa: E402

warnings.filterwarnings("ignore")
torch.set_num_threads(2)
OUT = "tests/fixtures/metrics"
def engine_noise(ids, samples, d, seed, draw):
    """(len(ids)·samples, d) float32: input i's sample s, feature f, in that order."""
    rows = []
    for i in ids:
        rng = Rng(seed, int(i))
        for _ in range(samples):
            rows.append([np.float32(draw(rng)) for _ in range(d)])
    return torch.tensor(np.array(rows, dtype=np.float32))


def engine_subsets(ids, samples, g, k, seed):
    """Each input's `samples` subsets of k of g units: the first k of a Fisher–Yates
    permutation from the input's stream (src/ops/rng.rs `permutation`, `below`)."""
    out = {}
    for i in ids:
        rng = Rng(seed, int(i))
        subsets = [rng.permutation(g)[:k] for _ in range(samples)]
        out[int(i)] = subsets
    return out


def quantus_faithfulness_correlation(model, x, t, attr, samples, k, seed):
    """Quantus 0.6's FaithfulnessCorrelation, its np.random.choice answering with the
    engine's subsets (Quantus draws one subset per input, input by input, run by run)."""
    import quantus

    subsets = engine_subsets(range(x.shape[0]), samples, x[0].numel(), k, seed)
    calls = iter([subsets[i][r] for r in range(samples) for i in range(x.shape[0])])
    real_choice = np.random.choice
    np.random.choice = lambda *a, **kw: np.array(next(calls))
    try:
        metric = quantus.FaithfulnessCorrelation(nr_runs=samples, subset_size=k, perturb_baseline="black", return_aggregate=False, disable_warnings=True)
        return metric(model=model, x_batch=x.numpy(), y_batch=t.numpy(), a_batch=attr.numpy(), device="cpu", softmax=False)
    finally:
        np.random.choice = real_choice


def quantus_pixel_flipping(model, x, t, attr, step):
    import quantus

    if not hasattr(np, "trapz"):  # Quantus 0.6 calls np.trapz, which numpy 2.4 renamed
        np.trapz = np.trapezoid

    metric = quantus.PixelFlipping(features_in_step=step, perturb_baseline="black", return_auc_per_sample=True, disable_warnings=True)
    return metric(model=model, x_batch=x.numpy(), y_batch=t.numpy(), a_batch=attr.numpy(), device="cpu", softmax=True)


def engine_reinitialised(model, layers, seed):
    """src/model/mod.rs `reinitialised`: a copy with the weights, then the bias, of each
    layer (its index in the architecture) drawn uniform in ±1/√fan_in from the engine's
    generator (seed, layer index)."""
    import copy

    m = copy.deepcopy(model)
    modules = list(m.children())
    for l in layers:
        mod = modules[l]
        fan_in = mod.weight[0].numel()
        bound = 1.0 / math.sqrt(fan_in)
        rng = Rng(seed, l)
        with torch.no_grad():
            w = [np.float32(bound * (2.0 * rng.uniform() - 1.0)) for _ in range(mod.weight.numel())]
            mod.weight.copy_(torch.tensor(np.array(w, dtype=np.float32)).reshape(mod.weight.shape))
            b = [np.float32(bound * (2.0 * rng.uniform() - 1.0)) for _ in range(mod.bias.numel())]
            mod.bias.copy_(torch.tensor(np.array(b, dtype=np.float32)))
    return m


def randomization(model, x, t, attr, explain, cascade, seed):
    """Quantus' ModelParameterRandomisation with return_average_correlation: the mean over
    the steps of scipy's Spearman ρ between |φ| and |φ| of the re-initialised model."""
    from scipy.stats import spearmanr

    weighted = [k for k, mod in enumerate(model.children()) if isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d))]
    sums = np.zeros(len(x))
    for step in range(len(weighted)):
        chosen = weighted[len(weighted) - 1 - step:] if cascade else [weighted[len(weighted) - 1 - step]]
        rand = engine_reinitialised(model, chosen, seed)
        other = explain(rand, x, t).detach()
        for i in range(len(x)):
            sums[i] += spearmanr(attr[i].abs().flatten().numpy(), other[i].abs().flatten().numpy()).statistic
    return sums / len(weighted)


def grad_cam_road(model, x, t, attr, morf, percentiles, seed, noise=0.01):
    """pytorch-grad-cam 1.5's ROADMostRelevantFirstAverage / ROADLeastRelevantFirstAverage
    (ClassifierOutputTarget: the target's logit, after − before), the map summed over
    channels, its imputation noise (torch.randn_like) answered with the engine's draws:
    for input i and the k-th percentile, stream (seed, id · 16 + k), channel by channel,
    the removed pixels in index order."""
    import pytorch_grad_cam.metrics.road as road
    from pytorch_grad_cam.metrics.road import ROADLeastRelevantFirstAverage, ROADMostRelevantFirstAverage
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cams = attr.sum(1).numpy()
    out = np.zeros(len(x))
    real = road.torch.randn_like
    for i in range(len(x)):
        draws = iter([Rng(seed, i * 16 + k) for k in range(len(percentiles))])

        def randn_like(t_, draws=draws):
            rng = next(draws)
            vals = np.array([rng.normal() for _ in range(t_.numel())], dtype=np.float32)
            return torch.from_numpy(vals).reshape(t_.shape)

        road.torch.randn_like = randn_like
        try:
            cls = ROADMostRelevantFirstAverage if morf else ROADLeastRelevantFirstAverage
            metric = cls(percentiles=percentiles)
            out[i] = metric(x[i:i + 1], cams[i:i + 1], [ClassifierOutputTarget(int(t[i]))], model)[0]
        finally:
            road.torch.randn_like = real
    return out


def save(name, values):
    os.makedirs(OUT, exist_ok=True)
    np.save(os.path.join(OUT, f"{name}.npy"), np.asarray(values, dtype=np.float64))
    print(name, np.round(np.asarray(values)[:3], 6))


def curve(model, x, t, attr, steps, insert, substrate, block=1):
    """RISE deletion / insertion AUC per input; units are block×block patches."""
    out = []
    n, c, h, w = x.shape
    for i in range(n):
        a = attr[i].sum(0)  # one channel
        if block > 1:
            scores = a.reshape(h // block, block, w // block, block).sum((1, 3)).flatten()
        else:
            scores = a.flatten()
        g = scores.numel()
        order = sorted(range(g), key=lambda u: (-float(scores[u]), u))
        copies = []
        for k in range(steps + 1):
            take = order[: k * g // steps]
            mask = torch.zeros(h, w, dtype=torch.bool)
            for u in take:
                if block > 1:
                    r, q = divmod(u, w // block)
                    mask[r * block:(r + 1) * block, q * block:(q + 1) * block] = True
                else:
                    mask[u // w, u % w] = True
            if insert:
                copies.append(torch.where(mask, x[i], substrate[i]))
            else:
                copies.append(torch.where(mask, substrate[i], x[i]))
        with torch.no_grad():
            p = torch.softmax(model(torch.stack(copies)).double(), 1)[:, t[i]]
        out.append(float((p.sum() - p[0] / 2 - p[-1] / 2) / steps))
    return out


def sparseness(a):
    a = np.abs(a.astype(np.float64).flatten())
    a = a / a.max() + 1e-7
    a = np.sort(a)
    n = a.shape[0]
    return float(np.sum((2 * np.arange(1, n + 1) - n - 1) * a) / (n * np.sum(a)))


def complexity(a):
    a = np.abs(a.astype(np.float64).flatten())
    p = a / a.sum()
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def main():
    cnn = load("digits_cnn")
    x = torch.from_numpy(np.load("data/digits_test_x.npy")[:10])
    ids = list(range(10))
    with torch.no_grad():
        t = cnn(x).argmax(1)
    d = 64
    ig = IntegratedGradients(cnn)
    sal = Saliency(cnn)
    maps = {
        "ig": ig.attribute(x, baselines=torch.zeros_like(x), target=t, n_steps=50).detach(),
        "saliency": sal.attribute(x, target=t).detach(),
    }
    for name, attr in maps.items():
        for stdev, normalize, seed in ((0.003, False, 0), (0.1, True, 7)):
            noise = engine_noise(ids, 10, d, seed, lambda r: r.normal() * stdev).reshape(-1, 1, 8, 8)

            def perturb(inputs, noise=noise):
                return noise, inputs - noise

            v = infidelity(cnn, perturb, x, attr, target=t, n_perturb_samples=10, normalize=normalize)
            save(f"infidelity_{name}_{stdev}_{normalize}_{seed}", v.detach().numpy())
        for radius, seed in ((0.02, 0), (0.2, 3)):
            uni = engine_noise(ids, 5, d, seed, lambda r: radius * (2.0 * r.uniform() - 1.0)).reshape(-1, 1, 8, 8)

            def perturb_u(inputs, perturb_radius, uni=uni):
                if isinstance(inputs, tuple):
                    return (inputs[0] + uni,)
                return inputs + uni

            # (A tuple back: Captum 0.9's sensitivity_max iterates over what the
            # explanation function returns for the unperturbed inputs, and a bare
            # tensor would be iterated over its batch.)
            def explain(inp, target, name=name):
                inp = inp[0] if isinstance(inp, tuple) else inp
                if name == "ig":
                    return (ig.attribute(inp, baselines=torch.zeros_like(inp), target=target, n_steps=50),)
                return (sal.attribute(inp, target=target),)
            v = sensitivity_max(explain, x, perturb_func=perturb_u, perturb_radius=radius, n_perturb_samples=5, target=t)
            save(f"sensitivity_max_{name}_{radius}_{seed}", v.detach().numpy())
        zeros = torch.zeros_like(x)
        save(f"deletion_{name}_10", curve(cnn, x, t, attr, 10, False, zeros))
        save(f"insertion_{name}_20", curve(cnn, x, t, attr, 20, True, zeros))
        save(f"deletion_{name}_7_patch2", curve(cnn, x, t, attr, 7, False, zeros, block=2))
        blurred = TF.gaussian_blur(x, kernel_size=7, sigma=1.0)
        save(f"insertion_{name}_12_blur1", curve(cnn, x, t, attr, 12, True, blurred))
        half = torch.full_like(x, 0.5)
        save(f"deletion_{name}_10_base05", curve(cnn, x, t, attr, 10, False, half))
        save(f"pixel_flipping_{name}_1", quantus_pixel_flipping(cnn, x, t, attr, 1))
        save(f"pixel_flipping_{name}_4", quantus_pixel_flipping(cnn, x, t, attr, 4))
        save(f"faithfulness_correlation_{name}_50_16_0", quantus_faithfulness_correlation(cnn, x, t, attr, 50, 16, 0))
        save(f"faithfulness_correlation_{name}_30_5_9", quantus_faithfulness_correlation(cnn, x, t, attr, 30, 5, 9))
        def explain_with(m, inp, target, name=name):
            if name == "ig":
                return IntegratedGradients(m).attribute(inp, baselines=torch.zeros_like(inp), target=target, n_steps=50)
            return Saliency(m).attribute(inp, target=target)

        save(f"randomization_{name}_top_down_0", randomization(cnn, x, t, attr, explain_with, True, 0))
        save(f"randomization_{name}_independent_5", randomization(cnn, x, t, attr, explain_with, False, 5))
        save(f"road_{name}_morf", grad_cam_road(cnn, x, t, attr, True, [10, 20, 30, 40, 50, 60, 70, 80, 90], 0))
        save(f"road_{name}_lerf_50_3", grad_cam_road(cnn, x, t, attr, False, [50], 3))
        save(f"sparseness_{name}", [sparseness(a.numpy()) for a in attr])
        save(f"complexity_{name}", [complexity(a.numpy()) for a in attr])


if __name__ == "__main__":
    main()
