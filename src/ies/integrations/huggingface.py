"""Hugging Face ``transformers.Trainer`` integration: ``IESTrainer``.

The Trainer reduces the loss to a batch mean and samples all of the data, so IES uses
three hooks the Trainer documents for subclassing, in :class:`IESTrainer`:

* ``get_train_dataloader``: the train loader samples with an :class:`~ies.ActiveSampler`
  over the whole active set (under DDP ``accelerate`` shards its batches across
  processes, so the sampler is built with ``num_replicas=1``) and attaches each sample's
  dataset index to the batch (under ``index_column``; the rows need no index column).
* ``compute_loss``: pops the index and the labels, runs the model without labels and
  computes one loss per sample (:func:`per_sample_loss`): cross-entropy for sequence
  classification, MSE for regression, and for causal / masked language models the mean
  of the sample's token losses over its non-padding tokens (label ``-100``; causal LMs
  shift labels by one). It records them and returns their mean, which the Trainer
  backpropagates.
* ``create_scheduler``: the Trainer-created LR schedule is driven by epoch progress
  (:class:`~ies.training.EpochProgressLR`), so it ends where it was meant to even though
  epochs are shorter; ``rescale_lr_schedule=False`` keeps the step-based one.

An :class:`IESTrainerCallback` (added for you) runs the probe pass and ``step()`` at
each epoch end, logs the statistics through ``Trainer.log`` (``ies/...`` in
``trainer.state.log_history`` and every ``report_to`` integration) unless
``logging_strategy="no"``, and writes ``ies_state.pt`` into every checkpoint folder;
``train(resume_from_checkpoint=...)`` restores it. The run's end is IES's to say: when
every sample is mastered (δ-mode) it stops training with an :class:`~ies.IESWarning`
saying so, and at the end ``callback.summary`` holds the savings over the planned epochs.

Epoch lengths: the Trainer plans the run (``max_steps``, the schedule) from the
full-data length, as for a run without IES. How each epoch gets its real length, and
the check that it did, per transformers version: :mod:`ies.integrations._compat`.

Example (a tiny BERT built from its config, no download):
    >>> from transformers import BertConfig, BertForSequenceClassification, TrainingArguments
    >>> model = BertForSequenceClassification(BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1,
    ...                                                  num_attention_heads=2, intermediate_size=32, num_labels=2))
    >>> ids = torch.randint(1, 64, (64, 8))
    >>> train = [{"input_ids": r, "attention_mask": torch.ones(8, dtype=torch.long), "labels": int(r[0] < 32)}
    ...          for r in ids]                            # rows as the Trainer takes them; no index column
    >>> args = TrainingArguments("out", num_train_epochs=10, per_device_train_batch_size=8, use_cpu=True,
    ...                          report_to="none", save_strategy="no", disable_tqdm=True)
    >>> trainer = IESTrainer(model=model, args=args, train_dataset=train, ies_kwargs={"target_saving": 0.3})
    >>> _ = trainer.train()                               # or train(resume_from_checkpoint=True); prints its logs
    {...}
    >>> round(trainer.ies_callback.summary["backprop_saved"], 2)
    0.3
"""

from __future__ import annotations

import functools
import inspect
import os
import warnings
from collections.abc import Mapping
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from . import all_excluded_message, require, rule_for_run

transformers = require("transformers", "huggingface")

from transformers import Trainer, TrainerCallback  # noqa: E402
from transformers.trainer_utils import get_last_checkpoint  # noqa: E402

from .. import IES, EpochStats, IESConfig, IESWarning  # noqa: E402
from ..distributed import DistributedIES, merge_records  # noqa: E402
from ..probing import to_device  # noqa: E402
from ..sampler import ActiveSampler  # noqa: E402
from ..training import EpochProgressLR  # noqa: E402
from . import _compat  # noqa: E402
from .hf_rows import LOSS_TYPES, IndexCollator, WithIndex, auto_loss_type, per_sample_loss  # noqa: E402

_compat.check_version(transformers.__version__)

__all__ = ["IESTrainer", "IESTrainerCallback", "per_sample_loss", "IES_STATE_NAME"]

IES_STATE_NAME = "ies_state.pt"
_STATE_VERSION = 1
def _at_step(step_lambda: Callable[[float], float], total_steps: int, progress: float) -> float:
    return step_lambda(progress * total_steps)


def planned_epochs(args: Any) -> Optional[int]:
    """The run's planned epochs: an integer ``num_train_epochs`` with ``max_steps`` unset, else None."""
    epochs = args.num_train_epochs
    return int(epochs) if args.max_steps <= 0 and float(epochs) == int(epochs) else None


class IESTrainerCallback(TrainerCallback):
    """Epoch-end probe pass + ``step()``, the run's end, logging, IES state in checkpoints (added by
    :class:`IESTrainer`). After ``train()``, ``summary`` holds the run's savings over the planned
    epochs (epochs not run count as saved), as ``Accounting.summary`` gives them."""

    def __init__(self, trainer: "IESTrainer") -> None:
        self.trainer = trainer
        self.epoch_start_step = 0
        self.epoch_batches = 0
        self.last_stats: Optional[EpochStats] = None
        self.summary: Optional[Dict[str, Any]] = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # Restored here, after the Trainer planned the run from the full data (as without IES).
        tr, saved = self.trainer, self.trainer._ies_resume
        self.summary = None
        if saved is not None:
            if not tr._ies_epoch_set:
                raise ValueError(
                    f"resuming an IES run needs transformers >= 5.3: this Trainer ({transformers.__version__}) derives "
                    "the resumed epoch from the global step, which is wrong once IES shortens epochs; train from "
                    "scratch, or upgrade transformers")
            if int(saved["global_step"]) != state.global_step:
                raise ValueError(f"{IES_STATE_NAME} was saved at step {saved['global_step']} but the checkpoint is at "
                                 f"step {state.global_step}: resume from the checkpoint folder it was saved in")
            tr.ies.load_state_dict(saved["tracker"])
            self.epoch_start_step = int(saved["epoch_start_step"])

    def on_epoch_begin(self, args: Any, state: Any, control: Any, train_dataloader: Any = None,
                       lr_scheduler: Any = None, **kwargs: Any) -> None:
        if self.trainer._ies_resume is None:
            self.epoch_start_step = state.global_step
        self.trainer._ies_resume = None  # a resumed epoch keeps its saved start; later ones start here
        self.epoch_batches = len(train_dataloader)
        sched = getattr(lr_scheduler, "scheduler", lr_scheduler)  # accelerate wraps it
        if isinstance(sched, EpochProgressLR):
            updates = -(-self.epoch_batches // args.gradient_accumulation_steps)
            sched.begin_epoch(updates, self.trainer.ies.epoch)

    def on_epoch_end(self, args: Any, state: Any, control: Any, model: Any = None, train_dataloader: Any = None,
                     **kwargs: Any) -> None:
        tr, loader = self.trainer, train_dataloader
        if not (control.should_training_stop or control.should_epoch_stop):  # the epoch ran to its end
            _compat.check_epoch(transformers.__version__, tr.ies.epoch, self.epoch_batches,
                                args.gradient_accumulation_steps, state.global_step - self.epoch_start_step, state.epoch)

        def forward(m: torch.nn.Module, batch: Mapping[str, Any]) -> Tensor:
            with tr.compute_loss_context_manager():
                return tr.per_sample_losses(m, to_device(batch, args.device))[0]

        stats = tr.ies.end_epoch(model, loader.dataset, None, forward=forward, collate_fn=loader.collate_fn,
                                 batch_size=tr.probe_batch_size or args.per_device_eval_batch_size, device=args.device)
        self.last_stats = stats
        self.epoch_start_step = state.global_step  # the next epoch starts here
        if args.logging_strategy != "no":
            tr.log({f"ies/{k}": float(v) for k, v in stats.as_dict().items() if v is not None})
        planned = planned_epochs(args)
        if tr.ies.num_active == 0 and (planned is None or tr.ies.epoch < planned) and not control.should_training_stop:
            # The next epoch would have no batch (the Trainer would stop with its own IterableDataset
            # message): IES ends the run here and says why.
            control.should_training_stop = True
            if state.is_world_process_zero:
                warnings.warn(all_excluded_message(tr.ies, stats.epoch, planned, "IESTrainer"), IESWarning, stacklevel=2)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        ies = self.trainer.ies
        planned = planned_epochs(args)
        self.summary = {**ies.books.summary(max(planned or 0, ies.epoch)), "planned_epochs": planned}
        if args.logging_strategy != "no" and ies.epoch > 0:
            keep = ("epochs_run", "backprop_saved", "compute_saved")
            self.trainer.log({f"ies/run_{k}": float(self.summary[k]) for k in keep})

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        tr = self.trainer
        if isinstance(tr.ies, DistributedIES):
            tr.ies.sync()  # a collective: on_save runs on every process; makes mid-epoch saves exact
        folder, step = tr._ies_saved_to
        if not state.is_world_process_zero:
            return
        if folder is None or step != state.global_step:
            warnings.warn(f"IES: no checkpoint folder was saved at step {state.global_step}; IES state not saved",
                          IESWarning, stacklevel=2)
            return
        torch.save({"version": _STATE_VERSION, "tracker": tr.ies.state_dict(), "epoch_start_step": self.epoch_start_step,
                    "global_step": state.global_step}, os.path.join(folder, IES_STATE_NAME))


class IESTrainer(_compat.TrainerEpochHooks, Trainer):
    """``transformers.Trainer`` that trains only the samples IES keeps active.

    Args (besides the Trainer's):
        ies: your tracker (a :class:`~ies.distributed.DistributedIES` for multi-process runs);
            default: a ``DistributedIES(len(train_dataset), ies_config, **ies_kwargs)``.
        ies_config: an :class:`~ies.IESConfig` for the tracker the trainer builds.
        ies_kwargs: rule fields (any ``IESConfig`` field, e.g. ``{"target_saving": 0.4}``);
            they override ``ies_config``.
        index_column: the batch key under which the train loader puts each sample's dataset
            index (popped before the forward; the rows themselves need no index).
        loss_type: ``"auto"`` (from logits shape / model class), ``"classification"``,
            ``"regression"``, ``"causal_lm"`` or ``"token"``; see :func:`per_sample_loss`.
        per_sample_loss_fn: ``f(outputs, labels) -> (B,)`` to compute the losses yourself.
        rescale_lr_schedule: drive the Trainer-created LR schedule by epoch progress.
        probe_batch_size: probe-pass batch size (default ``per_device_eval_batch_size``).

    Example: the module's (:mod:`ies.integrations.huggingface`).
    """

    def __init__(
        self,
        *args: Any,
        ies: Optional[IES] = None,
        ies_config: Optional[IESConfig] = None,
        ies_kwargs: Optional[Dict[str, Any]] = None,
        index_column: str = "idx",
        loss_type: str = "auto",
        per_sample_loss_fn: Optional[Callable[[Any, Tensor], Tensor]] = None,
        rescale_lr_schedule: bool = True,
        probe_batch_size: Optional[int] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
        ds = self.train_dataset
        if ds is None or isinstance(ds, torch.utils.data.IterableDataset) or not hasattr(ds, "__len__"):
            raise ValueError("IESTrainer needs a map-style train_dataset (with __len__ and rows by index)")
        if ies is not None and (ies_kwargs or ies_config is not None):
            raise ValueError("pass either ies=tracker or ies_config / ies_kwargs (to build one), not both")
        if ies is None:
            # IES validates the fields and names the valid ones; target_saving plans over num_train_epochs
            ies = DistributedIES(len(ds), **rule_for_run(ies_config, dict(ies_kwargs or {}), planned_epochs(self.args)))
        self.ies: IES = ies
        if self.ies.num_samples != len(ds):
            raise ValueError(f"the tracker has num_samples={self.ies.num_samples} but train_dataset has {len(ds)} "
                             "samples; build it with len(train_dataset)")
        if self.args.world_size > 1 and not isinstance(self.ies, DistributedIES):
            raise ValueError(f"training runs on {self.args.world_size} processes: pass ies=DistributedIES(...) "
                             "(or ies_kwargs) so every process holds the same IES state")
        self.index_column = index_column
        self.loss_type = loss_type
        self.per_sample_loss_fn = per_sample_loss_fn
        self.rescale_lr_schedule = rescale_lr_schedule
        self.probe_batch_size = probe_batch_size
        # compute_loss returns a per-batch mean: let the Trainer scale it for accumulation,
        # and do not count tokens for a token-normalized loss.
        self.model_accepts_loss_kwargs = False
        self._ies_resume: Optional[Dict[str, Any]] = None
        self._ies_saved_to: Tuple[Optional[str], int] = (None, -1)  # the last save_model folder and its step
        self.ies_callback = IESTrainerCallback(self)
        self.add_callback(self.ies_callback)

    # ------------------------------------------------------------- data
    def get_train_dataloader(self) -> DataLoader:
        """The train loader over the active set: ``ActiveSampler`` + each sample's index in the batch."""
        args = self.args
        seed = args.data_seed if args.data_seed is not None else args.seed
        keep = None
        if args.remove_unused_columns:  # the Trainer's column filter, applied to the rows we hand its collator
            model = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
            keep = [*inspect.signature(model.forward).parameters, *self.label_names, "label", "label_ids"]
        workers = args.dataloader_num_workers
        loader = DataLoader(
            WithIndex(self.train_dataset), batch_size=args.train_batch_size,
            sampler=ActiveSampler(self.ies, shuffle=True, seed=seed, num_replicas=1, rank=0),
            collate_fn=IndexCollator(self.data_collator, self.index_column, keep), num_workers=workers,
            pin_memory=args.dataloader_pin_memory, drop_last=args.dataloader_drop_last,
            persistent_workers=args.dataloader_persistent_workers if workers > 0 else False,
            prefetch_factor=args.dataloader_prefetch_factor if workers > 0 else None,
        )
        return self.accelerator.prepare(loader)

    # ------------------------------------------------------------- losses
    def per_sample_losses(self, model: torch.nn.Module, inputs: Dict[str, Any]) -> Tuple[Tensor, Any, Optional[Tensor]]:
        """``(losses (B,), outputs, indices or None)`` of a batch; pops the index column and labels."""
        idx = inputs.pop(self.index_column, None)
        label_name = self.label_names[0] if len(self.label_names) == 1 else "labels"
        labels = inputs.pop(label_name, None)
        if labels is None:
            raise ValueError(f"the batch has no {label_name!r}: IES needs labels to compute per-sample losses")
        outputs = model(**inputs)
        if self.per_sample_loss_fn is not None:
            losses = self.per_sample_loss_fn(outputs, labels)
        else:
            logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
            kind = self.loss_type if self.loss_type != "auto" else auto_loss_type(model, logits, labels)
            losses = per_sample_loss(logits, labels, kind)
        return losses, outputs, idx

    def compute_loss(self, model: torch.nn.Module, inputs: Dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        """Per-sample losses, recorded in training; returns their mean (what the Trainer backpropagates)."""
        losses, outputs, idx = self.per_sample_losses(model, dict(inputs))
        if model.training:
            if idx is None:
                raise ValueError(
                    f"the training batch has no {self.index_column!r} entry: IESTrainer.get_train_dataloader puts "
                    "it there; if you override get_train_dataloader, keep the batch's sample indices under "
                    f"{self.index_column!r} (or set index_column=)"
                )
            # accelerate pads a short last batch by repeating samples (even_batches), possibly
            # inside one batch: record each sample once (its first occurrence).
            uidx, ulosses = merge_records(idx.to(losses.device), losses)
            self.ies.record(uidx, ulosses)
        loss = losses.mean()
        return (loss, outputs) if return_outputs else loss

    # ------------------------------------------------------------- schedule
    def create_scheduler(self, num_training_steps: int, optimizer: Optional[torch.optim.Optimizer] = None) -> Any:
        created = self.lr_scheduler is None
        sched = super().create_scheduler(num_training_steps, optimizer)
        if not (created and self.rescale_lr_schedule and isinstance(sched, torch.optim.lr_scheduler.LambdaLR)):
            return sched
        epochs = self.args.num_train_epochs
        if self.args.max_steps > 0 or float(epochs) != int(epochs):
            warnings.warn("IES keeps the step-based LR schedule: rescaling needs an integer num_train_epochs and "
                          "max_steps unset", stacklevel=2)
            return sched
        lambdas = [functools.partial(_at_step, f, num_training_steps) for f in sched.lr_lambdas]
        self.lr_scheduler = EpochProgressLR(sched.optimizer, lambdas, int(epochs))
        return self.lr_scheduler

    # ------------------------------------------------------------- checkpoints and resume
    def save_model(self, output_dir: Optional[str] = None, *args: Any, **kwargs: Any) -> None:
        """``Trainer.save_model``; notes the folder, where the callback's ``on_save`` puts ``ies_state.pt``.

        A checkpoint is saved through ``save_model(checkpoint_folder)`` in every transformers
        version tested, hyperparameter-search run folders included: no folder name is rebuilt.
        """
        super().save_model(output_dir, *args, **kwargs)
        self._ies_saved_to = (output_dir if output_dir is not None else self.args.output_dir, self.state.global_step)

    def train(self, resume_from_checkpoint: Any = None, trial: Any = None, ignore_keys_for_eval: Any = None,
              **kwargs: Any) -> Any:
        """``Trainer.train``; with ``resume_from_checkpoint`` it also restores IES from ``ies_state.pt``."""
        ckpt = resume_from_checkpoint
        if ckpt is True:
            ckpt = get_last_checkpoint(self.args.output_dir) or ckpt
        self._ies_resume, self._ies_epoch_set = None, False
        if isinstance(ckpt, (str, os.PathLike)):
            path = os.path.join(ckpt, IES_STATE_NAME)
            if os.path.isfile(path):
                # loaded into the tracker at on_train_begin, after the Trainer planned the run
                saved = torch.load(path, map_location="cpu", weights_only=True)
                if saved.get("version") != _STATE_VERSION:
                    raise ValueError(f"{path} has IES state version {saved.get('version')!r}; this ies reads "
                                     f"version {_STATE_VERSION}: resume with the ies version that saved it")
                self._ies_resume = saved
            else:
                warnings.warn(f"{ckpt} has no {IES_STATE_NAME}: IES starts from scratch", stacklevel=2)
        return super().train(resume_from_checkpoint=ckpt, trial=trial, ignore_keys_for_eval=ignore_keys_for_eval,
                             **kwargs)
