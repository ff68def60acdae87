"""The end-of-run report of a training run: ``RUN_DIR/curves.png`` and ``RUN_DIR/summary.md``.

Built from the files the run already wrote (``metrics.csv``, ``data_errors.json``, ``config.yaml``), so a
report can also be rebuilt for an old run. ``curves.png`` shows the training losses, the learning rates and
the validation scores by step; ``summary.md`` says how this run's config differs from its closest packaged
preset, which epoch was best, its scores, the wall time and the data problems.
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from importlib import resources
from pathlib import Path
from typing import Any

from mmcls.config import Config, ConfigError, flatten
from mmcls.engine.tau import read_tau_record
from mmcls.files import atomic_write_bytes, atomic_write_text
from mmcls.names import BEST_DIR, LOGIT_ADJUST_FILE

WEAKEST_CLASSES = 10  # rows of summary.md's weakest-classes table


def write_run_report(run_dir: str | Path, cfg: Config, result: Any, seconds: float) -> None:
    """Write ``curves.png`` and ``summary.md`` for a finished run (``result``: the trainer's TrainResult)."""
    run_dir = Path(run_dir)
    series = read_metrics(run_dir / "metrics.csv")
    atomic_write_bytes(run_dir / "curves.png", plot_curves(series))
    atomic_write_text(run_dir / "summary.md", summary_markdown(run_dir, cfg, result, seconds))


def read_metrics(path: Path) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` from the long-format ``metrics.csv`` (missing file: empty)."""
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    if not path.is_file():
        return {}
    with path.open(encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            try:
                series[row["tag"]].append((int(row["step"]), float(row["value"])))
            except (KeyError, TypeError, ValueError):
                continue  # a line cut by a kill: the rest of the file still plots
    return dict(series)


#: The validation scores plotted: single-label (mean_f1 and its parts) and multilabel (data.task=multilabel).
VALIDATION_CURVES = (
    "val/mean_f1",
    "val/lv2_macro_f1",
    "val/lv1_macro_f1",
    "val/gap_at_20",
    "val/map",
    "val/micro_f1",
)


def plot_curves(series: dict[str, list[tuple[int, float]]]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("training losses", [t for t in series if t.startswith("train/") and "/lr/" not in t]),
        ("learning rates", [t for t in series if t.startswith("train/lr/")]),
        ("validation", [t for t in series if t in VALIDATION_CURVES]),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, (title, tags) in zip(axes, panels):
        for tag in tags:
            steps, values = zip(*series[tag])
            ax.plot(steps, values, marker="o" if len(steps) < 30 else None, label=tag.split("/", 1)[1])
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if tags:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def closest_preset(cfg: Config) -> tuple[str, dict[str, tuple[Any, Any]]]:
    """The packaged preset with the fewest differing settings, and the differences ``{key: (preset, run)}``."""
    run = flatten(cfg.to_dict())
    best: tuple[str, dict[str, tuple[Any, Any]]] | None = None
    for item in sorted(resources.files("mmcls.configs").iterdir(), key=lambda p: p.name):
        if not item.name.endswith(".yaml"):
            continue
        try:
            preset = flatten(
                type(cfg).from_yaml(Path(str(item))).to_dict()
            )  # a pretraining run: its own class
        except ConfigError:
            continue
        diff = {
            k: (preset.get(k), run.get(k))
            for k in sorted(set(run) | set(preset))
            if preset.get(k) != run.get(k)
        }
        if best is None or len(diff) < len(best[1]):
            best = (item.name[: -len(".yaml")], diff)
    return best or ("(none)", {})


def summary_markdown(run_dir: Path, cfg: Config, result: Any, seconds: float) -> str:
    preset, diff = closest_preset(cfg)
    lines = [f"# Training run `{run_dir.name}`", ""]
    lines += [f"- wall time: {seconds / 60:.1f} min ({seconds:.0f} s), {result.global_step} optimizer steps"]
    if result.best_epoch is not None:
        score = f"validation {result.selection_metric} {result.best_score:.4f}"
        lines += [f"- best epoch: {result.best_epoch} ({score}), model in `best/`"]
    else:
        lines += ["- no validation split (data.val_fraction=0): `best/` is the last epoch"]
    lines += _logit_adjust_line(run_dir / BEST_DIR)
    lines += ["", f"## Config: differences from the preset `{preset}`", ""]
    if diff:
        lines += ["| setting | preset | this run |", "|---|---|---|"]
        lines += [f"| `{k}` | {_md(a)} | {_md(b)} |" for k, (a, b) in diff.items()]
    else:
        lines += ["(none: the preset as it is)"]
    lines += ["", "## Last validation metrics", ""]
    if result.last_metrics:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_md(v)} |" for k, v in result.last_metrics.items()]
    else:
        lines += ["(no validation)"]
    lines += _weakest_classes(getattr(result, "class_scores", None))
    lines += _data_phases(getattr(result, "data_phases", None))
    lines += ["", "## Data problems", "", _data_errors(run_dir / "data_errors.json"), ""]
    lines += ["Curves: `curves.png`; every logged value: `metrics.csv`.", ""]
    return "\n".join(lines)


def _logit_adjust_line(model_dir: Path) -> list[str]:
    """The TAU ``best/`` chose on validation and the grid's scores (nothing for a folder without them)."""
    record = read_tau_record(model_dir)
    if record is None:
        return []
    grid = ", ".join(f"{row['tau']:g}: {row['mean_f1']:.4f}" for row in record.get("grid", []))
    return [
        f"- logit adjustment: TAU {record['tau']:g} chosen by {record.get('chosen_by', 'validation')} "
        f"(`{BEST_DIR}/{LOGIT_ADJUST_FILE}`, applied by `mmcls predict --logit-adjust auto`, the default); "
        f"grid mean_f1: {grid}"
    ]


def _weakest_classes(rows: list[dict[str, Any]] | None, count: int = WEAKEST_CLASSES) -> list[str]:
    """The classes of the validation split with the lowest F1 (then the most samples), by id and name."""
    present = [r for r in rows or [] if r["support"] > 0]
    if not present:
        return []
    weakest = sorted(present, key=lambda r: (r["f1"], -r["support"]))[:count]
    lines = ["", f"## Weakest classes (last validation, {len(weakest)} of {len(present)})", ""]
    lines += ["| class | name | samples | precision | recall | F1 |", "|---|---|---|---|---|---|"]
    lines += [
        f"| `{r['category_id']}` | {_md_text(r['name'])} | {r['support']} | {r['precision']:.3f} | "
        f"{r['recall']:.3f} | {r['f1']:.3f} |"
        for r in weakest
    ]
    return lines


def _data_phases(phases: list[dict[str, int]] | None) -> list[str]:
    """``data.switch``: which epochs trained on how many records (nothing when the run never switched)."""
    if not phases:
        return []
    lines = ["", "## Training data phases (data.switch)", "", "| epochs | records | samples trained |"]
    lines += ["|---|---|---|"]
    lines += [f"| {p['first_epoch']}-{p['last_epoch']} | {p['records']} | {p['samples']} |" for p in phases]
    return lines


def _md_text(text: str) -> str:
    return text.replace("|", "\\|")


def _data_errors(path: Path) -> str:
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "(no report)"
    parts = []
    for split, values in report.items():
        total = values.get("total", values) if isinstance(values, dict) else values
        parts.append(f"- {split}: " + (", ".join(f"{k}: {v}" for k, v in total.items()) if total else "none"))
    return "\n".join(parts) or "none"


def _md(value: Any) -> str:
    text = f"{value:.6g}" if isinstance(value, float) else json.dumps(value, ensure_ascii=False)
    return text.replace("|", "\\|")
