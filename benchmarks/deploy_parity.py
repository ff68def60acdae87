"""Backend parity on a test split: label agreement and max |dprob| of every artifact against PyTorch FP32.

    OMP_NUM_THREADS=1 python benchmarks/deploy_parity.py --model MODEL_DIR --data-root DATA \\
        --artifacts art/onnx art/onnx16 art/aoti

Every backend reads the split through the same eval loader (``Predictor.predict_split``); prints one JSON line
per artifact: backend, precision, videos, label agreement with torch FP32, max |dprob| over all 200 classes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from mmcls.deploy.predictor import Predictor


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, required=True, help="the model folder the artifacts came from")
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--artifacts", type=Path, nargs="+", required=True)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    def run(path: Path) -> tuple[Predictor, np.ndarray]:
        predictor = Predictor.from_path(path, device=args.device)
        _, preds, _ = predictor.predict_split(args.data_root, args.split, num_workers=0, progress=False)
        return predictor, preds.probs[np.argsort(preds.indices)]

    _, reference = run(args.model)
    for path in args.artifacts:
        predictor, probs = run(path)
        line = {
            "artifact": str(path),
            "backend": predictor.backend_name,
            "precision": predictor.precision,
            "videos": len(probs),
            "label_agreement": float(np.mean(probs.argmax(1) == reference.argmax(1))),
            "max_abs_dprob": float(np.abs(probs - reference).max()),
        }
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
