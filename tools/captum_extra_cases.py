"""Reference cases the shared oracle lacks, computed with Captum 0.9.0 on the shipped
models: written to tests/fixtures/captum_extra/<model>__<case>/{attributions,inputs,targets}.npy
for the parity tests. Optional, outside CI (it needs torch and captum; see
tools/captum_baseline.py for the setup). Run from the repository root:

    ~/captum-venv/bin/python tools/captum_extra_cases.py [noise] [neurons] [lrp] [residual] [surrogates] [shap]

(`noise`, `neurons`, `lrp`, …: only those cases. `surrogates` also needs scikit-learn.)
"""

import os
import sys
import warnings

import numpy as np
import torch
from captum.attr import (LRP, DeepLiftShap, Deconvolution, FeaturePermutation, GradientShap, KernelShap, LayerGradientShap, Lime, NeuronGradientShap, LayerDeepLift, LayerLRP, FeatureAblation, IntegratedGradients, NeuronDeconvolution,
                         NeuronDeepLift, NeuronGuidedBackprop, NoiseTunnel, Occlusion, Saliency)

sys.path.insert(0, os.path.dirname(__file__))
from captum_baseline import load  # noqa: E402
from engine_rng import EngineRng  # noqa: E402

warnings.filterwarnings("ignore")
torch.set_num_threads(2)
OUT = "tests/fixtures/captum_extra"


def save(name, x, t, attr):
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    np.save(os.path.join(d, "inputs.npy"), x.detach().numpy().astype(np.float32))
    np.save(os.path.join(d, "targets.npy"), t.numpy().astype(np.int64))
    np.save(os.path.join(d, "attributions.npy"), attr.detach().numpy().astype(np.float32))
    print(name, tuple(attr.shape))


def main():
    cnn = load("digits_cnn")
    mlp = load("cancer_mlp")
    x = torch.from_numpy(np.load("data/digits_test_x.npy")[:10])
    t = cnn(x).argmax(1)
    import csv

    rows = list(csv.reader(open("data/cancer_test.csv")))
    cx = torch.tensor([[float(v) for v in r[:-1]] for r in rows[1:11]], dtype=torch.float32)
    ct = mlp(cx).argmax(1)
    # Occlusion whose windows do not tile the image: Captum adds a clipped last window.
    save("digits_cnn__occlusion_3x3_s2", x, t, Occlusion(cnn).attribute(x, sliding_window_shapes=(1, 3, 3), strides=(1, 2, 2), baselines=0, target=t))
    save("digits_cnn__occlusion_2x2_s2_base05", x, t, Occlusion(cnn).attribute(x, sliding_window_shapes=(1, 2, 2), strides=(1, 2, 2), baselines=0.5, target=t))
    save("cancer_mlp__occlusion_3_s2", cx, ct, Occlusion(mlp).attribute(cx, sliding_window_shapes=(3,), strides=(2,), baselines=0, target=ct))
    save("digits_cnn__feature_ablation", x, t, FeatureAblation(cnn).attribute(x, baselines=0, target=t))
    save("digits_cnn__deconvolution", x, t, Deconvolution(cnn).attribute(x, target=t))
    save("cancer_mlp__deconvolution", cx, ct, Deconvolution(mlp).attribute(cx, target=ct))
    for method in ["riemann_left", "riemann_right", "riemann_middle"]:
        ig = IntegratedGradients(cnn).attribute(x, baselines=torch.zeros_like(x), target=t, n_steps=20, method=method)
        save(f"digits_cnn__ig_{method}_20", x, t, ig)
    save("digits_cnn__ig_target3_gl_8", x, torch.full_like(t, 3), IntegratedGradients(cnn).attribute(x, baselines=torch.zeros_like(x), target=3, n_steps=8))


def neurons():
    """Guided backprop, deconvolution and DeepLift (zero baseline) of unit 5 of fc1 (no
    class targets), and LayerDeepLift at fc1."""
    import csv

    cnn = load("digits_cnn")
    mlp = load("cancer_mlp")
    x = torch.from_numpy(np.load("data/digits_test_x.npy")[:10])
    rows = list(csv.reader(open("data/cancer_test.csv")))
    cx = torch.tensor([[float(v) for v in r[:-1]] for r in rows[1:11]], dtype=torch.float32)
    none = torch.zeros(0, dtype=torch.int64)
    for name, model, inputs in (("digits_cnn", cnn, x), ("cancer_mlp", mlp, cx)):
        for label, cls in (("guided_backprop", NeuronGuidedBackprop), ("deconvolution", NeuronDeconvolution)):
            attr = cls(model, model.fc1).attribute(inputs, neuron_selector=5)
            save(f"{name}__neuron_{label}_fc1_5", inputs, none, attr)
        if name == "cancer_mlp":
            # (On the digits CNN Captum's DeepLift is not conservative, captum#1104: the
            # test checks the unit's conservation there instead.)
            attr = NeuronDeepLift(model, model.fc1).attribute(inputs, neuron_selector=5, baselines=0)
            save(f"{name}__neuron_deeplift_fc1_5", inputs, none, attr)
        # LayerDeepLift at fc1 (zero baseline), at the predicted class (after the max-pool,
        # so Captum's rule is conservative on the digits too).
        t = model(inputs).argmax(1)
        attr = LayerDeepLift(model, model.fc1).attribute(inputs, baselines=0, target=t)
        save(f"{name}__layer_deeplift_fc1", inputs, t, attr)


class FunctionalFlatten(torch.nn.Module):
    """The digits CNN with its flatten done in forward: Captum's LRP has no rule for an
    nn.Flatten module (it refuses it), and a reshape needs none."""

    def __init__(self, cnn):
        super().__init__()
        self.features = torch.nn.Sequential(cnn.conv1, cnn.relu1, cnn.conv2, cnn.relu2, cnn.pool)
        self.head = torch.nn.Sequential(cnn.fc1, cnn.relu3, cnn.fc2)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


def lrp():
    """Captum's LRP with its default rules (ε = 1e-9 everywhere) on both models, at the
    predicted class."""
    import csv

    cnn = FunctionalFlatten(load("digits_cnn")).eval()
    mlp = load("cancer_mlp")
    x = torch.from_numpy(np.load("data/digits_test_x.npy")[:10])
    rows = list(csv.reader(open("data/cancer_test.csv")))
    cx = torch.tensor([[float(v) for v in r[:-1]] for r in rows[1:11]], dtype=torch.float32)
    from captum.attr._utils.lrp_rules import Alpha1_Beta0_Rule, GammaRule

    for name, model, inputs in (("digits_cnn", cnn, x), ("cancer_mlp", mlp, cx)):
        t = model(inputs).argmax(1)
        save(f"{name}__lrp", inputs, t, LRP(model).attribute(inputs, target=t))
        # The other rules on every linear and convolution layer (pools keep ε); Captum
        # removes the rules after each call.
        for label, rule in (("gamma", lambda: GammaRule(gamma=0.25)), ("z_plus", Alpha1_Beta0_Rule)):
            for m in model.modules():
                if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
                    m.rule = rule()
            save(f"{name}__lrp_{label}", inputs, t, LRP(model).attribute(inputs, target=t))
    # LayerLRP: the relevance at a layer's output (ε-rule).
    t = cnn(x).argmax(1)
    for label, layer in (("conv2", cnn.features[2]), ("fc1", cnn.head[0])):
        save(f"digits_cnn__layer_lrp_{label}", x, t, LayerLRP(cnn, layer).attribute(x, target=t))
    t = mlp(cx).argmax(1)
    save("cancer_mlp__layer_lrp_fc1", cx, t, LayerLRP(mlp, mlp.fc1).attribute(cx, target=t))


class Residual(torch.nn.Module):
    """A small residual CNN whose sum is Captum's Addition_Module (LRP's rule for it) and
    whose pool is a module (AdaptiveAvgPool2d), exported to ONNX for the engine."""

    def __init__(self):
        super().__init__()
        from captum.attr._utils.custom_modules import Addition_Module

        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.relu1 = torch.nn.ReLU()
        self.conv2 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.relu2 = torch.nn.ReLU()
        self.conv3 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.add = Addition_Module()
        self.relu3 = torch.nn.ReLU()
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(8, 5)

    def forward(self, x):
        a = self.relu1(self.conv1(x))
        b = self.conv3(self.relu2(self.conv2(a)))
        return self.fc(self.pool(self.relu3(self.add(b, a))).flatten(1))


def residual():
    """LRP (ε-rule) through a residual sum: the model's ONNX export, inputs and Captum's
    relevance, in captum_extra/residual__lrp/."""
    torch.manual_seed(5)
    model = Residual().eval()
    x = torch.randn(4, 3, 12, 12, generator=torch.Generator().manual_seed(6))
    t = model(x).argmax(1)
    d = os.path.join(OUT, "residual__lrp")
    os.makedirs(d, exist_ok=True)
    torch.onnx.export(model, (x,), os.path.join(d, "model.onnx"), input_names=["input"], output_names=["logits"],
                      dynamo=False, opset_version=18)
    save("residual__lrp", x, t, LRP(model).attribute(x, target=t))


def noise_tunnel():
    """NoiseTunnel(Saliency) on 3 digits, 1000 samples of N(0, 0.2²), each nt_type, with
    torch seeds 0 and 1: random, so the tests compare the engine's own draws with them
    within the distance the two seeds have from each other."""
    cnn = load("digits_cnn")
    x = torch.from_numpy(np.load("data/digits_test_x.npy")[:3])
    t = cnn(x).argmax(1)
    for nt_type in ["smoothgrad", "smoothgrad_sq", "vargrad"]:
        for seed in (0, 1):
            torch.manual_seed(seed)
            attr = NoiseTunnel(Saliency(cnn)).attribute(x, nt_type=nt_type, nt_samples=1000,
                                                         nt_samples_batch_size=250, stdevs=0.2, target=t)
            save(f"digits_cnn__noise_tunnel_{nt_type}_seed{seed}", x, t, attr)


def patch_mask(size, patch):
    """Captum's feature_mask of square patches over a [1, size, size] image, numbered in
    row-major order of the patches (the engine's GRANULARITY patch(k) groups)."""
    per_row = -(-size // patch)
    return torch.tensor([[(r // patch) * per_row + c // patch for c in range(size)] for r in range(size)]).reshape(1, 1, size, size)


def engine_coalitions(kind, seed, stream, samples, groups):
    """The coalitions src/ops/perturbation.rs draws for one input (kernel_shap or lime)."""
    rng = EngineRng(seed, stream)
    out = []
    if kind == "lime":
        for _ in range(samples):
            out.append([1 if rng.uniform() < 0.5 else 0 for _ in range(groups)])
        return out
    sizes = [1.0 / (k * (groups - k)) for k in range(1, groups)]
    total = sum(sizes)
    for s in range(samples):
        if s == 0:
            k = groups
        elif s == 1:
            k = 0
        else:
            u = rng.uniform() * total
            k = len(sizes)
            for j, p in enumerate(sizes):
                if u < p:
                    k = j + 1
                    break
                u -= p
        present = [0] * groups
        for g in rng.permutation(groups)[:k]:
            present[g] = 1
        out.append(present)
    return out


def with_engine_draws(model, kind, x, t, samples, seed, mask=None, groups=None):
    """Captum's Lime / KernelShap on each input, fed the engine's coalitions through
    perturb_func (everything else Captum's default)."""
    from captum._utils.models.linear_model import SkLearnLasso, SkLearnLinearRegression
    from captum.attr._core.lime import get_exp_kernel_similarity_function

    rows = []
    for i in range(x.shape[0]):
        draws = iter(engine_coalitions(kind, seed, i, samples, groups))
        perturb = lambda original_inp, **kwargs: torch.tensor([next(draws)])
        if kind == "lime":
            explainer = Lime(model, SkLearnLasso(alpha=0.01), get_exp_kernel_similarity_function(), perturb)
        else:
            ks = KernelShap(model)
            explainer = Lime(model, SkLearnLinearRegression(), ks.kernel_shap_similarity_kernel, perturb)
        rows.append(explainer.attribute(x[i : i + 1], target=int(t[i]), n_samples=samples, feature_mask=mask))
    return torch.cat(rows)


def float64_fits(model, kind, x, t, samples, seed, mask, groups):
    """The same coalitions, outputs and weights as `with_engine_draws`, fitted by
    scikit-learn in float64 (the Lasso to convergence), which Captum's float32 fit only
    approximates; per-feature, as Captum returns them."""
    from sklearn.linear_model import Lasso, LinearRegression

    out = []
    for i in range(x.shape[0]):
        coalitions = np.array(engine_coalitions(kind, seed, i, samples, groups), dtype=np.float64)
        flat_mask = (mask.reshape(-1) if mask is not None else torch.arange(groups)).numpy()
        keep = torch.tensor(coalitions[:, flat_mask], dtype=torch.float32).reshape((samples,) + tuple(x.shape[1:]))
        copies = keep * x[i]  # the baseline is 0
        with torch.no_grad():
            y = model(copies)[:, int(t[i])].double().numpy()
        if kind == "lime":
            xi = x[i].reshape(-1).double()
            flat = copies.reshape(samples, -1).double()
            cos = (flat @ xi) / (torch.clamp(flat.norm(dim=1), min=1e-8) * max(xi.norm().item(), 1e-8))
            w = torch.exp(-((1 - cos) ** 2) / 2).numpy()
            fit = Lasso(alpha=0.01, tol=1e-14, max_iter=1_000_000).fit(coalitions, y, sample_weight=w)
        else:
            k = coalitions.sum(1)
            w = np.where((k == 0) | (k == groups), 1e6, 1.0)
            fit = LinearRegression().fit(coalitions, y, sample_weight=w)
        out.append(fit.coef_[flat_mask].reshape(tuple(x.shape[1:])))
    return np.stack(out)


def surrogates():
    """KernelShap and Lime (Captum's defaults but n_samples) with torch seeds 0 and 1,
    on 3 cancer patients (every column a feature) and 3 digits (2×2 patches), for the
    statistical tests; FeaturePermutation on 2 inputs (whose only non-identity
    permutation is the swap), exact; and scikit-learn's Lasso and LinearRegression on
    a fixed weighted problem, for the surrogate fits themselves."""
    import csv

    from sklearn.linear_model import Lasso, LinearRegression

    cnn = load("digits_cnn")
    mlp = load("cancer_mlp")
    x = torch.from_numpy(np.load("data/digits_test_x.npy")[:3])
    t = cnn(x).argmax(1)
    rows = list(csv.reader(open("data/cancer_test.csv")))
    cx = torch.tensor([[float(v) for v in r[:-1]] for r in rows[1:4]], dtype=torch.float32)
    ct = mlp(cx).argmax(1)
    mask = patch_mask(8, 2)
    for seed in (0, 1):
        torch.manual_seed(seed)
        save(f"cancer_mlp__kernel_shap_2000_seed{seed}", cx, ct, KernelShap(mlp).attribute(cx, target=ct, n_samples=2000, perturbations_per_eval=500))
        torch.manual_seed(seed)
        save(f"digits_cnn__kernel_shap_patch2_1000_seed{seed}", x, t, KernelShap(cnn).attribute(x, target=t, n_samples=1000, feature_mask=mask, perturbations_per_eval=500))
        torch.manual_seed(seed)
        save(f"cancer_mlp__lime_2000_seed{seed}", cx, ct, Lime(mlp).attribute(cx, target=ct, n_samples=2000, perturbations_per_eval=500))
        torch.manual_seed(seed)
        save(f"digits_cnn__lime_patch2_1000_seed{seed}", x, t, Lime(cnn).attribute(x, target=t, n_samples=1000, feature_mask=mask, perturbations_per_eval=500))
    # The engine's own draws (seed 3, input ids 0–2) through Captum: exact comparisons.
    for kind in ("kernel_shap", "lime"):
        for name, model, inputs, targets, samples, m, groups in (
            (f"cancer_mlp__{kind}_engine_draws", mlp, cx, ct, 300, None, 30),
            (f"digits_cnn__{kind}_patch2_engine_draws", cnn, x, t, 200, mask, 16),
        ):
            save(name, inputs, targets, with_engine_draws(model, kind, inputs, targets, samples, 3, mask=m, groups=groups))
            np.save(os.path.join(OUT, name, "float64_fit.npy"), float64_fits(model, kind, inputs, targets, samples, 3, m, groups).astype(np.float32))
    save("cancer_mlp__feature_permutation_2", cx[:2], ct[:2], FeaturePermutation(mlp).attribute(cx[:2], target=ct[:2]))
    save("digits_cnn__feature_permutation_patch2_2", x[:2], t[:2], FeaturePermutation(cnn).attribute(x[:2], target=t[:2], feature_mask=mask))
    # The surrogate fits: 40 coalitions of 12 features, outputs and weights as LIME
    # makes them; and 10 coalitions (fewer than the features) with the Shapley kernel's
    # two heavy rows, as KernelSHAP makes them.
    rng = np.random.default_rng(5)
    d = os.path.join(OUT, "surrogate_fits")
    os.makedirs(d, exist_ok=True)
    X = (rng.random((40, 12)) < 0.5).astype(np.float64)
    y = X @ rng.normal(size=12) + 0.3 * rng.normal(size=40) + 1.5
    w = np.exp(-rng.random(40))
    tight = Lasso(alpha=0.01, tol=1e-14, max_iter=1_000_000).fit(X, y, sample_weight=w)
    default = Lasso(alpha=0.01).fit(X.astype(np.float32), y.astype(np.float32), sample_weight=w.astype(np.float32))
    print("Lasso at sklearn's default tol (float32, as Captum calls it) vs converged: max |Δcoef| =", np.abs(default.coef_ - tight.coef_).max())
    Xs = (rng.random((10, 12)) < 0.5).astype(np.float64)
    Xs[0], Xs[1] = 1, 0
    ys = Xs @ rng.normal(size=12) + 0.5
    ws = np.ones(10)
    ws[:2] = 1e6
    lr = LinearRegression().fit(Xs, ys, sample_weight=ws)
    for name, v in [("lasso_x", X), ("lasso_y", y), ("lasso_w", w), ("lasso_coef", tight.coef_), ("lasso_intercept", np.array([tight.intercept_])),
                    ("ls_x", Xs), ("ls_y", ys), ("ls_w", ws), ("ls_coef", lr.coef_), ("ls_intercept", np.array([lr.intercept_]))]:
        np.save(os.path.join(d, f"{name}.npy"), np.asarray(v, dtype=np.float64))
    print("surrogate_fits")


def shap():
    """DeepLiftShap (exact) on 3 cancer patients against 10 others as the distribution;
    GradientShap, LayerGradientShap (fc1, conv2) and NeuronGradientShap (fc1 unit 5) with
    torch/numpy seeds 0 and 1 (Captum draws baselines and points with numpy), for the
    statistical tests, baselines digits[20:30] / cancer[20:30], noise stdev 0.1."""
    import csv

    cnn = load("digits_cnn")
    mlp = load("cancer_mlp")
    digits = torch.from_numpy(np.load("data/digits_test_x.npy"))
    x, xb = digits[:3], digits[20:30]
    t = cnn(x).argmax(1)
    rows = list(csv.reader(open("data/cancer_test.csv")))
    cancer = torch.tensor([[float(v) for v in r[:-1]] for r in rows[1:]], dtype=torch.float32)
    cx, cb = cancer[:3], cancer[20:30]
    ct = mlp(cx).argmax(1)
    save("cancer_mlp__deeplift_shap", cx, ct, DeepLiftShap(mlp).attribute(cx, baselines=cb, target=ct))
    none = torch.zeros(0, dtype=torch.int64)
    for seed in (0, 1):
        def reseed():
            torch.manual_seed(seed)
            np.random.seed(seed)
        reseed()
        save(f"cancer_mlp__gradient_shap_seed{seed}", cx, ct, GradientShap(mlp).attribute(cx, baselines=cb, n_samples=2000, stdevs=0.1, target=ct))
        reseed()
        save(f"digits_cnn__gradient_shap_seed{seed}", x, t, GradientShap(cnn).attribute(x, baselines=xb, n_samples=1000, stdevs=0.1, target=t))
        for layer in ("fc1", "conv2"):
            reseed()
            attr = LayerGradientShap(cnn, getattr(cnn, layer)).attribute(x, baselines=xb, n_samples=1000, stdevs=0.1, target=t)
            save(f"digits_cnn__layer_gradient_shap_{layer}_seed{seed}", x, t, attr)
        reseed()
        attr = NeuronGradientShap(cnn, cnn.fc1).attribute(x, neuron_selector=5, baselines=xb, n_samples=1000, stdevs=0.1)
        save(f"digits_cnn__neuron_gradient_shap_fc1_5_seed{seed}", x, none, attr)


if __name__ == "__main__":
    parts = {"noise": noise_tunnel, "neurons": neurons, "lrp": lrp, "residual": residual, "surrogates": surrogates, "shap": shap}
    if sys.argv[1:]:
        for part in sys.argv[1:]:
            parts[part]()
    else:
        main()
        neurons()
        lrp()
        residual()
        noise_tunnel()
        surrogates()
        shap()
