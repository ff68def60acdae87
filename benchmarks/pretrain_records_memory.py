"""Resident memory of pretraining's record index over a 1,000,000-record unlabeled annotation file.

    .venv/bin/python benchmarks/pretrain_records_memory.py [--records 1000000] [--reads 100000]

Writes the same synthetic ``unlabeled.json`` as ``annotations_memory.py`` (official shape), then, in fresh
processes, measures the peak resident set size (ru_maxrss) of
(a) ``mmcls.pretrain.records.RecordIndex`` built over it (every record validated once) and then ``--reads``
    random records read back by position, as a DataLoader does, and
(b) for comparison, ``load_records`` (a list of every Record, what fine-tuning does with the labeled split).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from annotations_memory import write_annotations  # noqa: E402

INDEX = r"""
import json, resource, sys, time
import numpy as np
from mmcls.pretrain.records import RecordIndex
from mmcls.data.categories import official_categories
official_categories()
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.time()
index = RecordIndex([sys.argv[1]])
built = time.time() - start
after_build = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
rng = np.random.default_rng(0)
start = time.time()
for position in rng.integers(len(index), size=int(sys.argv[2])):
    index[int(position)]
reads = time.time() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
arrays = index.starts.nbytes + index.lengths.nbytes + index.file_of.nbytes
print(json.dumps({"records": len(index), "build_seconds": round(built, 1), "index_arrays_mib": round(arrays / 2**20, 1),
                  "random_reads": int(sys.argv[2]), "reads_per_second": round(int(sys.argv[2]) / reads),
                  "baseline_rss_mib": round(base / 1024, 1), "peak_rss_after_build_mib": round(after_build / 1024, 1),
                  "peak_rss_mib": round(peak / 1024, 1)}))
"""

LIST = r"""
import json, resource, sys, time
from mmcls.data.annotations import load_records
from mmcls.data.categories import official_categories
official_categories()
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.time()
records = load_records(sys.argv[1])
print(json.dumps({"records": len(records), "seconds": round(time.time() - start, 1),
                  "baseline_rss_mib": round(base / 1024, 1),
                  "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))
"""


def child(code: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--reads", type=int, default=100_000)
    parser.add_argument("--skip-list", action="store_true", help="do not measure load_records for comparison")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "unlabeled.json"
        start = time.time()
        write_annotations(path, args.records)
        print(
            f"wrote {args.records} records, {path.stat().st_size / 2**20:.0f} MiB, in {time.time() - start:.0f} s"
        )
        print("RecordIndex:", json.dumps(child(INDEX, str(path), str(args.reads)), indent=2), flush=True)
        if not args.skip_list:
            print("load_records (list):", json.dumps(child(LIST, str(path)), indent=2))


if __name__ == "__main__":
    main()
