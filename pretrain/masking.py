"""Whole-word masking for Chinese MLM: word boundaries from a segmenter, every sub-token of a word together.

bert-base-chinese splits Chinese text into single characters, so token-level masking mostly asks the model to
complete a word from its other characters (北京大_ -> 学), which teaches little. Whole-word masking (as in
Chinese-BERT-wwm / MacBERT) segments the text into words with ``rjieba`` (the Rust port of jieba) and masks
all tokens of a chosen word at once.

:class:`WordTextEncoder` gives the same ids as :class:`mmcls.data.text.TextEncoder` (same fields, budgets and
truncation) plus the word each token belongs to; :func:`whole_word_mask` then applies BERT's 80/10/10 rule per
chosen word.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import rjieba

from mmcls.data.annotations import Record
from mmcls.data.text import TextEncoder, truncate

IGNORE_INDEX = -100  # label of tokens the MLM loss skips (torch's cross_entropy default)


@dataclass
class WordTokens:
    ids: list[int]
    word_ids: list[int]  # per token: the word it belongs to (0..num_words-1), -1 for [CLS]/[SEP]


class WordTextEncoder(TextEncoder):
    """:class:`TextEncoder` that also reports word boundaries (``encode_words``)."""

    def encode_words(self, record: Record) -> WordTokens:
        if not self.cfg.fields:
            return WordTokens([self.cls_id], [-1])
        per_field = [self._field_words(text) for text in self.field_texts(record)]
        allowances = self.allowances([len(ids) for ids, _ in per_field])
        ids, word_ids = [self.cls_id], [-1]
        next_word = 0
        for (field_ids, field_words), allowance in zip(per_field, allowances):
            kept = truncate(list(range(len(field_ids))), allowance, self.cfg.truncation)
            # Renumber the words kept in this field after those of the previous fields.
            renumber: dict[int, int] = {}
            for k in kept:
                word = renumber.setdefault(field_words[k], next_word + len(renumber))
                ids.append(field_ids[k])
                word_ids.append(word)
            next_word += len(renumber)
            ids.append(self.sep_id)
            word_ids.append(-1)
        return WordTokens(ids, word_ids)

    def _field_words(self, text: str) -> tuple[list[int], list[int]]:
        words = [w for w in rjieba.cut(text) if w.strip()]
        if not words:
            return [], []
        encoded = self.tokenizer(
            words,
            is_split_into_words=True,
            add_special_tokens=False,
            return_attention_mask=False,
            return_token_type_ids=False,
            verbose=False,
        )
        word_of = encoded.word_ids()
        return list(encoded["input_ids"]), [int(w) for w in word_of]


def whole_word_mask(
    tokens: WordTokens,
    rng: np.random.Generator,
    probability: float,
    mask_id: int,
    vocab_size: int,
    special_ids: frozenset[int] = frozenset(),
) -> tuple[list[int], list[int]]:
    """``(input ids, labels)``: ``round(probability x words)`` words (at least one) chosen; for each chosen
    word all its tokens get their original id as label and are, together, replaced by ``[MASK]`` (80%), a
    random token (10%) or left as they are (10%). Other tokens get label ``IGNORE_INDEX``."""
    word_ids = np.asarray(tokens.word_ids)
    num_words = int(word_ids.max()) + 1 if len(word_ids) else 0
    ids = list(tokens.ids)
    labels = [IGNORE_INDEX] * len(ids)
    if num_words == 0:
        return ids, labels
    count = max(1, int(round(probability * num_words)))
    chosen = rng.choice(num_words, size=min(count, num_words), replace=False)
    for word in chosen:
        positions = np.flatnonzero(word_ids == word)
        action = rng.random()
        for p in positions:
            labels[p] = ids[p]
            if action < 0.8:
                ids[p] = mask_id
            elif action < 0.9:
                ids[p] = _random_token(rng, vocab_size, special_ids)
    return ids, labels


def _random_token(rng: np.random.Generator, vocab_size: int, special_ids: frozenset[int]) -> int:
    while True:
        token = int(rng.integers(vocab_size))
        if token not in special_ids:
            return token


def special_token_ids(tokenizer: Any) -> frozenset[int]:
    return frozenset(int(i) for i in tokenizer.all_special_ids)
