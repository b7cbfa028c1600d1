"""The text task of the ``ies`` command: topic classification with flipped labels, and a tiny BERT (issue 18).

No text corpus can be downloaded here, so ``text-topics`` is generated from ``data_seed``: sentences
of 8-24 words, mostly from 126 neutral words, with two keywords of the sentence's topic (one of 8)
and one keyword of another topic (a distractor) at random places. Each topic owns 160 keywords
drawn with Zipf frequencies, so a few are common and most are rare: a model learns the common ones
in a few epochs and the rare ones later, as in real topic data. :data:`LABEL_NOISE` of the
*training* labels are flipped to another topic (the test labels are clean), so per-sample
behaviour matters: the flipped samples are the ones a model should not fit.

``tiny-bert`` is ``transformers.BertForSequenceClassification`` built from a config (2 layers,
hidden 64, 4 heads, dropout 0.3; no download), wrapped to take the token ids the engine slices and
return logits; padding (token 0) is masked out of attention.
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor, nn

from .noise import symmetric_noise

__all__ = ["VOCAB_SIZE", "SEQ_LEN", "LABEL_NOISE", "TEST_SIZE", "topic_sentences", "TOPICS", "load_text",
           "flipped_mask", "TinyBert", "build_tiny_bert"]

VOCAB_SIZE = 1408  # 2 specials, 8 x 160 topic words, 126 neutral words
SEQ_LEN = 25  # [CLS] + up to 24 words, padded with 0
MIN_WORDS, MAX_WORDS = 8, 24
TOPICS, TOPIC_WORDS = 8, 160  # topic t owns tokens 2 + t*160 ... 2 + (t+1)*160 - 1
KEYWORDS = 3  # topic words per sentence: 2 of the sentence's topic, 1 of another (a distractor)
ZIPF = 1.1  # a topic's words are drawn with p ~ 1/rank**ZIPF: a few common, many rare
LABEL_NOISE = 0.2
TEST_SIZE = 2000
DEFAULT_TRAIN_SIZE = 5000
DROPOUT = 0.3  # BERT's 0.1 lets the tiny model memorize the flipped labels by epoch 10

PAD, CLS = 0, 1
_FIRST_NEUTRAL = 2 + TOPICS * TOPIC_WORDS


def _zipf() -> Tensor:
    r = torch.arange(1, TOPIC_WORDS + 1, dtype=torch.float64)
    return (r ** -ZIPF / (r ** -ZIPF).sum()).float()


def topic_sentences(n: int, gen: torch.Generator) -> Tuple[Tensor, Tensor]:
    """``n`` sentences ``(n, SEQ_LEN)`` and their clean topics: neutral words with two words of the topic
    and one of another topic at random places."""
    y = torch.randint(0, TOPICS, (n,), generator=gen)
    other = (y + torch.randint(1, TOPICS, (n,), generator=gen)) % TOPICS
    owner = torch.stack([y, y, other], 1)  # (n, KEYWORDS)
    rank = torch.multinomial(_zipf(), n * KEYWORDS, replacement=True, generator=gen).view(n, KEYWORDS)
    keywords = 2 + owner * TOPIC_WORDS + rank
    length = torch.randint(MIN_WORDS, MAX_WORDS + 1, (n,), generator=gen)
    words = torch.randint(_FIRST_NEUTRAL, VOCAB_SIZE, (n, SEQ_LEN - 1), generator=gen)
    # KEYWORDS distinct places inside each sentence's length
    past_end = torch.arange(SEQ_LEN - 1) >= length[:, None]
    places = torch.argsort(torch.rand(n, SEQ_LEN - 1, generator=gen) + past_end, 1)
    words = words.scatter(1, places[:, :KEYWORDS], keywords).masked_fill(past_end, PAD)
    return torch.cat([torch.full((n, 1), CLS, dtype=torch.long), words], 1), y


def _generate(train_size: int | None, data_seed: int) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    n = DEFAULT_TRAIN_SIZE if train_size is None else int(train_size)
    gen = torch.Generator().manual_seed(int(data_seed))
    x_tr, y_clean = topic_sentences(n, gen)
    x_te, y_te = topic_sentences(TEST_SIZE, gen)
    y_tr, flipped = symmetric_noise(y_clean, LABEL_NOISE, TOPICS, seed=int(data_seed) + 1)
    return x_tr, y_tr, flipped, x_te, y_te


def load_text(train_size: int | None, data_seed: int) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Train ids, *noisy* train labels, test ids, clean test labels, from ``data_seed`` alone."""
    x_tr, y_tr, _, x_te, y_te = _generate(train_size, data_seed)
    return x_tr, y_tr, x_te, y_te


def flipped_mask(train_size: int | None, data_seed: int) -> Tensor:
    """``(N,)`` bool: which of :func:`load_text`'s training labels were flipped."""
    return _generate(train_size, data_seed)[2]


class TinyBert(nn.Module):
    """``BertForSequenceClassification`` from a config (no download): token ids in, logits out."""

    def __init__(self, num_classes: int, max_len: int, vocab_size: int = VOCAB_SIZE):
        super().__init__()
        try:
            from transformers import BertConfig, BertForSequenceClassification
        except ImportError as e:
            raise ImportError("model tiny-bert is transformers' BERT: pip install "
                              "'instance-early-stopping[huggingface]'") from e
        cfg = BertConfig(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=128, max_position_embeddings=max_len, num_labels=num_classes,
                         hidden_dropout_prob=DROPOUT, attention_probs_dropout_prob=DROPOUT, pad_token_id=PAD)
        self.bert = BertForSequenceClassification(cfg)

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype.is_floating_point:
            raise ValueError(f"tiny-bert takes token ids (an integer tensor), got {x.dtype}; use the text-topics "
                             "dataset or another integer-token dataset")
        return self.bert(input_ids=x, attention_mask=(x != PAD).long()).logits


def build_tiny_bert(*, num_classes: int, in_channels: int, input_length: int, image_size: int) -> nn.Module:
    """The ``tiny-bert`` entry of :data:`ies.experiments.models.MODELS`: positions for ``input_length`` tokens."""
    return TinyBert(num_classes, max_len=input_length)
