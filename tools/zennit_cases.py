"""Reference relevance from Zennit 0.5.1 for `lrp(rule = …)` with the rules Captum lacks
and `lrp(composite = …)`: written to tests/fixtures/zennit/<model>__<case>/{attributions,
inputs,targets}.npy (and the small models made here as model.onnx). Optional, outside CI
(it needs torch, torchvision, onnx and zennit). Run from the repository root:

    ~/zoo-venv/bin/pip install zennit==0.5.1
    ~/zoo-venv/bin/python tools/zennit_cases.py

Relevance starts from the one-hot target (Zennit's Gradient attributor given a one-hot
output gradient). Models:
  digits_cnn, cancer_mlp  the shipped models (models/*.json + safetensors)
  resnet_basic            the zoo's small ResNet (tools/make_zoo.py, same seed and weights),
                          with Zennit's ResNetCanonizer (batch norms merged into the
                          convolutions, the residual sum a `Sum` module taking Norm)
  bn_cnn                  a CNN whose batch norms the ONNX export keeps (TrainingMode.PRESERVE)
                          so that the engine merges them itself; SequentialMergeBatchNorm here
  plain_cnn               a CNN without biases: the composites conserve relevance exactly
"""

import csv
import os
import sys
import warnings

import numpy as np
import torch
from zennit.attribution import Gradient
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.composites import EpsilonAlpha2Beta1, EpsilonGammaBox, EpsilonPlusFlat, LayerMapComposite, layer_map_base
from zennit.rules import AlphaBeta, Flat, WSquare, ZBox
from zennit.torchvision import ResNetCanonizer
from zennit.types import Linear

sys.path.insert(0, os.path.dirname(__file__))
from captum_baseline import load  # noqa: E402

warnings.filterwarnings("ignore")
torch.set_num_threads(2)
OUT = "tests/fixtures/zennit"


def save(name, x, t, attr, model=None):
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    np.save(os.path.join(d, "inputs.npy"), x.detach().numpy().astype(np.float32))
    np.save(os.path.join(d, "targets.npy"), t.numpy().astype(np.int64))
    np.save(os.path.join(d, "attributions.npy"), attr.detach().numpy().astype(np.float32))
    if model is not None:
        torch.onnx.export(model, (x,), os.path.join(d, "model.onnx"), input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}}, dynamo=False, opset_version=18,
                          training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False)
    print(name, tuple(attr.shape), f"sum per input {attr.flatten(1).sum(1).detach().numpy().round(5)}")


def relevance(model, x, t, composite):
    one_hot = torch.nn.functional.one_hot(t, model(x).shape[1]).float()
    with Gradient(model=model, composite=composite) as attributor:
        _, rel = attributor(x.clone().requires_grad_(True), one_hot)
    return rel


def composites(low, high, canonizers):
    return {
        "epsilon_plus_flat": lambda: EpsilonPlusFlat(canonizers=canonizers()),
        "epsilon_gamma_box": lambda: EpsilonGammaBox(low=low, high=high, canonizers=canonizers()),
        "epsilon_alpha2_beta1": lambda: EpsilonAlpha2Beta1(canonizers=canonizers()),
    }


def single_rules(low, high, canonizers):
    """One rule on every linear and convolution layer, the composites' base map elsewhere."""
    def everywhere(rule):
        return lambda: LayerMapComposite(layer_map=layer_map_base() + [(Linear, rule())], canonizers=canonizers())
    return {
        "alpha_beta": everywhere(lambda: AlphaBeta(alpha=2.0, beta=1.0)),
        "alpha_beta_3_2": everywhere(lambda: AlphaBeta(alpha=3.0, beta=2.0)),
        "flat": everywhere(Flat),
        "w_square": everywhere(WSquare),
        "z_box": everywhere(lambda: ZBox(low=low, high=high)),
    }


class BnCnn(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.BatchNorm2d(6), torch.nn.ReLU(),
            torch.nn.Conv2d(6, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
            torch.nn.Linear(8, 5))

    def forward(self, x):
        return self.features(x)


class PlainCnn(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 6, 3, padding=1, bias=False), torch.nn.ReLU(),
            torch.nn.Conv2d(6, 8, 3, padding=1, bias=False), torch.nn.ReLU(),
            torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(8 * 4 * 4, 5, bias=False))

    def forward(self, x):
        return self.features(x)


def randomise_norms(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def cases(name, model, x, t, low, high, canonizers=lambda: [], rules=True, onnx=False):
    model.eval()
    table = composites(low, high, canonizers)
    if rules:
        table.update(single_rules(low, high, canonizers))
    for case, make in table.items():
        # The export (once, with the first case) is of the model as it is: Zennit's
        # canonizers restore what they merged when the attributor exits.
        export = model if onnx and case == "epsilon_plus_flat" else None
        save(f"{name}__{case}", x, t, relevance(model, x, t, make()), export)


def main():
    cnn = load("digits_cnn").eval()
    x = torch.from_numpy(np.load("data/digits_test_x.npy")[:10])
    cases("digits_cnn", cnn, x, cnn(x).argmax(1), 0.0, 1.0)

    mlp = load("cancer_mlp").eval()
    rows = list(csv.reader(open("data/cancer_test.csv")))
    cx = torch.tensor([[float(v) for v in r[:-1]] for r in rows[1:11]], dtype=torch.float32)
    # Standardised features: a box of ±4 standard deviations.
    cases("cancer_mlp", mlp, cx, mlp(cx).argmax(1), -4.0, 4.0)

    sys.path.insert(0, os.path.dirname(__file__))
    from make_zoo import rebuilt

    resnet, rx, rt = rebuilt("resnet_basic")
    cases("resnet_basic", resnet, rx, rt, -4.0, 4.0, canonizers=lambda: [ResNetCanonizer()], rules=False)

    torch.manual_seed(21)
    bn = BnCnn()
    randomise_norms(bn, 22)
    bx = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(23))
    bn.eval()
    cases("bn_cnn", bn, bx, bn(bx).argmax(1), -3.0, 3.0, canonizers=lambda: [SequentialMergeBatchNorm()],
          rules=False, onnx=True)

    torch.manual_seed(31)
    plain = PlainCnn().eval()
    px = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(32))
    cases("plain_cnn", plain, px, plain(px).argmax(1), 0.0, 1.0, rules=False, onnx=True)


if __name__ == "__main__":
    main()
