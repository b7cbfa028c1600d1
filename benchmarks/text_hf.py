"""The text task through the Hugging Face integration (issue 18): ``IESTrainer`` on ``text-topics``.

The frontier (``ies frontier --dataset text-topics``) trains the tiny BERT in the engine's loop;
this script trains the same model on the same data with the Trainer a user would use, and asks
what a user of the integration asks: does a target-mode run train every planned epoch, hit its
saving, and keep accuracy against a run without removal (threshold 0)? Methods run alternately,
seed by seed; the table gives the final test accuracy (clean test labels), the epochs the Trainer
ran, and the savings IES reports over the planned epochs.

Run: ``.venv/bin/python benchmarks/text_hf.py`` (docs/benchmarks/frontier.md quotes it);
``--tiny``: 300 samples, 8 epochs, 1 seed, a quick check that the script runs
(tests/benchmarks/test_scripts.py).
"""

import argparse
import os
import statistics
import tempfile
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import TrainingArguments  # noqa: E402

from ies.experiments import tables  # noqa: E402
from ies.experiments.text import PAD, SEQ_LEN, TOPICS, TinyBert, load_text  # noqa: E402
from ies.integrations.huggingface import IESTrainer  # noqa: E402

METHODS = {"none (threshold 0)": {"threshold": 0.0}, "ies δ-mode (default)": {},
           "ies target 0.2": {"target_saving": 0.2}}


def one_run(rule: dict, seed: int, data: tuple, epochs: int) -> dict:
    x_tr, y_tr, x_te, y_te = data
    rows = [{"input_ids": x, "attention_mask": (x != PAD).long(), "labels": int(y)} for x, y in zip(x_tr, y_tr)]
    torch.manual_seed(seed)
    model = TinyBert(TOPICS, max_len=SEQ_LEN)  # the engine's tiny-bert; the Trainer trains the BERT inside
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(out, num_train_epochs=epochs, per_device_train_batch_size=64, learning_rate=1e-3,
                                 lr_scheduler_type="cosine", weight_decay=0.0, save_strategy="no",
                                 logging_strategy="no", use_cpu=True, report_to="none", disable_tqdm=True, seed=seed)
        trainer = IESTrainer(model=model.bert, args=args, train_dataset=rows, ies_kwargs=rule)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            trainer.train()
    model.eval()
    with torch.no_grad():
        logits = model(x_te)
    s = trainer.ies_callback.summary
    return {"acc": 100.0 * float((logits.argmax(1) == y_te).float().mean()), "epochs": trainer.ies.epoch,
            "backprop_saved": float(s["backprop_saved"]), "compute_saved": float(s["compute_saved"])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--train-size", type=int, default=5000)
    p.add_argument("--tiny", action="store_true")
    a = p.parse_args()
    if a.tiny:
        a.seeds, a.epochs, a.train_size = 1, 8, 300
    torch.set_num_threads(1)
    data = load_text(a.train_size, 42)
    got = {m: [] for m in METHODS}
    for seed in range(a.seeds):
        for m, rule in METHODS.items():
            r = one_run(rule, seed, data, a.epochs)
            got[m].append(r)
            print(f"seed {seed} {m}: acc {r['acc']:.2f}, epochs {r['epochs']}, backprop saved "
                  f"{r['backprop_saved']:.1%}", flush=True)
    body = []
    for m, rs in got.items():
        acc = [r["acc"] for r in rs]
        sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
        body.append([m, f"{statistics.fmean(acc):.2f} ± {sd:.2f}", " / ".join(f"{v:.2f}" for v in acc),
                     " / ".join(str(r["epochs"]) for r in rs) + f" of {a.epochs}",
                     f"{statistics.fmean(r['backprop_saved'] for r in rs):.1%}",
                     f"{statistics.fmean(r['compute_saved'] for r in rs):.1%}"])
    print(f"\ntext-topics through IESTrainer: {a.train_size} samples, {a.epochs} epochs, {a.seeds} seed(s)\n")
    print(tables.table(["method", "final test acc (%)", "per seed", "epochs run", "backprop saved", "compute saved"],
                       body))


if __name__ == "__main__":
    main()
