"""Writes tests/fixtures/zoo/: seeded, randomly initialised, small-configured versions of the
architectures users bring, each exported to ONNX by both torch exporters, with the references
the Rust tests (tests/zoo.rs) compare against:

    <name>.inputs.npy            the inputs (float32, a batch of 2)
    <name>.targets.npy           the class each input is explained for
    <name>.<exporter>.onnx       the export (exporter: ts = TorchScript, dynamo = torch.export)
    <name>.<exporter>.logits.npy onnxruntime's output for the inputs
    <name>.saliency.npy          Captum Saliency (abs) on the PyTorch module
    <name>.ig.npy                Captum IntegratedGradients (50 Gauss-Legendre steps, zero baseline)
    <name>.gradcam.npy           Captum LayerGradCam at the last stage (models with convolutions)
    manifest.json                the list of models: file names, Grad-CAM layer, input shape, notes

Exports that fail in torch itself are listed in the manifest with the error, not silently
dropped. With --bert it writes tests/fixtures/tiny_bert/model.onnx (the tiny BERT with three
graph inputs, see bert_onnx). With --full the tool writes full-size ResNet-18/50 and ViT-B/16 exports (random
weights, 224x224) for the benchmarks into models/zoo/ (git-ignored) instead.

Run from the repo root, offline, never in CI:
    python3 -m venv ~/zoo-venv && ~/zoo-venv/bin/pip install torch torchvision onnx onnxruntime onnxscript captum numpy
    ~/zoo-venv/bin/python tools/make_zoo.py
"""
import argparse
import json
import os
import sys
import traceback

import numpy as np
import onnxruntime as ort
import torch
import torchvision.models as tvm
from captum.attr import IntegratedGradients, LayerGradCam, Occlusion, Saliency
from torch import nn
from torchvision.models.convnext import CNBlockConfig, ConvNeXt
from torchvision.models.efficientnet import EfficientNet, _efficientnet_conf
from torchvision.models.mobilenetv3 import MobileNetV3, _mobilenet_v3_conf
from torchvision.models.regnet import BlockParams, RegNet
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet
from torchvision.models.swin_transformer import SwinTransformer

OUT = os.path.join("tests", "fixtures", "zoo")
OPSET = 18


class SmallResNet(ResNet):
    """torchvision's ResNet (same modules, same forward) with narrower stages."""

    def __init__(self, block, layers, widths, num_classes=10):
        nn.Module.__init__(self)
        self._norm_layer = nn.BatchNorm2d
        self.inplanes, self.dilation, self.groups, self.base_width = widths[0], 1, 1, 64
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, widths[0], layers[0])
        self.layer2 = self._make_layer(block, widths[1], layers[1], stride=2)
        self.layer3 = self._make_layer(block, widths[2], layers[2], stride=2)
        self.layer4 = self._make_layer(block, widths[3], layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[3] * block.expansion, num_classes)


class SeqCNN(nn.Module):
    """A 1-D convolutional classifier of sequences (sensor signals, audio frames)."""

    def __init__(self, channels=3, classes=5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(channels, 8, 5, padding=2), nn.BatchNorm1d(8), nn.ReLU(), nn.MaxPool1d(2),
            nn.Conv1d(8, 16, 3, padding=1, stride=2), nn.BatchNorm1d(16), nn.ReLU(),
            nn.AvgPool1d(2), nn.Conv1d(16, 16, 3, padding=1), nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class VolumeCNN(nn.Module):
    """A 3-D convolutional classifier of volumes (scans, video clips)."""

    def __init__(self, classes=4):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv3d(1, 4, 3, padding=1), nn.BatchNorm3d(4), nn.ReLU(), nn.MaxPool3d(2),
            nn.Conv3d(4, 6, (3, 3, 3), stride=(2, 1, 1), padding=(1, 1, 1), groups=2), nn.ReLU(),
            nn.AvgPool3d((1, 2, 2)), nn.Conv3d(6, 6, (2, 3, 3), dilation=(1, 2, 1)), nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(6, classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def squeezenet():
    """torchvision's SqueezeNet 1.1 (its classifier and forward) with narrower Fire modules:
    the full widths make a 2.9 MB fixture."""
    from torchvision.models.squeezenet import Fire
    model = tvm.SqueezeNet(version="1_1", num_classes=10)
    model.features = nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, ceil_mode=True),
        Fire(16, 4, 16, 16), Fire(32, 4, 16, 16), nn.MaxPool2d(3, 2, ceil_mode=True),
        Fire(32, 8, 32, 32), Fire(64, 8, 32, 32), nn.MaxPool2d(3, 2, ceil_mode=True),
        Fire(64, 12, 48, 48), Fire(96, 16, 64, 64),
    )
    model.classifier[1] = nn.Conv2d(128, 10, 1)
    # Zero biases (still in the export): with them, the small inputs integrated gradients
    # starts from all look alike (the biases dominate), and float32 rounding decides the
    # max-pool ties there differently in every runtime.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d) and m.bias is not None:
                m.bias.zero_()
    return model


def mobilenet():
    setting, last = _mobilenet_v3_conf("mobilenet_v3_large", width_mult=0.25, reduced_tail=True)
    return MobileNetV3(setting, last // 4, num_classes=10)


def efficientnet():
    setting, last = _efficientnet_conf("efficientnet_b0", width_mult=0.25, depth_mult=0.25)
    return EfficientNet(setting, 0.2, num_classes=10, last_channel=last)


# name → (constructor, input shape of one sample, Grad-CAM layer (a module path) or None)
ZOO = {
    "resnet_basic": (lambda: SmallResNet(BasicBlock, [1, 1, 1, 1], (8, 16, 32, 64)), (3, 64, 64), "layer4"),
    "resnet_bottleneck": (lambda: SmallResNet(Bottleneck, [1, 2, 1, 1], (4, 8, 16, 32)), (3, 64, 64), "layer4"),
    "mobilenet_v3": (mobilenet, (3, 64, 64), "features"),
    "efficientnet": (efficientnet, (3, 64, 64), "features"),
    "convnext": (lambda: ConvNeXt([CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)], num_classes=10),
                 (3, 32, 32), "features"),
    "densenet": (lambda: tvm.DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16, bn_size=2,
                                      num_classes=10), (3, 32, 32), "features"),
    "squeezenet": (squeezenet, (3, 64, 64), "features"),
    "shufflenet_v2": (lambda: tvm.ShuffleNetV2([1, 1, 1], [8, 16, 32, 64, 128], num_classes=10),
                      (3, 64, 64), "conv5"),
    "regnet": (lambda: RegNet(BlockParams.from_init_params(depth=3, w_0=8, w_a=8.0, w_m=2.0, group_width=8),
                              stem_width=8, num_classes=10), (3, 32, 32), "trunk_output"),
    "vit": (lambda: tvm.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32,
                                          mlp_dim=64, num_classes=10), (3, 32, 32), None),
    "swin": (lambda: SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[1, 2],
                                     window_size=[4, 4], num_classes=10), (3, 32, 32), None),
    "seq_cnn": (SeqCNN, (3, 64), "features"),
    "volume_cnn": (VolumeCNN, (1, 8, 24, 24), "features"),
}


def randomise_norms(model):
    """Eval-mode batch norms with the running statistics of a trained model, not 0 / 1."""
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def wake_zero_parameters(model):
    """Parameters torchvision initialises to zero (ViT's head and class token) made random,
    so that the logits and attributions of the fixture are not all zero."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.endswith("bias") and not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def rebuilt(name):
    """The zoo model `name` rebuilt as small_zoo builds it (same seed: the exported
    weights), in eval mode, with its fixture inputs and targets; checked against the
    export's recorded logits, so that a reference is never computed on other weights."""
    torch.manual_seed(11)
    model = ZOO[name][0]()
    randomise_norms(model)
    wake_zero_parameters(model)
    model.eval()
    x = torch.from_numpy(np.load(os.path.join(OUT, f"{name}.inputs.npy")))
    targets = torch.from_numpy(np.load(os.path.join(OUT, f"{name}.targets.npy"))).long()
    logits = np.load(os.path.join(OUT, f"{name}.ts.logits.npy"))
    with torch.no_grad():
        gap = np.abs(model(x).numpy() - logits).max()
    assert gap < 1e-4, f"the zoo's {name} was not rebuilt (logits differ by {gap})"
    return model, x, targets


def module(model, path):
    for part in path.split("."):
        model = getattr(model, part)
    return model


def export(model, x, path, exporter, dynamic_spatial=False):
    if exporter == "ts":
        axes = {0: "batch"}
        if dynamic_spatial:
            axes.update(dict(zip(range(2, x.dim()), ("height", "width") if x.dim() == 4 else ("length",))))
        torch.onnx.export(model, (x,), path, opset_version=OPSET, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": axes}, dynamo=False)
    else:
        batch = torch.export.Dim("batch", min=1, max=1024)
        shapes = {"x": {0: batch}}
        program = torch.onnx.export(model, (x,), dynamo=True, opset_version=OPSET, input_names=["input"],
                                    output_names=["logits"], dynamic_shapes=shapes, optimize=True)
        program.save(path)


def write(name, array):
    np.save(os.path.join(OUT, name), np.ascontiguousarray(array, dtype=np.float32))


def small_zoo(only):
    os.makedirs(OUT, exist_ok=True)
    manifest = []
    for name, (make, shape, cam_layer) in ZOO.items():
        if only and name not in only:
            continue
        torch.manual_seed(11)
        model = make()
        randomise_norms(model)
        wake_zero_parameters(model)
        model.eval()
        g = torch.Generator().manual_seed(13)
        x = torch.randn((2,) + shape, generator=g)
        targets = torch.tensor([3, 1])
        write(f"{name}.inputs.npy", x.numpy())
        write(f"{name}.targets.npy", targets.numpy())
        entry = {"name": name, "input_shape": list(shape), "gradcam_layer": cam_layer, "exports": {}}
        with torch.no_grad():
            torch_logits = model(x).numpy()
        for exporter in ("ts", "dynamo"):
            path = os.path.join(OUT, f"{name}.{exporter}.onnx")
            try:
                export(model, x, path, exporter)
                sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
                logits = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
                write(f"{name}.{exporter}.logits.npy", logits)
                gap = float(np.abs(logits - torch_logits).max())
                entry["exports"][exporter] = {"file": os.path.basename(path), "ort_vs_torch": gap,
                                              "bytes": os.path.getsize(path)}
            except Exception as e:  # noqa: BLE001 — recorded in the manifest, not hidden
                entry["exports"][exporter] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
                traceback.print_exc()
                if os.path.exists(path):
                    os.remove(path)
        x.requires_grad_(True)
        write(f"{name}.saliency.npy", Saliency(model).attribute(x, target=targets).detach().numpy())
        ig = IntegratedGradients(model).attribute(x, target=targets, n_steps=50, method="gausslegendre")
        write(f"{name}.ig.npy", ig.detach().numpy())
        if name == "seq_cnn":
            # Occlusion of 8 positions of every channel, moved 8 at a time.
            occ = Occlusion(model).attribute(x.detach(), target=targets, sliding_window_shapes=(3, 8), strides=(3, 8))
            write(f"{name}.occlusion.npy", occ.numpy())
        if name in ("resnet_basic", "mobilenet_v3"):
            # 12×12 windows of every channel moved 4 at a time over 64×64: the engine
            # recomputes only what each window reaches through the first layers.
            occ = Occlusion(model).attribute(x.detach(), target=targets, sliding_window_shapes=(3, 12, 12),
                                             strides=(3, 4, 4))
            write(f"{name}.occlusion.npy", occ.numpy())
        if cam_layer:
            cam = LayerGradCam(model, module(model, cam_layer)).attribute(x, target=targets)
            write(f"{name}.gradcam.npy", cam.detach().numpy())
        if name == "resnet_basic":
            # One export with symbolic spatial axes, and references at two sizes.
            path = os.path.join(OUT, f"{name}.dynamic.onnx")
            export(model, x.detach(), path, "ts", dynamic_spatial=True)
            sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            for side in (48, 80):
                xs = torch.randn((2, 3, side, side), generator=g)
                write(f"{name}.dynamic{side}.inputs.npy", xs.numpy())
                write(f"{name}.dynamic{side}.logits.npy", sess.run(None, {"input": xs.numpy()})[0])
                xs.requires_grad_(True)
                ig = IntegratedGradients(model).attribute(xs, target=targets, n_steps=50)
                write(f"{name}.dynamic{side}.ig.npy", ig.detach().numpy())
            entry["dynamic"] = {"file": os.path.basename(path), "sides": [48, 80]}
        if name == "vit":
            # Symbolic height and width where the architecture cannot follow them (its
            # position embedding has 17 tokens): other sizes must be refused, naming the node.
            path = os.path.join(OUT, f"{name}.dynamic.onnx")
            export(model, x.detach(), path, "ts", dynamic_spatial=True)
            entry["dynamic"] = {"file": os.path.basename(path), "sides": [32]}
        manifest.append(entry)
        sizes = {k: v.get("bytes", v.get("error")) for k, v in entry["exports"].items()}
        print(f"{name}: {sizes}", file=sys.stderr)
    text = text_zoo(only)
    if not only:
        import transformers
        with open(os.path.join(OUT, "manifest.json"), "w") as f:
            json.dump({"torch": torch.__version__, "onnxruntime": ort.__version__, "opset": OPSET,
                       "transformers": transformers.__version__, "models": manifest, "text_models": text}, f,
                      indent=1)


class MeanPooled(nn.Module):
    """A Hugging Face encoder with sentence-transformers' mean pooling over the real
    tokens: the output the engine gives for a BERT-family directory."""

    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids, attention_mask, token_type_ids):
        h = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                         token_type_ids=token_type_ids).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp(min=1e-9)


def bert_onnx():
    """tests/fixtures/tiny_bert/model.onnx: the tiny BERT of tools/make_tiny_bert.py with
    three graph inputs (input_ids, attention_mask, token_type_ids) and a symbolic sequence
    axis, beside its tokenizer.json; the engine must answer as for the directory."""
    from transformers import BertModel
    folder = os.path.join("tests", "fixtures", "tiny_bert")
    model = MeanPooled(BertModel.from_pretrained(folder, attn_implementation="eager")).eval()
    ids = torch.tensor([[2, 7, 8, 3, 0, 0], [2, 9, 10, 11, 12, 3]])
    args = (ids, (ids != 0).long(), torch.zeros_like(ids))
    axes = {0: "batch", 1: "sequence"}
    torch.onnx.export(model, args, os.path.join(folder, "model.onnx"), opset_version=OPSET,
                      input_names=["input_ids", "attention_mask", "token_type_ids"], output_names=["embedding"],
                      dynamic_axes={"input_ids": axes, "attention_mask": axes, "token_type_ids": axes},
                      dynamo=False)
    print(f"wrote {folder}/model.onnx", file=sys.stderr)


class LastPosition(nn.Module):
    """A causal language model's logits at the last position (GPT-2)."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids):
        return self.lm(input_ids=input_ids).logits[:, -1, :]


class Logits(nn.Module):
    """A sequence classifier's logits from token ids alone (the mask all ones)."""

    def __init__(self, clf):
        super().__init__()
        self.clf = clf

    def forward(self, input_ids):
        return self.clf(input_ids=input_ids).logits


def text_zoo(only):
    """Small transformers encoders and a decoder, token ids in, exported by both exporters;
    references: onnxruntime's logits and Captum's LayerIntegratedGradients on the word
    embeddings (zero ids as the baseline), summed over the embedding."""
    from captum.attr import LayerIntegratedGradients
    from transformers import (BertConfig, BertForSequenceClassification, DistilBertConfig,
                              DistilBertForSequenceClassification, GPT2Config, GPT2LMHeadModel, RobertaConfig,
                              RobertaForSequenceClassification)
    small = dict(vocab_size=50, max_position_embeddings=32)
    zoo = {
        "bert": (lambda: Logits(BertForSequenceClassification(BertConfig(
            hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, num_labels=3,
            attn_implementation="eager", **small))), lambda m: m.clf.bert.embeddings.word_embeddings),
        "distilbert": (lambda: Logits(DistilBertForSequenceClassification(DistilBertConfig(
            dim=16, n_layers=2, n_heads=2, hidden_dim=32, num_labels=3, attn_implementation="eager", **small))),
            lambda m: m.clf.distilbert.embeddings.word_embeddings),
        "roberta": (lambda: Logits(RobertaForSequenceClassification(RobertaConfig(
            hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, num_labels=3,
            pad_token_id=1, attn_implementation="eager", vocab_size=50, max_position_embeddings=40))),
            lambda m: m.clf.roberta.embeddings.word_embeddings),
        "gpt2": (lambda: LastPosition(GPT2LMHeadModel(GPT2Config(
            n_embd=16, n_layer=2, n_head=2, n_positions=32, vocab_size=50, attn_implementation="eager"))),
            lambda m: m.lm.transformer.wte),
    }
    entries = []
    for name, (make, embeddings) in zoo.items():
        if only and name not in only:
            continue
        torch.manual_seed(17)
        model = make().eval()
        g = torch.Generator().manual_seed(19)
        ids = torch.randint(3, 50, (2, 10), generator=g)
        targets = torch.tensor([1, 2])
        write(f"{name}.inputs.npy", ids.numpy())
        write(f"{name}.targets.npy", targets.numpy())
        entry = {"name": name, "exports": {}}
        with torch.no_grad():
            torch_logits = model(ids).numpy()
        for exporter in ("ts", "dynamo"):
            path = os.path.join(OUT, f"{name}.{exporter}.onnx")
            try:
                if exporter == "ts":
                    torch.onnx.export(model, (ids,), path, opset_version=OPSET, input_names=["input_ids"],
                                      output_names=["logits"], dynamic_axes={"input_ids": {0: "batch"}},
                                      dynamo=False)
                else:
                    batch = torch.export.Dim("batch", min=1, max=1024)
                    torch.onnx.export(model, (ids,), dynamo=True, opset_version=OPSET, input_names=["input_ids"],
                                      output_names=["logits"], dynamic_shapes={"input_ids": {0: batch}},
                                      optimize=True).save(path)
                sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
                logits = sess.run(None, {sess.get_inputs()[0].name: ids.numpy()})[0]
                write(f"{name}.{exporter}.logits.npy", logits)
                entry["exports"][exporter] = {"file": os.path.basename(path), "bytes": os.path.getsize(path),
                                              "ort_vs_torch": float(np.abs(logits - torch_logits).max())}
            except Exception as e:  # noqa: BLE001 — recorded in the manifest, not hidden
                entry["exports"][exporter] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
                traceback.print_exc()
                if os.path.exists(path):
                    os.remove(path)
        lig = LayerIntegratedGradients(model, embeddings(model))
        attr = lig.attribute(ids, baselines=torch.zeros_like(ids), target=targets, n_steps=50)
        write(f"{name}.lig.npy", attr.sum(-1).detach().numpy())
        entries.append(entry)
        print(f"{name}: {entry['exports']}", file=sys.stderr)
    return entries


def vit_s_16():
    """ViT-S/16 (DeiT-S's shape: 12 layers, 6 heads, width 384), which torchvision lacks."""
    return tvm.VisionTransformer(image_size=224, patch_size=16, num_layers=12, num_heads=6, hidden_dim=384,
                                 mlp_dim=1536)


# The benchmark models (tools/captum_baseline.py builds the same ones from the same seed).
FULL_MODELS = (("resnet18", tvm.resnet18), ("resnet50", tvm.resnet50),
               ("mobilenet_v3_large", tvm.mobilenet_v3_large), ("vit_b_16", tvm.vit_b_16),
               ("vit_s_16", vit_s_16))


def full_model(name):
    """A benchmark model with its fixed random weights, in eval mode."""
    make = dict(FULL_MODELS)[name]
    torch.manual_seed(0)
    model = make()
    wake_zero_parameters(model)
    return model.eval()


def full_inputs(n):
    """The benchmark's n inputs at 224×224 (standard normal, as normalised photos are)."""
    g = torch.Generator().manual_seed(224)
    return torch.randn((n, 3, 224, 224), generator=g)


def full_zoo():
    out = os.path.join("models", "zoo")
    os.makedirs(out, exist_ok=True)
    for name, _ in FULL_MODELS:
        path = os.path.join(out, f"{name}.onnx")
        if not os.path.exists(path):
            export(full_model(name), torch.randn(1, 3, 224, 224), path, "ts")
            print(f"wrote {path}", file=sys.stderr)
    for n in (4, 32):
        path = os.path.join(out, f"images224_{n}.npy")
        if not os.path.exists(path):
            np.save(path, full_inputs(n).numpy())
            print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--full", action="store_true", help="write the full-size benchmark exports")
    p.add_argument("--bert", action="store_true", help="write the tiny BERT's three-input ONNX export")
    p.add_argument("only", nargs="*", help="just these small models (the manifest is not rewritten)")
    args = p.parse_args()
    if args.full:
        full_zoo()
    elif args.bert:
        bert_onnx()
    else:
        small_zoo(args.only)  # names of text models run text_zoo alone
