"""Hugging Face ``transformers.Trainer`` integration: ``IESTrainer``.

The Trainer reduces the loss to a batch mean, so IES needs two hooks, both in
:class:`IESTrainer` (a ``Trainer`` subclass):

* **per-sample losses**: ``compute_loss`` pops the sample-index column (``"idx"``) and
  the labels, runs the model without labels and computes one loss per sample
  (:func:`per_sample_loss`): cross-entropy for sequence classification, MSE for
  regression, and for causal / masked language models the mean of the sample's token
  losses over its non-padding tokens (label ``-100``; causal LMs shift labels by one).
  It records them and returns their mean, which the Trainer backpropagates.
* **the active sampler**: ``_get_train_sampler`` returns an :class:`~ies.ActiveSampler`
  over the whole active set; under DDP ``accelerate`` shards its batches across
  processes (so the sampler is built with ``num_replicas=1``).

An :class:`IESTrainerCallback` (added for you) runs the scoring pass and ``step()`` at
each epoch end, logs the statistics (``ies/...`` in ``trainer.state.log_history`` and
every ``report_to`` integration), and writes ``ies_state.pt`` into every checkpoint
folder. ``train(resume_from_checkpoint=...)`` restores it, and resumes at the right
epoch and batch even though IES changed the epoch lengths.

Epoch lengths: the Trainer plans ``max_steps`` from the full-data length (the schedule
you asked for) and each epoch runs as many steps as its active set needs. The default
LR schedule is re-driven by epoch progress (:class:`~ies.training.EpochProgressLR`), so
it still ends where it was meant to; ``rescale_lr_schedule=False`` keeps the
step-based one.

Example:
    >>> train = [{"input_ids": ids, "attention_mask": mask, "labels": y, "idx": i} for i, ...]
    >>> trainer = IESTrainer(model=model, args=TrainingArguments("out", num_train_epochs=10),
    ...                      train_dataset=train, ies_kwargs={"threshold": 1e-3})
    >>> trainer.train()                                   # or train(resume_from_checkpoint=True)
"""

from __future__ import annotations

import functools
import inspect
import math
import os
import warnings
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from . import require

require("transformers", "huggingface")

from transformers import Trainer, TrainerCallback  # noqa: E402
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint  # noqa: E402

from ..distributed import DistributedIES, merge_records  # noqa: E402
from ..sampler import ActiveSampler  # noqa: E402
from ..scoring import to_device  # noqa: E402
from ..tracker import EpochStats, InstanceEarlyStopping  # noqa: E402
from ..training import EpochProgressLR  # noqa: E402

__all__ = ["IESTrainer", "IESTrainerCallback", "per_sample_loss", "IES_STATE_NAME"]

IES_STATE_NAME = "ies_state.pt"
_LOSS_TYPES = ("auto", "classification", "regression", "causal_lm", "token")


def per_sample_loss(logits: Tensor, labels: Tensor, loss_type: str = "classification",
                    ignore_index: int = -100) -> Tensor:
    """One loss per sample ``(B,)``, in float32.

    ``loss_type``: ``"classification"`` (logits ``(B, C)``, cross-entropy),
    ``"regression"`` (``(B,)``/``(B, 1)``, MSE), ``"causal_lm"`` (``(B, T, V)``, labels
    shifted by one, as the model's own loss) or ``"token"`` (``(B, T, V)``, masked LM /
    token classification). Token losses are averaged over the sample's labels that are
    not ``ignore_index`` (padding); a sample with none gets 0.

    Example:
        >>> per_sample_loss(lm_logits, labels, "causal_lm")   # == model(ids, labels=row).loss per row
    """
    if loss_type not in _LOSS_TYPES[1:]:
        raise ValueError(f"loss_type must be one of {_LOSS_TYPES[1:]}, got {loss_type!r}")
    if loss_type == "classification":
        if logits.dim() != 2:
            raise ValueError(f"classification logits must be (B, C), got {tuple(logits.shape)}; set loss_type")
        return F.cross_entropy(logits.float(), labels.long(), reduction="none", ignore_index=ignore_index)
    if loss_type == "regression":
        return F.mse_loss(logits.float().reshape(labels.shape[0], -1).squeeze(-1), labels.float(), reduction="none")
    if logits.dim() != 3:
        raise ValueError(f"{loss_type} logits must be (B, T, V), got {tuple(logits.shape)}; set loss_type")
    if loss_type == "causal_lm":
        logits, labels = logits[:, :-1], labels[:, 1:]
    tok = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten().long(), ignore_index=ignore_index,
                          reduction="none").view(labels.shape)
    n = (labels != ignore_index).sum(1)
    return tok.sum(1) / n.clamp(min=1)


def _auto_loss_type(model: torch.nn.Module, logits: Tensor, labels: Tensor) -> str:
    if logits.dim() == 3:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        inner = getattr(model, "module", model)
        name = type(inner).__name__
        causal = name in set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()) or name.endswith("ForCausalLM")
        return "causal_lm" if causal else "token"
    if labels.is_floating_point() and (logits.dim() == 1 or logits.shape[-1] == 1):
        return "regression"
    return "classification"


def _at_step(step_lambda: Callable[[float], float], total_steps: int, progress: float) -> float:
    return step_lambda(progress * total_steps)


class IESTrainerCallback(TrainerCallback):
    """Epoch-end scoring pass + ``step()``, logging, and IES state in checkpoints (added by :class:`IESTrainer`)."""

    def __init__(self, trainer: "IESTrainer") -> None:
        self.trainer = trainer
        self.epoch_start_step = 0
        self.last_stats: Optional[EpochStats] = None

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.epoch_start_step = state.global_step

    def on_epoch_end(self, args: Any, state: Any, control: Any, model: Any = None, train_dataloader: Any = None,
                     **kwargs: Any) -> None:
        tr = self.trainer
        loader = train_dataloader if train_dataloader is not None else tr.callback_handler.train_dataloader
        dataset = getattr(loader, "dataset", None)
        dataset = tr.train_dataset if dataset is None else dataset
        collate = getattr(loader, "collate_fn", None)
        collate = tr.data_collator if collate is None else collate

        def forward(m: torch.nn.Module, batch: Mapping[str, Any]) -> Tensor:
            with tr.compute_loss_context_manager():
                return tr.per_sample_losses(m, to_device(batch, args.device))[0]

        stats = tr.ies.end_epoch(model if model is not None else tr.model, dataset, None, forward=forward,
                                 collate_fn=collate, batch_size=tr.score_batch_size or args.per_device_eval_batch_size,
                                 device=args.device)
        self.last_stats = stats
        self.epoch_start_step = state.global_step  # the next epoch starts here
        tr.log({f"ies/{k}": float(v) for k, v in stats.as_dict().items()})

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        ies = self.trainer.ies
        if isinstance(ies, DistributedIES):
            ies.sync()  # a collective: on_save runs on every process; makes mid-epoch saves exact
        if not state.is_world_process_zero:
            return
        folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        if not os.path.isdir(folder):
            warnings.warn(f"IES: checkpoint folder {folder} not found; IES state not saved", stacklevel=2)
            return
        torch.save({"version": 1, "tracker": ies.state_dict(), "epoch_start_step": self.epoch_start_step,
                    "global_step": state.global_step}, os.path.join(folder, IES_STATE_NAME))


class IESTrainer(Trainer):
    """``transformers.Trainer`` that trains only the samples IES keeps active.

    Args (besides the Trainer's):
        ies: your tracker (a :class:`~ies.distributed.DistributedIES` for multi-process runs);
            default: a ``DistributedIES(len(train_dataset), **ies_kwargs)``.
        ies_kwargs: the rule's parameters when the trainer builds the tracker.
        index_column: the dataset column holding each sample's index ``0..N-1``; kept by
            the column filter (``remove_unused_columns`` may stay True) and popped before
            the forward.
        loss_type: ``"auto"`` (from logits shape / model class), ``"classification"``,
            ``"regression"``, ``"causal_lm"`` or ``"token"``; see :func:`per_sample_loss`.
        per_sample_loss_fn: ``f(outputs, labels) -> (B,)`` to compute the losses yourself.
        rescale_lr_schedule: drive the Trainer-created LR schedule by epoch progress.
        score_batch_size: scoring-pass batch size (default ``per_device_eval_batch_size``).

    Example:
        >>> trainer = IESTrainer(model=model, args=args, train_dataset=train, ies_kwargs={"threshold": 1e-3})
        >>> trainer.train(); trainer.ies.history_log[-1]
    """

    def __init__(
        self,
        *args: Any,
        ies: Optional[InstanceEarlyStopping] = None,
        ies_kwargs: Optional[Dict[str, Any]] = None,
        index_column: str = "idx",
        loss_type: str = "auto",
        per_sample_loss_fn: Optional[Callable[[Any, Tensor], Tensor]] = None,
        rescale_lr_schedule: bool = True,
        score_batch_size: Optional[int] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if loss_type not in _LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {_LOSS_TYPES}, got {loss_type!r}")
        ds = self.train_dataset
        if ds is None or isinstance(ds, torch.utils.data.IterableDataset) or not hasattr(ds, "__len__"):
            raise ValueError("IESTrainer needs a map-style train_dataset (with __len__ and an index column)")
        if ies is not None and ies_kwargs:
            raise ValueError("pass either ies=tracker or ies_kwargs={...} (to build one), not both")
        self.ies: InstanceEarlyStopping = ies if ies is not None else DistributedIES(len(ds), **(ies_kwargs or {}))
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
        self.score_batch_size = score_batch_size
        # compute_loss returns a per-batch mean: let the Trainer scale it for accumulation,
        # and do not count tokens for a token-normalized loss.
        self.model_accepts_loss_kwargs = False
        self._ies_resume: Optional[Dict[str, Any]] = None
        self.ies_callback = IESTrainerCallback(self)
        self.add_callback(self.ies_callback)
        missing = [m for m in ("_run_epoch", "_init_training_state", "set_initial_training_values")
                   if not hasattr(Trainer, m)]
        if missing:
            warnings.warn(f"this transformers version lacks Trainer.{missing}: IES cannot adjust epoch lengths and "
                          "resume points; use transformers>=5", stacklevel=2)

    # ------------------------------------------------------------- data
    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        if self._signature_columns is not None and self.index_column not in self._signature_columns:
            self._signature_columns.append(self.index_column)

    def _get_train_sampler(self, train_dataset: Any = None) -> ActiveSampler:
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return ActiveSampler(self.ies, shuffle=True, seed=seed, num_replicas=1, rank=0)

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
            kind = self.loss_type if self.loss_type != "auto" else _auto_loss_type(model, logits, labels)
            losses = per_sample_loss(logits, labels, kind)
        return losses, outputs, idx

    def compute_loss(self, model: torch.nn.Module, inputs: Dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        """Per-sample losses, recorded in training; returns their mean (what the Trainer backpropagates)."""
        losses, outputs, idx = self.per_sample_losses(model, dict(inputs))
        if model.training:
            if idx is None:
                raise ValueError(
                    f"the training batch has no {self.index_column!r} column: give every train_dataset item its "
                    f"index (item[{self.index_column!r}] = i) and keep it in the collator (or set index_column=)"
                )
            # accelerate pads a short last batch by repeating samples (even_batches), possibly
            # inside one batch: record each sample once (its first occurrence).
            uidx, ulosses = merge_records(idx.to(losses.device), losses)
            self.ies.record(uidx, ulosses)
        loss = losses.mean()
        return (loss, outputs) if return_outputs else loss

    # ------------------------------------------------------------- epoch lengths & schedule
    def set_initial_training_values(self, args: Any, dataloader: Any, *rest: Any, **kwargs: Any) -> Any:
        """Plan steps from the full-data length (the schedule the user asked for), not the current active set."""
        saved = self.ies.num_active
        self.ies.num_active = self.ies.num_samples
        try:
            return super().set_initial_training_values(args, dataloader, *rest, **kwargs)
        finally:
            self.ies.num_active = saved

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

    def _run_epoch(self, *args: Any, **kwargs: Any) -> Any:
        bound = inspect.signature(super()._run_epoch).bind(*args, **kwargs)
        a = bound.arguments
        steps = len(a["train_dataloader"])  # this epoch's batches, from the current active set
        updates = math.ceil(steps / self.args.gradient_accumulation_steps)
        a["steps_in_epoch"] = steps
        a["num_update_steps_per_epoch"] = max(1, updates)
        sched = getattr(self.lr_scheduler, "scheduler", self.lr_scheduler)
        if isinstance(sched, EpochProgressLR):
            sched.begin_epoch(updates, int(a["epoch"]))
        return super()._run_epoch(*bound.args, **bound.kwargs)

    # ------------------------------------------------------------- resume
    def train(self, resume_from_checkpoint: Any = None, trial: Any = None, ignore_keys_for_eval: Any = None,
              **kwargs: Any) -> Any:
        """``Trainer.train``; with ``resume_from_checkpoint`` it also restores IES from ``ies_state.pt``."""
        ckpt = resume_from_checkpoint
        if ckpt is True:
            ckpt = get_last_checkpoint(self.args.output_dir) or ckpt
        self._ies_resume = None
        if isinstance(ckpt, (str, os.PathLike)):
            path = os.path.join(ckpt, IES_STATE_NAME)
            if os.path.isfile(path):
                saved = torch.load(path, map_location="cpu", weights_only=True)
                self.ies.load_state_dict(saved["tracker"])
                self._ies_resume = saved
                self.ies_callback.epoch_start_step = int(saved["epoch_start_step"])
            else:
                warnings.warn(f"{ckpt} has no {IES_STATE_NAME}: IES starts from scratch", stacklevel=2)
        return super().train(resume_from_checkpoint=ckpt, trial=trial, ignore_keys_for_eval=ignore_keys_for_eval,
                             **kwargs)

    def _init_training_state(self, max_steps: int, num_update_steps_per_epoch: int, num_train_epochs: int,
                             resume_from_checkpoint: Any, trial: Any) -> Tuple[int, int]:
        epochs, steps = super()._init_training_state(max_steps, num_update_steps_per_epoch, num_train_epochs,
                                                     resume_from_checkpoint, trial)
        if resume_from_checkpoint is not None and self._ies_resume is not None:
            # Epochs have different lengths: the global step no longer tells the epoch. IES knows it.
            epochs = self.ies.epoch
            done = self.state.global_step - int(self._ies_resume["epoch_start_step"])
            steps = 0 if self.args.ignore_data_skip else done * self.args.gradient_accumulation_steps
        return epochs, steps
