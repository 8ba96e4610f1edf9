"""Prune the digits CNN and export it: ``models/digits_cnn_pruned.onnx``.

Trains the dense CNN exactly as ``scripts/train_digits.py`` does (same seed, same split),
prunes it with ``torch.nn.utils.prune`` — global L1-unstructured pruning of 60 % of the
conv and linear weights, plus L2-structured pruning of 25 % of conv2's output channels —
fine-tunes the surviving weights for a few epochs with the masks in place, and exports it
with :func:`enpheeph_onnx.export.export_model`, which folds the masks into the weights and
records the pruned parameters in the ``enpheeph.pruned`` metadata.

Usage: ``python scripts/prune_digits.py [--out-dir models] [--seed 0]``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from enpheeph_onnx.isa import pin_cpu_isa, pin_torch

pin_cpu_isa()  # before torch loads: the same bits on AVX2 and AVX-512 CPUs

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_digits as td

from enpheeph_onnx.export import export_model

LOGGER = logging.getLogger("prune_digits")
AMOUNT = 0.6
STRUCTURED = 0.25
FINE_TUNE_EPOCHS = 15
MAX_DROP = 0.03
DENSE_EPOCHS = 50  # as scripts/train_digits.py


def prune_model(model: td.DigitsCNN) -> list[tuple[nn.Module, str]]:
    """Apply the pruning masks (not folded yet)."""
    params = [(model.conv1, "weight"), (model.conv2, "weight"), (model.fc1, "weight"),
              (model.fc2, "weight")]
    prune.ln_structured(model.conv2, "weight", amount=STRUCTURED, n=2, dim=0)
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=AMOUNT)
    return params


def fine_tune(model: td.DigitsCNN, x: np.ndarray, y: np.ndarray, seed: int) -> None:
    """A few epochs at a lower learning rate; pruned weights stay zero (masks applied)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=td.LEARNING_RATE / 3)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=td.LABEL_SMOOTHING)
    gen = torch.Generator().manual_seed(seed + 1)
    inputs, targets = torch.from_numpy(x), torch.from_numpy(y)
    model.train()
    for _ in range(FINE_TUNE_EPOCHS):
        order = torch.randperm(len(inputs), generator=gen)
        for start in range(0, len(inputs), td.BATCH_SIZE):
            idx = order[start:start + td.BATCH_SIZE]
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(inputs[idx]), targets[idx]).backward()
            optimizer.step()
    model.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=Path("models"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    pin_torch(torch)
    x_train, x_test, y_train, y_test = td.load_split(args.seed)
    model = td.train(x_train, y_train, args.seed, DENSE_EPOCHS)
    with torch.no_grad():
        dense_acc = float((model(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean())
    prune_model(model)
    fine_tune(model, x_train, y_train, args.seed)
    with torch.no_grad():
        acc = float((model(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean())
    LOGGER.info("dense accuracy %.4f, pruned + fine-tuned %.4f", dense_acc, acc)
    if acc < dense_acc - MAX_DROP:
        raise SystemExit(f"pruned accuracy {acc:.4f} is more than {MAX_DROP} below {dense_acc}")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out = args.out_dir / "digits_cnn_pruned.onnx"
    model_proto = export_model(model, (torch.from_numpy(x_test[:8]),), out,
                               check_inputs=[(torch.from_numpy(x_test),)],
                               metadata={"enpheeph.source": "scripts/prune_digits.py",
                                         "enpheeph.seed": str(args.seed)})
    weights = [t for t in model_proto.graph.initializer if t.name.endswith("weight")]
    zeros = sum(int(np.count_nonzero(onnx_to_np(t) == 0)) for t in weights)
    total = sum(int(np.prod(t.dims)) for t in weights)
    print(f"pruned accuracy (torch) {acc:.4f}; weight sparsity {zeros / total:.3f}; -> {out}")
    return 0


def onnx_to_np(t: object) -> np.ndarray:
    from onnx import numpy_helper

    return numpy_helper.to_array(t)  # type: ignore[arg-type]


if __name__ == "__main__":
    raise SystemExit(main())
