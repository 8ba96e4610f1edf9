"""Train a small spiking network (snntorch) on the 8x8 digits and export it unrolled to ONNX.

The script produces the spiking reference model and its test data:

* ``<out-dir>/digits_snn.onnx``: the trained network unrolled over ``T`` time steps by
  :func:`enpheeph_onnx.export.snn.export_snn`: input ``input`` (float32
  ``batch x T x 64``, rate-coded spikes), output ``spike_counts`` (float32
  ``batch x 10``, output spikes summed over the ``T`` steps; the class is the ``argmax``,
  ties to the lowest index). Every membrane potential, synaptic current and spike tensor of
  every step is annotated (``lif1.membrane.t3``: layer ``lif1``, role ``membrane``, step 3)
  and the neuron parameters are initializers (``lif1.alpha``, ``lif1.beta``,
  ``lif1.threshold``, ``lif2.beta``, ``lif2.threshold``).
* ``<out-dir>/digits_snn_test.npz``: ``input`` (float32 ``360 x T x 64``), the held-out
  test images of ``models/digits_test.npz`` in the same order, rate-coded, and ``labels``
  (int64, identical to ``digits_test.npz``'s).

Network: ``fc1`` (Linear 64 -> 128) -> ``lif1`` (``snntorch.Synaptic``) -> ``fc2`` (Linear
128 -> 10) -> ``lif2`` (``snntorch.Leaky``), reset by subtraction, learnable decay factors
and thresholds, surrogate gradients (snntorch's default arctan). Data: the split of
``scripts/train_digits.py`` (:func:`load_split`, same seed), pixels / 16 in [0, 1] and
flattened. Rate coding: at every step each input neuron spikes with probability equal to
its pixel intensity (Bernoulli, drawn from a seeded ``numpy.random.Generator``; fresh
spike trains every training epoch, one fixed draw for the test set). Loss: cross-entropy
of the spike counts. Training is deterministic (fixed seeds, one thread, deterministic
algorithms).

After training, the weights and biases of ``fc1``/``fc2`` are rounded to multiples of
``2**-10`` (|w| <= 8): sums of 0/1 spikes times such weights are exact in float32 in any
order, so onnxruntime and torch compute every neuron state bit for bit alike and the spike
counts cannot differ by a threshold tie (:func:`export_snn` checks them exactly on the
whole test split). The script refuses to write anything when the onnxruntime top-1
accuracy on the test split is below 0.85. Both files are written atomically (temporary
file in the same directory, then ``os.replace``); re-running gives byte-identical files.

Usage::

    python scripts/train_digits_snn.py [--out-dir models] [--seed 0] [--epochs 40] [--steps 16]
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from enpheeph_onnx.isa import pin_cpu_isa, pin_torch

pin_cpu_isa()  # before torch loads: the same bits on AVX2 and AVX-512 CPUs

import numpy as np
import onnx
import snntorch as snn
import torch
from torch import nn

from enpheeph_onnx.export.snn import export_snn, unroll
from enpheeph_onnx.runtime import make_session

LOGGER = logging.getLogger("train_digits_snn")

SOURCE = "scripts/train_digits_snn.py"
MODEL_FILE = "digits_snn.onnx"
DATA_FILE = "digits_snn_test.npz"
INPUT_NAME = "input"
OUTPUT_NAME = "spike_counts"
FEATURES = 64
HIDDEN = 128
CLASSES = 10
BATCH_SIZE = 64
LEARNING_RATE = 2e-3
MIN_ACCURACY = 0.85
GRID_BITS = 10
"""Weights and biases are rounded to multiples of ``2**-GRID_BITS``."""
MAX_ABS_WEIGHT = 8.0
ENCODING = "rate: Bernoulli(pixel / 16) spike per input per time step"


class DigitsSNN(nn.Module):
    """One time step: ``fc1 -> lif1 (Synaptic) -> fc2 -> lif2 (Leaky)``; ``x_t`` float32
    ``[batch, 64]`` spikes in, output spikes ``[batch, 10]`` out (state carried by
    :func:`enpheeph_onnx.export.snn.unroll`)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(FEATURES, HIDDEN)
        self.lif1 = snn.Synaptic(alpha=0.5, beta=0.8, learn_alpha=True, learn_beta=True,
                                 learn_threshold=True)
        self.fc2 = nn.Linear(HIDDEN, CLASSES)
        self.lif2 = snn.Leaky(beta=0.8, learn_beta=True, learn_threshold=True)

    def forward(self, x_t: torch.Tensor) -> torch.Tensor:
        spk1, _syn1, _mem1 = self.lif1(self.fc1(x_t))
        spk2, _mem2 = self.lif2(self.fc2(spk1))
        return spk2  # type: ignore[no-any-return]


def build_net(seed: int) -> DigitsSNN:
    """A freshly initialised :class:`DigitsSNN` (torch's default init, seeded)."""
    torch.manual_seed(seed)
    return DigitsSNN()


def _train_digits() -> ModuleType:
    """``scripts/train_digits.py`` as a module (for its data split and atomic writer)."""
    path = Path(__file__).resolve().with_name("train_digits.py")
    spec = importlib.util.spec_from_file_location("_train_digits", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {path}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def load_data(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train, x_test, y_train, y_test)``: the split of ``scripts/train_digits.py``,
    images flattened to float32 ``[N, 64]`` in [0, 1], labels int64."""
    x_train, x_test, y_train, y_test = _train_digits().load_split(seed)
    return (x_train.reshape(len(x_train), FEATURES), x_test.reshape(len(x_test), FEATURES),
            y_train, y_test)


def rate_code(images: np.ndarray, steps: int, rng: np.random.Generator) -> np.ndarray:
    """Bernoulli rate coding: float32 ``[N, steps, *features]`` of 0/1, where each element
    is 1 with probability equal to the intensity (in [0, 1]) of its pixel."""
    draws = rng.random((images.shape[0], steps, *images.shape[1:]), dtype=np.float32)
    return (draws < images[:, None]).astype(np.float32)


def snap_to_grid(net: nn.Module) -> None:
    """Round the ``Linear`` weights and biases to multiples of ``2**-GRID_BITS`` (clipped to
    ``+-MAX_ABS_WEIGHT``), in place: dot products with 0/1 spikes are then exact."""
    scale = float(2**GRID_BITS)
    with torch.no_grad():
        for mod in net.modules():
            if isinstance(mod, nn.Linear):
                for p in (mod.weight, mod.bias):
                    p.copy_(torch.round(p * scale).clamp(-MAX_ABS_WEIGHT * scale,
                                                         MAX_ABS_WEIGHT * scale) / scale)


def train(x_train: np.ndarray, y_train: np.ndarray, seed: int, epochs: int, steps: int
          ) -> DigitsSNN:
    """Backpropagation through time over the unrolled network, cross-entropy of the
    spike counts, Adam; deterministic for a given seed."""
    net = build_net(seed)
    model = unroll(net, steps)
    optimizer = torch.optim.Adam(net.parameters(), lr=LEARNING_RATE)
    loss_fn = nn.CrossEntropyLoss()
    order_gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,)))
    targets = torch.from_numpy(y_train)
    n = len(x_train)
    model.train()
    for epoch in range(1, epochs + 1):
        inputs = torch.from_numpy(rate_code(x_train, steps, rng))
        order = torch.randperm(n, generator=order_gen)
        total_loss, correct = 0.0, 0
        for start in range(0, n, BATCH_SIZE):
            idx = order[start : start + BATCH_SIZE]
            optimizer.zero_grad(set_to_none=True)
            counts = model(inputs[idx])
            loss = loss_fn(counts, targets[idx])
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * idx.numel()
            correct += int((counts.argmax(dim=1) == targets[idx]).sum())
        if epoch == 1 or epoch % 10 == 0 or epoch == epochs:
            LOGGER.info("epoch %3d/%d  loss %.4f  train acc %.4f", epoch, epochs,
                        total_loss / n, correct / n)
    model.eval()
    return net


def accuracy(counts: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 of the spike counts (``argmax``: ties go to the lowest class index)."""
    return float(np.mean(np.argmax(counts, axis=1) == labels))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=Path("models"),
                        help="output directory (default: models)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed for split, init, coding and training")
    parser.add_argument("--epochs", type=int, default=40, help="training epochs (default: 40)")
    parser.add_argument("--steps", type=int, default=16, help="time steps T (default: 16)")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error("--epochs must be at least 1")
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    started = time.perf_counter()
    pin_torch(torch)

    x_train, x_test, y_train, y_test = load_data(args.seed)
    LOGGER.info("train %d images, held-out test %d images, T = %d", len(x_train), len(x_test),
                args.steps)
    net = train(x_train, y_train, args.seed, args.epochs, args.steps)
    snap_to_grid(net)

    test_rng = np.random.default_rng(np.random.SeedSequence(args.seed, spawn_key=(2,)))
    test_input = rate_code(x_test, args.steps, test_rng)
    with torch.no_grad():
        torch_counts = unroll(net, args.steps)(torch.from_numpy(test_input)).numpy()
    LOGGER.info("torch test accuracy %.4f", accuracy(torch_counts, y_test))

    example = torch.from_numpy(test_input[:8])
    model = export_snn(net, args.steps, example, check_inputs=[torch.from_numpy(test_input)],
                       input_name=INPUT_NAME, output_name=OUTPUT_NAME,
                       metadata={"enpheeph.source": SOURCE, "enpheeph.seed": str(args.seed),
                                 "enpheeph.encoding": ENCODING})
    model.graph.name = "digits_snn"
    model.doc_string = "8x8 digits spiking network trained by " + SOURCE
    onnx.checker.check_model(model, full_check=True)
    model_bytes = model.SerializeToString(deterministic=True)

    ort_counts = make_session(model_bytes).run([OUTPUT_NAME], {INPUT_NAME: test_input})[0]
    if not np.array_equal(ort_counts, torch_counts):
        raise RuntimeError("onnxruntime and torch spike counts differ")
    ort_acc = accuracy(ort_counts, y_test)
    if ort_acc < MIN_ACCURACY:
        raise RuntimeError(f"onnxruntime test accuracy {ort_acc:.4f} < {MIN_ACCURACY}")

    tools = _train_digits()
    out_dir: Path = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    tools.write_atomic(out_dir / MODEL_FILE, lambda f: f.write(model_bytes))
    arrays: dict[str, Any] = {INPUT_NAME: test_input, "labels": y_test.astype(np.int64)}
    tools.write_atomic(out_dir / DATA_FILE, lambda f: np.savez_compressed(f, **arrays))
    print(f"golden top-1 accuracy (onnxruntime): {ort_acc:.4f} "
          f"({int((np.argmax(ort_counts, 1) == y_test).sum())}/{len(y_test)})")
    LOGGER.info("wrote %s and %s in %.1fs", out_dir / MODEL_FILE, out_dir / DATA_FILE,
                time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
