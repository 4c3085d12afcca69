"""Writes a PyTorch zip-format state dict (what `torch.save(model.state_dict(), f)` makes)
from a safetensors file, without PyTorch: the pickle references torch's rebuild function
and storage classes by name, exactly as torch writes them, and the tensor bytes go into
archive/data/<key>. Used to make tests/fixtures/models/*.pth; run from the repo root:

    python3 tools/make_pth_fixture.py models/cancer_mlp.safetensors tests/fixtures/models/cancer_mlp.pth [checkpoint]

With `checkpoint`, the state dict is wrapped as {"state_dict": ..., "epoch": 3}, as
training scripts often save it.
"""

import collections
import io
import json
import pickle
import struct
import sys
import types
import zipfile


def read_safetensors(path):
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    body = raw[8 + n :]
    out = collections.OrderedDict()
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", info
        a, b = info["data_offsets"]
        out[name] = (info["shape"], body[a:b])
    return out


# Stand-ins that pickle under torch's names.
torch = types.ModuleType("torch")
utils = types.ModuleType("torch._utils")
sys.modules["torch"] = torch
sys.modules["torch._utils"] = utils


class FloatStorage:
    pass


FloatStorage.__module__ = "torch"
torch.FloatStorage = FloatStorage


def _rebuild_tensor_v2(*args):
    raise RuntimeError("not for loading")


_rebuild_tensor_v2.__module__ = "torch._utils"
utils._rebuild_tensor_v2 = _rebuild_tensor_v2


class Tensor:
    def __init__(self, key, shape, numel):
        self.key, self.shape, self.numel = key, shape, numel

    def __reduce__(self):
        stride = []
        acc = 1
        for d in reversed(self.shape):
            stride.insert(0, acc)
            acc *= d
        storage = StorageRef(self.key, self.numel)
        return (_rebuild_tensor_v2, (storage, 0, tuple(self.shape), tuple(stride), False, collections.OrderedDict()))


class StorageRef:
    def __init__(self, key, numel):
        self.key, self.numel = key, numel


class TorchPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, StorageRef):
            return ("storage", FloatStorage, obj.key, "cpu", obj.numel)
        return None


def main():
    src, dst = sys.argv[1], sys.argv[2]
    wrap = len(sys.argv) > 3 and sys.argv[3] == "checkpoint"
    tensors = read_safetensors(src)
    state = collections.OrderedDict()
    blobs = {}
    for i, (name, (shape, data)) in enumerate(tensors.items()):
        key = str(i)
        numel = 1
        for d in shape:
            numel *= d
        state[name] = Tensor(key, shape, numel)
        blobs[key] = data
    obj = {"state_dict": state, "epoch": 3} if wrap else state
    buf = io.BytesIO()
    TorchPickler(buf, protocol=2).dump(obj)
    root = "archive"
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{root}/data.pkl", buf.getvalue())
        z.writestr(f"{root}/byteorder", "little")
        for key, data in blobs.items():
            z.writestr(f"{root}/data/{key}", data)
        z.writestr(f"{root}/version", "3\n")


if __name__ == "__main__":
    main()
