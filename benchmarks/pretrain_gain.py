"""Does pretraining on unlabeled videos help fine-tuning? Fine-tuned test mean_f1 with and without it.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/pretrain_gain.py --data-root DATA --out OUT \
        [--seeds 0] [--ablations] [--pretrain-epochs 2] [--finetune-epochs 10] [--frames zip_feats]

DATA: ``mmcls make-data DATA --num-labeled 300 --num-unlabeled 6000 --num-test 600 --num-frames 4
--image-size 32`` (many unlabeled, few labeled videos). For every seed: fine-tune ``tiny`` from scratch, and
from a ``pretrain-tiny`` run (all four objectives; with ``--ablations`` also one run without each objective
and one with MLM only), with the same fine-tuning budget (epochs, batch, LR; no validation hold-out, the last
epoch is scored), then ``mmcls predict`` + ``mmcls evaluate`` on the 600 test videos. Every step is a real
``mmcls`` process; results go to ``OUT/results.json`` and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from mmcls.names import LAST_DIR, WEIGHTS_FILE

OBJECTIVES = ("mlm", "mfm", "vtm", "itc")
COMMON = ["train.progress_bar=false", "train.tensorboard=false", "data.num_workers=1"]


def frame_settings(source: str) -> list[str]:
    if source == "zip_feats":  # the synthetic features: 768-d code prototypes + noise; no image backbone
        return [
            "data.frames.source=zip_feats",
            "data.frames.feature_dim=768",
            "model.frame_encoder.type=identity",
        ]
    return []


def mmcls(*args: str) -> tuple[str, float, float]:
    """Run ``python -m mmcls ARGS``; its stdout, wall seconds and the child's peak RSS in MiB (so far)."""
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "mmcls", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"mmcls {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return proc.stdout, time.time() - start, peak


def with_sets(args: list[str], settings: list[str]) -> list[str]:
    for item in settings:
        args += ["--set", item]
    return args


def pretrain(
    data_root: Path, out: Path, seed: int, weights: dict[str, float], frames: list[str], epochs: int
):
    if (out / LAST_DIR / WEIGHTS_FILE).is_file():
        return json.loads((out / "summary.json").read_text())
    settings = [*COMMON, *frames, f"train.seed={seed}", f"train.epochs={epochs}"]
    settings += [f"pretrain.{name}_weight={w}" for name, w in weights.items()]
    stdout, seconds, peak = mmcls(
        *with_sets(["pretrain", "pretrain-tiny", "--data-root", str(data_root), "--out", str(out)], settings)
    )
    summary = json.loads(stdout[stdout.index("{") :])
    summary.update(seconds=round(seconds, 1), peak_rss_mib=round(peak))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def finetune(
    data_root: Path, out: Path, seed: int, init_from: Path | None, frames: list[str], epochs: int
) -> dict:
    if (out / "scores.json").is_file():
        return json.loads((out / "scores.json").read_text())
    settings = [*COMMON, *frames, f"train.seed={seed}", f"train.epochs={epochs}", "data.val_fraction=0"]
    if init_from is not None:
        settings.append(f"model.init_from={init_from}")
    _, seconds, _ = mmcls(
        *with_sets(["train", "tiny", "--data-root", str(data_root), "--out", str(out)], settings)
    )
    pred = out / "test_pred.csv"
    mmcls("predict", str(out), "--data-root", str(data_root), "--split", "test", "--out", str(pred))
    stdout, _, _ = mmcls(
        "evaluate", "--pred", str(pred), "--ann", str(data_root / "annotations" / "test_labels.json")
    )
    scores = json.loads(stdout)
    scores["finetune_seconds"] = round(seconds, 1)
    (out / "scores.json").write_text(json.dumps(scores, indent=2))
    return scores


def variants(ablations: bool) -> dict[str, dict[str, float] | None]:
    runs: dict[str, dict[str, float] | None] = {
        "no pretraining": None,
        "pretrained (all four)": dict.fromkeys(OBJECTIVES, 1.0),
    }
    if ablations:
        for name in OBJECTIVES:
            runs[f"without {name.upper()}"] = {o: (0.0 if o == name else 1.0) for o in OBJECTIVES}
        runs["MLM only"] = {o: (1.0 if o == "mlm" else 0.0) for o in OBJECTIVES}
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--ablations", action="store_true")
    parser.add_argument(
        "--only", nargs="+", default=None, help="run only these variants (names as in the table)"
    )
    parser.add_argument("--pretrain-epochs", type=int, default=2)
    parser.add_argument("--finetune-epochs", type=int, default=10)
    parser.add_argument("--frames", choices=("zip_feats", "zip_frames"), default="zip_feats")
    args = parser.parse_args()
    frames = frame_settings(args.frames)
    results: dict[str, list[dict]] = {}
    for seed in args.seeds:
        for name, weights in variants(args.ablations).items():
            if args.only and name not in args.only:
                continue
            tag = name.replace(" ", "_").replace("(", "").replace(")", "")
            init_from, pre = None, None
            if weights is not None:
                init_from = args.out / f"pre_{tag}_s{seed}"
                pre = pretrain(args.data_root, init_from, seed, weights, frames, args.pretrain_epochs)
            scores = finetune(
                args.data_root, args.out / f"ft_{tag}_s{seed}", seed, init_from, frames, args.finetune_epochs
            )
            results.setdefault(name, []).append({"seed": seed, "test": scores, "pretrain": pre})
            print(f"seed {seed} {name}: mean_f1 {scores['mean_f1']:.4f}", flush=True)
    (args.out / f"results{'_' + '_'.join(args.only) if args.only else ''}.json").write_text(
        json.dumps(results, indent=2)
    )
    print("\n| run | seeds | test mean_f1 | lv1 macro F1 | lv2 macro F1 | pretrain val loss | pretrain s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, rows in results.items():

        def mean(key: str, rows: list[dict] = rows) -> float:
            return sum(r["test"][key] for r in rows) / len(rows)

        pre = [r["pretrain"] for r in rows if r["pretrain"]]
        loss = f"{sum(p['best_val_loss'] for p in pre) / len(pre):.3f}" if pre else "-"
        secs = f"{sum(p['seconds'] for p in pre) / len(pre):.0f}" if pre else "-"
        print(
            f"| {name} | {len(rows)} | {mean('mean_f1'):.4f} | {mean('lv1_macro_f1'):.4f} | {mean('lv2_macro_f1'):.4f} | {loss} | {secs} |"
        )


if __name__ == "__main__":
    main()
