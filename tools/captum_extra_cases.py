"""Reference cases the shared oracle lacks, computed with Captum 0.9.0 on the shipped
models: written to tests/fixtures/captum_extra/<model>__<case>/{attributions,inputs,targets}.npy
for the parity tests. Optional, outside CI (it needs torch and captum; see
tools/captum_baseline.py for the setup). Run from the repository root:

    ~/captum-venv/bin/python tools/captum_extra_cases.py [noise] [neurons] [lrp] [residual]

(`noise`, `neurons`, `lrp`: only those cases.)
"""

import os
import sys
import warnings

import numpy as np
import torch
from captum.attr import (LRP, Deconvolution, LayerDeepLift, LayerLRP, FeatureAblation, IntegratedGradients, NeuronDeconvolution,
                         NeuronDeepLift, NeuronGuidedBackprop, NoiseTunnel, Occlusion, Saliency)

sys.path.insert(0, os.path.dirname(__file__))
from captum_baseline import load  # noqa: E402

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


if __name__ == "__main__":
    parts = {"noise": noise_tunnel, "neurons": neurons, "lrp": lrp, "residual": residual}
    if sys.argv[1:]:
        for part in sys.argv[1:]:
            parts[part]()
    else:
        main()
        neurons()
        lrp()
        residual()
        noise_tunnel()
