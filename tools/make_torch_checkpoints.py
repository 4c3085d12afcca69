"""Writes tests/fixtures/models/bn_cnn*: a small CNN with nested module names
(`features.0.weight`) and batch norms (running statistics set as if trained), saved by
PyTorch itself in each way users bring models:

    bn_cnn.pth          torch.save(model.state_dict())       (zip format)
    bn_cnn_module.pth   torch.save(model)                    (a pickled module: refused)
    bn_cnn_legacy.pth   the pre-1.6 non-zip format           (refused)
    bn_cnn.onnx         torch.onnx.export (opset 17, dynamic batch)
    bn_cnn.json         the architecture file for the state dict
    bn_cnn_expected.json  PyTorch's logits on data/digits_test_x.npy[0:8]

Run from the repo root with PyTorch installed (e.g. the Captum venv of tools/captum_baseline.py):
    python tools/make_torch_checkpoints.py
"""
import collections
import json
import os

import numpy as np
import torch
from torch import nn

OUT = os.path.join("tests", "fixtures", "models")
torch.manual_seed(3)
model = nn.Sequential(collections.OrderedDict([
    ("features", nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2))),
    ("classifier", nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))),
]))
with torch.no_grad():
    for bn in (model.features[1], model.classifier[2]):
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.num_batches_tracked.fill_(100)
model.eval()

torch.save(model.state_dict(), os.path.join(OUT, "bn_cnn.pth"))
torch.save(model, os.path.join(OUT, "bn_cnn_module.pth"))
torch.save(model.state_dict(), os.path.join(OUT, "bn_cnn_legacy.pth"), _use_new_zipfile_serialization=False)
torch.onnx.export(model, torch.zeros(1, 1, 8, 8), os.path.join(OUT, "bn_cnn.onnx"), opset_version=17,
                  input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "batch"}},
                  dynamo=False)

arch = {
    "name": "bn_cnn",
    "input_shape": [1, 8, 8],
    "layers": [
        {"name": "features.0", "type": "conv2d", "in": 1, "out": 4, "kernel": 3, "padding": 1},
        {"name": "features.1", "type": "batchnorm2d", "num_features": 4},
        {"name": "features.2", "type": "relu"},
        {"name": "features.3", "type": "maxpool2d", "kernel": 2},
        {"name": "classifier.0", "type": "flatten"},
        {"name": "classifier.1", "type": "linear", "in": 64, "out": 16},
        {"name": "classifier.2", "type": "batchnorm1d", "num_features": 16},
        {"name": "classifier.3", "type": "relu"},
        {"name": "classifier.4", "type": "linear", "in": 16, "out": 10},
    ],
}
with open(os.path.join(OUT, "bn_cnn.json"), "w") as f:
    json.dump(arch, f, indent=1)
x = torch.tensor(np.load(os.path.join("data", "digits_test_x.npy"))[0:8])
with torch.no_grad():
    logits = model(x)
with open(os.path.join(OUT, "bn_cnn_expected.json"), "w") as f:
    json.dump({"inputs": "data/digits_test_x.npy[0:8]", "torch": torch.__version__,
               "logits": [[float(v) for v in row] for row in logits]}, f, indent=1)
print("wrote", OUT)
