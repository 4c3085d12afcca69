"""Writes the photo folder the quickstart of photos uses and the references its tests
compare against:

    data/photos/<class>/<name>   a few public-domain / CC0 photos that scikit-image ships
                                 (see data/README.md), shrunk to at most 192 pixels a side,
                                 as JPEG and PNG (one grey PNG)
    tests/fixtures/photos/formats/   the same photos as BMP, WebP, RGBA PNG, grey PNG
    tests/fixtures/photos/*.npy      torchvision's tensors for them: ImageFolder with
                                 Resize(64), CenterCrop(56), ToTensor, Normalize(ImageNet),
                                 and the formats folder (PIL convert('RGB'), then Resize(40),
                                 CenterCrop(32), ToTensor)

Run from the repo root, offline, never in CI:
    ~/zoo-venv/bin/pip install scikit-image pillow torchvision
    ~/zoo-venv/bin/python tools/make_photo_fixtures.py
"""
import json
import os

import numpy as np
import skimage.data as sd
import torch
from PIL import Image
from torchvision import datasets, transforms as T

DATA = os.path.join("data", "photos")
FIX = os.path.join("tests", "fixtures", "photos")


def shrink(array, side=192):
    img = Image.fromarray(array)
    img.thumbnail((side, side), Image.BILINEAR)
    return img


photos = {
    ("animal", "chelsea.jpg"): sd.chelsea(),
    ("drink", "coffee.jpg"): sd.coffee(),
    ("people", "astronaut.png"): sd.astronaut(),
    ("people", "camera.png"): sd.camera(),  # grey
    ("space", "rocket.jpg"): sd.rocket(),
}
for (cls, name), array in photos.items():
    os.makedirs(os.path.join(DATA, cls), exist_ok=True)
    img = shrink(array)
    kw = {"quality": 90} if name.endswith(".jpg") else {}
    img.save(os.path.join(DATA, cls, name), **kw)

os.makedirs(os.path.join(FIX, "formats"), exist_ok=True)
shrunk = {name: shrink(a, 96) for (_, name), a in photos.items()}
shrunk["rocket.jpg"].save(os.path.join(FIX, "formats", "a_rocket.bmp"))
shrunk["chelsea.jpg"].save(os.path.join(FIX, "formats", "b_chelsea.webp"), lossless=True)
rgba = shrunk["coffee.jpg"].convert("RGBA")
alpha = np.array(rgba)
alpha[..., 3] = np.linspace(0, 255, alpha.shape[1], dtype=np.uint8)[None, :]
Image.fromarray(alpha, "RGBA").save(os.path.join(FIX, "formats", "c_coffee_rgba.png"))
shrunk["camera.png"].save(os.path.join(FIX, "formats", "d_camera_grey.png"))
shrunk["astronaut.png"].save(os.path.join(FIX, "formats", "e_astronaut.jpg"), quality=85)

imagenet = T.Compose([T.Resize(64), T.CenterCrop(56), T.ToTensor(),
                      T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
folder = datasets.ImageFolder(DATA, transform=imagenet)
xs = torch.stack([x for x, _ in folder]).numpy()
np.save(os.path.join(FIX, "folder_x.npy"), xs.astype(np.float32))
np.save(os.path.join(FIX, "folder_y.npy"), np.array([y for _, y in folder], np.int64))

plain = T.Compose([T.Resize(40), T.CenterCrop(32), T.ToTensor()])
names = sorted(os.listdir(os.path.join(FIX, "formats")))
xs = [plain(Image.open(os.path.join(FIX, "formats", n)).convert("RGB")) for n in names]
np.save(os.path.join(FIX, "formats_x.npy"), torch.stack(xs).numpy().astype(np.float32))
with open(os.path.join(FIX, "expected.json"), "w") as f:
    json.dump({"classes": folder.classes, "files": [os.path.relpath(p) for p, _ in folder.samples],
               "formats": names}, f, indent=1)
print(folder.classes, len(folder), names)
