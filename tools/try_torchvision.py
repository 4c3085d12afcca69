"""Exports every torchvision classifier at its default configuration (random weights,
one 224×224 input, or 299 for Inception) to models/zoo/tv_<name>.onnx (git-ignored),
with onnxruntime's logits beside it (tv_<name>.logits.npy) and the input (tv_input*.npy),
for trying the engine on the architectures users bring (see the closing notes of the
real-coverage issue). Not run by the tests: the files are large.
    ~/zoo-venv/bin/python tools/try_torchvision.py [--dynamo] [names...]
"""
import argparse
import os
import sys
import traceback

import numpy as np
import onnxruntime as ort
import torch
import torchvision.models as tvm

OUT = os.path.join("models", "zoo")
NAMES = ["alexnet", "vgg11_bn", "resnet18", "resnext50_32x4d", "wide_resnet50_2", "densenet121", "googlenet",
         "inception_v3", "mobilenet_v2", "mobilenet_v3_small", "mnasnet0_5", "shufflenet_v2_x0_5", "squeezenet1_0",
         "efficientnet_b0", "efficientnet_v2_s", "regnet_y_400mf", "convnext_tiny", "vit_b_16", "swin_t",
         "swin_v2_t", "maxvit_t"]

p = argparse.ArgumentParser()
p.add_argument("--dynamo", action="store_true")
p.add_argument("names", nargs="*")
args = p.parse_args()
os.makedirs(OUT, exist_ok=True)
g = torch.Generator().manual_seed(0)
inputs = {224: torch.randn(1, 3, 224, 224, generator=g), 299: torch.randn(1, 3, 299, 299, generator=g)}
for side, x in inputs.items():
    np.save(os.path.join(OUT, f"tv_input{side}.npy"), x.numpy())
for name in args.names or NAMES:
    torch.manual_seed(0)
    kwargs = {"aux_logits": False, "init_weights": True} if name in ("googlenet", "inception_v3") else {}
    model = getattr(tvm, name)(weights=None, **kwargs).eval()
    side = 299 if name == "inception_v3" else 224
    x = inputs[side]
    tag = "dynamo" if args.dynamo else "ts"
    path = os.path.join(OUT, f"tv_{name}.{tag}.onnx")
    try:
        if args.dynamo:
            torch.onnx.export(model, (x,), dynamo=True, opset_version=18, input_names=["input"],
                              output_names=["logits"]).save(path)
        else:
            torch.onnx.export(model, (x,), path, opset_version=18, input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}}, dynamo=False)
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        np.save(os.path.join(OUT, f"tv_{name}.{tag}.logits.npy"), sess.run(None, {"input": x.numpy()})[0])
        print(f"{name}: {os.path.getsize(path) >> 20} MB", file=sys.stderr)
    except Exception:  # noqa: BLE001 — reported, the others go on
        traceback.print_exc()
