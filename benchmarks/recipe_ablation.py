"""Ablation of the training recipe (docs/recipe.md): one row per technique against the plain baseline.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/recipe_ablation.py --data-root DATA --out OUT \
        [--epochs 4] [--seeds 42,43,44] [--rows baseline,pgd,...] [--set KEY=VALUE ...] [--table]
    .venv/bin/python benchmarks/recipe_ablation.py --write-top-classes 40 --out DIR   # writes DIR/top40.csv

Every row is ``mmcls train tiny`` with the same data, seed and budget plus the row's ``--set`` options (and
every ``--set`` given here; the exact command is printed and stored), then ``mmcls predict`` of its best model
on the test split and the challenge score against ``annotations/test_labels.json``. The baseline is predicted
with the plain argmax (``--logit-adjust 0``); the ``logit_adjust_*`` rows predict the baseline's model again
(``auto``: the TAU the run chose on validation), and a ``ROW+auto`` row predicts ROW's models so. The rows
run one after another in this one process (``mmcls.cli.main`` with the command's arguments): on a shared
2-core machine the ~1 min of imports per process would otherwise cost more than some of the runs. Results are appended to ``OUT/results.jsonl`` as
each row finishes (a second start skips what is there); ``--table`` prints the Markdown table of what is there:
mean and sample standard deviation over the seeds, and the change against the baseline of the same seed.

``--write-top-classes N`` writes the packaged taxonomy cut to its N most frequent classes (with their parents
and real ``labeled_count``), for ``mmcls make-data --categories`` and ``--set data.categories=``: a task the
tiny model learns within a CPU budget (docs/recipe.md has the 3-seed run of issue 22).
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import statistics
import time
from pathlib import Path

from mmcls.names import BEST_DIR, WEIGHTS_FILE

# Row name -> (training --set options, predict --logit-adjust TAU). The baseline is the tiny preset as is.
ROWS: dict[str, tuple[list[str], float | str]] = {
    "baseline": ([], 0.0),
    "logit_adjust_auto": ([], "auto"),  # the baseline's model with the TAU chosen on validation
    "logit_adjust_1.0": ([], 1.0),
    "layer_decay_0.8": (["train.layer_decay=0.8"], 0.0),
    "layer_decay_0.9": (["train.layer_decay=0.9"], 0.0),  # the base preset's value
    # The adversarial defaults: since issue 22 epsilon (1.0) and alpha (0.3) are relative to the rows' norm.
    "fgm": (["train.adversarial.method=fgm"], 0.0),
    "pgd": (["train.adversarial.method=pgd"], 0.0),
    # A smaller relative radius (issue 22's second round): PGD's 3 steps of alpha still reach the ball's edge.
    # Almost no perturbation: what FGM's extra forward/backward alone does (a control, not a recommendation).
    "fgm_eps0.01": (["train.adversarial.method=fgm", "train.adversarial.epsilon=0.01"], 0.0),
    "fgm_eps0.3": (["train.adversarial.method=fgm", "train.adversarial.epsilon=0.3"], 0.0),
    "pgd_eps0.3": (
        ["train.adversarial.method=pgd", "train.adversarial.epsilon=0.3", "train.adversarial.alpha=0.1"],
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
# "ROW+auto": ROW's models predicted again with the TAU they chose on validation (does ROW add to it?).
ROWS.update(
    {f"{name}+auto": (ROWS[name][0], "auto") for name in ("class_weight_0.5", "lv1_loss_0.5", "fgm", "pgd")}
)
COMMON = ["train.progress_bar=false", "train.tensorboard=false"]


def train_argv(
    data_root: Path, run_dir: Path, epochs: int, seed: int, settings: list[str], extra: list[str]
) -> list[str]:
    argv = ["train", "tiny", "--data-root", str(data_root), "--out", str(run_dir)]
    for item in [f"train.epochs={epochs}", f"train.seed={seed}", *COMMON, *extra, *settings]:
        argv += ["--set", item]
    return argv


def test_scores(run_dir: Path, data_root: Path, tau: float | str) -> dict[str, float]:
    """The challenge scores of ``run_dir``'s best model on the test split, and the TAU it was predicted with."""
    from mmcls.data.annotations import load_labels
    from mmcls.engine.tau import saved_tau
    from mmcls.inference.predict import predict_split
    from mmcls.metrics import compute_scores

    ids, _, predicted = predict_split(run_dir, data_root, "test", progress=False, logit_adjust=tau)
    truth = load_labels(data_root / "annotations" / "test_labels.json")
    used = saved_tau(run_dir / BEST_DIR) if tau == "auto" else float(tau)
    return {**compute_scores([truth[i] for i in ids], predicted), "tau": used}


def run_row(name: str, data_root: Path, out: Path, epochs: int, seed: int, extra: list[str]) -> dict:
    from mmcls.cli import main

    settings, tau = ROWS[name]
    base_name = "baseline" if name.startswith("logit_adjust") else name.split("+")[0]
    run_dir = out / f"{base_name}-seed{seed}"
    argv = train_argv(data_root, run_dir, epochs, seed, settings, extra)
    start = time.time()
    if not (run_dir / BEST_DIR / WEIGHTS_FILE).is_file():  # logit_adjust_* and ROW+auto rows reuse a run
        code = main(argv)
        if code != 0:
            raise SystemExit(f"{name}: mmcls {shlex.join(argv)} exited {code}")
    seconds = time.time() - start
    command = "mmcls " + shlex.join(argv)
    command += f" && mmcls predict {run_dir} --data-root {data_root} --split test --out {run_dir}/test.csv"
    command += f" --logit-adjust {tau}"
    return {
        "row": name,
        "seed": seed,
        "epochs": epochs,
        "train_seconds": round(seconds, 1),
        "command": command,
        **test_scores(run_dir, data_root, tau),
    }


def spread(values: list[float]) -> float:
    """The sample standard deviation (0 for a single value)."""
    return statistics.stdev(values) if len(values) > 1 else 0.0


def markdown_table(results: list[dict]) -> str:
    """One line per row: test mean_f1 mean ± sd over seeds, the change against the same seed's baseline (mean ±
    sd, and in how many seeds it was positive), macro F1s, the TAUs used, training seconds."""
    by_row: dict[str, list[dict]] = {}
    for result in results:
        by_row.setdefault(result["row"], []).append(result)
    base_by_seed = {r["seed"]: r["mean_f1"] for r in by_row.get("baseline", [])}
    lines = [
        "| row | seeds | test mean_f1 | Δ vs baseline (same seed) | better in | test lv2 macro F1 | "
        "lv1 macro F1 | TAU | train s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in ROWS:
        rows = by_row.get(name)
        if not rows:
            continue
        scores = [r["mean_f1"] for r in rows]
        deltas = [r["mean_f1"] - base_by_seed[r["seed"]] for r in rows if r["seed"] in base_by_seed]
        delta = better = ""
        if name != "baseline" and deltas:
            delta = f"{statistics.mean(deltas):+.4f} ± {spread(deltas):.4f}"
            better = f"{sum(d > 0 for d in deltas)}/{len(deltas)}"
        lv2 = statistics.mean(r["lv2_macro_f1"] for r in rows)
        lv1 = statistics.mean(r["lv1_macro_f1"] for r in rows)
        taus = ", ".join(f"{r.get('tau', 0.0):g}" for r in rows)
        seconds = statistics.mean(r["train_seconds"] for r in rows)
        lines.append(
            f"| {name} | {len(rows)} | {statistics.mean(scores):.4f} ± {spread(scores):.4f} | {delta} | "
            f"{better} | {lv2:.4f} | {lv1:.4f} | {taus} | {seconds:.0f} |"
        )
    return "\n".join(lines)


def write_top_classes(count: int, path: Path) -> None:
    """The packaged taxonomy cut to its ``count`` most frequent classes (ties: file order) and their parents."""
    from importlib import resources

    from mmcls.data.categories import PACKAGED_FILE

    text = resources.files("mmcls.assets").joinpath(PACKAGED_FILE).read_text(encoding="utf-8")
    rows = list(csv.DictReader(text.splitlines()))
    leaves = [r for r in rows if r["parent"]]
    kept = {r["id"] for r in sorted(leaves, key=lambda r: -int(r["labeled_count"]))[:count]}
    parents = {r["parent"] for r in leaves if r["id"] in kept}
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(r for r in rows if not r["parent"] and r["id"] in parents)
        writer.writerows(r for r in leaves if r["id"] in kept)
    print(f"wrote {path}: {count} classes under {len(parents)} parents")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-root", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seeds", default="42", help="comma-separated training seeds")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated rows of {list(ROWS)}")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a setting for every row's training"
    )
    parser.add_argument("--table", action="store_true", help="only print the table of OUT/results.jsonl")
    parser.add_argument("--write-top-classes", type=int, metavar="N", help="only write OUT/topN.csv")
    args = parser.parse_args()
    if args.write_top_classes:
        write_top_classes(args.write_top_classes, args.out / f"top{args.write_top_classes}.csv")
        return
    unknown = [name for name in args.rows.split(",") if name not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {list(ROWS)}")
    results_path = args.out / "results.jsonl"
    if not args.table:
        if args.data_root is None:
            parser.error("--data-root is required to run rows")
        args.out.mkdir(parents=True, exist_ok=True)
        done = set()
        if results_path.is_file():
            done = {(r["row"], r["seed"]) for r in map(json.loads, results_path.read_text().splitlines())}
        for seed in [int(s) for s in args.seeds.split(",")]:
            for name in args.rows.split(","):
                if (name, seed) in done:
                    continue
                result = run_row(name, args.data_root, args.out, args.epochs, seed, args.set)
                with results_path.open("a") as handle:
                    handle.write(json.dumps(result) + "\n")
                print(json.dumps(result), flush=True)
    results = [json.loads(line) for line in results_path.read_text().splitlines()]
    print(markdown_table(results))


if __name__ == "__main__":
    main()
