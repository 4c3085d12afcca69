"""The same metric work as the EVALUATE rows of `cargo bench --bench workloads`, done the
way Python users do it, for comparison: Captum 0.9's `infidelity` and `sensitivity_max`
(batched by Captum over inputs × samples) and RISE deletion as Quantus-style code runs it
(a loop over inputs, each input's 21 copies in one batch), on all 397 test digits of the
shipped CNN with 2 torch threads. Prints ms per input. Outside CI:

    ~/captum-venv/bin/python tools/bench_metrics.py
"""

import os
import sys
import time
import warnings

import numpy as np
import torch
from captum.attr import GuidedBackprop, InputXGradient, IntegratedGradients, Occlusion, Saliency
from captum.metrics import infidelity, sensitivity_max

sys.path.insert(0, os.path.dirname(__file__))
from captum_baseline import load  # noqa: E402
from metric_cases import curve  # noqa: E402

warnings.filterwarnings("ignore")
torch.set_num_threads(2)


def timed(name, n, f, runs=3):
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    print(f"{name:<48} {1000 * sorted(times)[len(times) // 2] / n:>10.3f} ms/input")


def main():
    cnn = load("digits_cnn")
    x = torch.from_numpy(np.load("data/digits_test_x.npy"))
    n = x.shape[0]
    with torch.no_grad():
        t = cnn(x).argmax(1)
    ig = IntegratedGradients(cnn)

    def perturb(inputs):
        noise = torch.randn_like(inputs) * 0.003
        return noise, inputs - noise

    def infid():
        attr = ig.attribute(x, baselines=torch.zeros_like(x), target=t, n_steps=50, internal_batch_size=397)
        infidelity(cnn, perturb, x, attr, target=t, n_perturb_samples=10)

    timed("Captum IG-50 + infidelity(10)", n, infid)
    sal = Saliency(cnn)

    def sens():
        sensitivity_max(lambda inp, target: sal.attribute(inp if isinstance(inp, tuple) else (inp,), target=target), x, perturb_radius=0.02, n_perturb_samples=10, target=t)

    timed("Captum saliency + sensitivity_max(10)", n, sens)
    zeros = torch.zeros_like(x)

    def deletion_saliency():
        curve(cnn, x, t, sal.attribute(x, target=t), 20, False, zeros)

    timed("saliency + RISE deletion(20), loop per input", n, deletion_saliency)

    def five():
        maps = [
            sal.attribute(x, target=t),
            InputXGradient(cnn).attribute(x, target=t),
            ig.attribute(x, baselines=zeros, target=t, n_steps=50),
            GuidedBackprop(cnn).attribute(x, target=t),
            Occlusion(cnn).attribute(x, sliding_window_shapes=(1, 2, 2), strides=(1, 1, 1), baselines=0, target=t),
        ]
        for m in maps:
            curve(cnn, x, t, m, 20, False, zeros)

    timed("5 methods + deletion(20), loop (per map)", 5 * n, five, runs=1)


if __name__ == "__main__":
    main()
