"""``mmcls demo``: the whole pipeline on a CPU in a few minutes.

synthetic data (official layout) -> train the ``tiny`` preset -> predict the test split -> score it against
``test_labels.json``, printed as a table. ``--ablations`` also trains text-only and frames-only models on the
same data, which shows that the synthetic signal is split between the modalities and that fusion wins.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from mmcls import names
from mmcls.cli.options import non_negative_int, positive_int

VARIANTS: dict[str, list[str]] = {
    "fusion": [],
    # No frames at all: the video-only auxiliary head has nothing to learn from.
    "text_only": ["data.frames.source=none", "train.aux_loss_weight=0"],
    "frames_only": ["data.text.fields=[]"],
}
SCORE_KEYS = ("lv1_micro_f1", "lv1_macro_f1", "lv2_micro_f1", "lv2_macro_f1", "mean_f1")


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "demo",
        help="synthetic data -> train tiny on the CPU -> predict -> evaluate",
        epilog="example: mmcls demo --out demo_runs --ablations",
    )
    p.add_argument("--out", type=Path, default=Path("demo_runs"), help="folder for data and runs")
    p.add_argument("--ablations", action="store_true", help="also train text-only and frames-only models")
    p.add_argument("--num-labeled", type=positive_int, default=3000, help="labeled synthetic videos")
    p.add_argument("--num-test", type=positive_int, default=600, help="test synthetic videos")
    p.add_argument("--epochs", type=positive_int, default=None, help="override the tiny preset's epochs")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the data and the training")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="use an --out folder that the demo did not create (only the demo's own outputs are replaced)",
    )
    return p


def run(args: argparse.Namespace) -> int:
    run_demo(
        args.out,
        ablations=args.ablations,
        num_labeled=args.num_labeled,
        num_test=args.num_test,
        epochs=args.epochs,
        seed=args.seed,
        overwrite=args.overwrite,
    )
    return 0


def run_demo(
    out: str | Path,
    *,
    ablations: bool = False,
    num_labeled: int = 3000,
    num_test: int = 600,
    epochs: int | None = None,
    seed: int = 0,
    overwrite: bool = False,
) -> dict[str, dict[str, float]]:
    """Run the demo under ``out`` (data in ``out/data``, one run directory per variant); returns the scores.

    ``out`` must be new, empty or an earlier demo's folder (``overwrite`` allows any folder). Re-running the demo
    replaces its own outputs only: files a user put into ``out`` or its run folders stay.
    """
    from mmcls.data.synthetic import make_synthetic_dataset
    from mmcls.files import DEMO_MARKER, atomic_write_json, claim_output_dir

    out = Path(out)
    data_root = out / "data"
    started = time.time()
    claim_output_dir(out, DEMO_MARKER, overwrite=overwrite, command="demo")
    if not (data_root / names.ANNOTATIONS_DIR / names.TEST_LABELS_FILE).exists():
        print(f"[demo] writing synthetic data to {data_root}")
        make_synthetic_dataset(data_root, num_labeled, 200, num_test, seed=seed)
    variants = list(VARIANTS) if ablations else ["fusion"]
    results: dict[str, dict[str, float]] = {}
    for name in variants:
        results[name] = _run_variant(name, data_root, out / name, epochs, seed)
    results_path = out / "results.json"
    atomic_write_json(results_path, results)
    _print_table(results)
    print(f"[demo] total wall time {time.time() - started:.0f} s; scores in {results_path}")
    return results


def _run_variant(
    name: str, data_root: Path, run_dir: Path, epochs: int | None, seed: int
) -> dict[str, float]:
    from mmcls.config import Config
    from mmcls.engine.trainer import train
    from mmcls.inference.predict import predict_split, write_submission
    from mmcls.metrics import evaluate_files

    overrides = [*VARIANTS[name], f"train.seed={seed}"]
    if epochs is not None:
        overrides.append(f"train.epochs={epochs}")
    cfg = Config.from_yaml("tiny", overrides)
    start = time.time()
    print(f"[demo] training {name} ({cfg.train.epochs} epochs)")
    # overwrite: a re-run replaces the run's own outputs (never the folder as a whole, nor a user's files in it)
    result = train(cfg, data_root, run_dir, overwrite=True)
    ids, _, category_ids = predict_split(run_dir, data_root, "test", progress=False)
    submission = run_dir / "result.csv"
    write_submission(submission, ids, category_ids)
    scores = evaluate_files(submission, data_root / names.ANNOTATIONS_DIR / names.TEST_LABELS_FILE)
    scores["val_mean_f1"] = result.best_score if result.best_score is not None else float("nan")
    scores["seconds"] = time.time() - start
    return scores


def _print_table(results: dict[str, dict[str, float]]) -> None:
    header = ["model", *SCORE_KEYS, "val_mean_f1", "seconds"]
    print("\n" + " | ".join(f"{h:>13}" for h in header))
    print("-" * (16 * len(header)))
    for name, scores in results.items():
        cells = [f"{name:>13}"] + [f"{scores[k]:13.4f}" for k in (*SCORE_KEYS, "val_mean_f1")]
        print(" | ".join([*cells, f"{scores['seconds']:13.0f}"]))
    print("(test split of the synthetic data; chance level for lv2 macro F1 is about 0.005)\n")
