"""Cost per sample of the forward-only scoring pass at several batch sizes, against a training step.

IES measures the loss of excluded samples with a forward pass in eval mode, without autograd.
Its cost per sample decides how much of the backprop saving turns into wall time, and on a CPU
it depends on the batch size more than one might think: large batches of conv activations fall
out of cache. This script times, in one process and alternating between the variants, a training
step (forward + backward + Adam) at the training batch size and no-grad eval forward passes at
each ``--batch-sizes`` value, and prints medians over ``--repeats``.

    python benchmarks/bench_forward_batch.py                   # small-cnn (28x28) and mnist1d-cnn
    python benchmarks/bench_forward_batch.py --models small-cnn --repeats 9
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F

from ies.experiments.models import build_model

SHAPES = {"small-cnn": ((1, 28, 28), dict(in_channels=1, image_size=28), 128),
          "mnist1d-cnn": ((40,), dict(input_length=40), 100)}


def _timed(fn: Callable[[], None]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def bench(model_name: str, batch_sizes: List[int], samples: int, repeats: int) -> Dict[str, float]:
    shape, kw, train_bs = SHAPES[model_name]
    torch.manual_seed(0)
    model = build_model(model_name, num_classes=10, **kw)
    x, y = torch.randn(samples, *shape), torch.randint(0, 10, (samples,))
    opt = torch.optim.Adam(model.parameters())

    def train() -> None:
        model.train()
        for s in range(0, samples, train_bs):
            loss = F.cross_entropy(model(x[s:s + train_bs]), y[s:s + train_bs])
            opt.zero_grad()
            loss.backward()
            opt.step()

    def score(bs: int) -> Callable[[], None]:
        def run() -> None:
            model.eval()
            with torch.no_grad():
                for s in range(0, samples, bs):
                    F.cross_entropy(model(x[s:s + bs]), y[s:s + bs], reduction="none")
        return run

    variants = {f"train step, batch {train_bs}": train, **{f"scoring, batch {b}": score(b) for b in batch_sizes}}
    for fn in variants.values():  # warm-up: allocator, kernels
        fn()
    times: Dict[str, List[float]] = {k: [] for k in variants}
    for _ in range(repeats):
        for k, fn in variants.items():  # alternate, so machine noise hits every variant alike
            times[k].append(_timed(fn))
    return {k: 1e3 * statistics.median(v) / samples for k, v in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="small-cnn,mnist1d-cnn")
    p.add_argument("--batch-sizes", default="128,256,512,1024")
    p.add_argument("--samples", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {a.threads} thread(s), {platform.platform()}; "
          f"median of {a.repeats} alternating repeats over {a.samples} samples")
    for name in a.models.split(","):
        res = bench(name, [int(b) for b in a.batch_sizes.split(",")], a.samples, a.repeats)
        train = next(v for k, v in res.items() if k.startswith("train"))
        print(f"\n{name}")
        for k, v in res.items():
            print(f"  {k:<22} {v:7.4f} ms/sample   {v / train:5.2f} of a training step")


if __name__ == "__main__":
    main()
