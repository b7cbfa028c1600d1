"""The text task: the topic generator, its label noise, and the tiny BERT through the engine."""

import pytest
import torch

pytest.importorskip("transformers")  # the [huggingface] extra; the dev install has it

from ies.experiments import text as T  # noqa: E402
from ies.experiments.config import RunConfig  # noqa: E402
from ies.experiments.data import load_dataset  # noqa: E402
from ies.experiments.engine import run_training  # noqa: E402


def _topics_of(ids):
    """The owning topic of each keyword in each sentence (-1 for neutral words, padding and [CLS])."""
    kw = (ids >= 2) & (ids < T._FIRST_NEUTRAL)
    return torch.where(kw, (ids - 2) // T.TOPIC_WORDS, torch.full_like(ids, -1))


def test_sentences_carry_two_words_of_their_topic_and_one_distractor():
    x, y = T.topic_sentences(500, torch.Generator().manual_seed(0))
    assert x.shape == (500, T.SEQ_LEN) and x.dtype == torch.int64
    assert bool((x[:, 0] == T.CLS).all())
    owners = _topics_of(x)
    assert bool(((owners >= 0).sum(1) == T.KEYWORDS).all())
    assert bool(((owners == y[:, None]).sum(1) == 2).all())  # the distractor is always another topic
    words = (x[:, 1:] != T.PAD).sum(1)
    assert int(words.min()) >= T.MIN_WORDS and int(words.max()) <= T.MAX_WORDS
    pads = x[:, 1:] == T.PAD  # padding only at the end
    assert bool((pads[:, :-1] <= pads[:, 1:]).all())
    assert set(y.tolist()) == set(range(T.TOPICS))


def test_data_is_a_function_of_data_seed_and_only_train_labels_are_noisy():
    a, b, c = T.load_text(1000, 5), T.load_text(1000, 5), T.load_text(1000, 6)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(a[0], c[0])
    x_tr, y_tr, x_te, y_te = a
    clean = [int(torch.mode(o[o >= 0]).values) for o in _topics_of(x_tr)]  # the topic with two words
    flipped = torch.tensor(clean) != y_tr
    assert int(flipped.sum()) == round(T.LABEL_NOISE * 1000)
    assert torch.equal(T.flipped_mask(1000, 5), flipped)  # what benchmarks/text_who.py reads
    test_clean = torch.tensor([int(torch.mode(o[o >= 0]).values) for o in _topics_of(x_te)])
    assert torch.equal(test_clean, y_te)


def test_dataset_is_registered_with_its_sizes():
    d = load_dataset("text-topics", train_size=300)
    assert (len(d), d.x_test.shape[0], d.num_classes, d.image) == (300, T.TEST_SIZE, T.TOPICS, False)


def test_tiny_bert_masks_padding_and_refuses_float_inputs():
    torch.manual_seed(0)
    m = T.TinyBert(T.TOPICS, max_len=T.SEQ_LEN).eval()
    x, _ = T.topic_sentences(8, torch.Generator().manual_seed(1))
    short = x.clone()
    short[:, T.MIN_WORDS + 1:] = T.PAD  # cut every sentence to its first MIN_WORDS words
    with torch.no_grad():
        out = m(short)
        assert out.shape == (8, T.TOPICS)
        trimmed = m(short[:, : T.MIN_WORDS + 1])  # the same sentences with no padding at all
    assert torch.allclose(out, trimmed, atol=1e-5)
    with pytest.raises(ValueError, match="token ids"):
        m(x.float())


def test_the_engine_trains_the_text_task_with_ies():
    cfg = RunConfig(dataset="text-topics", train_size=200, epochs=10, batch_size=50, method="ies",
                    method_params={"target_saving": 0.2})
    res = run_training(cfg)
    assert len(res.epochs) == 10
    assert all(r["test_acc"] >= 0 for r in res.epochs)
    assert res.summary["backprop_saved"] == pytest.approx(0.2, abs=0.02)
