"""Tokenizer loading and the text side of a sample: ``[CLS] title [SEP] asr [SEP] ocr [SEP]``.

Each field is tokenized on its own (no special tokens) and truncated to its token budget, so a long ASR
transcript can never push the title out. Decisions:

* Every field in ``cfg.fields`` keeps its ``[SEP]`` even when empty, so the layout is fixed and ``max_length``
  (which counts ``[CLS]`` and one ``[SEP]`` per field) is met exactly as configured.
* A field's allowance is its budget (``cfg.budgets``, 0 for fields not listed) plus whatever the fields before
  it left unused. Space still unused after the last field goes back, in field order, to fields that were cut,
  so a long title with an empty ASR/OCR is not truncated for nothing. The total never exceeds ``max_length``.
* OCR lines are joined in time order with a space; a line identical to the previous one is dropped (OCR of
  consecutive frames repeats the same subtitle, which would only burn budget).
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any

from mmcls.config import ConfigError, TextConfig
from mmcls.data.annotations import Record
from mmcls.errors import MmclsError

BUILTIN_TOKENIZERS = {"builtin:bert-base-chinese": "bert_chinese_vocab.txt"}
TEXT_FIELDS = ("title", "asr", "ocr")
TRUNCATION_MODES = ("head", "tail", "head_tail")


class TokenizerNotFoundError(MmclsError, OSError):
    """A tokenizer spec that is neither a local file/directory nor loadable from the hub (or its cache)."""


def load_tokenizer(spec: str) -> Any:
    """A Hugging Face tokenizer from a spec.

    * ``"builtin:bert-base-chinese"``: the bert-base-chinese WordPiece vocabulary shipped in the package.
    * a path to a ``.txt`` WordPiece vocabulary (one token per line; line number = id).
    * a directory written by ``save_pretrained`` (``AutoTokenizer.from_pretrained``).
    * otherwise a hub name; the local cache is tried first, and a clear error says how to provide a local
      directory when it cannot be found (e.g. offline).
    """
    if spec.startswith("builtin:"):
        if spec not in BUILTIN_TOKENIZERS:
            raise TokenizerNotFoundError(
                f"unknown builtin tokenizer {spec!r}; known: {sorted(BUILTIN_TOKENIZERS)}"
            )
        vocab = resources.files("mmcls.assets").joinpath(BUILTIN_TOKENIZERS[spec])
        with resources.as_file(vocab) as vocab_path:
            return _bert_from_vocab(vocab_path)
    path = Path(spec).expanduser()
    if spec.endswith(".txt"):
        if not path.is_file():
            raise TokenizerNotFoundError(f"tokenizer vocabulary file {spec!r} does not exist")
        return _bert_from_vocab(path)
    if path.is_dir():
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(path))
    if spec.startswith(("/", ".", "~")) or spec.count("/") > 1:  # meant as a path, not a hub name
        raise TokenizerNotFoundError(f"tokenizer directory {spec!r} does not exist")
    return _from_hub(spec)


def _bert_from_vocab(path: Path) -> Any:
    from transformers import BertTokenizer

    # transformers 5.x: BertTokenizer(vocab_file=...) silently ignores the file and builds an empty
    # vocabulary; ``vocab=`` is the argument that loads it. Check, so that a future rename fails loudly.
    tokenizer = BertTokenizer(vocab=str(path), model_max_length=512)
    if len(tokenizer) < 10 or tokenizer.convert_tokens_to_ids("[CLS]") == tokenizer.unk_token_id:
        raise TokenizerNotFoundError(f"{path}: the vocabulary was not loaded (got {len(tokenizer)} tokens)")
    return tokenizer


def _from_hub(name: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError):  # ValueError: not even a valid repo id (e.g. a mistyped local path)
        pass
    if _hub_offline():
        cause = "offline mode is on (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)"
    else:
        try:
            return AutoTokenizer.from_pretrained(name)
        except (OSError, ValueError) as exc:
            cause = str(exc).strip().splitlines()[0]
    raise TokenizerNotFoundError(
        f"tokenizer {name!r} could not be found locally (not a file, a directory or in the Hugging Face cache) "
        f"and could not be downloaded: {cause}. Provide a local directory instead: on a machine with internet "
        f"run AutoTokenizer.from_pretrained({name!r}).save_pretrained(DIR), copy DIR here and set "
        "data.text.tokenizer=DIR (or a vocab.txt path, or builtin:bert-base-chinese)."
    )


def _hub_offline() -> bool:
    return any(
        os.environ.get(var, "").lower() in ("1", "true", "yes", "on")
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


class TextEncoder:
    """Turns a :class:`Record` into token ids ``[CLS] f1 [SEP] f2 [SEP] ...`` under per-field budgets.

    ``fields: []`` gives ``[CLS]`` alone: a frames-only model (the demo's ablation), whose [CLS] still pools.
    """

    def __init__(self, tokenizer: Any, cfg: TextConfig):
        unknown = [f for f in cfg.fields if f not in TEXT_FIELDS]
        if unknown:
            raise ConfigError(f"data.text.fields: {cfg.fields!r}; each must be one of {TEXT_FIELDS}")
        if cfg.truncation not in TRUNCATION_MODES:
            raise ConfigError(f"data.text.truncation: {cfg.truncation!r}; use one of {TRUNCATION_MODES}")
        if cfg.max_length < 1 + len(cfg.fields):
            raise ConfigError(
                f"data.text.max_length={cfg.max_length} leaves no room for [CLS] and one [SEP] per field"
            )
        if any(b < 0 for b in cfg.budgets.values()):
            raise ConfigError(f"data.text.budgets: {cfg.budgets!r}; budgets must be >= 0")
        if tokenizer.cls_token_id is None or tokenizer.sep_token_id is None:
            raise ConfigError("data.text.tokenizer: the tokenizer has no [CLS]/[SEP] tokens")
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.cls_id = int(tokenizer.cls_token_id)
        self.sep_id = int(tokenizer.sep_token_id)
        self.pad_token_id = int(tokenizer.pad_token_id or 0)

    def field_texts(self, record: Record) -> list[str]:
        """The text of each field in ``cfg.fields`` order."""
        return [self._field_text(record, name) for name in self.cfg.fields]

    def encode(self, record: Record) -> list[int]:
        if not self.cfg.fields:
            return [self.cls_id]
        tokens = self.tokenizer(
            self.field_texts(record),
            add_special_tokens=False,
            return_attention_mask=False,
            return_token_type_ids=False,
            verbose=False,  # lengths above model_max_length are fine: we truncate ourselves
        )["input_ids"]
        allowances = self.allowances([len(t) for t in tokens])
        ids = [self.cls_id]
        for field_tokens, allowance in zip(tokens, allowances):
            ids.extend(truncate(field_tokens, allowance, self.cfg.truncation))
            ids.append(self.sep_id)
        return ids

    def allowances(self, lengths: list[int]) -> list[int]:
        """How many tokens each field may keep, given the untruncated token count of every field."""
        capacity = self.cfg.max_length - 1 - len(self.cfg.fields)
        allowances = []
        carry = 0
        for name, length in zip(self.cfg.fields, lengths):
            offer = min(self.cfg.budgets.get(name, 0) + carry, capacity)
            used = min(length, offer)
            allowances.append(used)
            carry = offer - used
            capacity -= used
        # Give what is still free to the fields that were cut, in field order.
        for i, length in enumerate(lengths):
            extra = min(length - allowances[i], capacity)
            allowances[i] += extra
            capacity -= extra
        return allowances

    @staticmethod
    def _field_text(record: Record, name: str) -> str:
        if name == "ocr":
            lines: list[str] = []
            for _, text in sorted(record.ocr, key=lambda line: line[0]):
                text = text.strip()
                if text and (not lines or lines[-1] != text):
                    lines.append(text)
            return " ".join(lines)
        return getattr(record, name)


def truncate(tokens: list[int], budget: int, mode: str) -> list[int]:
    """Keep at most ``budget`` tokens: the start (``head``), the end (``tail``), or the first half and the last
    half of the budget (``head_tail``; the head gets the odd token)."""
    if len(tokens) <= budget:
        return list(tokens)
    if budget <= 0:
        return []
    if mode == "head":
        return tokens[:budget]
    if mode == "tail":
        return tokens[len(tokens) - budget :]
    if mode == "head_tail":
        head = (budget + 1) // 2
        return tokens[:head] + tokens[len(tokens) - (budget - head) :]
    raise ValueError(f"unknown truncation mode {mode!r}; use one of {TRUNCATION_MODES}")
