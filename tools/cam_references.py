"""Reference maps of the CAM family, computed with pytorch-grad-cam (PyPI `grad-cam`) on
the shipped digits CNN and on the zoo's ResNet: written to tests/fixtures/cam/ for the
parity tests. Optional, outside CI; run from the repository root with the zoo's
environment (tools/make_zoo.py) plus `pip install grad-cam`:

    /root/zoo-venv/bin/python tools/cam_references.py

Per model and method, `<model>__<method>.raw.npy` is the map at the layer's resolution
before pytorch-grad-cam's ReLU and scaling (its `get_cam_image`), and, on the digits
CNN, whose layer `relu2` keeps the 8×8 input resolution (no resize involved),
`<model>__<method>.npy` is the library's own output (ReLU, per-input min-max), as is
`<model>__fullgrad.npy` (FullGrad takes no layer). CAM (no class in pytorch-grad-cam) is
Σ_k W[c,k]·A_k with the head's weights, in torch. On the zoo's ViT, `vit.ln_1__<method>.raw.npy`
are the maps of the last block's ln_1 tokens laid out on their 4×4 grid (pytorch-grad-cam's
reshape_transform recipe for ViTs).
"""

import os
import sys
import warnings

import numpy as np
import torch
from pytorch_grad_cam import (AblationCAM, EigenCAM, EigenGradCAM, FullGrad, GradCAMPlusPlus, HiResCAM, LayerCAM,
                              ScoreCAM, XGradCAM)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

sys.path.insert(0, os.path.dirname(__file__))
from captum_baseline import load  # noqa: E402

warnings.filterwarnings("ignore")
torch.set_num_threads(2)
OUT = "tests/fixtures/cam"
METHODS = {
    "gradcam_plus_plus": GradCAMPlusPlus,
    "xgradcam": XGradCAM,
    "hirescam": HiResCAM,
    "layercam": LayerCAM,
    "eigencam": EigenCAM,
    "eigengradcam": EigenGradCAM,
    "scorecam": ScoreCAM,
    "ablationcam": AblationCAM,
}


def save(name, array):
    np.save(os.path.join(OUT, name), np.ascontiguousarray(array, dtype=np.float32))


def references(tag, model, layer, x, targets, full_output):
    for name, cls in METHODS.items():
        cam = cls(model=model, target_layers=[layer])
        wanted = [ClassifierOutputTarget(int(t)) for t in targets]
        output = cam(input_tensor=x, targets=wanted)
        acts = cam.activations_and_grads.activations[0].cpu().numpy()
        grads = cam.activations_and_grads.gradients[0].cpu().numpy() if cam.activations_and_grads.gradients else None
        raw = cam.get_cam_image(x, layer, wanted, acts, grads, False)
        save(f"{tag}__{name}.raw.npy", raw)
        if full_output:
            save(f"{tag}__{name}.npy", output)
        print(tag, name, raw.shape, file=sys.stderr)


def fullgrad(tag, model, x, targets):
    """FullGrad's own output (it takes every bias layer, no target layer)."""
    cam = FullGrad(model=model, target_layers=[])
    save(f"{tag}__fullgrad.npy", cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in targets]))
    print(tag, "fullgrad", file=sys.stderr)


def main():
    os.makedirs(OUT, exist_ok=True)
    cnn = load("digits_cnn")
    x = torch.from_numpy(np.load("data/digits_test_x.npy")[:10])
    t = cnn(x).argmax(1)
    save("digits_cnn__inputs.npy", x.numpy())
    np.save(os.path.join(OUT, "digits_cnn__targets.npy"), t.numpy().astype(np.int64))
    references("digits_cnn", cnn, cnn.relu2, x, t, True)
    fullgrad("digits_cnn", cnn, x, t)

    # The zoo's ResNet, rebuilt as tools/make_zoo.py builds it (same seed: same weights).
    import make_zoo

    model, zx, zt = make_zoo.rebuilt("resnet_basic")
    # layer2: 8×8 positions, more than its channels; layer4: 2×2, fewer (the two ways
    # to the principal component).
    references("resnet_basic.layer2", model, model.layer2, zx, zt, False)
    references("resnet_basic.layer4", model, model.layer4, zx, zt, False)
    fullgrad("resnet_basic", model, zx, zt)
    # CAM: the layer feeds a global average pool and the linear head `fc`.
    acts = {}
    handle = model.layer4.register_forward_hook(lambda m, i, o: acts.setdefault("a", o.detach()))
    with torch.no_grad():
        model(zx)
    handle.remove()
    w = model.fc.weight.detach()[zt]  # [n, channels]
    save("resnet_basic.layer4__cam.raw.npy", torch.einsum("nc,nchw->nhw", w, acts["a"]).numpy())
    vit_tokens(make_zoo)


def vit_tokens(make_zoo):
    """The zoo's ViT (4×4 patches and a class token), at the last block's ln_1 with
    pytorch-grad-cam's ViT recipe: reshape_transform drops the class token and lays the
    patch tokens out on their grid, channels first."""
    model, vx, vt = make_zoo.rebuilt("vit")

    def reshape_transform(tensor, side=4):
        result = tensor[:, 1:, :].reshape(tensor.size(0), side, side, tensor.size(2))
        return result.transpose(2, 3).transpose(1, 2)

    layer = model.encoder.layers[-1].ln_1
    for name, cls in METHODS.items():
        if name in ("scorecam", "ablationcam"):
            continue
        cam = cls(model=model, target_layers=[layer], reshape_transform=reshape_transform)
        wanted = [ClassifierOutputTarget(int(t)) for t in vt]
        cam(input_tensor=vx, targets=wanted)
        acts = cam.activations_and_grads.activations[0].cpu().numpy()
        grads = cam.activations_and_grads.gradients[0].cpu().numpy() if cam.activations_and_grads.gradients else None
        raw = cam.get_cam_image(vx, layer, wanted, acts, grads, False)
        save(f"vit.ln_1__{name}.raw.npy", raw)
        print("vit", name, raw.shape, file=sys.stderr)


if __name__ == "__main__":
    main()
