"""Ablation of the training recipe (docs/recipe.md): one row per technique against the plain baseline.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/recipe_ablation.py --data-root DATA --out OUT \
        [--epochs 4] [--seeds 42] [--rows baseline,pgd,...] [--table]

Every row is ``mmcls train tiny`` with the same data, seed and budget plus the row's ``--set`` options (the
exact command is printed and stored), then ``mmcls predict`` of its best model on the test split and the
challenge score against ``annotations/test_labels.json``. The rows run one after another in this one process
(``mmcls.cli.main`` with the command's arguments): on a shared 2-core machine the ~1 min of imports per
process would otherwise cost more than some of the runs. Results are appended to ``OUT/results.jsonl`` as
each row finishes; ``--table`` prints the Markdown table of what is there (mean over seeds).
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from pathlib import Path

from mmcls.names import BEST_DIR, WEIGHTS_FILE

# Row name -> (training --set options, predict --logit-adjust TAU). The baseline is the tiny preset as is.
ROWS: dict[str, tuple[list[str], float]] = {
    "baseline": ([], 0.0),
    "logit_adjust_1.0": ([], 1.0),  # the baseline's model, predicted with --logit-adjust 1.0
    "layer_decay_0.8": (["train.layer_decay=0.8"], 0.0),
    "fgm": (["train.adversarial.method=fgm", "train.adversarial.epsilon=1.0"], 0.0),
    "pgd": (
        ["train.adversarial.method=pgd", "train.adversarial.steps=2", "train.adversarial.alpha=0.5"],
        0.0,
    ),
    "class_weight_0.5": (["train.class_weight_alpha=0.5"], 0.0),
    "multi_dropout_4": (["train.multi_dropout=4"], 0.0),
    "rdrop_1.0": (["train.rdrop_alpha=1.0"], 0.0),
    "swa_from_3": (["train.swa_start_epoch=3"], 0.0),
    "cosine_restarts_2": (["train.schedule=cosine_restarts", "train.restart_epochs=2"], 0.0),
    "linear": (["train.schedule=linear"], 0.0),
    "lv1_loss_0.5": (["train.lv1_loss_weight=0.5"], 0.0),
    "soft_f1_0.5": (["train.soft_f1_weight=0.5"], 0.0),
}
COMMON = ["train.progress_bar=false", "train.tensorboard=false"]


def train_argv(data_root: Path, run_dir: Path, epochs: int, seed: int, settings: list[str]) -> list[str]:
    argv = ["train", "tiny", "--data-root", str(data_root), "--out", str(run_dir)]
    for item in [f"train.epochs={epochs}", f"train.seed={seed}", *COMMON, *settings]:
        argv += ["--set", item]
    return argv


def test_scores(run_dir: Path, data_root: Path, tau: float) -> dict[str, float]:
    from mmcls.data.annotations import load_labels
    from mmcls.inference.predict import predict_split
    from mmcls.metrics import compute_scores

    ids, _, predicted = predict_split(run_dir, data_root, "test", progress=False, logit_adjust=tau)
    truth = load_labels(data_root / "annotations" / "test_labels.json")
    return compute_scores([truth[i] for i in ids], predicted)


def run_row(name: str, data_root: Path, out: Path, epochs: int, seed: int) -> dict:
    from mmcls.cli import main

    settings, tau = ROWS[name]
    base_name = "baseline" if name.startswith("logit_adjust") else name
    run_dir = out / f"{base_name}-seed{seed}"
    argv = train_argv(data_root, run_dir, epochs, seed, settings)
    start = time.time()
    if not (run_dir / BEST_DIR / WEIGHTS_FILE).is_file():  # the logit-adjust row reuses the baseline
        code = main(argv)
        if code != 0:
            raise SystemExit(f"{name}: mmcls {shlex.join(argv)} exited {code}")
    seconds = time.time() - start
    command = "mmcls " + shlex.join(argv)
    command += f" && mmcls predict {run_dir} --data-root {data_root} --split test --out {run_dir}/test.csv"
    if tau:
        command += f" --logit-adjust {tau}"
    return {
        "row": name,
        "seed": seed,
        "epochs": epochs,
        "train_seconds": round(seconds, 1),
        "command": command,
        **test_scores(run_dir, data_root, tau),
    }


def markdown_table(results: list[dict]) -> str:
    by_row: dict[str, list[dict]] = {}
    for result in results:
        by_row.setdefault(result["row"], []).append(result)
    base = by_row.get("baseline")
    base_mean = sum(r["mean_f1"] for r in base) / len(base) if base else None
    lines = [
        "| row | seeds | test mean_f1 | Δ vs baseline | test lv2 macro F1 | lv1 macro F1 | train s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in ROWS:
        rows = by_row.get(name)
        if not rows:
            continue

        def mean(key: str, rows: list[dict] = rows) -> float:
            return sum(r[key] for r in rows) / len(rows)

        delta = f"{mean('mean_f1') - base_mean:+.4f}" if base_mean is not None and name != "baseline" else ""
        lines.append(
            f"| {name} | {len(rows)} | {mean('mean_f1'):.4f} | {delta} | {mean('lv2_macro_f1'):.4f} | "
            f"{mean('lv1_macro_f1'):.4f} | {mean('train_seconds'):.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seeds", default="42", help="comma-separated training seeds")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated rows of {list(ROWS)}")
    parser.add_argument("--table", action="store_true", help="only print the table of OUT/results.jsonl")
    args = parser.parse_args()
    results_path = args.out / "results.jsonl"
    if not args.table:
        args.out.mkdir(parents=True, exist_ok=True)
        done = set()
        if results_path.is_file():
            done = {(r["row"], r["seed"]) for r in map(json.loads, results_path.read_text().splitlines())}
        for seed in [int(s) for s in args.seeds.split(",")]:
            for name in args.rows.split(","):
                if (name, seed) in done:
                    continue
                result = run_row(name, args.data_root, args.out, args.epochs, seed)
                with results_path.open("a") as handle:
                    handle.write(json.dumps(result) + "\n")
                print(json.dumps(result), flush=True)
    results = [json.loads(line) for line in results_path.read_text().splitlines()]
    print(markdown_table(results))


if __name__ == "__main__":
    main()
