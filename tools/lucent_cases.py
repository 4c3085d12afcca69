"""Lucent's feature visualization of the zoo's small ResNet, for the engine's Fourier
parameterisation test: written to tests/fixtures/lucent/. Optional, outside CI (needs
torch, torchvision and torch-lucent 0.1.8). Run from the repository root:

    ~/zoo-venv/bin/pip install torch-lucent==0.1.8 --no-deps
    ~/zoo-venv/bin/python tools/lucent_cases.py

resnet_basic.spectrum.npy   Lucent's starting spectrum (param.image(64): fft, decorrelated
                            colour; torch seed 0), shape (1, 3, 64, 33, 2)
resnet_basic.layer2_3.steps{1,8,16,64}.npy
                            the image after 1, 8, 16 and 64 steps of Adam (lr 0.05) on the mean of
                            channel 3 of layer2, transforms off, no preprocessing, (1, 3, 64, 64)
"""
import os
import sys

import numpy as np
import torch
from lucent.optvis import param, render

sys.path.insert(0, os.path.dirname(__file__))
from make_zoo import rebuilt  # noqa: E402

OUT = "tests/fixtures/lucent"
torch.set_num_threads(2)


def main():
    os.makedirs(OUT, exist_ok=True)
    model, _, _ = rebuilt("resnet_basic")
    for p in model.parameters():
        p.requires_grad_(False)
    torch.manual_seed(0)
    params, image_f = param.image(64)
    np.save(os.path.join(OUT, "resnet_basic.spectrum.npy"), params[0].detach().numpy().astype(np.float32))
    thresholds = (1, 8, 16, 64)
    images = render.render_vis(model, "layer2:3", param_f=lambda: (params, image_f), transforms=[],
                               preprocess=False, fixed_image_size=64, thresholds=thresholds, show_image=False,
                               progress=False)
    for steps, image in zip(thresholds, images):
        image = np.transpose(image, (0, 3, 1, 2)).astype(np.float32)
        np.save(os.path.join(OUT, f"resnet_basic.layer2_3.steps{steps}.npy"), image)
    with torch.no_grad():
        start = model.layer2(model.layer1(model.maxpool(model.relu(model.bn1(model.conv1(
            torch.sigmoid(torch.zeros(1, 3, 64, 64))))))))
        act = model.layer2(model.layer1(model.maxpool(model.relu(model.bn1(model.conv1(torch.from_numpy(image)))))))
    print("image", image.shape, image.min(), image.max(), "channel 3 mean", float(act[:, 3].mean()),
          "(grey image:", float(start[:, 3].mean()), ")")


if __name__ == "__main__":
    main()
