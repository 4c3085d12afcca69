"""Checkpoints for TracInCP (LOAD MODEL … CHECKPOINTS) and their reference: the digits
CNN's architecture (models/digits_cnn_backdoor.json) trained from a seeded random start
on the first backdoor's poisoned training set with SGD (learning rate 0.1, momentum 0.9, batch 50),
its weights saved after epochs 1, 2 and 3 (tests/fixtures/checkpoints/e{1,2,3}.safetensors);
then TracInCP in float64 torch — Σ over the checkpoints of lr · ∇θ loss(z) · ∇θ loss(z′),
the last linear layer, the test input's loss at the final checkpoint's prediction — of
every training sample on the first three test digits and on the sixth with the trigger
(tests/fixtures/checkpoints/tracincp_last.npy; `…_self.npy`: self-influence).
Outside CI (torch, safetensors). From the repository root:

    ~/captum-venv/bin/python tools/tracin_checkpoints.py
"""

import os
import sys

import numpy as np
import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
from captum_baseline import load  # noqa: E402
from influence_cases import grads  # noqa: E402

torch.set_num_threads(2)
OUT = "tests/fixtures/checkpoints"
LR = 0.1


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    model = load("digits_cnn_backdoor")
    for m in model.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    model.train()
    x = torch.from_numpy(np.load("data/digits_backdoor_train_x.npy"))
    y = torch.from_numpy(np.load("data/digits_backdoor_train_y.npy")).long()
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    for epoch in range(1, 4):
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 50):
            idx = order[i:i + 50]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, f"{OUT}/e{epoch}.safetensors")
        with torch.no_grad():
            print("epoch", epoch, "accuracy", (model(x).argmax(1) == y).float().mean().item())
    # The reference: float64 copies of each checkpoint.
    import copy
    from safetensors.torch import load_file

    test = torch.from_numpy(np.load("data/digits_test_x.npy")[[0, 1, 2, 5]]).double()
    test[3, 0, 6:8, 6:8] = 1.0
    models = []
    for epoch in range(1, 4):
        m = copy.deepcopy(model).double().eval()
        m.load_state_dict({k: v.double() for k, v in load_file(f"{OUT}/e{epoch}.safetensors").items()})
        models.append(m)
    with torch.no_grad():
        pred = models[-1](test).argmax(1)
    xd, total, self_total = x.double(), 0.0, 0.0
    for m in models:
        gt = grads(m, xd, y, ["fc2"])
        gs = grads(m, test, pred, ["fc2"])
        total = total + LR * (gs @ gt.T)
        self_total = self_total + LR * (gt * gt).sum(1)
    np.save(f"{OUT}/tracincp_last.npy", total.numpy())
    np.save(f"{OUT}/tracincp_last_self.npy", self_total.numpy())
    print("test predictions", pred.tolist())


if __name__ == "__main__":
    main()
