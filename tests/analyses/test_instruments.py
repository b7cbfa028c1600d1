"""The engine callbacks behind the analyses, checked against direct computations."""

import math

import torch

from ies.criterion import mastered_mask
from ies.experiments.analysis.instruments import GradNormProbe, LossProbe, SharpnessProbe, coefficient_of_variation
from ies.experiments.config import RunConfig
from ies.experiments.data import load_dataset
from ies.experiments.engine import EngineCallback, run_training


def test_coefficient_of_variation():
    assert coefficient_of_variation(torch.tensor([1.0, 1.0, 1.0])) == 0.0
    assert math.isclose(coefficient_of_variation(torch.tensor([1.0, 3.0, float("inf")])), 0.5)
    assert math.isnan(coefficient_of_variation(torch.tensor([2.0])))


def test_probes_match_direct_computation():
    data = load_dataset("mnist1d", train_size=200)
    probe = LossProbe((0, 2), threshold=0.05, keep_losses=True)
    gn = GradNormProbe()
    norms = []

    class Direct(EngineCallback):
        def after_backward(self, model, indices, losses):
            norms.append(float(torch.sqrt(sum((p.grad ** 2).sum() for p in model.parameters()))))

    sp = SharpnessProbe(every=3, subset_size=32, iters=3)
    cfg = RunConfig(method="none", epochs=8, train_size=200, batch_size=64)
    res = run_training(cfg, data, callbacks=[probe, gn, Direct(), sp])
    rows = res.epochs
    assert len(probe.losses) == 8 and probe.losses[0].shape == (200,)
    # Mastery counts equal the criterion applied to the stored full-set loss histories.
    hist = torch.stack(probe.losses, 1)  # (N, E)
    for k in (0, 2):
        h = k + 3 + 1
        got = int(mastered_mask(hist[:, -h:], torch.full((200,), 8), threshold=0.05, order=k, window=3, m=1).sum())
        assert rows[-1][f"mastered_o{k}"] == got
    # Second-order CV of the last epoch, by hand.
    a = (hist[:, -1] - 2 * hist[:, -2] + hist[:, -3]).abs().double()
    assert math.isclose(rows[-1]["cv_diff_o2"], float(a.std(unbiased=False) / a.mean()), rel_tol=1e-6)
    # Mean mini-batch gradient norm of the epoch.
    per_epoch = math.ceil(200 / 64)
    assert math.isclose(rows[0]["grad_norm"], sum(norms[:per_epoch]) / per_epoch, rel_tol=1e-5)
    assert [r["epoch"] for r in rows if r["hessian_top_eig"] is not None] == [1, 3, 6, 8]
    assert rows[-1]["full_train_loss"] > 0 and 0 <= rows[-1]["full_train_acc"] <= 100


def test_loss_probe_counts_equal_the_criterion_on_the_loss_history():
    # Fixed loss sequences, no training: sample i's loss decays at its own rate, so the number of
    # samples below the threshold grows over the epochs. The counts must equal mastered_mask on
    # the last history_length columns, for several (order, window, m).
    import types

    from ies.criterion import history_length

    n, epochs = 64, 12
    rates = torch.linspace(0.02, 0.9, n)
    seq = [torch.exp(-rates * e) * (1 + 0.05 * torch.sin(torch.arange(n) * 1.0 + e)) + 1e-3 for e in range(epochs)]

    class Replay(torch.nn.Module):  # outputs whose cross-entropy with class 0 is the given loss
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))
            self.loss = None

        def forward(self, x):
            l = self.loss[x[:, 0].long()]
            return torch.stack([torch.zeros_like(l), torch.log(torch.expm1(l))], dim=1) + 0 * self.w

    model = Replay()
    ctx = types.SimpleNamespace(model=model, data=types.SimpleNamespace(
        x_train=torch.arange(n, dtype=torch.float32)[:, None], y_train=torch.zeros(n, dtype=torch.long)))
    for order, window, m in [(0, 3, 1), (1, 2, 2), (2, 3, 1), (3, 4, 1)]:
        probe = LossProbe((order,), threshold=0.02, window=window, m=m, keep_losses=True)
        got = []
        for e in range(epochs):
            model.loss = seq[e]
            got.append(probe.epoch_end(ctx)[f"mastered_o{order}"])
        hist = torch.stack(probe.losses, 1)  # (N, E): the losses the probe measured
        assert torch.allclose(hist, torch.stack(seq, 1), atol=1e-5)
        h = history_length(order, window, m)
        want = [0 if e + 1 < h else int(mastered_mask(hist[:, e + 1 - h:e + 1], torch.full((n,), e + 1),
                                                      threshold=0.02, order=order, window=window, m=m).sum())
                for e in range(epochs)]
        assert got == want and 0 < got[-1] < n  # some, not all, mastered by the end
