"""Campaign data: the model inputs and labels of an ``.npz``."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np

from ..errors import EnpheephError
from ..model import ModelSource, as_model
from ..runtime import load_npz


@dataclass(frozen=True)
class Dataset:
    """Model inputs keyed by input name (batch along axis 0) and optional int labels ``[N]``."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        from ..runtime import sample_count

        return sample_count(self.inputs)


def input_names(model: ModelSource) -> list[str]:
    """The model's data inputs (graph inputs that are not initializers)."""
    model = as_model(model)
    inits = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits]


def require_inputs(arrays: dict[str, np.ndarray], names: list[str],
                   path: str | os.PathLike[str]) -> None:
    """Raises EnpheephError when ``arrays`` (read from ``path``) lack a model input."""
    missing = [n for n in names if n not in arrays]
    if missing:
        raise EnpheephError(
            f"data {path} lacks the model input(s) {missing} (it has {sorted(arrays)}); "
            "save one array per model input, keyed by the input name"
        )


def load_dataset(path: str | os.PathLike[str], names: list[str],
                 require_labels: bool = True, allow_nonfinite: bool = False) -> Dataset:
    """Read an ``.npz`` with one array per model input (keyed by name; samples along axis 0,
    rank-0 arrays for rank-0 inputs, shared by every sample) and ``labels``.

    Raises:
        EnpheephError: missing file, missing input or labels, inconsistent lengths, a
            negative label, NaN or Inf in a float input (unless ``allow_nonfinite``).
    """
    arrays = load_npz(path)
    require_inputs(arrays, names, path)
    labels = arrays.get("labels")
    if labels is None and require_labels:
        raise EnpheephError(f"data {path} has no 'labels' array (int64 class per sample): add "
                            "one, or judge without labels with --sdc-tolerance NAME:atol=A "
                            "or --metric pkg.module:function (gate on score_drop)")
    inputs = {n: arrays[n] for n in names}
    if labels is not None and labels.ndim == 0:
        raise EnpheephError(f"data {path}: 'labels' is a scalar; give one label per sample")
    # a rank-0 array is an input of rank 0 (a sample rate, say): the same for every sample
    # (the model's declared rank is checked against it before the golden run)
    lengths = {len(a) for a in inputs.values() if a.ndim} | (
        {len(labels)} if labels is not None else set())
    if not lengths:
        lengths = {1}
    if len(lengths) != 1:
        raise EnpheephError(f"data {path}: arrays have different lengths {sorted(lengths)}")
    if labels is not None:
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise EnpheephError(f"data {path}: 'labels' must be a 1-D integer array")
        labels = labels.astype(np.int64)
    if not next(iter(lengths)):
        raise EnpheephError(f"data {path} holds no samples")
    if labels is not None and len(labels) and labels.min() < 0:
        raise EnpheephError(f"data {path}: label {int(labels.min())} is negative; labels are "
                            "class numbers 0, 1, ...")
    if not allow_nonfinite:
        refuse_nonfinite(inputs, path)
    return Dataset(inputs, labels)


def refuse_nonfinite(inputs: dict[str, np.ndarray], path: str | os.PathLike[str]) -> None:
    """Refuse NaN or Inf in float inputs (their outputs are DUEs without any fault).

    Raises:
        EnpheephError: naming the input and ``--allow-nonfinite-inputs``.
    """
    for k, a in inputs.items():
        if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
            raise EnpheephError(
                f"data {path}: input {k!r} holds NaN or Inf (its outputs would count as "
                "DUE without any fault); clean the data or pass --allow-nonfinite-inputs")


def data_sha256(data: Dataset) -> str:
    """SHA-256 over the data's input arrays (sorted by name) and labels: dtype, shape, bytes."""
    h = hashlib.sha256()
    arrays = sorted(data.inputs.items())
    if data.labels is not None:
        arrays.append(("labels", data.labels))
    for name, a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


__all__ = ["Dataset", "data_sha256", "input_names", "load_dataset", "refuse_nonfinite"]
