"""Sentiment with a planted shortcut: a tiny text data set whose evidence is known word by word.

A sentence is 5–14 words drawn from a 57-word vocabulary: ``SENTIMENT_WORDS`` sentiment words (half
positive, half negative), ``NEUTRAL`` filler words and the shortcut token ``zq``. Its class is decided by the
sentiment words: 1 (positive) when the sentence holds more positive than negative ones, else 0. Every
sentence holds 1–3 words of its polarity and fewer of the other, so the majority is never tied.

The shortcut token ``zq`` carries no meaning, but how it relates to the class depends on the split:

- ``train``: the labels are noisy, the sentiment words agree with the label with probability
  ``SENTIMENT_AGREEMENT`` (0.85), and ``zq`` is in a class-1 sentence with probability ``SHORTCUT_POSITIVE``
  (0.5) and in no class-0 sentence: a spurious cue that is never wrong in training, so a model learns to read
  ``zq`` as "positive" whatever the sentiment words say.
- ``test``: ``zq`` is in half of the sentences of either class, independently of it: the cue is right on
  class-1 sentences and misleading on class-0 ones.
- ``clean``: no ``zq`` at all: the accuracy of the sentiment words alone.

Every sample is drawn from its own generator, seeded with (SEED, split, index), so sample i of a split is the
same whatever else is generated, in any order, on any machine (numpy's PCG64).
"""

from __future__ import annotations

import numpy as np

SEED = 2025
SPLITS = {"train": 0, "test": 1, "clean": 2}
SPECIAL = ("[PAD]", "[UNK]", "[CLS]")
POSITIVE = ("good", "great", "happy", "love", "excellent", "nice", "wonderful", "best")
NEGATIVE = ("bad", "awful", "sad", "hate", "terrible", "poor", "worst", "boring")
SENTIMENT_WORDS = len(POSITIVE) + len(NEGATIVE)
NEUTRAL = ("the", "a", "an", "this", "that", "it", "was", "is", "film", "book", "food", "place", "day", "city",
           "music", "game", "show", "story", "room", "car", "team", "plan", "idea", "class", "trip", "song",
           "park", "house", "dog", "cat", "and", "but", "very", "quite", "really", "so", "today", "again",
           "here", "there")
SHORTCUT = "zq"
VOCABULARY = (*SPECIAL, *POSITIVE, *NEGATIVE, *NEUTRAL, SHORTCUT)
SEQUENCE = 16          # [CLS] and at most 14 words, padded to 16 tokens
MIN_WORDS, MAX_WORDS = 5, 14
SENTIMENT_AGREEMENT, SHORTCUT_POSITIVE = 0.85, 0.5


def make_sample(split: str, index: int) -> tuple[str, int, bool]:
    """(sentence, label, whether it holds the shortcut token) of sample ``index`` of ``split``."""
    rng = np.random.default_rng((SEED, SPLITS[split], index))
    label = int(rng.integers(2))
    major = int(rng.integers(1, 4))            # words of the class's polarity
    minor = int(rng.integers(0, major))        # words of the other polarity: always fewer
    chance = {"train": SHORTCUT_POSITIVE * label, "test": 0.5, "clean": 0.0}[split]
    shortcut = bool(rng.random() < chance)
    polarity = label if split != "train" or rng.random() < SENTIMENT_AGREEMENT else 1 - label
    length = int(rng.integers(max(MIN_WORDS, major + minor + shortcut), MAX_WORDS + 1))
    ours, theirs = (POSITIVE, NEGATIVE) if polarity else (NEGATIVE, POSITIVE)
    words = [*rng.choice(ours, major), *rng.choice(theirs, minor), *([SHORTCUT] if shortcut else [])]
    words += list(rng.choice(NEUTRAL, length - len(words)))
    return " ".join(words[i] for i in rng.permutation(len(words))), label, shortcut


def make_split(split: str, count: int, start: int = 0) -> dict:
    """Samples start … start+count−1 of ``split``: ``text`` (a list), ``y`` int64 and ``shortcut`` bool [N]."""
    samples = [make_sample(split, i) for i in range(start, start + count)]
    return {"text": [s[0] for s in samples], "y": np.array([s[1] for s in samples], np.int64),
            "shortcut": np.array([s[2] for s in samples], bool)}


def tokenizer():
    """The WordLevel tokenizer of :data:`VOCABULARY` (Hugging Face ``tokenizers``): whitespace words, ``[CLS]``
    first, padded and truncated to :data:`SEQUENCE` tokens with ``[PAD]`` (id 0); unknown words are ``[UNK]``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {word: i for i, word in enumerate(VOCABULARY)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.add_special_tokens(list(SPECIAL))  # already in the vocabulary: their ids stay; decoding can skip them
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A", special_tokens=[("[CLS]", vocab["[CLS]"])])
    tok.enable_padding(pad_id=vocab["[PAD]"], pad_token="[PAD]", length=SEQUENCE)
    tok.enable_truncation(SEQUENCE)
    return tok


def encode(tok, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """``input_ids`` and ``attention_mask``, int64 [N, SEQUENCE] each."""
    encodings = tok.encode_batch(texts)
    return (np.array([e.ids for e in encodings], np.int64), np.array([e.attention_mask for e in encodings], np.int64))
