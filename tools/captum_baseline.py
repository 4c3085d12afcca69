"""Times the bench's workloads in Captum, on the same models, inputs, targets and batch
sizes, with 2 threads, so that `cargo bench` and this script can be compared when run
on the same machine at the same time. Optional and outside CI; it installs nothing.

Setup (once, in a virtual environment outside the repository):
    python3 -m venv ~/captum-venv && ~/captum-venv/bin/pip install torch captum numpy
Run from the repository root:
    ~/captum-venv/bin/python tools/captum_baseline.py

With the full-size exports of `tools/make_zoo.py --full` in models/zoo (that tool also
needs torchvision, onnx and onnxruntime), the real-scale workloads run as well, each in
Captum and, for PREDICT, in onnxruntime on the same ONNX file. BENCH_ONLY=real or
BENCH_ONLY=digits runs one part; BENCH_REAL_RUNS (default 3) sets the real runs;
BENCH_MODELS (e.g. resnet18,vit_s_16) and BENCH_SKIP (words of workload names, e.g.
integrated,occlusion) pick as the bench does.
BENCH_ONLY=memory measures the peak RSS of IG-50 on ResNet-50 for 32 inputs, with and
without internal_batch_size.
"""

import collections
import json
import os
import statistics
import struct
import subprocess
import sys
import time

import numpy as np
import torch
from captum.attr import (
    DeepLift,
    FeatureAblation,
    IntegratedGradients,
    LayerConductance,
    LayerGradCam,
    Occlusion,
    Saliency,
    ShapleyValueSampling,
)

torch.set_num_threads(2)
RUNS = int(os.environ.get("BENCH_RUNS", "7"))
BATCH = 64


def load(name):
    """An nn.Sequential from the engine's architecture JSON and safetensors weights."""
    arch = json.load(open(f"models/{name}.json"))
    layers = []
    for l in arch["layers"]:
        t = l["type"]
        if t == "conv2d":
            layers.append((l["name"], torch.nn.Conv2d(l["in"], l["out"], l["kernel"], stride=l.get("stride", 1), padding=l.get("padding", 0))))
        elif t == "linear":
            layers.append((l["name"], torch.nn.Linear(l["in"], l["out"])))
        elif t == "relu":
            layers.append((l["name"], torch.nn.ReLU()))
        elif t == "maxpool2d":
            layers.append((l["name"], torch.nn.MaxPool2d(l["kernel"], l.get("stride"))))
        elif t == "flatten":
            layers.append((l["name"], torch.nn.Flatten()))
        else:
            raise SystemExit(f"layer type {t} not handled here")
    model = torch.nn.Sequential(collections.OrderedDict(layers))
    raw = open(f"models/{name}.safetensors", "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    state = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        a, b = info["data_offsets"]
        state[key] = torch.from_numpy(np.frombuffer(raw[8 + n + a : 8 + n + b], dtype=np.float32).reshape(info["shape"]).copy())
    model.load_state_dict(state)
    return model.eval()


def timed(fn, inputs, runs=RUNS):
    fn()  # warm-up
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e3 / inputs)
    return out


def batches(x, t):
    for i in range(0, len(x), BATCH):
        yield x[i : i + BATCH], t[i : i + BATCH]


def main():
    cnn = load("digits_cnn")
    mlp = load("cancer_mlp")
    x = torch.from_numpy(np.load("data/digits_test_x.npy"))
    with torch.no_grad():
        t = cnn(x).argmax(1)
    import csv

    rows = list(csv.reader(open("data/cancer_test.csv")))
    cx = torch.tensor([[float(v) for v in r[:-1]] for r in rows[1:]], dtype=torch.float32)
    with torch.no_grad():
        ct = mlp(cx).argmax(1)
    mask = torch.tensor([[(r // 2) * 4 + c // 2 for c in range(8)] for r in range(8)]).reshape(1, 1, 8, 8)

    def forward():
        with torch.no_grad():
            for xb, _ in batches(x, t):
                cnn(xb)

    def saliency():
        for xb, tb in batches(x, t):
            Saliency(cnn).attribute(xb, target=tb)

    def ig(method):
        def run():
            for xb, tb in batches(x, t):
                IntegratedGradients(cnn).attribute(xb, baselines=torch.zeros_like(xb), target=tb, n_steps=50, method=method)

        return run

    def occlusion():
        for xb, tb in batches(x, t):
            Occlusion(cnn).attribute(xb, sliding_window_shapes=(1, 2, 2), strides=(1, 1, 1), baselines=0, target=tb)

    def ablation():
        for xb, tb in batches(x, t):
            FeatureAblation(cnn).attribute(xb, baselines=0, feature_mask=mask, target=tb)

    def gradcam():
        for xb, tb in batches(x, t):
            LayerGradCam(cnn, cnn.conv2).attribute(xb, target=tb)

    def deeplift():
        for xb, tb in batches(x, t):
            DeepLift(cnn).attribute(xb, baselines=torch.zeros_like(xb), target=tb)

    def conductance():
        for xb, tb in batches(x, t):
            LayerConductance(cnn, cnn.fc1).attribute(xb, baselines=torch.zeros_like(xb), target=tb, n_steps=50)

    def shapley():
        torch.manual_seed(0)
        ShapleyValueSampling(mlp).attribute(cx, baselines=0, target=ct, n_samples=200)

    from captum.robust import FGSM, PGD

    y = torch.from_numpy(np.load("data/digits_test_y.npy"))

    def fgsm():
        for xb, yb in batches(x, y):
            FGSM(cnn, lower_bound=0.0, upper_bound=1.0).perturb(xb, epsilon=0.1, target=yb)

    def pgd():
        for xb, yb in batches(x, y):
            PGD(cnn, lower_bound=0.0, upper_bound=1.0).perturb(
                xb, radius=0.1, step_size=0.02, step_num=20, target=yb, random_start=False
            )

    import warnings

    warnings.filterwarnings("ignore")
    work = [
        ("forward (PREDICT), digits CNN", forward, 397),
        ("saliency, digits CNN", saliency, 397),
        ("integrated_gradients 50 gausslegendre", ig("gausslegendre"), 397),
        ("integrated_gradients 50 riemann_trapezoid", ig("riemann_trapezoid"), 397),
        ("occlusion 2x2 stride 1", occlusion, 397),
        ("feature_ablation 2x2 patches", ablation, 397),
        ("gradcam at conv2", gradcam, 397),
        ("deeplift", deeplift, 397),
        ("layer_conductance 50 at fc1", conductance, 397),
        ("shapley_sampling 200, cancer MLP", shapley, 119),
        ("ATTACK fgsm, digits CNN", fgsm, 397),
        ("ATTACK pgd 20 steps, digits CNN", pgd, 397),
    ]
    work += minilm_workloads()
    print(f"Captum {__import__('captum').__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads, batches of {BATCH}, {RUNS} runs")
    print(f"{'workload':<44} {'inputs':>7} {'ms/input (med)':>14} {'spread (min–max)':>22}")
    for name, fn, n in work:
        v = timed(fn, n)
        print(f"{name:<44} {n:>7} {statistics.median(v):>14.4f} {min(v):>10.4f} – {max(v):<10.4f}")
    one_shot = (
        "import torch, captum, numpy as np, json, struct, sys; sys.path.insert(0, 'tools');"
        "from captum_baseline import load; from captum.attr import IntegratedGradients;"
        "m = load('digits_cnn'); x = torch.from_numpy(np.load('data/digits_test_x.npy')[17:18]);"
        "a = IntegratedGradients(m).attribute(x, baselines=torch.zeros_like(x), target=m(x).argmax(1), n_steps=50);"
        "print(a.flatten().topk(5))"
    )
    cold = []
    for _ in range(RUNS):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", one_shot], check=True, capture_output=True)
        cold.append((time.perf_counter() - t0) * 1e3)
    print(f"{'cold start: python, import + load + one IG query':<44} {1:>7} {statistics.median(cold):>11.1f} ms {min(cold):>8.1f} – {max(cold):<8.1f} (whole process)")


def minilm_workloads():
    """The bench's MiniLM workloads (when tools/fetch_minilm.sh has run and transformers is
    installed): the eight sentences of data/sentences.csv, and those eight eight times over
    (64), each batch padded to its longest sentence as sentence-transformers pads; the
    similarity with sentence 1 explained by LayerIntegratedGradients on the embeddings
    (50 Gauss-Legendre steps, [PAD] baseline keeping [CLS]/[SEP], the input's mask)."""
    path = "models/downloaded/all-MiniLM-L6-v2"
    try:
        from captum.attr import LayerIntegratedGradients
        from transformers import AutoTokenizer, BertModel
    except ImportError:
        return []
    if not os.path.exists(os.path.join(path, "model.safetensors")):
        return []
    import csv

    tok = AutoTokenizer.from_pretrained(path)
    model = BertModel.from_pretrained(path, add_pooling_layer=False).eval()
    texts = [r["sentence"] for r in csv.DictReader(open("data/sentences.csv"))]

    def embed(input_ids, attention_mask):
        h = model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).float()
        return torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=1)

    first = tok(texts[1:2], return_tensors="pt")
    with torch.no_grad():
        ref = embed(first["input_ids"], first["attention_mask"])
    special = {tok.cls_token_id, tok.sep_token_id, tok.pad_token_id}

    def similarity(input_ids, attention_mask):
        return (embed(input_ids, attention_mask) * ref).sum(1, keepdim=True)

    work = []
    for copies in (1, 8):
        enc = tok(texts * copies, padding=True, return_tensors="pt")
        ids, mask = enc["input_ids"], enc["attention_mask"]
        base = torch.tensor([[t if t in special else tok.pad_token_id for t in row] for row in ids.tolist()])

        def forward(ids=ids, mask=mask):
            with torch.no_grad():
                embed(ids, mask)

        def lig(ids=ids, mask=mask, base=base):
            LayerIntegratedGradients(similarity, model.embeddings).attribute(
                ids, baselines=base, additional_forward_args=(mask,), target=0, n_steps=50, method="gausslegendre"
            )

        n = len(texts) * copies
        work += [
            (f"MiniLM forward (PREDICT), {n} sentences", forward, n),
            (f"MiniLM layer IG 50 on embeddings, similarity, {n} sentences", lig, n),
        ]
    return work


def real_scale():
    """The bench's real-scale workloads on the models of `make_zoo.py --full` (rebuilt here
    from the same seed, so the weights equal the ONNX files'), Captum with each whole batch
    at once (its fastest), and PREDICT in onnxruntime too."""
    if not os.path.exists("models/zoo/resnet18.onnx"):
        print("real scale: run tools/make_zoo.py --full first (writes models/zoo)")
        return
    sys.path.insert(0, "tools")
    import onnxruntime as ort
    from make_zoo import FULL_MODELS, full_model

    runs = int(os.environ.get("BENCH_REAL_RUNS", "3"))

    def timed_real(fn, inputs):
        return timed(fn, inputs, runs)

    def show(name, n, v):
        print(f"{name:<52} {n:>6} {statistics.median(v):>14.2f} {min(v):>10.2f} – {max(v):<10.2f}")

    def bench(name, n, fn):
        """Times `fn` (n inputs) unless BENCH_SKIP names a word of the workload."""
        if not any(w in name for w in skip):
            show(name, n, timed_real(fn, n))

    print(f"\nreal scale, 224×224 — Captum {__import__('captum').__version__}, torch {torch.__version__}, "
          f"onnxruntime {ort.__version__}, {torch.get_num_threads()} threads, {runs} runs each")
    print(f"{'workload':<52} {'inputs':>6} {'ms/input (med)':>14} {'spread (min–max)':>22}")
    images = {n: torch.from_numpy(np.load(f"models/zoo/images224_{n}.npy")) for n in (4, 32)}
    stages = {"resnet18": ("layer4", "layer3"), "resnet50": ("layer4", "layer3"),
              "mobilenet_v3_large": ("features", None)}
    sets = {"resnet18": (4, 32), "resnet50": (4, 32)}
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.inter_op_num_threads = 1
    picked = [m for m in os.environ.get("BENCH_MODELS", "").split(",") if m]
    skip = [w for w in os.environ.get("BENCH_SKIP", "").split(",") if w]
    for name, _ in FULL_MODELS:
        path = f"models/zoo/{name}.onnx"
        if not os.path.exists(path) or (picked and name not in picked):
            continue
        model = full_model(name)
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        last, earlier = stages.get(name, (None, None))
        for n in sets.get(name, (4,)):
            x = images[n]
            with torch.no_grad():
                t = model(x).argmax(1)
            data = f"img{n}"

            def forward():
                with torch.no_grad():
                    model(x)

            xs = x.numpy()
            bench(f"{name} forward (PREDICT), {data}", n, forward)
            bench(f"{name} onnxruntime forward, batch {n}", n, lambda: sess.run(None, {"input": xs}))
            bench(f"{name} onnxruntime forward, batch 1", n,
                  lambda: [sess.run(None, {"input": xs[i:i + 1]}) for i in range(n)])
            bench(f"{name} saliency, {data}", n, lambda: Saliency(model).attribute(x, target=t))
            if last:
                layer = getattr(model, last)
                bench(f"{name} gradcam at {last}, {data}", n,
                      lambda: LayerGradCam(model, layer).attribute(x, target=t))
            if n <= 4:
                x1, t1 = x[:1], t[:1]
                bench(f"{name} integrated_gradients 50, one input", 1,
                      lambda: IntegratedGradients(model).attribute(x1, baselines=torch.zeros_like(x1), target=t1,
                                                                  n_steps=50))
                if name == "resnet18":
                    bench(f"{name} occlusion 16×16 stride 8, one input", 1,
                          lambda: Occlusion(model).attribute(x1, sliding_window_shapes=(3, 16, 16), strides=(3, 8, 8),
                                                             baselines=0, target=t1, perturbations_per_eval=16))
        if earlier:
            x = images[4]

            def drill():
                for layer, cls in ((last, 1), (last, 2), (earlier, 1), (earlier, 2)):
                    LayerGradCam(model, getattr(model, layer)).attribute(x, target=cls)

            bench(f"{name} drill-down: 4 gradcam (2 layers × 2 classes)", 4, drill)


def memory_child(internal_batch_size):
    """One IG-50 job, ResNet-50 on the 32 images, in this process; prints its peak RSS."""
    import resource

    sys.path.insert(0, "tools")
    from make_zoo import full_model

    model = full_model("resnet50")
    x = torch.from_numpy(np.load("models/zoo/images224_32.npy"))
    with torch.no_grad():
        t = model(x).argmax(1)
    start = time.perf_counter()
    attr = IntegratedGradients(model).attribute(x, baselines=torch.zeros_like(x), target=t, n_steps=50,
                                                internal_batch_size=internal_batch_size)
    seconds = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"peak_rss_mb={peak_kb / 1024:.0f} seconds={seconds:.1f} total={float(attr.sum()):.6g}")


def memory():
    """The memory goal's job (IG-50, ResNet-50, 32 images at 224×224) in Captum, each
    setting in a process of its own under a 16 GB address-space cap (the job without
    internal_batch_size asks for the activations of 1600 images at once)."""
    if not os.path.exists("models/zoo/resnet50.onnx"):
        print("memory: run tools/make_zoo.py --full first (writes models/zoo)")
        return
    cap = 16 << 30
    print("\nmemory — IG-50 on ResNet-50, 32 inputs at 224×224, peak RSS of a process of its own")
    for ibs in (None, 50, 10):
        child = subprocess.run(
            [sys.executable, __file__, "--memory-child", str(ibs or 0)],
            capture_output=True, text=True,
            preexec_fn=lambda: __import__("resource").setrlimit(__import__("resource").RLIMIT_AS, (cap, cap)))
        line = next((l for l in child.stdout.splitlines() if l.startswith("peak_rss_mb=")), None)
        what = f"internal_batch_size={ibs}" if ibs else "no internal_batch_size"
        if line:
            print(f"captum {what:<28} {line}")
        else:
            tail = (child.stderr.strip().splitlines() or ["?"])[-1]
            print(f"captum {what:<28} failed under the 16 GB cap: {tail[:160]}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--memory-child":
        memory_child(int(sys.argv[2]) or None)
        sys.exit(0)
    only = os.environ.get("BENCH_ONLY", "")
    if only == "memory":
        memory()
        sys.exit(0)
    if only != "digits":
        real_scale()
    if only != "real":
        main()
