"""IESTrainer with tiny models built from configs (no downloads) on synthetic tokens, on CPU."""

from __future__ import annotations

import math
import os
import warnings

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
import transformers  # noqa: E402  (the [huggingface] extra; part of [dev])

from transformers import (  # noqa: E402
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    TrainingArguments,
)

from ies import IES, IESConfig, IESWarning  # noqa: E402
from ies.integrations.huggingface import IES_STATE_NAME, IESTrainer, per_sample_loss  # noqa: E402
from ies.training import EpochProgressLR  # noqa: E402

N, T, V, BS = 40, 8, 64, 8
# transformers >= 5.3 runs each epoch through Trainer._run_epoch and lets IES set the resumed epoch
# (ies.integrations._compat); 4.57-5.2 run the loop inline, where IES trains but cannot resume.
RESUMES = hasattr(transformers.Trainer, "_init_training_state")
RULE = dict(threshold=0.5, order=0, window=1, m=1, probe_backoff=False)  # mastered when the last loss < 0.5 (from the 2nd loss on); probed every epoch


def bert():
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                     max_position_embeddings=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=2)
    return BertForSequenceClassification(cfg)


def gpt2():
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=2, n_positions=32, resid_pdrop=0.0, embd_pdrop=0.0,
                     attn_pdrop=0.0)
    return GPT2LMHeadModel(cfg)


def cls_data():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, V, (N, T), generator=g)
    # "length" is not a BertForSequenceClassification.forward argument: the column filter must drop it.
    # No index column: IESTrainer's train loader attaches each row's index itself.
    return [{"input_ids": ids[i], "attention_mask": torch.ones(T, dtype=torch.long), "labels": int(ids[i, 0] < V // 2),
             "length": T} for i in range(N)]


def lm_data():
    g = torch.Generator().manual_seed(2)
    out = []
    for i in range(N):
        n = 3 + i % (T - 3)  # variable length, right padded with 0 / label -100
        ids = torch.zeros(T, dtype=torch.long)
        ids[:n] = torch.randint(1, V, (n,), generator=g)
        labels = torch.full((T,), -100)
        labels[:n] = ids[:n]
        mask = (labels != -100).long()
        out.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return out


def args(tmp_path, epochs, **kw):
    kw.setdefault("save_strategy", "no")
    kw.setdefault("logging_strategy", "no")
    return TrainingArguments(
        output_dir=str(tmp_path), num_train_epochs=epochs, per_device_train_batch_size=BS,
        per_device_eval_batch_size=16, learning_rate=5e-3, use_cpu=True, report_to="none", disable_tqdm=True,
        seed=0, lr_scheduler_type="linear", **kw,
    )


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield


def spy_records(trainer):
    """Wrap trainer.ies.record: the indices trained in each epoch."""
    seen: dict = {}
    orig = trainer.ies.record

    def record(idx, losses, **kw):
        seen.setdefault(trainer.ies.epoch, []).extend(idx.tolist())
        return orig(idx, losses, **kw)

    trainer.ies.record = record
    return seen


def test_per_sample_loss_matches_model_loss():
    model = gpt2().eval()
    batch = torch.utils.data.default_collate(lm_data()[:6])
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        mine = per_sample_loss(logits, batch["labels"], "causal_lm")
        for i in range(6):  # the model's own loss of a single sample: mean over its non-padding tokens
            ref = model(input_ids=batch["input_ids"][i:i + 1], attention_mask=batch["attention_mask"][i:i + 1],
                        labels=batch["labels"][i:i + 1]).loss
            assert torch.allclose(mine[i], ref, atol=1e-5)
    cls_logits = torch.randn(5, 3)
    y = torch.tensor([0, 2, 1, 1, 0])
    assert torch.allclose(per_sample_loss(cls_logits, y), torch.nn.functional.cross_entropy(cls_logits, y, reduction="none"))
    tok = per_sample_loss(torch.randn(2, 4, 5, dtype=torch.bfloat16), torch.tensor([[1, -100, 2, -100], [-100] * 4]), "token")
    assert tok.dtype == torch.float32 and tok[1] == 0  # no labelled token: 0
    with pytest.raises(ValueError, match="loss_type"):
        per_sample_loss(cls_logits, y, "mean")


def test_train_epochs_schedule_and_resume(tmp_path):
    """Only active samples train; steps per epoch follow the active set; the linear LR ends at 0; resume is exact."""
    full = IESTrainer(model=bert(), args=args(tmp_path / "full", 4, save_strategy="epoch", logging_strategy="epoch"),
                      train_dataset=cls_data(), ies_kwargs=RULE)
    seen = spy_records(full)
    steps_at_epoch_end = []

    class StepProbe(transformers.TrainerCallback):
        def on_epoch_end(self, a, state, control, **kw):
            steps_at_epoch_end.append(state.global_step)

    full.add_callback(StepProbe())
    full.train()
    log = full.ies.history_log
    assert len(log) == 4
    actives = [s.active for s in log]
    assert actives[:2] == [N, N] and actives[2] < N and actives[3] < actives[2], actives  # epochs shrink
    for e, s in enumerate(log):
        excluded_before = set(range(N)) - set(seen[e])
        assert sorted(seen[e]) == sorted(set(seen[e])) and len(seen[e]) == s.active  # each active sample once
        assert s.excluded == len(excluded_before) and s.probed == s.excluded
    per_epoch = [b - a for a, b in zip([0] + steps_at_epoch_end, steps_at_epoch_end)]
    assert per_epoch == [math.ceil(a / BS) for a in actives]  # the Trainer ran each epoch's real length
    assert isinstance(full.lr_scheduler, EpochProgressLR)
    assert full.lr_scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)  # linear decay reached its end
    assert full.state.max_steps == 4 * math.ceil(N / BS)  # planned from the full data
    logged = [h for h in full.state.log_history if "ies/active" in h]
    assert [h["ies/active"] for h in logged] == actives

    # Resume from the checkpoint written after the 3rd (shortened) epoch. The global step no longer
    # tells the epoch (the Trainer alone would resume inside epoch 2): IES state and trajectory must match.
    ckpt = tmp_path / "full" / f"checkpoint-{steps_at_epoch_end[2]}"
    assert (ckpt / IES_STATE_NAME).is_file()
    resumed = IESTrainer(model=bert(), args=args(tmp_path / "full", 4), train_dataset=cls_data(), ies_kwargs=RULE)
    seen2 = spy_records(resumed)
    if not RESUMES:  # transformers < 5.3 derives the resumed epoch from the global step: refused, with the reason
        with pytest.raises(ValueError, match="resuming an IES run needs transformers >= 5.3"):
            resumed.train(resume_from_checkpoint=str(ckpt))
        return
    resumed.train(resume_from_checkpoint=str(ckpt))
    assert resumed.ies.epoch == 4 and sorted(seen2) == [3]
    assert seen2[3] == seen[3]  # same samples in the same order
    assert [s.counts() for s in resumed.ies.history_log] == [s.counts() for s in log]
    assert torch.equal(resumed.ies.excluded, full.ies.excluded)
    assert torch.allclose(resumed.ies.history.nan_to_num(-1), full.ies.history.nan_to_num(-1), atol=1e-5)
    assert resumed.state.global_step == full.state.global_step


def test_causal_lm_trains_and_errors(tmp_path):
    tr = IESTrainer(model=gpt2(), args=args(tmp_path, 2), train_dataset=lm_data(), ies_kwargs=dict(RULE, threshold=10.0))
    tr.train()
    assert [s.active for s in tr.ies.history_log] == [N, N]  # judged after two losses: nothing excluded before
    assert tr.ies.excluded.all()  # threshold 10: every sample mastered after epoch 2

    with pytest.raises(ValueError, match="num_samples"):
        IESTrainer(model=gpt2(), args=args(tmp_path, 1), train_dataset=lm_data(), ies=IES(N + 1))
    with pytest.raises(ValueError, match="not both"):
        IESTrainer(model=gpt2(), args=args(tmp_path, 1), train_dataset=lm_data(), ies=IES(N), ies_kwargs=RULE)
    tr3 = IESTrainer(model=gpt2(), args=args(tmp_path, 1), train_dataset=lm_data(), ies_kwargs=RULE)
    batch = next(iter(tr3.get_train_dataloader()))
    batch.pop("idx")
    tr3.model.train()
    with pytest.raises(ValueError, match="'idx' entry"):
        tr3.compute_loss(tr3.model, batch)


@pytest.mark.parametrize("kwargs, expected", [
    ({"ies_kwargs": {"target_saving": 0.3}}, {"target_saving": 0.3}),             # a rule field, passed through
    ({"ies_config": IESConfig(threshold=0.2, window=1)}, {"threshold": 0.2, "window": 1}),
    ({"ies_config": IESConfig(threshold=0.2), "ies_kwargs": {"order": 0}}, {"threshold": 0.2, "order": 0}),
])
def test_rule_parameters_reach_the_tracker(tmp_path, kwargs, expected):
    epochs = 10 if "target_saving" in expected else 1  # a 30% target needs epochs after the first judgement (6)
    tr = IESTrainer(model=gpt2(), args=args(tmp_path, epochs), train_dataset=lm_data(), **kwargs)
    assert {k: getattr(tr.ies.config, k) for k in expected} == expected
    if "target_saving" in expected:  # planned over num_train_epochs unless total_epochs is given
        assert tr.ies.config.total_epochs == 10


def test_train_loader_attaches_indices_and_drops_unused_columns(tmp_path):
    tr = IESTrainer(model=bert(), args=args(tmp_path, 1), train_dataset=cls_data(), ies_kwargs=RULE)
    seen = []
    for batch in tr.get_train_dataloader():
        assert set(batch) == {"input_ids", "attention_mask", "labels", "idx"}  # "length" dropped, index added
        seen += batch["idx"].tolist()
        rows = cls_data()
        assert all(torch.equal(batch["input_ids"][j], rows[i]["input_ids"]) for j, i in enumerate(batch["idx"].tolist()))
    assert sorted(seen) == list(range(N))


def test_gradient_accumulation_steps_follow_each_epoch(tmp_path):
    """GA=2: every micro-batch recorded once; each epoch ends with an optimizer step, however short it is."""
    tr = IESTrainer(model=bert(), args=args(tmp_path, 4, gradient_accumulation_steps=2), train_dataset=cls_data(),
                    ies_kwargs=RULE)
    seen = spy_records(tr)
    ends = []

    class StepProbe(transformers.TrainerCallback):
        def on_epoch_end(self, a, state, control, **kw):
            ends.append(state.global_step)

    tr.add_callback(StepProbe())
    tr.train()
    actives = [s.active for s in tr.ies.history_log]
    assert min(actives) < N
    for e, a in enumerate(actives):
        assert len(seen[e]) == len(set(seen[e])) == a
    per_epoch = [b - a for a, b in zip([0] + ends, ends)]
    assert per_epoch == [math.ceil(math.ceil(a / BS) / 2) for a in actives]
    assert tr.lr_scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)


def test_padded_duplicates_in_a_batch_are_recorded_once(tmp_path):
    """accelerate's even_batches pads a short last batch by repeating samples, possibly in one batch."""
    tr = IESTrainer(model=bert(), args=args(tmp_path, 1), train_dataset=cls_data(), ies_kwargs=RULE)
    data = cls_data()
    batch = tr.get_train_dataloader().collate_fn([(i, data[i]) for i in (3, 1, 3)])  # the train loader's collation
    tr.model.train()
    loss = tr.compute_loss(tr.model, batch)
    assert loss.dim() == 0 and loss.requires_grad
    assert tr.ies.pending_mask.nonzero().flatten().tolist() == [1, 3]


def test_compat_version_floor_names_the_versions_to_install():
    from ies.integrations import _compat

    with pytest.raises(ImportError, match=r"needs transformers >= 4\.57\.1 .*pip install 'transformers>=4\.57\.1,<="):
        _compat.check_version("4.46.3")
    _compat.check_version(transformers.__version__)  # the installed one fits


def test_a_trainer_that_ignores_the_epoch_length_fails_loudly(tmp_path):
    """The behaviour check: a loader that reports the full-data length (as a Trainer that plans the
    epoch once would assume) makes the last accumulation cycle of a short epoch never step."""

    class FullLength:
        def __init__(self, loader):
            self.loader = loader

        def __len__(self):
            return -(-N // BS)

        def __iter__(self):
            return iter(self.loader)

        def __getattr__(self, name):
            return getattr(self.loader, name)

    class Planned(IESTrainer):
        def get_train_dataloader(self):
            return FullLength(super().get_train_dataloader())

    tr = Planned(model=bert(), args=args(tmp_path, 4, gradient_accumulation_steps=2), train_dataset=cls_data(),
                 ies_kwargs=RULE)
    with pytest.raises(RuntimeError, match=r"did not run IES's epoch \d at its length: it took \d optimizer steps"):
        tr.train()


def hand_saving(seen, planned):
    """1 - (samples whose training loss was recorded) / (N * planned epochs): counted from the records."""
    return 1 - sum(len(v) for v in seen.values()) / (N * planned)


def test_target_mode_runs_every_planned_epoch(tmp_path):
    """target_saving=0.5 over 20 epochs: IES caps each epoch's exclusion, so no epoch is empty and the
    Trainer runs all 20; the run's saving is the hand count."""
    tr = IESTrainer(model=bert(), args=args(tmp_path, 20, logging_strategy="epoch"), train_dataset=cls_data(),
                    ies_kwargs={"target_saving": 0.5})
    seen = spy_records(tr)
    with warnings.catch_warnings():
        warnings.simplefilter("error", IESWarning)  # no stop, no misuse
        tr.train()
    assert len(tr.ies.history_log) == 20 and sorted(seen) == list(range(20))
    assert min(s.active for s in tr.ies.history_log) > 0
    summary = tr.ies_callback.summary
    assert summary["epochs_run"] == 20 and summary["planned_epochs"] == 20
    assert summary["backprop_saved"] == pytest.approx(hand_saving(seen, 20), abs=1e-12)
    assert summary["backprop_saved"] == pytest.approx(0.5, abs=0.03)  # the target, met
    run_row = [h for h in tr.state.log_history if "ies/run_backprop_saved" in h]
    assert len(run_row) == 1 and run_row[0]["ies/run_backprop_saved"] == pytest.approx(summary["backprop_saved"])


def test_every_sample_mastered_ends_the_run_in_ies_words(tmp_path, capsys):
    """δ-mode: all mastered after epoch 1 of 6. IES stops the Trainer with its own warning (not the
    Trainer's empty-iterator message), and the run's saving counts the 4 epochs not run as saved."""
    tr = IESTrainer(model=bert(), args=args(tmp_path, 6), train_dataset=cls_data(),
                    ies_kwargs=dict(RULE, threshold=10.0))
    seen = spy_records(tr)
    with pytest.warns(IESWarning, match=r"every sample is mastered after epoch 1 .*the 4 planned epochs left"):
        tr.train()
    assert len(tr.ies.history_log) == 2 and tr.state.epoch == 2
    summary = tr.ies_callback.summary
    assert summary["epochs_run"] == 2 and summary["backprop_saved"] == pytest.approx(hand_saving(seen, 6)) == 4 / 6
    # logging_strategy="no": IES logs nothing, and prints nothing of its own
    assert not [h for h in tr.state.log_history if any(k.startswith("ies/") for k in h)]
    assert "ies/" not in capsys.readouterr().out


def test_ies_state_of_another_version_or_step_is_refused(tmp_path):
    """The saved version and global step are read back: a state that does not belong is refused."""
    tr = IESTrainer(model=bert(), args=args(tmp_path, 1, save_strategy="epoch"), train_dataset=cls_data(),
                    ies_kwargs=RULE)
    tr.train()
    ckpt = tmp_path / f"checkpoint-{tr.state.global_step}"
    saved = torch.load(ckpt / IES_STATE_NAME, weights_only=True)
    assert saved["version"] == 1 and saved["global_step"] == tr.state.global_step
    torch.save({**saved, "version": 2}, ckpt / IES_STATE_NAME)
    again = IESTrainer(model=bert(), args=args(tmp_path, 2), train_dataset=cls_data(), ies_kwargs=RULE)
    with pytest.raises(ValueError, match="IES state version 2; this ies reads version 1"):
        again.train(resume_from_checkpoint=str(ckpt))
    if RESUMES:  # the step check runs where the Trainer resumes at all
        torch.save({**saved, "global_step": saved["global_step"] - 1}, ckpt / IES_STATE_NAME)
        with pytest.raises(ValueError, match="was saved at step"):
            again.train(resume_from_checkpoint=str(ckpt))


def test_auto_loss_type_from_public_model_api():
    """A left-to-right generator (can_generate(), not encoder-decoder) is a causal LM; other 3-D logits are token losses."""
    from transformers import BertForMaskedLM

    from ies.integrations.hf_rows import auto_loss_type

    logits, labels = torch.zeros(2, 4, V), torch.zeros(2, 4, dtype=torch.long)
    assert auto_loss_type(gpt2(), logits, labels) == "causal_lm"
    masked = BertForMaskedLM(bert().config)
    assert auto_loss_type(masked, logits, labels) == "token"
    assert auto_loss_type(torch.nn.Linear(2, 2), logits, labels) == "token"  # no can_generate(): not a causal LM
    assert auto_loss_type(bert(), torch.zeros(2, 2), torch.tensor([0, 1])) == "classification"
    assert auto_loss_type(bert(), torch.zeros(2, 1), torch.tensor([0.5, 1.5])) == "regression"
