"""Pretraining pieces on their own: whole-word masking, the contrastive losses, VTM pairs, the offset index,
and the model folder loading into the classifier."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest
import rjieba
import torch

from mmcls.config import ConfigError, TextConfig
from mmcls.data.annotations import AnnotationError, Record, load_records, write_records
from mmcls.data.text import TextEncoder
from mmcls.engine.trainer import Trainer
from mmcls.models import build_model, load_init_weights
from mmcls.pretrain import records as records_module
from mmcls.pretrain.config import PretrainConfig
from mmcls.pretrain.masking import IGNORE_INDEX, WordTextEncoder, special_token_ids, whole_word_mask
from mmcls.pretrain.model import build_pretraining_model
from mmcls.pretrain.objectives import itc_loss, nce_loss, vtm_loss
from mmcls.pretrain.records import RecordIndex
from mmcls.pretrain.task import PretrainingSetup, mask_frames, save_pretrained_dir, swap_frames

# Real Chinese text (news-style sentences written for this test), segmented by rjieba into words of 1-4 chars.
TITLE = "国家统计局今天发布数据，全国粮食总产量连续九年稳定在一万三千亿斤以上"
ASR = "各位观众朋友们大家好，欢迎收看今天的新闻联播节目。中国航天科技集团成功发射了新一代运载火箭"
OCR = [(1.0, "北京大学图书馆开放日"), (3.0, "人工智能技术推动制造业转型升级")]


def real_record() -> Record:
    return Record("1234", TITLE, ASR, OCR)


# ------------------------------------------------------------------------------------- whole-word masking
def test_word_encoder_gives_the_classifier_ids_and_word_boundaries_of_rjieba(bert_tokenizer):
    cfg = TextConfig(budgets={"title": 64, "asr": 96, "ocr": 92}, max_length=256)
    words = WordTextEncoder(bert_tokenizer, cfg).encode_words(real_record())
    assert words.ids == TextEncoder(bert_tokenizer, cfg).encode(real_record())
    # The tokens of each word spell that word (Chinese characters are one token each here).
    tokens = bert_tokenizer.convert_ids_to_tokens(words.ids)
    spelled: dict[int, str] = {}
    for token, word in zip(tokens, words.word_ids):
        if word >= 0:
            spelled[word] = spelled.get(word, "") + token
    expected = [w for text in (TITLE, ASR, *(t for _, t in OCR)) for w in rjieba.cut(text) if w.strip()]
    assert list(spelled.values()) == expected
    assert any(len(w) >= 3 for w in expected)  # multi-token words exist, so the next test means something


def test_whole_word_masking_masks_every_token_of_a_chosen_word_at_the_set_rate(bert_tokenizer):
    cfg = TextConfig(budgets={"title": 64, "asr": 96, "ocr": 92}, max_length=256)
    words = WordTextEncoder(bert_tokenizer, cfg).encode_words(real_record())
    word_ids = np.array(words.word_ids)
    num_words = word_ids.max() + 1
    mask_id, specials = bert_tokenizer.mask_token_id, special_token_ids(bert_tokenizer)
    chosen_words, actions = [], Counter()
    for seed in range(300):
        ids, labels = whole_word_mask(
            words, np.random.default_rng(seed), 0.15, mask_id, len(bert_tokenizer), specials
        )
        labelled = np.array(labels) != IGNORE_INDEX
        chosen = set(word_ids[labelled].tolist())
        assert -1 not in chosen  # [CLS]/[SEP] are never chosen
        for word in chosen:
            positions = np.flatnonzero(word_ids == word)
            assert labelled[positions].all()  # all sub-tokens of the word, together
            assert all(labels[p] == words.ids[p] for p in positions)
            replaced = [ids[p] for p in positions]
            if all(t == mask_id for t in replaced):
                actions["mask"] += 1
            elif replaced == [words.ids[p] for p in positions]:
                actions["keep"] += 1
            else:
                assert mask_id not in replaced and not specials & set(replaced)
                actions["random"] += 1
        unlabelled = ~labelled
        assert [ids[p] for p in np.flatnonzero(unlabelled)] == [
            words.ids[p] for p in np.flatnonzero(unlabelled)
        ]
        chosen_words.append(len(chosen))
    assert np.mean(chosen_words) == pytest.approx(round(0.15 * num_words), abs=0.01)
    total = sum(actions.values())
    assert actions["mask"] / total == pytest.approx(0.8, abs=0.05)
    assert actions["random"] / total == pytest.approx(0.1, abs=0.04)
    assert actions["keep"] / total == pytest.approx(0.1, abs=0.04)


# ------------------------------------------------------------------------------------ contrastive losses
@pytest.mark.parametrize("batch", [8, 64])
def test_nce_and_itc_are_log_batch_for_random_and_zero_for_aligned_embeddings(batch):
    gen = torch.Generator().manual_seed(0)
    dim = 256
    a, b = torch.randn(batch, dim, generator=gen), torch.randn(batch, dim, generator=gen)
    targets = torch.arange(batch)
    random_nce, _ = nce_loss(a, b, targets, temperature=1.0)
    aligned_nce, aligned_acc = nce_loss(a, a, targets, temperature=0.05)
    assert random_nce.item() == pytest.approx(math.log(batch), rel=0.05)
    assert aligned_nce.item() < 0.01 and aligned_acc.item() == 1.0
    norm = torch.nn.functional.normalize
    random_itc, _ = itc_loss(norm(a, dim=-1), norm(b, dim=-1), torch.tensor(1.0))
    aligned_itc, itc_acc = itc_loss(norm(a, dim=-1), norm(a, dim=-1), torch.tensor(1 / 0.05))
    assert random_itc.item() == pytest.approx(math.log(batch), rel=0.05)
    assert aligned_itc.item() < 0.01 and itc_acc.item() == 1.0


def test_mfm_nce_uses_the_other_frames_as_negatives():
    keys = torch.eye(6)  # six orthogonal frame features
    loss, acc = nce_loss(keys[[1, 4]], keys, torch.tensor([1, 4]), temperature=0.01)
    assert loss.item() < 1e-6 and acc.item() == 1.0
    loss, acc = nce_loss(keys[[1, 4]], keys, torch.tensor([2, 4]), temperature=0.01)  # one wrong target
    assert loss.item() > 10 and acc.item() == 0.5


# --------------------------------------------------------------------------------------------------- VTM
def test_vtm_labels_match_the_swap():
    gen = torch.Generator().manual_seed(0)
    swapped = 0
    for _ in range(50):
        source, matched = swap_frames(16, 0.5, gen)
        rows = torch.arange(16)
        assert torch.equal(matched.bool(), source == rows)  # matched exactly where nothing was swapped
        swapped += int((source != rows).sum())
    assert swapped / (50 * 16) == pytest.approx(0.5, abs=0.05)
    source, matched = swap_frames(1, 0.5, gen)  # nothing to swap with
    assert source.tolist() == [0] and matched.tolist() == [1.0]


def test_vtm_loss_ignores_samples_without_frames():
    logit = torch.tensor([5.0, -5.0, 5.0])
    matched = torch.tensor([1.0, 0.0, 0.0])
    loss, acc = vtm_loss(logit, matched, valid=torch.tensor([True, True, False]))
    assert loss.item() < 0.01 and acc.item() == 1.0


def test_mask_frames_masks_real_frames_only_at_the_rate_and_at_least_one():
    gen = torch.Generator().manual_seed(0)
    frame_mask = torch.zeros(512, 8, dtype=torch.bool)
    frame_mask[:, :6] = True
    chosen = mask_frames(frame_mask, 0.2, gen)
    assert not (chosen & ~frame_mask).any()
    assert chosen[frame_mask].float().mean().item() == pytest.approx(0.2, abs=0.03)
    one = torch.zeros(2, 4, dtype=torch.bool)
    one[1, 2] = True
    assert mask_frames(one, 1e-9, gen).nonzero().tolist() == [[1, 2]]


# ----------------------------------------------------------------------------------- model folder -> init
def tiny_pretrain_config(*overrides: str) -> PretrainConfig:
    return PretrainConfig.from_yaml("pretrain-tiny", list(overrides))


def test_pretraining_folder_loads_into_the_classifier_with_exactly_the_expected_keys(
    tmp_path, bert_tokenizer
):
    cfg = tiny_pretrain_config()
    torch.manual_seed(0)
    model = build_pretraining_model(cfg, cfg.pretrain, vocab_size=len(bert_tokenizer))
    save_pretrained_dir(tmp_path / "pre", model, cfg, bert_tokenizer)
    classifier = build_model(PretrainConfig.from_yaml("tiny"), vocab_size=len(bert_tokenizer))
    report = load_init_weights(classifier, tmp_path / "pre")
    heads = {
        "mlm_transform.0.weight", "mlm_transform.0.bias", "mlm_transform.2.weight", "mlm_transform.2.bias",
        "mlm_bias", "mfm_head.weight", "mfm_head.bias", "vtm_head.weight", "vtm_head.bias",
        "itc_text_proj.weight", "itc_text_proj.bias", "itc_video_proj.weight", "itc_video_proj.bias",
        "itc_logit_scale",
    }  # fmt: skip
    assert set(report.missing) == {
        "classifier.1.weight", "classifier.1.bias", "video_classifier.1.weight", "video_classifier.1.bias"
    }  # fmt: skip
    assert set(report.unexpected) == heads
    own = classifier.state_dict()
    assert len(report.loaded) == len(own) - 4
    pretrained = model.state_dict()
    assert all(torch.equal(own[k], pretrained[k]) for k in report.loaded)
    # The MLM decoder is the word-embedding table itself, saved once under BERT's name.
    assert "text_encoder.embeddings.word_embeddings.weight" in report.loaded


def test_a_pretraining_run_refuses_a_model_that_does_not_fit_the_data_before_writing(tmp_path):
    cfg = tiny_pretrain_config("data.frames.source=zip_feats")  # features, but an image encoder
    run = tmp_path / "run"
    with pytest.raises(ConfigError, match="model.frame_encoder.type=identity"):
        Trainer(cfg, tmp_path, run, setup=PretrainingSetup(cfg, tmp_path))
    assert not run.exists()


def test_disabled_objectives_build_no_heads(bert_tokenizer):
    cfg = tiny_pretrain_config("pretrain.mfm_weight=0", "pretrain.itc_weight=0")
    model = build_pretraining_model(cfg, cfg.pretrain, vocab_size=len(bert_tokenizer))
    names = {n.split(".")[0] for n, _ in model.named_parameters()}
    assert {"mlm_transform", "mlm_bias", "vtm_head"} <= names
    assert not names & {"mfm_head", "itc_text_proj", "itc_video_proj", "itc_logit_scale", "classifier"}


# ------------------------------------------------------------------------------------------ offset index
def write_split(path, n: int, start: int = 0, pretty: bool = False) -> list[Record]:
    records = [
        Record(f"{10**19 + start + i}", f'标题{i}「引号"」\n', "语音" * (i % 5), [(float(i), f"字幕{i}")])
        for i in range(n)
    ]
    if pretty:  # a BOM, indentation and escapes: offsets must be bytes, not characters
        text = json.dumps([r.to_dict() for r in records], ensure_ascii=False, indent=1)
        path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    else:
        write_records(path, records)
    return records


def test_index_parses_each_record_once_and_reads_it_back_by_position(tmp_path, monkeypatch):
    a = write_split(tmp_path / "a.json", 50)
    b = write_split(tmp_path / "b.json", 30, start=50, pretty=True)
    parsed: Counter = Counter()
    original = records_module.parse_record

    def counting(item, *args, **kwargs):
        parsed[item["id"]] += 1
        return original(item, *args, **kwargs)

    monkeypatch.setattr(records_module, "parse_record", counting)
    index = RecordIndex([tmp_path / "a.json", tmp_path / "b.json"])
    assert len(index) == 80 and set(parsed.values()) == {1} and len(parsed) == 80  # the scan: once each
    # Nothing but arrays is kept: no list of records, no per-record Python objects.
    assert {type(v).__name__ for k, v in vars(index).items() if k in ("starts", "lengths", "file_of")} == {
        "ndarray"
    }
    parsed.clear()
    assert [index[i] for i in range(80)] == a + b  # one epoch: each record read (and parsed) once more
    assert set(parsed.values()) == {1} and len(parsed) == 80
    assert index.file_of.tolist() == [0] * 50 + [1] * 30


def test_index_names_file_and_record_of_a_bad_record(tmp_path):
    path = tmp_path / "bad.json"
    write_split(path, 5)
    items = json.loads(path.read_text())
    items[3]["title"] = 7
    path.write_text(json.dumps(items, ensure_ascii=False))
    with pytest.raises(AnnotationError, match=r"bad.json: record 3: field 'title'"):
        RecordIndex([path])
    path.write_text(json.dumps(items[:2], ensure_ascii=False)[:-5])
    with pytest.raises(AnnotationError, match=r"bad.json: invalid or truncated JSON after record 0"):
        RecordIndex([path])


def test_index_matches_iter_records_on_make_data_output(tmp_path):
    from mmcls.data.synthetic import make_synthetic_dataset

    make_synthetic_dataset(tmp_path, 20, 40, 10, seed=3, num_frames=2, image_size=16, feature_dim=4)
    paths = [tmp_path / "annotations" / f"{s}.json" for s in ("unlabeled", "labeled", "test")]
    index = RecordIndex(paths)
    assert list(index) == [r for p in paths for r in load_records(p)]


# ------------------------------------------------------------------------------------------------ presets
@pytest.mark.parametrize(("preset", "finetune"), [("pretrain-tiny", "tiny"), ("pretrain-base", "base")])
def test_pretrain_presets_build_the_backbone_of_their_finetuning_preset(preset, finetune):
    from mmcls.config import Config

    pre, fine = PretrainConfig.from_yaml(preset), Config.from_yaml(finetune)
    assert pre.model == fine.model  # same architecture: every backbone weight loads with model.init_from
    assert pre.data.text == fine.data.text
    assert pre.data.frames.image_size == fine.data.frames.image_size
    assert pre.pretrain.splits == ["unlabeled", "labeled", "test"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            [
                "pretrain.mlm_weight=0",
                "pretrain.mfm_weight=0",
                "pretrain.vtm_weight=0",
                "pretrain.itc_weight=0",
            ],
            "every objective weight is 0",
        ),
        (["pretrain.mlm_probability=1.5"], r"pretrain.mlm_probability=1.5 must be in"),
        (["pretrain.splits=[]"], "pretrain.splits"),
        (["data.frames.source=none"], "data.frames.source=none leaves only MLM"),
        (["pretrain.mlm_wieght=1"], "mlm_wieght"),
    ],
)
def test_pretrain_config_errors_name_the_key(override, message):
    from mmcls.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        PretrainConfig.from_yaml("pretrain-tiny", override)
