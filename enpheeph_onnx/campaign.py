"""Fault-injection campaigns: golden run, sampled trials, outcome classification.

A campaign runs the golden pass once, then ``trials`` trials; each trial draws its faults
from a per-trial random stream (``numpy.random.SeedSequence(seed, spawn_key=(trial,))``),
so trial *i* is the same whatever ran before it, and applies them through one
:class:`~enpheeph_onnx.engine.FaultEngine` session.

Per input sample, a trial's outcome against the golden run is (first match wins):

* **DUE** — a NaN or Inf in any output (detected unrecoverable error);
* **masked** — every output bit-identical to the golden run;
* **critical SDC** — silent data corruption that changes the top-1 class;
* **tolerable SDC** — outputs differ, top-1 unchanged.

Sampling (this version): ``faults_per_trial`` faults, each at a uniformly random element
of the selected sites (every element of every site equally likely, so larger tensors are
hit more often) and one uniformly random bit from ``bits`` (restricted to the element
width of the site). Dynamic dimensions of activations (the batch) get ``*``: the fault
hits that position in every input, as a fault in the accelerator's memory would.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from tqdm import tqdm

from . import __version__
from .bits import BY_NAME
from .engine import FaultEngine
from .errors import EnpheephError
from .faults import Fault, FaultModel, format_bits
from .model import ModelSource, load_model, model_sha256
from .runtime import Provider, check_feeds, load_npz
from .sites import FaultSite, SiteKind, discover_sites
from .store import ResultStore, TrialRecord

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dataset:
    """Model inputs keyed by input name (batch along axis 0) and optional int labels ``[N]``."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))


def load_dataset(path: str | os.PathLike[str], input_names: list[str],
                 require_labels: bool = True) -> Dataset:
    """Read an ``.npz`` with one array per model input (keyed by name) and ``labels``.

    Raises:
        EnpheephError: missing file, missing input or labels, inconsistent lengths.
    """
    arrays = load_npz(path)
    missing = [n for n in input_names if n not in arrays]
    if missing:
        raise EnpheephError(
            f"data {path} lacks the model input(s) {missing} (it has {sorted(arrays)}); "
            "save one array per model input, keyed by the input name"
        )
    labels = arrays.get("labels")
    if labels is None and require_labels:
        raise EnpheephError(f"data {path} has no 'labels' array (int64 class per sample)")
    inputs = {n: arrays[n] for n in input_names}
    lengths = {len(a) for a in inputs.values()} | ({len(labels)} if labels is not None else set())
    if len(lengths) != 1:
        raise EnpheephError(f"data {path}: arrays have different lengths {sorted(lengths)}")
    if labels is not None:
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise EnpheephError(f"data {path}: 'labels' must be a 1-D integer array")
        labels = labels.astype(np.int64)
    if not next(iter(lengths)):
        raise EnpheephError(f"data {path} holds no samples")
    return Dataset(inputs, labels)


@dataclass(frozen=True)
class CampaignConfig:
    """What a campaign injects and how.

    Attributes:
        target: the kind of site faults hit (weights, activations or inputs).
        fault_model: bit flip, stuck-at-0 or stuck-at-1.
        bits: candidate bit positions (0 = LSB); each fault takes one, uniformly.
        faults_per_trial: faults per trial (K).
        trials: number of trials (N).
        seed: root seed of the per-trial random streams.
        batch_size: samples per ``session.run``.
        provider: ``"cpu"`` or ``"cuda"``.
        output: the classifier output used for top-1 (default: the first output).
    """

    target: SiteKind = SiteKind.WEIGHT
    fault_model: FaultModel = FaultModel.BIT_FLIP
    bits: tuple[int, ...] = tuple(range(32))
    faults_per_trial: int = 1
    trials: int = 100
    seed: int = 0
    batch_size: int = 512
    provider: Provider = "cpu"
    output: str | None = None

    def __post_init__(self) -> None:
        if self.fault_model is FaultModel.VALUE:
            raise EnpheephError("campaigns take bitflip, stuck-at-0 or stuck-at-1")
        if not self.bits or min(self.bits) < 0:
            raise EnpheephError("campaign bits must be a non-empty list of positions >= 0")
        if self.faults_per_trial < 0:
            raise EnpheephError("--faults-per-trial must be >= 0")
        if self.trials < 1:
            raise EnpheephError("--trials must be >= 1")
        if self.batch_size < 1:
            raise EnpheephError("--batch-size must be >= 1")

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["target"] = self.target.value
        d["fault_model"] = self.fault_model.value
        d["bits"] = format_bits(self.bits)
        return d


@dataclass(frozen=True)
class CampaignResult:
    """A finished campaign: the golden run and every trial."""

    config: CampaignConfig
    golden_accuracy: float | None
    samples: int
    trials: tuple[TrialRecord, ...]
    db: Path | None = None
    providers: tuple[str, ...] = field(default_factory=tuple)

    @property
    def mean_accuracy(self) -> float | None:
        accs = [t.accuracy for t in self.trials if t.accuracy is not None]
        return float(np.mean(accs)) if accs else None

    @property
    def accuracy_drop(self) -> float | None:
        """Golden accuracy minus mean faulty accuracy."""
        if self.golden_accuracy is None or self.mean_accuracy is None:
            return None
        return self.golden_accuracy - self.mean_accuracy

    def outcome_totals(self) -> dict[str, int]:
        keys = ("masked", "tolerable_sdc", "critical_sdc", "due")
        return {k: int(sum(getattr(t, k) for t in self.trials)) for k in keys}

    def to_json(self) -> dict[str, Any]:
        return {
            "golden_accuracy": self.golden_accuracy,
            "mean_accuracy": self.mean_accuracy,
            "accuracy_drop": self.accuracy_drop,
            "samples": self.samples,
            "outcomes": self.outcome_totals(),
            "config": self.config.to_json(),
            "providers": list(self.providers),
            "db": str(self.db) if self.db else None,
            "trials": [
                {"trial": t.trial, "accuracy": t.accuracy, "masked": t.masked,
                 "tolerable_sdc": t.tolerable_sdc, "critical_sdc": t.critical_sdc,
                 "due": t.due, "seconds": t.seconds,
                 "faults": [f.to_json() for f in t.faults]}
                for t in self.trials
            ],
        }


def select_sites(sites: list[FaultSite], target: SiteKind, bits: tuple[int, ...]
                 ) -> list[FaultSite]:
    """The sites of kind ``target`` that have at least one of ``bits`` and one element.

    Raises:
        EnpheephError: the selection is empty.
    """
    chosen = [s for s in sites if s.kind is target and s.static_elements > 0
              and any(b < s.bits for b in bits)]
    if not chosen:
        raise EnpheephError(
            f"no {target.value} site of this model has any of bits {format_bits(bits)}; "
            "check --target and --bits (enpheeph-onnx sites MODEL lists the sites)"
        )
    return chosen


def trial_rng(seed: int, trial: int) -> np.random.Generator:
    """The independent random stream of one trial."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(trial,)))


def sample_trial(sites: list[FaultSite], cfg: CampaignConfig, trial: int) -> tuple[Fault, ...]:
    """Draw the faults of trial ``trial`` (deterministic in ``cfg.seed`` and ``trial``)."""
    rng = trial_rng(cfg.seed, trial)
    sizes = np.array([s.static_elements for s in sites], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    flat = rng.integers(0, offsets[-1], size=cfg.faults_per_trial)
    which = np.searchsorted(offsets, flat, side="right") - 1
    draws = rng.random(cfg.faults_per_trial)
    faults = []
    for k, (w, fl) in enumerate(zip(which.tolist(), flat.tolist(), strict=True)):
        s = sites[w]
        static = [d for d in s.shape if isinstance(d, int)]
        coords = iter(np.unravel_index(fl - int(offsets[w]), static) if static else ())
        index = tuple(int(next(coords)) if isinstance(d, int) else None for d in s.shape)
        usable = [b for b in cfg.bits if b < s.bits]
        bit = usable[min(int(draws[k] * len(usable)), len(usable) - 1)]
        faults.append(Fault(s.name, index, cfg.fault_model, (bit,)))
    return tuple(faults)


def classify(golden: dict[str, np.ndarray], faulty: dict[str, np.ndarray], output: str
             ) -> np.ndarray:
    """Per-sample outcome codes: 0 masked, 1 tolerable SDC, 2 critical SDC, 3 DUE.

    Args:
        golden, faulty: outputs keyed by name, batch along axis 0.
        output: the classifier output (top-1 over its last axis).
    """
    n = len(golden[output])
    differs = np.zeros(n, dtype=bool)
    due = np.zeros(n, dtype=bool)
    for name, g in golden.items():
        f = faulty[name]
        differs |= (g.reshape(n, -1).view(np.uint8) != f.reshape(n, -1).view(np.uint8)).any(1) \
            if g.dtype == f.dtype else True
        if np.issubdtype(f.dtype, np.floating):
            due |= ~np.isfinite(f.reshape(n, -1)).all(1)
    g_top = np.argmax(golden[output].reshape(n, -1), axis=1)
    f_top = np.argmax(faulty[output].reshape(n, -1), axis=1)
    code = np.where(differs, np.where(g_top != f_top, 2, 1), 0)
    return np.where(due, 3, code)


def run_campaign(
    model: ModelSource,
    data: Dataset,
    config: CampaignConfig,
    db: str | os.PathLike[str] | None = None,
    progress: bool | None = None,
) -> CampaignResult:
    """Run a campaign and (optionally) store it in SQLite.

    Args:
        model: path or ``ModelProto``.
        data: inputs and labels (labels optional: accuracy is then ``None``).
        config: what to inject.
        db: results database to create (refused if it exists), or ``None``.
        progress: tqdm bar on stderr; ``None`` shows it only on a terminal.

    Returns:
        :class:`CampaignResult`.

    Raises:
        EnpheephError: bad model, data or configuration; existing database.
    """
    proto = load_model(model)
    sites = select_sites(discover_sites(proto), config.target, config.bits)
    engine = FaultEngine(proto, sites, config.provider)
    output = config.output or engine.output_names[0]
    if output not in engine.output_names:
        raise EnpheephError(f"unknown output {output!r}: the model has {engine.output_names}")
    sess_like = engine.session
    feeds = check_feeds(_SourceInputs(sess_like, engine.input_names), data.inputs)
    store = None
    if db is not None:
        meta = {
            "tool_version": __version__,
            "model": str(model) if not isinstance(model, onnx.ModelProto) else "<ModelProto>",
            "model_sha256": model_sha256(model),
            "config": config.to_json(),
            "providers": engine.providers,
            "session_options": {"graph_optimization_level": "ORT_ENABLE_EXTENDED"},
            "versions": _versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "samples": len(data),
        }
        store = ResultStore.create(db, meta, {s.name: (s.kind.value, s.layer) for s in sites})
    try:
        golden = engine.run(feeds, (), config.batch_size)
        golden_acc = _accuracy(golden[output], data.labels)
        if store:
            store.set_meta("golden_accuracy", golden_acc)
        records = []
        bar = tqdm(range(config.trials), desc="trials", unit="trial", leave=False,
                   disable=None if progress is None else not progress)
        for t in bar:
            faults = sample_trial(sites, config, t)
            start = time.perf_counter()
            out = engine.run(feeds, faults, config.batch_size)
            seconds = time.perf_counter() - start
            codes = classify(golden, out, output)
            counts = np.bincount(codes, minlength=4)
            rec = TrialRecord(t, faults, len(data), int(counts[0]), int(counts[1]),
                              int(counts[2]), int(counts[3]),
                              _accuracy(out[output], data.labels), seconds)
            records.append(rec)
            if store:
                store.add_trial(rec)
            if rec.accuracy is not None:
                bar.set_postfix(acc=f"{np.mean([r.accuracy for r in records]):.4f}")
        if store:
            store.set_meta("status", "complete")
    finally:
        if store:
            store.close()
    return CampaignResult(config, golden_acc, len(data), tuple(records),
                          Path(db) if db is not None else None, tuple(engine.providers))


class _SourceInputs:
    """Adapter so :func:`check_feeds` sees only the source model's data inputs."""

    def __init__(self, sess: Any, names: list[str]) -> None:
        self._inputs = [i for i in sess.get_inputs() if i.name in names]

    def get_inputs(self) -> list[Any]:
        return self._inputs


def _accuracy(logits: np.ndarray, labels: np.ndarray | None) -> float | None:
    if labels is None:
        return None
    top = np.argmax(logits.reshape(len(logits), -1), axis=1)
    return float(np.mean(top == labels))


def _versions() -> dict[str, str]:
    import onnxruntime

    return {"enpheeph_onnx": __version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


__all__ = ["BY_NAME", "CampaignConfig", "CampaignResult", "Dataset", "classify",
           "load_dataset", "run_campaign", "sample_trial", "select_sites"]
