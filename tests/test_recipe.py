"""The training recipe (issue 9): each technique's mechanism, checked against its formula on the real objects.

Layer-wise LR decay on the real optimizer's groups, the schedules, FGM/PGD (weights restored bit for bit,
``||delta|| <= epsilon``, gradients as PGD prescribes), class weights, logit adjustment, R-Drop, multi-sample
dropout, SWA, the level-1 and soft-F1 terms, AMP, and a stage that continues from another run's weights.
Multi-process and kill/resume checks of the same settings are in ``test_recipe_runs.py`` (slow).
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from mmcls.config import Config, ConfigError
from mmcls.data.categories import official_categories
from mmcls.engine import losses
from mmcls.engine.adversarial import Adversary, step_towards
from mmcls.engine.inference import Predictions
from mmcls.engine.optim import build_optimizer, build_scheduler, lr_factor
from mmcls.engine.swa import WeightAverage
from mmcls.engine.task import DEFAULT_LV1_LOSS_WEIGHT, ClassificationTask, resolve_lv1_loss_weight
from mmcls.inference.predict import adjusted_predictions
from mmcls.models import build_model, lv1_probs

from commands import NO_DROPOUT, random_batch

CPU = torch.device("cpu")


def tiny_config(*overrides: str) -> Config:
    return Config.from_yaml("tiny", ["data.frames.max_frames=4", *overrides])


def tiny_model(cfg: Config) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(cfg, vocab_size=21128)


def make_task(*overrides: str, counts=None) -> ClassificationTask:
    cfg = tiny_config(*NO_DROPOUT, *overrides)
    task = ClassificationTask(
        tiny_model(cfg),
        cfg.train,
        CPU,
        class_counts=counts,
        lv2_to_lv1=official_categories().lv2_to_lv1_matrix(),
    )
    return task.train()


def grads_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# ------------------------------------------------------------------------------------------- layer decay
def expected_lr(name: str, cfg: Config) -> float:
    """The issue's formula, written out independently of the optimizer code."""
    t, decay = cfg.train, cfg.train.layer_decay
    text_layers = cfg.model.bert_config["num_hidden_layers"]
    if name.startswith("text_encoder."):
        m = re.match(r"text_encoder\.encoder\.layer\.(\d+)\.", name)
        layer = int(m.group(1)) + 1 if m else 0  # embeddings
        return t.lr * decay ** (text_layers + 1 - layer)
    if name.startswith("frame_encoder."):
        frame_blocks = 2  # mmcls-tiny-vit: transformer.resblocks.0 and .1
        m = re.search(r"\.resblocks\.(\d+)\.", name)
        if m:
            layer = int(m.group(1)) + 1
        elif "ln_post" in name or name.endswith("backbone.proj"):
            layer = frame_blocks + 1
        else:  # conv1, class_embedding, positional_embedding, ln_pre
            layer = 0
        return t.frame_encoder_lr * decay ** (frame_blocks + 1 - layer)
    return t.head_lr


def test_layer_decay_lr_of_every_parameter_matches_the_formula_on_the_real_optimizer():
    cfg = tiny_config(
        "train.layer_decay=0.7", "train.lr=1e-3", "train.frame_encoder_lr=1e-4", "train.head_lr=5e-3"
    )
    model = tiny_model(cfg)
    optimizer = build_optimizer(model, cfg.train)
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    names = dict(model.named_parameters())
    assert len(group_of) == len(names)  # every parameter in exactly one group
    seen_lrs = set()
    for name, param in names.items():
        group = group_of[id(param)]
        assert group["lr"] == pytest.approx(expected_lr(name, cfg), rel=1e-12), name
        seen_lrs.add(round(group["lr"], 12))
        no_decay = param.ndim < 2 or "embeddings" in name or "norm" in name.lower()
        assert group["weight_decay"] == (0.0 if no_decay else cfg.train.weight_decay), name
    assert len(seen_lrs) == 3 + 4 + 1  # text: embeddings + 2 layers; frames: stem, 2 blocks, top; heads
    # The text tower's top layer is one decay step below lr; embeddings three.
    word = group_of[id(names["text_encoder.embeddings.word_embeddings.weight"])]
    assert word["lr"] == pytest.approx(1e-3 * 0.7**3)

    # The schedule scales every group by the same factor.
    scheduler = build_scheduler(optimizer, cfg.train, total_steps=20, steps_per_epoch=2)
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    ratios = {g["lr"] / g["initial_lr"] for g in optimizer.param_groups}
    assert max(ratios) - min(ratios) < 1e-12


def test_without_layer_decay_groups_are_unchanged():
    cfg = tiny_config()
    groups = build_optimizer(tiny_model(cfg), cfg.train).param_groups
    assert sorted(g["name"] for g in groups) == sorted(
        f"{m}/{d}" for m in ("frame_encoder", "text_encoder", "head") for d in ("decay", "no_decay")
    )


# ------------------------------------------------------------------------------------------- schedules
def test_cosine_schedule_is_the_previous_one_and_restarts_and_linear_follow_their_shapes():
    cfg = tiny_config("train.warmup_ratio=0.1", "train.min_lr_ratio=0.1", "train.epochs=4")
    total, per_epoch = 40, 10
    reference = get_cosine_with_min_lr_schedule_with_warmup(
        torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0), 4, total, min_lr_rate=0.1
    )
    for step in range(total + 1):
        mine = lr_factor(
            step, schedule="cosine", total_steps=total, warmup_steps=4, min_lr_ratio=0.1, restart_steps=10
        )
        assert mine == pytest.approx(reference.lr_lambdas[0](step), abs=1e-12), step

    def factor(schedule: str, step: int) -> float:
        return lr_factor(
            step,
            schedule=schedule,
            total_steps=total,
            warmup_steps=4,
            min_lr_ratio=0.1,
            restart_steps=per_epoch,
        )

    # Restarts: back to the full LR at every cycle start (after the warmup), min_lr at the end of each cycle.
    assert [factor("cosine_restarts", s) for s in (4, 10, 20, 30)] == [1.0, 1.0, 1.0, 1.0]
    assert factor("cosine_restarts", 25) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert factor("cosine_restarts", 19) < factor("cosine_restarts", 11)
    # Linear: a straight line from 1 at the end of the warmup to min_lr_ratio at the last step.
    assert factor("linear", 4) == 1.0 and factor("linear", 40) == pytest.approx(0.1)
    assert factor("linear", 22) == pytest.approx(0.1 + 0.9 * 0.5)

    # The scheduler object built from the config uses restart_epochs x steps per epoch.
    restart_cfg = tiny_config(
        "train.schedule=cosine_restarts", "train.restart_epochs=2", "train.warmup_ratio=0"
    )
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = build_scheduler(optimizer, restart_cfg.train, total_steps=total, steps_per_epoch=per_epoch)
    lrs = []
    for _ in range(total):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == lrs[20] == 1.0 and lrs[19] < 0.01 and lrs[10] == pytest.approx(0.5)
    assert cfg.train.schedule == "cosine"  # the default


# ------------------------------------------------------------------------------------------- adversarial
@pytest.mark.parametrize("method", ["fgm", "pgd"])
def test_adversarial_restores_the_embeddings_bit_for_bit_and_stays_in_the_epsilon_ball(method):
    task = make_task(
        f"train.adversarial.method={method}",
        "train.adversarial.epsilon=0.5",
        "train.adversarial.norm=absolute",
    )
    word = task.model.text_encoder.embeddings.word_embeddings.weight
    before = word.detach().clone()
    loss, parts = task.forward_backward(random_batch(), scale=lambda x: x, sync=True)
    assert torch.equal(word, before)  # bit for bit
    (delta,) = task.adversary.last_deltas
    norm = torch.linalg.vector_norm(delta).item()
    assert 0 < norm <= 0.5 + 1e-6
    if method == "fgm":
        assert norm == pytest.approx(0.5, rel=1e-5)  # FGM steps all the way to the ball's surface
    assert torch.isfinite(parts["loss_adv"]) and parts["loss_adv"] > loss.detach()  # it is an attack


def test_pgd_gradient_is_clean_plus_the_last_perturbed_pass_and_scale_invariant():
    """Dropout is off, so the passes are deterministic and the gradients can be recomputed by hand."""
    overrides = [
        "train.adversarial.method=pgd",
        "train.adversarial.steps=3",
        "train.adversarial.epsilon=0.4",
        "train.adversarial.alpha=0.3",
        "train.adversarial.norm=absolute",
    ]
    batch = random_batch()
    task = make_task(*overrides)
    word = task.model.text_encoder.embeddings.word_embeddings.weight
    task.forward_backward(batch, scale=lambda x: x, sync=True)
    got = grads_of(task.model)

    # By hand: the clean gradient, then three projected steps, each along the gradient at the current point.
    manual = make_task(*overrides)
    manual.adversary = None
    mword = manual.model.text_encoder.embeddings.word_embeddings.weight
    original = mword.detach().clone()
    manual(batch)[0].backward()
    clean = grads_of(manual.model)
    delta = torch.zeros_like(original)
    direction = clean["text_encoder.embeddings.word_embeddings.weight"]
    for _ in range(3):
        delta = delta + 0.3 * direction / direction.norm()
        delta = delta * min(1.0, 0.4 / delta.norm().item())
        with torch.no_grad():
            mword.copy_(original + delta)
        manual.model.zero_grad()
        manual(batch)[0].backward()
        direction = mword.grad.clone()
    adversarial = grads_of(manual.model)
    assert torch.allclose(delta, task.adversary.last_deltas[0], atol=1e-6)
    for name, value in got.items():
        torch.testing.assert_close(value, clean[name] + adversarial[name], rtol=1e-4, atol=1e-6)
    assert torch.equal(word, original)

    # A grad scaler's factor (fp16) and 1/grad_accum_steps change |g| but not the direction: same delta.
    scaled = make_task(*overrides)
    scaled.forward_backward(batch, scale=lambda x: x * 1024.0, sync=True)
    assert torch.allclose(scaled.adversary.last_deltas[0], task.adversary.last_deltas[0], atol=1e-6)


def test_adversarial_direction_uses_only_this_micro_batch_under_accumulation():
    task = make_task("train.adversarial.method=fgm")
    task.forward_backward(random_batch(seed=1), scale=lambda x: x / 2, sync=False)  # an earlier micro-batch
    task.forward_backward(random_batch(seed=2), scale=lambda x: x / 2, sync=True)
    alone = make_task("train.adversarial.method=fgm")
    alone.forward_backward(random_batch(seed=2), scale=lambda x: x / 2, sync=True)
    assert torch.allclose(task.adversary.last_deltas[0], alone.adversary.last_deltas[0], atol=1e-6)


def test_step_towards_projects_and_ignores_unusable_gradients():
    delta = torch.zeros(3, 4)
    grad = torch.ones(3, 4)
    moved = step_towards(delta, grad, step=10.0, epsilon=1.0)
    assert torch.linalg.vector_norm(moved).item() == pytest.approx(1.0)
    assert torch.equal(step_towards(delta, torch.zeros(3, 4), 1.0, 1.0), delta)
    assert torch.equal(step_towards(delta, torch.full((3, 4), math.inf), 1.0, 1.0), delta)


def test_frame_projection_target_and_its_config_errors():
    task = make_task("train.adversarial.method=fgm", "train.adversarial.target=[word_embeddings, frame_proj]")
    proj = task.model.frame_proj.weight.detach().clone()
    task.forward_backward(random_batch(), scale=lambda x: x, sync=True)
    assert torch.equal(task.model.frame_proj.weight, proj)
    assert len(task.adversary.last_deltas) == 2 and all(d.norm() > 0 for d in task.adversary.last_deltas)
    assert isinstance(Adversary, type)
    for bad, key in [
        ("train.adversarial.method=free", "train.adversarial.method"),
        ("train.adversarial.target=pooler", "train.adversarial.target"),
        ("train.adversarial.epsilon=0", "train.adversarial.epsilon"),
        ("train.adversarial.steps=0", "train.adversarial.steps"),
        ("train.layer_decay=1.5", "train.layer_decay"),
        ("train.schedule=step", "train.schedule"),
        ("train.restart_epochs=0", "train.restart_epochs"),
        ("train.swa_start_epoch=11", "train.swa_start_epoch"),
        ("train.multi_dropout=0", "train.multi_dropout"),
        ("train.rdrop_alpha=-1", "train.rdrop_alpha"),
        ("train.class_weight_alpha=-0.5", "train.class_weight_alpha"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(key)) as info:
            tiny_config(bad)
        assert "\n" not in str(info.value)


def test_bf16_autocast_with_adversarial_and_rdrop_trains():
    task = make_task("train.precision=bf16", "train.adversarial.method=pgd", "train.rdrop_alpha=1")
    word = task.model.text_encoder.embeddings.word_embeddings.weight.detach().clone()
    loss, parts = task.forward_backward(random_batch(), scale=lambda x: x, sync=True)
    assert torch.isfinite(loss) and torch.isfinite(parts["loss_adv"])
    assert torch.equal(task.model.text_encoder.embeddings.word_embeddings.weight, word)
    assert all(torch.isfinite(g).all() for g in grads_of(task.model).values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 autocast and its grad scaler need CUDA")
def test_fp16_with_grad_scaler_and_adversarial_on_cuda():
    cfg = tiny_config(*NO_DROPOUT, "train.precision=fp16", "train.adversarial.method=pgd")
    device = torch.device("cuda")
    task = ClassificationTask(tiny_model(cfg), cfg.train, device).train()
    scaler = torch.amp.GradScaler("cuda")
    optimizer = build_optimizer(task.model, cfg.train)
    batch = {k: v.to(device) for k, v in random_batch().items()}
    word = task.model.text_encoder.embeddings.word_embeddings.weight.detach().clone()
    task.forward_backward(batch, scale=scaler.scale, sync=True)
    assert torch.equal(task.model.text_encoder.embeddings.word_embeddings.weight, word)
    assert (
        torch.linalg.vector_norm(task.adversary.last_deltas[0]).item() <= cfg.train.adversarial.epsilon + 1e-5
    )
    scaler.step(optimizer)
    scaler.update()


# ------------------------------------------------------------------------------------------- class weights
def test_class_weights_match_the_formula():
    counts = np.array([100, 10, 1, 0, 50])
    for alpha in (0.0, 0.5, 1.0):
        weights = losses.class_weights(counts, alpha)
        raw = (counts + 1.0) ** -alpha
        expected = raw * counts.sum() / (counts * raw).sum()
        np.testing.assert_allclose(weights, expected, rtol=1e-12)
        assert (counts * weights).sum() / counts.sum() == pytest.approx(1.0)  # mean 1 over the samples
    np.testing.assert_allclose(losses.class_weights(counts, 0.0), np.ones(5))
    inverse = losses.class_weights(counts, 1.0)
    assert inverse[2] / inverse[0] == pytest.approx(101 / 2)  # inverse (smoothed) frequency
    assert np.isfinite(inverse[3])  # an unseen class gets a finite weight


def test_task_weights_the_fused_and_video_losses_per_sample():
    counts = np.random.default_rng(0).integers(0, 50, size=200)
    task = make_task("train.class_weight_alpha=1", "train.aux_loss_weight=0.5", counts=counts)
    batch = random_batch()
    batch["frame_mask"][0] = False  # one sample without frames: out of the video loss
    outputs = task.model(**{k: batch[k] for k in ("input_ids", "attention_mask", "frames", "frame_mask")})
    _, parts = task.classification_loss(outputs, batch["labels"], batch["frame_mask"])
    w = torch.tensor(losses.class_weights(counts, 1.0), dtype=torch.float32)[batch["labels"]]
    ce = torch.nn.functional.cross_entropy(outputs["logits"], batch["labels"], reduction="none")
    torch.testing.assert_close(parts["loss_fused"], (w * ce).mean())
    vce = torch.nn.functional.cross_entropy(outputs["video_logits"], batch["labels"], reduction="none")
    torch.testing.assert_close(parts["loss_video"], (w * vce)[1:].sum() / 5)


# ------------------------------------------------------------------------------------------- logit adjustment
def test_logit_adjustment_tau_zero_is_the_identity_and_tau_shifts_by_the_log_prior():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(8, 5))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    preds = Predictions(np.arange(8), probs.astype(np.float32), np.zeros(8, np.int64))
    counts = np.array([500, 100, 20, 5, 0])
    assert adjusted_predictions(preds, counts, 0.0) is preds
    np.testing.assert_array_equal(losses.adjust_logits(logits, losses.log_prior(counts), 0.0), logits)

    tau = 1.0
    adjusted = adjusted_predictions(preds, counts, tau)
    prior = (counts + 1) / (counts + 1).sum()
    expected = logits - tau * np.log(prior)
    expected = np.exp(expected) / np.exp(expected).sum(1, keepdims=True)
    np.testing.assert_allclose(adjusted.probs, expected, rtol=1e-5)
    assert (adjusted.pred >= preds.pred).all()  # predictions only move towards the rarer (higher) classes


# ------------------------------------------------------------------------------------------- regularisers
def test_rdrop_kl_is_zero_for_identical_passes_and_symmetric_otherwise():
    a = torch.randn(4, 10, generator=torch.Generator().manual_seed(0))
    b = torch.randn(4, 10, generator=torch.Generator().manual_seed(1))
    assert losses.symmetric_kl(a, a).item() == 0.0
    assert losses.symmetric_kl(a, b).item() > 0
    torch.testing.assert_close(losses.symmetric_kl(a, b), losses.symmetric_kl(b, a))
    pa, pb = a.softmax(-1), b.softmax(-1)
    manual = 0.5 * ((pa * (pa / pb).log()).sum(-1) + (pb * (pb / pa).log()).sum(-1)).mean()
    torch.testing.assert_close(losses.symmetric_kl(a, b), manual)

    # Inside the task: without dropout the two passes agree, so the term is 0; with dropout it is not.
    _, parts = make_task("train.rdrop_alpha=1")(random_batch())
    assert parts["loss_rdrop"].item() == pytest.approx(0.0, abs=1e-6)
    cfg = tiny_config("train.rdrop_alpha=1", "model.dropout=0.3")
    task = ClassificationTask(tiny_model(cfg), cfg.train, CPU).train()
    assert task(random_batch())[1]["loss_rdrop"].item() > 0


def test_multi_sample_dropout_averages_k_samples_in_training_only():
    cfg = tiny_config("model.dropout=0.5", "train.multi_dropout=4")
    task = ClassificationTask(tiny_model(cfg), cfg.train, CPU)
    model = task.model
    features = torch.randn(3, model.classifier[1].in_features)
    model.train()
    torch.manual_seed(7)
    got = model._head(model.classifier, features)
    torch.manual_seed(7)
    manual = torch.stack([model.classifier(features) for _ in range(4)]).mean(0)
    torch.testing.assert_close(got, manual)
    model.eval()
    torch.testing.assert_close(model._head(model.classifier, features), model.classifier(features))


def test_swa_average_equals_the_mean_of_the_snapshots_and_is_what_is_evaluated():
    task = make_task("train.swa_start_epoch=2", "train.epochs=4")
    model = task.model
    snapshots = []
    for epoch in range(1, 5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        task.after_epoch(epoch)
        if epoch >= 2:
            snapshots.append({k: v.detach().clone() for k, v in model.named_parameters()})
        assert (task.eval_model is task.swa.module) == (epoch >= 2)
    assert task.swa.count == 3
    averaged = dict(task.swa.module.named_parameters())
    for name, _ in model.named_parameters():
        mean = torch.stack([s[name] for s in snapshots]).mean(0)
        torch.testing.assert_close(averaged[name], mean, rtol=1e-5, atol=1e-6)
    # The state dict (what the checkpoint holds) restores the average and its count.
    restored = WeightAverage(model)
    restored.load_state_dict(task.swa.state_dict())
    assert restored.count == 3
    assert all(torch.equal(a, b) for a, b in zip(restored.parameters(), task.swa.parameters()))


# ------------------------------------------------------------------------------------------- extra losses
def test_lv1_and_soft_f1_terms():
    categories = official_categories()
    matrix = torch.as_tensor(categories.lv2_to_lv1_matrix())
    logits = torch.randn(5, 200, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 5, 50, 120, 199])
    lv1_labels = torch.tensor([categories.lv1_of_lv2[i] for i in labels.tolist()])
    expected = -lv1_probs(logits, categories)[torch.arange(5), lv1_labels].log()
    torch.testing.assert_close(losses.lv1_nll(logits, labels, matrix), expected)

    confident = torch.full((5, 200), -30.0)
    confident[torch.arange(5), labels] = 30.0
    assert losses.soft_f1_loss(confident, labels).item() == pytest.approx(0.0, abs=1e-6)
    uniform = torch.zeros(5, 200)  # p = 1/200 everywhere: tp = 1/200, fp = 4/200, fn = 199/200 per class
    f1 = 2 * (1 / 200) / (2 / 200 + 4 / 200 + 199 / 200)
    assert losses.soft_f1_loss(uniform, labels).item() == pytest.approx(1 - f1, rel=1e-5)

    task = make_task("train.lv1_loss_weight=0.5", "train.soft_f1_weight=0.5")
    loss, parts = task(random_batch())
    assert {"loss_lv1", "loss_soft_f1"} <= parts.keys()
    expected_total = parts["loss_fused"] + 0.5 * parts["loss_video"] + 0.5 * parts["loss_lv1"]
    torch.testing.assert_close(loss.detach(), expected_total + 0.5 * parts["loss_soft_f1"])


def test_lv1_loss_weight_null_is_the_taxonomys_default():
    """Null gives 0.5 where level-1 groups hold several classes, 0 on a flat taxonomy; a number is kept."""
    grouped = official_categories().lv2_to_lv1_matrix()
    flat = np.eye(6, dtype=np.float32)
    assert resolve_lv1_loss_weight(None, grouped) == DEFAULT_LV1_LOSS_WEIGHT == 0.5
    assert resolve_lv1_loss_weight(None, flat) == 0.0
    assert resolve_lv1_loss_weight(None, None) == 0.0
    assert resolve_lv1_loss_weight(0.0, grouped) == 0.0
    assert resolve_lv1_loss_weight(0.3, flat) == 0.3
    default, off = make_task(), make_task("train.lv1_loss_weight=0")
    assert default.lv1_loss_weight == 0.5 and off.lv1_loss_weight == 0.0
    assert "loss_lv1" in default(random_batch())[1] and "loss_lv1" not in off(random_batch())[1]
