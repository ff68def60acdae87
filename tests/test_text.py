from __future__ import annotations

import pytest

from mmcls.config import ConfigError, TextConfig
from mmcls.data.annotations import Record
from mmcls.data.text import TextEncoder, TokenizerNotFoundError, load_tokenizer, truncate

CLS, SEP = 101, 102
KNOWN_IDS = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103, "一": 671, "我": 2769}
# Each CJK character is one WordPiece token in bert-base-chinese: easy to count and to check.
DIGITS = "零一二三四五六七八九"


def ids_of(tokenizer, text: str) -> list[int]:
    return tokenizer.convert_tokens_to_ids(list(text))


def record(title: str = "", asr: str = "", ocr: list[tuple[float, str]] | None = None) -> Record:
    return Record(id="1", title=title, asr=asr, ocr=ocr or [], category_id=None)


def encoder(tokenizer, **kw) -> TextEncoder:
    return TextEncoder(tokenizer, TextConfig(**kw))


def check_known_ids(tokenizer) -> None:
    assert tokenizer.convert_tokens_to_ids(list(KNOWN_IDS)) == list(KNOWN_IDS.values())
    assert len(tokenizer) == 21128
    assert (tokenizer.pad_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id) == (0, 101, 102)


def test_builtin_tokenizer_has_the_real_vocabulary(bert_tokenizer):
    check_known_ids(bert_tokenizer)
    assert bert_tokenizer("我一", add_special_tokens=False)["input_ids"] == [2769, 671]


def test_vocab_file_and_directory_specs(shared_data, tmp_path, bert_tokenizer):
    check_known_ids(load_tokenizer(str(shared_data / "bert_chinese_vocab.txt")))
    bert_tokenizer.save_pretrained(tmp_path / "tok")
    check_known_ids(load_tokenizer(str(tmp_path / "tok")))


def test_missing_vocab_file_and_unknown_builtin(tmp_path):
    with pytest.raises(TokenizerNotFoundError, match="does not exist"):
        load_tokenizer(str(tmp_path / "vocab.txt"))
    with pytest.raises(TokenizerNotFoundError, match="directory .* does not exist"):
        load_tokenizer(str(tmp_path / "no_such_dir"))
    with pytest.raises(TokenizerNotFoundError, match="unknown builtin"):
        load_tokenizer("builtin:gpt2")


def test_hub_name_offline_gives_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TokenizerNotFoundError) as info:
        load_tokenizer("no-such-org/no-such-tokenizer-mmcls")
    message = str(info.value)
    assert "could not be found locally" in message and "save_pretrained" in message
    assert "no-such-org/no-such-tokenizer-mmcls" in message


def test_layout_cls_fields_sep(bert_tokenizer):
    enc = encoder(bert_tokenizer)
    ids = enc.encode(record("我爱", "一二", [(3.0, "三"), (1.0, "一")]))
    assert ids == [
        CLS,
        *ids_of(bert_tokenizer, "我爱"),
        SEP,
        *ids_of(bert_tokenizer, "一二"),
        SEP,
        671,
        676,
        SEP,
    ]


def test_empty_fields_keep_their_sep(bert_tokenizer):
    assert encoder(bert_tokenizer).encode(record()) == [CLS, SEP, SEP, SEP]
    assert encoder(bert_tokenizer).encode(record(asr="我")) == [CLS, SEP, 2769, SEP, SEP]


def test_ocr_lines_in_time_order_without_repeats(bert_tokenizer):
    enc = encoder(bert_tokenizer, fields=["ocr"])
    ocr = [(2.0, "三"), (0.0, "一"), (1.0, "二"), (1.5, "二"), (0.5, " ")]
    assert enc.encode(record(ocr=ocr)) == [CLS, *ids_of(bert_tokenizer, "一二三"), SEP]


def test_field_subset_and_order(bert_tokenizer):
    enc = encoder(bert_tokenizer, fields=["asr", "title"], budgets={"asr": 5, "title": 5})
    assert enc.encode(record("我", "一")) == [CLS, 671, SEP, 2769, SEP]


def test_no_fields_gives_cls_alone_for_frames_only_models(bert_tokenizer):
    assert encoder(bert_tokenizer, fields=[]).encode(record("我", "一", [(1.0, "零")])) == [CLS]


@pytest.mark.parametrize(
    ("mode", "kept"), [("head", "零一二三四"), ("tail", "五六七八九"), ("head_tail", "零一二八九")]
)
def test_truncation_modes(bert_tokenizer, mode, kept):
    enc = encoder(bert_tokenizer, fields=["title"], budgets={"title": 5}, max_length=7, truncation=mode)
    assert enc.encode(record(DIGITS)) == [CLS, *ids_of(bert_tokenizer, kept), SEP]


def test_truncate_helper():
    tokens = list(range(10))
    assert truncate(tokens, 4, "head_tail") == [0, 1, 8, 9]
    assert truncate(tokens, 1, "head_tail") == [0]
    assert truncate(tokens, 0, "head") == []
    assert truncate(tokens, 20, "tail") == tokens
    with pytest.raises(ValueError):
        truncate(tokens, 3, "middle")


def test_per_field_budgets_hold_when_all_fields_are_long(bert_tokenizer):
    enc = encoder(bert_tokenizer, budgets={"title": 3, "asr": 4, "ocr": 2}, max_length=13, truncation="head")
    ids = enc.encode(record(DIGITS, DIGITS[::-1], [(0, DIGITS)]))
    assert ids == [
        CLS,
        *ids_of(bert_tokenizer, "零一二"),
        SEP,
        *ids_of(bert_tokenizer, "九八七六"),
        SEP,
        *ids_of(bert_tokenizer, "零一"),
        SEP,
    ]


def test_unused_budget_passes_to_the_following_fields(bert_tokenizer):
    enc = encoder(bert_tokenizer, budgets={"title": 3, "asr": 4, "ocr": 2}, max_length=13, truncation="head")
    # Title uses 1 of 3: asr may take 4 + 2, ocr keeps its 2.
    ids = enc.encode(record("我", DIGITS, [(0, DIGITS)]))
    assert ids == [
        CLS,
        2769,
        SEP,
        *ids_of(bert_tokenizer, "零一二三四五"),
        SEP,
        *ids_of(bert_tokenizer, "零一"),
        SEP,
    ]
    assert len(ids) == 13


def test_leftover_space_goes_back_to_cut_fields(bert_tokenizer):
    enc = encoder(bert_tokenizer, budgets={"title": 3, "asr": 4, "ocr": 2}, max_length=13, truncation="head")
    # ASR and OCR are empty: the title may use all 9 content tokens.
    assert enc.encode(record(DIGITS)) == [CLS, *ids_of(bert_tokenizer, DIGITS[:9]), SEP, SEP, SEP]


def test_fields_missing_from_budgets_get_only_what_is_passed_on(bert_tokenizer):
    enc = encoder(bert_tokenizer, budgets={"title": 4}, max_length=10, truncation="head")
    # 6 content slots. Title keeps 2 of its 4, asr (no budget) receives the 2 passed on, ocr nothing;
    # the 2 slots still free then go back to the cut fields in order: asr first.
    assert enc.allowances([2, 10, 10]) == [2, 4, 0]
    assert enc.allowances([2, 10, 0]) == [2, 4, 0]
    assert enc.allowances([0, 0, 10]) == [0, 0, 6]


def test_never_longer_than_max_length(bert_tokenizer):
    long_text = DIGITS * 100
    for max_length in (4, 5, 17, 256):
        enc = encoder(bert_tokenizer, max_length=max_length)
        ids = enc.encode(record(long_text, long_text, [(0, long_text)]))
        assert len(ids) == max_length and ids[0] == CLS and ids.count(SEP) == 3


def test_invalid_text_config(bert_tokenizer):
    with pytest.raises(ConfigError, match="fields"):
        encoder(bert_tokenizer, fields=["title", "comments"])
    with pytest.raises(ConfigError, match="truncation"):
        encoder(bert_tokenizer, truncation="middle")
    with pytest.raises(ConfigError, match="max_length"):
        encoder(bert_tokenizer, max_length=3)


def test_the_small_test_vocabulary_is_current_and_reads_synthetic_text_without_unknowns():
    """tests/assets/small_vocab.txt (see tests/commands.py) must cover what the synthetic data writes."""
    from mmcls.data.synthetic import synthetic_task

    from commands import SMALL_VOCAB, small_vocab_tokens

    assert SMALL_VOCAB.read_text(encoding="utf-8").split("\n")[:-1] == small_vocab_tokens()
    small = load_tokenizer(str(SMALL_VOCAB))
    task = synthetic_task()
    text = task.filler + "".join(task.lv1_keywords) + "".join(task.code_keywords) + "#"
    ids = small(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text) and small.unk_token_id not in ids
