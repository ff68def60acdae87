"""Side-by-side before/after figures for BENCHMARKS.md: the same measurements on two checkouts, interleaved.

    git worktree add /tmp/perf-before <commit>          # the "before" checkout
    .venv/bin/python benchmarks/before_after.py --before /tmp/perf-before --rounds 3 --out /tmp/before_after.json

Each measurement runs in a fresh process whose ``PYTHONPATH`` puts one checkout's ``mmcls`` first; the timing
code is this checkout's ``mmcls/bench.py``, loaded by file path, so both sides are timed by the same code
through the library's stable entry points. Rounds alternate before/after, and each figure is the median over the
rounds (each round's figure being itself a median of ``--repeats`` runs): on a machine shared with other jobs,
load shifts during a run hit both sides alike.

Data it creates under ``--work`` (reused when present): a synthetic 224 px data root (8 frames per video), a tiny
model folder at 224 px, a 8-video data root for start-up and a random-init ``base`` model folder.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY_224 = ["data.frames.image_size=224", "data.frames.max_frames=8"]
BUILTIN_VOCAB = "data.text.tokenizer=builtin:bert-base-chinese"

# Makes `import mmcls` load the checkout on PYTHONPATH: drop the editable install's import hook (the processes
# also run outside any checkout, since `python -c` puts the working directory first on sys.path).
# The install maps deploy/ and pretrain/ to mmcls.deploy and mmcls.pretrain (pyproject's package-dir); a plain
# checkout gets the same by searching its root for mmcls' sub-packages too.
PRELUDE = textwrap.dedent(
    """
    import sys
    sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
    import os, mmcls
    mmcls.__path__.append(os.path.dirname(os.path.dirname(mmcls.__file__)))
    """
)
MEASURE = PRELUDE + textwrap.dedent(
    """
    import importlib.util, json, time
    start = time.perf_counter()
    spec = importlib.util.spec_from_file_location("bench_impl", sys.argv[1])
    bench = sys.modules["bench_impl"] = importlib.util.module_from_spec(spec); spec.loader.exec_module(bench)
    from pathlib import Path
    import mmcls
    from mmcls.config import Config
    what, arg, root = sys.argv[2], sys.argv[3], sys.argv[4]
    opts = bench.BenchOptions(**json.loads(sys.argv[5]))
    overrides = json.loads(sys.argv[6])
    if what == "load_model_dir":
        from mmcls.models import load_model_dir
        t, c = time.perf_counter(), time.process_time(); load_model_dir(arg)
        result = {"load_model_dir_s": time.perf_counter() - t, "load_model_dir_cpu_s": time.process_time() - c}
    elif what == "infer":
        result = bench.bench_infer(arg, root, opts)
    else:
        from mmcls.engine.trainer import Trainer
        if not hasattr(Trainer, "train_step"):  # a checkout from before the step was public
            Trainer.train_step = Trainer._train_step
        cfg = Config.from_yaml(Path(mmcls.__file__).parents[1] / "configs" / f"{arg}.yaml", overrides)
        result = (bench.bench_data if what == "data" else bench.bench_train)(cfg, root, opts)
    result["mmcls_file"] = mmcls.__file__
    print(json.dumps(result))
    """
)


def measure(tree: Path, what: str, arg: str, root: Path, opts: dict, overrides: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    bench_file = REPO / "mmcls" / "bench.py"
    cmd = [sys.executable, "-c", MEASURE, str(bench_file), what, arg, str(root), json.dumps(opts)]
    out = subprocess.run([*cmd, json.dumps(overrides)], env=env, capture_output=True, text=True, cwd=root)
    if out.returncode:
        raise RuntimeError(f"{what} on {tree} failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(result.pop("mmcls_file")).is_relative_to(tree), f"{tree} did not provide mmcls"
    return result


def predict_times(tree: Path, model: Path, root: Path, out: Path) -> dict[str, float]:
    """Wall and CPU time (user+sys, the process and its workers) of a whole ``mmcls predict`` process:
    imports, model load, loader start-up and 8 videos."""
    import resource
    import time

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    launcher = PRELUDE + "from mmcls.cli import main\nsys.exit(main())"
    cmd = [sys.executable, "-c", launcher, "predict", str(model), "--data-root", str(root), "--split", "test"]
    start, start_cpu = time.perf_counter(), cpu()
    subprocess.run(
        [*cmd, "--out", str(out), "--num-workers", "1"], env=env, check=True, capture_output=True, cwd=root
    )
    return {
        "predict_8_videos_wall_s": time.perf_counter() - start,
        "predict_8_videos_cpu_s": cpu() - start_cpu,
    }


# Writes a model folder; run with the "before" checkout, whose folders both sides can load (a newer config may
# carry keys an older checkout does not know).
SAVE_MODEL = PRELUDE + textwrap.dedent(
    """
    import json
    from pathlib import Path
    import mmcls
    from mmcls.config import Config
    from mmcls.data.categories import official_categories
    from mmcls.data.text import load_tokenizer
    from mmcls.models import build_model, save_model_dir
    out, preset, overrides = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    cfg = Config.from_yaml(Path(mmcls.__file__).parents[1] / "configs" / f"{preset}.yaml", overrides)
    tokenizer = load_tokenizer(cfg.data.text.tokenizer)
    save_model_dir(out, build_model(cfg, vocab_size=len(tokenizer)), cfg, tokenizer, official_categories())
    """
)


def prepare(work: Path, before: Path) -> dict[str, Path]:
    """The data roots and model folders (data made with this checkout, models with the "before" one)."""
    from mmcls.data.synthetic import make_synthetic_dataset

    paths = {
        "data": work / "data224",
        "small": work / "data8",
        "tiny": work / "tiny224",
        "base": work / "base_model",
    }
    if not paths["data"].exists():
        make_synthetic_dataset(paths["data"], 256, 0, 128, seed=0, num_frames=8, image_size=224)
    if not paths["small"].exists():
        make_synthetic_dataset(paths["small"], 8, 0, 8, seed=1, num_frames=8, image_size=224)
    for name, preset, overrides in (
        ("tiny", "tiny", TINY_224),
        ("base", "base", ["model.text_encoder=null", "model.frame_encoder.pretrained=null", BUILTIN_VOCAB]),
    ):
        if not paths[name].exists():
            env = {**os.environ, "PYTHONPATH": str(before.resolve())}
            cmd = [sys.executable, "-c", SAVE_MODEL, str(paths[name]), preset, json.dumps(overrides)]
            subprocess.run(cmd, env=env, check=True, cwd=work)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--before", type=Path, required=True, help="checkout of the starting commit")
    parser.add_argument("--after", type=Path, default=REPO, help="checkout to compare (default: this one)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/mmcls-before-after"), help="data and models")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement and round")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--only", nargs="*", default=None, help="subset of: data infer train load predict")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    paths = prepare(args.work, args.before)
    # CPU time for the one-process and model-alone figures: steadier than wall time on a shared machine.
    common = {"repeats": args.repeats, "warmup": 1, "workers": args.workers, "device": "cpu", "clock": "cpu"}
    plan = {
        "data": ("data", "tiny", paths["data"], {**common, "batch_size": 16, "batches": 4}, TINY_224),
        "infer": (
            "infer",
            str(paths["tiny"]),
            paths["data"],
            {**common, "split": "test", "batch_size": 16},
            [],
        ),
        "train": ("train", "tiny", paths["data"], {**common, "batch_size": 16, "batches": 3}, TINY_224),
        "load": ("load_model_dir", str(paths["base"]), paths["data"], common, []),
    }
    wanted = args.only or [*plan, "predict"]
    rounds: dict[str, dict[str, list[dict]]] = {"before": {}, "after": {}}
    # One measurement kind at a time, before and after alternating, so each kind's pairs are close in time.
    for name in wanted:
        for round_index in range(args.rounds):
            for side, tree in (("before", args.before), ("after", args.after)):
                if name == "predict":
                    result = predict_times(
                        tree, paths["tiny"], paths["small"], args.work / f"pred_{side}.csv"
                    )
                else:
                    result = measure(tree.resolve(), *plan[name])
                rounds[side].setdefault(name, []).append(result)
                print(f"round {round_index + 1} {side} {name}: {json.dumps(result)}", flush=True)
    summary = {
        side: {
            name: {key: statistics.median(r[key] for r in runs) for key in runs[0]}
            for name, runs in by_name.items()
        }
        for side, by_name in rounds.items()
    }
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.write_text(json.dumps({"summary": summary, "rounds": rounds}, indent=2))


if __name__ == "__main__":
    main()
