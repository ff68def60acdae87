"""Resident memory while streaming a 1,000,000-record unlabeled annotation file.

    .venv/bin/python benchmarks/annotations_memory.py [--records 1000000] [--keep PATH]

Writes a synthetic ``unlabeled.json`` of the official shape (title, ASR, several OCR lines per record),
then, in a fresh process, iterates it with ``mmcls.data.annotations.iter_records`` (full validation) and
reports the peak resident set size (ru_maxrss) next to the same process's baseline after imports.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from mmcls.data.annotations import iter_records
from mmcls.data.categories import official_categories
official_categories()
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.time()
count = chars = 0
for record in iter_records(sys.argv[1]):
    count += 1
    chars += len(record.title) + len(record.asr) + sum(len(t) for _, t in record.ocr)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"records": count, "text_chars": chars, "seconds": round(time.time() - start, 1),
                  "baseline_rss_mib": round(base / 1024, 1), "peak_rss_mib": round(peak / 1024, 1)}))
"""


def write_annotations(path: Path, records: int, seed: int = 0) -> None:
    """A JSON list of realistic-size records, written as a stream (the writer must not be the bottleneck)."""
    rng = random.Random(seed)
    chars = [chr(c) for c in range(0x4E00, 0x4E00 + 3000)]

    def text(n: int) -> str:
        return "".join(rng.choices(chars, k=n))

    with path.open("w", encoding="utf-8") as handle:
        handle.write("[")
        for i in range(records):
            record = {
                "id": f"{10**19 + i:020d}",
                "title": text(rng.randint(10, 40)),
                "asr": text(rng.randint(0, 200)),
                "ocr": [{"time": t, "text": text(rng.randint(5, 20))} for t in range(rng.randint(0, 6))],
            }
            handle.write(("," if i else "") + json.dumps(record, ensure_ascii=False))
        handle.write("]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--keep", type=Path, default=None, help="write the annotation file here and keep it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.keep or Path(tmp) / "unlabeled.json"
        start = time.time()
        write_annotations(path, args.records)
        size_mib = path.stat().st_size / 2**20
        print(f"wrote {args.records} records, {size_mib:.0f} MiB, in {time.time() - start:.0f} s", flush=True)
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(path)], check=True, capture_output=True, text=True
        )
        result = json.loads(out.stdout)
        result["file_mib"] = round(size_mib, 1)
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
