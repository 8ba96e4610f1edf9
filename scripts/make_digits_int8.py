"""Quantize the digits CNN to int8: ``models/digits_cnn.onnx`` -> ``digits_cnn_int8.onnx``.

Static post-training quantization with :func:`enpheeph_onnx.export.quantize.quantize_int8`
(onnxruntime ``quantize_static``, QDQ format, int8 weights (symmetric, per tensor) and
int8 activations (asymmetric, per tensor), MinMax calibration).

Calibration uses a seeded random subset of the **training** split only: the split is
recomputed with :func:`train_digits.load_split` and the seed the dense model was trained
with (its ``enpheeph.seed`` metadata), and the script checks that this split's test half is
exactly ``models/digits_test.npz``, so no test image is ever used for calibration.

The script prints the dense and the int8 top-1 accuracy on ``digits_test.npz`` and fails
when the int8 model loses more than 3 points. It quantizes twice and checks that both
results are byte-identical before writing the file atomically, so re-running it with the
same seed reproduces the file bit for bit.

Usage::

    python scripts/make_digits_int8.py [--out-dir models] [--seed 0] [--samples 256]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))

from enpheeph_onnx.export.quantize import quantize_int8
from enpheeph_onnx.model import atomic_path, load_model
from enpheeph_onnx.runtime import make_session

LOGGER = logging.getLogger("make_digits_int8")

SOURCE = "scripts/make_digits_int8.py"
DENSE_MODEL = ROOT / "models" / "digits_cnn.onnx"
TEST_DATA = ROOT / "models" / "digits_test.npz"
OUT_FILE = "digits_cnn_int8.onnx"
INPUT_NAME = "input"
CALIBRATION_SAMPLES = 256
CALIBRATION_BATCH = 32
MAX_DROP = 0.03


def _meta(model: onnx.ModelProto, key: str) -> str | None:
    return next((p.value for p in model.metadata_props if p.key == key), None)


def calibration_images(dense: onnx.ModelProto, seed: int, samples: int) -> np.ndarray:
    """``samples`` training images drawn (without replacement, in index order) by
    ``numpy.random.default_rng(seed)`` from the training split of the dense model.

    Raises:
        RuntimeError: the recomputed split's test half is not ``digits_test.npz``.
    """
    from train_digits import load_split

    split_seed = int(_meta(dense, "enpheeph.seed") or 0)
    x_train, x_test, _, y_test = load_split(split_seed)
    with np.load(TEST_DATA) as z:
        if not (np.array_equal(z["input"], x_test) and np.array_equal(z["labels"], y_test)):
            raise RuntimeError(
                f"the split with seed {split_seed} does not reproduce {TEST_DATA}: refusing to "
                "calibrate on images that may belong to the test set"
            )
    if not 1 <= samples <= len(x_train):
        raise ValueError(f"--samples must be in 1..{len(x_train)}")
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(x_train), size=samples, replace=False))
    return np.ascontiguousarray(x_train[idx])


def build(seed: int, samples: int = CALIBRATION_SAMPLES,
          dense_path: Path = DENSE_MODEL) -> onnx.ModelProto:
    """The int8 model, with provenance metadata (deterministic in its arguments)."""
    dense = load_model(dense_path)
    calib = calibration_images(dense, seed, samples)
    model = quantize_int8(dense, {INPUT_NAME: calib}, per_channel=False, quant_format="qdq",
                          batch_size=CALIBRATION_BATCH)
    sha = hashlib.sha256(dense_path.read_bytes()).hexdigest()
    entries = {
        "enpheeph.source": SOURCE,
        "enpheeph.seed": str(seed),
        "enpheeph.quantized_from": f"{dense_path.name} sha256={sha}",
        "enpheeph.quantizer": f"onnxruntime {ort.__version__}",
        "enpheeph.calibration": json.dumps({
            "split": "train", "split_seed": int(_meta(dense, "enpheeph.seed") or 0),
            "samples": samples, "subset_seed": seed, "method": "minmax",
        }, sort_keys=True),
    }
    keep = [p for p in model.metadata_props if p.key not in entries]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for k, v in entries.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))
    return model


def accuracy(model: onnx.ModelProto | Path) -> tuple[float, int, int]:
    """Top-1 accuracy on ``digits_test.npz``: ``(accuracy, correct, total)``."""
    with np.load(TEST_DATA) as z:
        x, y = z["input"], z["labels"]
    logits = make_session(model if isinstance(model, onnx.ModelProto) else load_model(model)
                          ).run(None, {INPUT_NAME: x})[0]
    correct = int(np.sum(np.argmax(logits, axis=1) == y))
    return correct / len(y), correct, len(y)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=ROOT / "models",
                        help="output directory (default: the repository's models/)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the calibration subset (default: 0)")
    parser.add_argument("--samples", type=int, default=CALIBRATION_SAMPLES,
                        help=f"calibration images (default: {CALIBRATION_SAMPLES})")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    model = build(args.seed, args.samples)
    data = model.SerializeToString(deterministic=True)
    again = build(args.seed, args.samples).SerializeToString(deterministic=True)
    if data != again:
        raise RuntimeError("two quantizations with the same seed differ: not deterministic")
    dense_acc, dense_ok, n = accuracy(DENSE_MODEL)
    int8_acc, int8_ok, _ = accuracy(model)
    print(f"dense accuracy: {dense_acc:.4f} ({dense_ok}/{n})")
    print(f"int8 accuracy:  {int8_acc:.4f} ({int8_ok}/{n})")
    if dense_acc - int8_acc > MAX_DROP:
        raise RuntimeError(f"int8 accuracy {int8_acc:.4f} is more than {MAX_DROP} below the "
                           f"dense {dense_acc:.4f}")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    dest = args.out_dir / OUT_FILE
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)
    LOGGER.info("wrote %s (%d bytes, sha256 %s)", dest, len(data),
                hashlib.sha256(data).hexdigest())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
