"""Train a small CNN on scikit-learn's bundled 8x8 digits and export it as an ONNX test model.

The script produces the reference model and golden data used by enpheeph-onnx examples and tests:

* ``<out-dir>/digits_cnn.onnx``: the trained CNN, default-domain opset 26, IR version 10, weights
  stored as named initializers (``conv1.weight``, ``fc1.bias``, ...), input ``input``
  (``batch x 1 x 8 x 8``, float32) and output ``logits`` (``batch x 10``) with a dynamic batch
  dimension named ``batch``.
* ``<out-dir>/digits_test.npz``: the held-out test split, never used for training, as ``input``
  (float32, ``N x 1 x 8 x 8``, pixels scaled to [0, 1]) and ``labels`` (int64, ``N``).

Data come from :func:`sklearn.datasets.load_digits` (1,797 images, no network access needed).
The data are split with a fixed seed (stratified, 20 % held out), the network is trained
deterministically on CPU with Adam, exported with the TorchScript ONNX exporter and upgraded to
opset 26 with :mod:`onnx.version_converter`. Before anything is written the script checks the
model with the full ONNX checker and strict shape inference, runs it in onnxruntime on the test
split, verifies that its logits match PyTorch's within 1e-5 and prints the golden top-1 accuracy.
Both files are written atomically (temporary file in the same directory, then ``os.replace``).

Usage::

    python scripts/train_digits.py [--out-dir models] [--seed 0] [--epochs 50]
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from enpheeph_onnx.isa import pin_cpu_isa, pin_torch

pin_cpu_isa()  # before torch loads: the same bits on AVX2 and AVX-512 CPUs

import numpy as np
import onnx
import onnx.version_converter
import onnxruntime as ort
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

LOGGER = logging.getLogger("train_digits")

SOURCE = "scripts/train_digits.py"
MODEL_FILE = "digits_cnn.onnx"
DATA_FILE = "digits_test.npz"
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
BATCH_DIM = "batch"
EXPORT_OPSET = 18
TARGET_OPSET = 26
TARGET_IR_VERSION = 10
TEST_SIZE = 0.2
BATCH_SIZE = 64
LEARNING_RATE = 3e-3
MATCH_ATOL = 1e-5
MIN_ACCURACY = 0.95
LABEL_SMOOTHING = 0.1


class DigitsCNN(nn.Module):
    """Two conv blocks and two fully connected layers for 1 x 8 x 8 inputs and 10 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, kernel_size=3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(16, 32, kernel_size=3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(32 * 2 * 2, 64)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = self.flatten(x)
        x = self.relu3(self.fc1(x))
        return self.fc2(x)


def load_split(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(x_train, x_test, y_train, y_test)``.

    Images are float32 ``N x 1 x 8 x 8`` in [0, 1]; labels are int64.
    """
    digits = load_digits()
    images = (digits.images.astype(np.float32) / np.float32(16.0)).reshape(-1, 1, 8, 8)
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=TEST_SIZE, random_state=seed, stratify=labels
    )
    return (
        np.ascontiguousarray(x_train),
        np.ascontiguousarray(x_test),
        np.ascontiguousarray(y_train),
        np.ascontiguousarray(y_test),
    )


def train(x_train: np.ndarray, y_train: np.ndarray, seed: int, epochs: int) -> DigitsCNN:
    """Train the CNN deterministically (fixed seed, one thread, deterministic algorithms)."""
    torch.manual_seed(seed)
    model = DigitsCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    # Label smoothing keeps the logits small (|logit| of a few units), which keeps the
    # float32 rounding differences between torch and onnxruntime far below 1e-5.
    loss_fn = nn.CrossEntropyLoss(label_smoothing=LABEL_SMOOTHING)
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.from_numpy(x_train)
    targets = torch.from_numpy(y_train)
    n = inputs.shape[0]
    model.train()
    for epoch in range(1, epochs + 1):
        order = torch.randperm(n, generator=generator)
        total_loss = 0.0
        correct = 0
        for start in range(0, n, BATCH_SIZE):
            idx = order[start : start + BATCH_SIZE]
            xb, yb = inputs[idx], targets[idx]
            optimizer.zero_grad(set_to_none=True)
            out = model(xb)
            loss = loss_fn(out, yb)
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * idx.numel()
            correct += int((out.argmax(dim=1) == yb).sum())
        if epoch == 1 or epoch % 10 == 0 or epoch == epochs:
            LOGGER.info(
                "epoch %3d/%d  loss %.4f  train acc %.4f",
                epoch,
                epochs,
                total_loss / n,
                correct / n,
            )
    model.eval()
    return model


def export_onnx(model: DigitsCNN, seed: int) -> onnx.ModelProto:
    """Export with the TorchScript exporter, upgrade to opset 26 and tidy up the graph."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated but gives readable names
        # (``conv1.weight``, ``/relu1/Relu_output_0``); silence its deprecation notice.
        warnings.simplefilter("ignore", category=DeprecationWarning)
        torch.onnx.export(
            model,
            (torch.zeros(1, 1, 8, 8),),
            buffer,
            dynamo=False,
            export_params=True,
            opset_version=EXPORT_OPSET,
            do_constant_folding=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: BATCH_DIM}, OUTPUT_NAME: {0: BATCH_DIM}},
        )
    exported = onnx.load_model_from_string(buffer.getvalue())
    converted = onnx.version_converter.convert_version(exported, TARGET_OPSET)
    converted.ir_version = TARGET_IR_VERSION

    # Keep only opset imports that some node actually uses (the default domain always stays).
    used_domains = {node.domain for node in converted.graph.node} | {""}
    kept = [op for op in converted.opset_import if op.domain in used_domains]
    del converted.opset_import[:]
    converted.opset_import.extend(kept)
    default = [op for op in converted.opset_import if op.domain in ("", "ai.onnx")]
    if len(default) != 1 or default[0].version != TARGET_OPSET:
        raise RuntimeError(f"unexpected opset imports: {list(converted.opset_import)}")

    # Drop intermediate shape annotations; consumers can re-infer them.
    del converted.graph.value_info[:]
    converted.graph.name = "digits_cnn"
    converted.doc_string = "8x8 digits CNN trained by " + SOURCE
    del converted.metadata_props[:]
    onnx.helper.set_model_props(
        converted,
        {
            "enpheeph.source": SOURCE,
            "enpheeph.seed": str(seed),
        },
    )
    return converted


def validate_model(model: onnx.ModelProto) -> None:
    """Run the full checker and strict shape inference and check the structural requirements."""
    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    if model.ir_version > 13:
        raise RuntimeError(f"IR version {model.ir_version} > 13")
    graph_inputs = [i.name for i in model.graph.input]
    graph_outputs = [o.name for o in model.graph.output]
    if graph_inputs != [INPUT_NAME] or graph_outputs != [OUTPUT_NAME]:
        raise RuntimeError(f"unexpected graph I/O: {graph_inputs} -> {graph_outputs}")
    for value in (model.graph.input[0], model.graph.output[0]):
        dim0 = value.type.tensor_type.shape.dim[0]
        if dim0.dim_param != BATCH_DIM:
            raise RuntimeError(f"{value.name}: first dimension is not the symbolic {BATCH_DIM!r}")
    if any(init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer):
        raise RuntimeError("initializers must be stored inline")


def run_ort(model_bytes: bytes, x: np.ndarray) -> np.ndarray:
    """Run the serialized model on CPU in onnxruntime (single thread) and return the logits."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        model_bytes, sess_options=options, providers=["CPUExecutionProvider"]
    )
    (logits,) = session.run([OUTPUT_NAME], {INPUT_NAME: x})
    return np.asarray(logits)


def write_atomic(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write ``path`` through a temporary file in the same directory, then ``os.replace`` it."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out-dir", type=Path, default=Path("models"), help="output directory (default: models)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for split and training")
    parser.add_argument("--epochs", type=int, default=50, help="training epochs (default: 50)")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error("--epochs must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    started = time.perf_counter()

    pin_torch(torch)

    x_train, x_test, y_train, y_test = load_split(args.seed)
    LOGGER.info("train %d images, held-out test %d images", len(x_train), len(x_test))

    model = train(x_train, y_train, args.seed, args.epochs)
    with torch.no_grad():
        torch_logits = model(torch.from_numpy(x_test)).numpy()
    torch_acc = float((torch_logits.argmax(axis=1) == y_test).mean())
    LOGGER.info("torch test accuracy %.4f", torch_acc)

    onnx_model = export_onnx(model, args.seed)
    validate_model(onnx_model)
    model_bytes = onnx_model.SerializeToString(deterministic=True)

    ort_logits = run_ort(model_bytes, x_test)
    max_diff = float(np.max(np.abs(ort_logits - torch_logits)))
    if not np.allclose(ort_logits, torch_logits, rtol=0.0, atol=MATCH_ATOL):
        raise RuntimeError(f"onnxruntime and torch logits differ by up to {max_diff:.3e}")
    ort_acc = float((ort_logits.argmax(axis=1) == y_test).mean())
    LOGGER.info("max |onnxruntime - torch| logit difference %.3e", max_diff)
    if ort_acc < MIN_ACCURACY:
        raise RuntimeError(f"onnxruntime test accuracy {ort_acc:.4f} < {MIN_ACCURACY}")

    out_dir: Path = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(out_dir / MODEL_FILE, lambda f: f.write(model_bytes))
    write_atomic(
        out_dir / DATA_FILE,
        lambda f: np.savez_compressed(
            f, **{INPUT_NAME: x_test.astype(np.float32), "labels": y_test.astype(np.int64)}
        ),
    )
    print(
        f"golden top-1 accuracy (onnxruntime): {ort_acc:.4f} "
        f"({int((ort_logits.argmax(axis=1) == y_test).sum())}/{len(y_test)})"
    )
    LOGGER.info(
        "wrote %s and %s in %.1fs",
        out_dir / MODEL_FILE,
        out_dir / DATA_FILE,
        time.perf_counter() - started,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
