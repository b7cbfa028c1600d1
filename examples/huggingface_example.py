"""IES with the Hugging Face Trainer: IESTrainer on a tiny BERT built from a config (no downloads).

    python examples/huggingface_example.py --epochs 6
    torchrun --standalone --nproc_per_node=2 examples/huggingface_example.py --epochs 6   # DDP on CPU (gloo)

Needs ``pip install instance-early-stopping[huggingface]``. ``IESTrainer`` samples only the
active rows, computes and records one loss per sample in ``compute_loss``, and saves
``ies_state.pt`` in every checkpoint; the run then resumes from the last checkpoint for
``--resume-epochs`` more.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import warnings
from typing import Dict, List, Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import BertConfig, BertForSequenceClassification, TrainingArguments  # noqa: E402

from ies.integrations.huggingface import IESTrainer  # noqa: E402


def make_data(n: int = 256, seq_len: int = 12, vocab: int = 64, seed: int = 0) -> List[Dict[str, torch.Tensor]]:
    """Synthetic token classification: the label says whether token 0 is in the lower half of the vocabulary."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (n, seq_len), generator=g)
    return [{"input_ids": ids[i], "attention_mask": torch.ones(seq_len, dtype=torch.long),
             "labels": int(ids[i, 0] < vocab // 2)} for i in range(n)]


def make_model(seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                     max_position_embeddings=32, num_labels=2)
    return BertForSequenceClassification(cfg)


def make_trainer(out: str, epochs: int, rule: Dict[str, float]) -> IESTrainer:
    args = TrainingArguments(
        output_dir=out, num_train_epochs=epochs, per_device_train_batch_size=32, learning_rate=3e-3,
        lr_scheduler_type="linear", save_strategy="epoch", logging_strategy="no", use_cpu=True, report_to="none",
        disable_tqdm=True, seed=0,
    )
    return IESTrainer(model=make_model(), args=args, train_dataset=make_data(), ies_kwargs=rule)


def ranks_agree(trainer: IESTrainer) -> bool:
    """Under DDP: do all processes hold the same excluded set? (True in one process.)"""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return True
    mask = trainer.ies.excluded.to(torch.uint8)
    masks = [torch.empty_like(mask) for _ in range(dist.get_world_size())]
    dist.all_gather(masks, mask)
    return all(torch.equal(m, masks[0]) for m in masks)


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--resume-epochs", type=int, default=1)
    p.add_argument("--threshold", type=float, default=3e-2)
    p.add_argument("--order", type=int, default=2, help="order of the loss difference (paper: 2)")
    p.add_argument("--window", type=int, default=3, help="moving-average window (paper code: 3)")
    p.add_argument("--out", default=None, help="output_dir (default: a temporary folder)")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning)
    out = args.out or tempfile.mkdtemp(prefix="ies_hf_")

    rule = {"threshold": args.threshold, "order": args.order, "window": args.window}

    trainer = make_trainer(out, args.epochs, rule)
    trainer.train()
    agree = ranks_agree(trainer)
    main_process = trainer.is_world_process_zero()
    if main_process:
        for s in trainer.ies.history_log:
            print(f"epoch {s.epoch:2d}  active {s.active:4d}  excluded {s.excluded:4d}  "
                  f"backprop saved {s.backprop_saved:6.1%}")
        print(f"final lr {trainer.lr_scheduler.get_last_lr()[0]:.2e} (linear schedule, ends at 0 despite shorter "
              f"epochs); processes agree on the mastered set: {agree}")

    if args.resume_epochs > 0:
        resumed = make_trainer(out, args.epochs + args.resume_epochs, rule)
        resumed.train(resume_from_checkpoint=True)  # restores the model, optimizer, and IES (ies_state.pt)
        agree = agree and ranks_agree(resumed)
        if main_process:
            print(f"resumed at epoch {args.epochs}, now at IES epoch {resumed.ies.epoch}, "
                  f"active {resumed.ies.num_active}")
    if main_process:
        print(f"done: checkpoints in {out}")
    if torch.distributed.is_initialized():  # tear down gloo cleanly before the interpreter exits
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    if not agree:
        raise SystemExit("processes disagree on the mastered set")


if __name__ == "__main__":
    main()
