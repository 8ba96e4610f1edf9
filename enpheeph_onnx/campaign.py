"""Fault-injection campaigns: site selection, fault sampling, golden run, trials, outcomes.

A campaign runs the golden pass once, then ``trials`` trials at each fault-rate level
(or one level with a fixed fault count). Trial *t* (numbered across levels) draws its
faults from its own random stream, ``numpy.random.SeedSequence(seed, spawn_key=(t,))``,
so it is the same whatever ran before it: an interrupted campaign resumed with the same
seed ends with exactly the results of an uninterrupted one.

**How many faults.** ``count="fixed"``: ``faults_per_trial`` faults. ``"fault_rate"``
(faults per parameter, the enpheeph paper's axis, 1e-7 ... 1e-1): Poisson(rate x N) faults
with N the selected elements (per input sample for activations), or round(rate x N) with
``exact_count``. ``"bit_error_rate"`` (faults per stored bit): the same with N = selected
elements x candidate bits.

**Where.** Each fault hits one uniformly drawn element of all selected sites together
(larger tensors are hit more often) and one uniformly drawn bit of ``bits`` within the
element's width (for the bit error rate: one uniformly drawn (element, bit) pair).
Dynamic dimensions (the batch) get ``*``: the fault reaches every input, as a fault in
the accelerator's memory would; with ``per_sample`` each input gets its own faults
(PyTorchFI's per-batch-element injection).

**Outcome** of each (trial, input) pair against the golden run (first match wins):
DUE (NaN/Inf in an output), masked (all outputs bit-identical), critical SDC (top-1
changed), tolerable SDC.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import math
import os
import platform
import time
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from tqdm import tqdm

from . import __version__
from .bits import BY_NAME
from .engine import FaultEngine
from .errors import EnpheephError
from .faults import Fault, FaultModel, format_bits, parse_bits
from .model import ModelSource, atomic_path, load_model, model_sha256
from .rewrite import validate_faults
from .runtime import Provider, check_feeds, load_npz
from .sites import FaultSite, SiteKind, discover_sites, site_map
from .stats import sample_size
from .store import ResultStore, TrialRecord
from .summary import check_gates, summarize

log = logging.getLogger(__name__)


# -- data -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Dataset:
    """Model inputs keyed by input name (batch along axis 0) and optional int labels ``[N]``."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))


def input_names(model: onnx.ModelProto) -> list[str]:
    """The model's data inputs (graph inputs that are not initializers)."""
    inits = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits]


def load_dataset(path: str | os.PathLike[str], names: list[str],
                 require_labels: bool = True) -> Dataset:
    """Read an ``.npz`` with one array per model input (keyed by name) and ``labels``.

    Raises:
        EnpheephError: missing file, missing input or labels, inconsistent lengths.
    """
    arrays = load_npz(path)
    missing = [n for n in names if n not in arrays]
    if missing:
        raise EnpheephError(
            f"data {path} lacks the model input(s) {missing} (it has {sorted(arrays)}); "
            "save one array per model input, keyed by the input name"
        )
    labels = arrays.get("labels")
    if labels is None and require_labels:
        raise EnpheephError(f"data {path} has no 'labels' array (int64 class per sample)")
    inputs = {n: arrays[n] for n in names}
    scalars = [n for n, a in inputs.items() if a.ndim == 0]
    if scalars or (labels is not None and labels.ndim == 0):
        raise EnpheephError(f"data {path}: {scalars[0] if scalars else 'labels'!r} is a "
                            "scalar; arrays need the samples along axis 0")
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


# -- configuration --------------------------------------------------------------------------

@dataclass(frozen=True)
class SiteSelection:
    """Which fault sites a campaign may hit.

    Attributes:
        kinds: site kinds (weight, activation, input).
        patterns: shell globs (``fnmatch``) matched against site names and layer names;
            empty = all.
        op_types: ONNX op types of the producing (activations) or consuming (weights,
            inputs) node, e.g. ``("Conv", "Gemm")``; empty = all.
    """

    kinds: tuple[SiteKind, ...] = (SiteKind.WEIGHT,)
    patterns: tuple[str, ...] = ()
    op_types: tuple[str, ...] = ()

    def matches(self, s: FaultSite) -> bool:
        if s.kind not in self.kinds:
            return False
        if self.patterns and not any(fnmatch.fnmatchcase(s.name, p)
                                     or (s.layer and fnmatch.fnmatchcase(s.layer, p))
                                     for p in self.patterns):
            return False
        return not self.op_types or bool(set(s.op_type.split(",")) & set(self.op_types))

    def to_json(self) -> dict[str, Any]:
        return {"kinds": [k.value for k in self.kinds], "patterns": list(self.patterns),
                "op_types": list(self.op_types)}


class CountMode(Enum):
    """How the number of faults of a trial is chosen."""

    FIXED = "fixed"
    FAULT_RATE = "fault_rate"
    BIT_ERROR_RATE = "bit_error_rate"


@dataclass(frozen=True)
class ValueDistribution:
    """Replacement values for the value fault model: ``constant:V`` (or just ``V``; may be
    ``nan`` or ``inf``), ``uniform:LOW,HIGH`` or ``normal:MEAN,STD`` (finite parameters).
    On integer sites a value is rounded and saturated to the type's range, NaN giving 0."""

    kind: str
    a: float
    b: float = 0.0

    @classmethod
    def parse(cls, text: str) -> ValueDistribution:
        """Raises: EnpheephError on malformed text."""
        kind, _, args = text.strip().partition(":")
        try:
            if not args:
                return cls("constant", float(kind))
            nums = [float(x) for x in args.split(",")]
        except ValueError:
            nums = []
        if kind == "constant" and len(nums) == 1:
            return cls("constant", nums[0])
        if kind in ("uniform", "normal") and len(nums) == 2:
            if not all(math.isfinite(v) for v in nums):
                raise EnpheephError(f"bad value distribution {text!r}: its parameters must "
                                    "be finite (a constant may be nan or inf)")
            if (kind == "uniform" and nums[1] < nums[0]) or (kind == "normal" and nums[1] < 0):
                raise EnpheephError(f"bad value distribution {text!r}: check its parameters")
            return cls(kind, nums[0], nums[1])
        raise EnpheephError(
            f"bad value distribution {text!r}: use a number, 'uniform:LOW,HIGH' or "
            "'normal:MEAN,STD'"
        )

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if self.kind == "constant":
            return np.full(n, self.a)
        if self.kind == "uniform":
            return rng.uniform(self.a, self.b, n)
        return rng.normal(self.a, self.b, n)

    def __str__(self) -> str:
        return f"constant:{self.a}" if self.kind == "constant" else f"{self.kind}:{self.a},{self.b}"


@dataclass(frozen=True)
class CampaignConfig:
    """What a campaign injects and how (see the module docstring for the sampling).

    Attributes:
        selection: candidate fault sites.
        fault_model: bit flip, stuck-at-0, stuck-at-1 or value.
        bits: candidate bit positions (0 = LSB), restricted per site to its width.
        value: the value distribution, for the value model only.
        count: fixed count, fault rate (faults per parameter) or bit error rate.
        faults_per_trial: K, for the fixed count.
        rates: the fault-rate (or bit-error-rate) levels of a sweep, each in [0, 1].
        exact_count: round(rate x N) faults instead of Poisson(rate x N).
        trials: trials per level.
        per_sample: each input sample gets its own faults (activations and inputs only).
        pruned_weights: ``"skip"`` (default: a sparse accelerator does not store pruned
            weights, so faults cannot hit them), ``"only"`` (faults that resurrect pruned
            weights) or ``"include"``; pruned = stored value equal to the real value 0.
        time_steps: for annotated spiking/recurrent models: ``"3"``, ``"3-5"`` (transient
            faults at those steps: only sites of those steps are selected) or ``"all"``
            (permanent: a fault on a neuron state hits that neuron at every step).
        seed: root seed of the per-trial random streams.
        batch_size: samples per ``session.run``.
        provider: ``"cpu"`` or ``"cuda"``.
        output: the classifier output used for top-1 (default: the first output).
    """

    selection: SiteSelection = field(default_factory=SiteSelection)
    fault_model: FaultModel = FaultModel.BIT_FLIP
    bits: tuple[int, ...] = tuple(range(64))
    value: ValueDistribution | None = None
    count: CountMode = CountMode.FIXED
    faults_per_trial: int = 1
    rates: tuple[float, ...] = ()
    exact_count: bool = False
    trials: int = 100
    per_sample: bool = False
    pruned_weights: str = "skip"
    time_steps: str | None = None
    seed: int = 0
    batch_size: int = 512
    provider: Provider = "cpu"
    output: str | None = None

    def __post_init__(self) -> None:
        if self.pruned_weights not in ("skip", "only", "include"):
            raise EnpheephError(f"--pruned-weights {self.pruned_weights!r}: use skip, only or "
                                "include")
        if self.time_steps is not None:
            parse_steps(self.time_steps)
        object.__setattr__(self, "bits", tuple(sorted(set(self.bits))))
        object.__setattr__(self, "rates", tuple(float(r) for r in self.rates))
        if self.fault_model is FaultModel.VALUE and self.value is None:
            raise EnpheephError("the value fault model needs --value (a number, "
                                "'uniform:LOW,HIGH' or 'normal:MEAN,STD')")
        if self.fault_model is not FaultModel.VALUE and self.value is not None:
            raise EnpheephError("--value is only for --fault-model value")
        if not self.bits or min(self.bits) < 0:
            raise EnpheephError("campaign bits must be a non-empty list of positions >= 0")
        if self.faults_per_trial < 0:
            raise EnpheephError("--faults-per-trial must be >= 0")
        if self.trials < 1:
            raise EnpheephError("--trials must be >= 1")
        if self.batch_size < 1:
            raise EnpheephError("--batch-size must be >= 1")
        if not self.selection.kinds:
            raise EnpheephError("select at least one site kind (weight, activation, input)")
        if self.count is CountMode.FIXED and self.rates:
            raise EnpheephError("give either a fault count or fault rates, not both")
        if self.count is not CountMode.FIXED:
            if not self.rates:
                raise EnpheephError("a fault-rate campaign needs at least one rate")
            bad = [r for r in self.rates if not (0 <= r <= 1) or math.isnan(r)]
            if bad:
                raise EnpheephError(
                    f"fault rate {bad[0]:g} is out of range: rates are probabilities in [0, 1] "
                    "(e.g. 1e-7 ... 1e-1 faults per parameter)"
                )
        if self.per_sample and SiteKind.WEIGHT in self.selection.kinds:
            raise EnpheephError(
                "--per-sample applies to activations and inputs: weights are shared by every "
                "input; drop 'weight' from --kinds"
            )

    @property
    def levels(self) -> tuple[float | None, ...]:
        """The rate of each level (``(None,)`` for a fixed count)."""
        return (None,) if self.count is CountMode.FIXED else self.rates

    @property
    def total_trials(self) -> int:
        return len(self.levels) * self.trials

    def to_json(self) -> dict[str, Any]:
        return {
            "selection": self.selection.to_json(),
            "fault_model": self.fault_model.value,
            "bits": format_bits(self.bits),
            "value": str(self.value) if self.value else None,
            "count": self.count.value,
            "faults_per_trial": self.faults_per_trial,
            "rates": list(self.rates),
            "exact_count": self.exact_count,
            "trials": self.trials,
            "per_sample": self.per_sample,
            "pruned_weights": self.pruned_weights,
            "time_steps": self.time_steps,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "provider": self.provider,
            "output": self.output,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> CampaignConfig:
        sel = d["selection"]
        return cls(
            selection=SiteSelection(tuple(SiteKind(k) for k in sel["kinds"]),
                                    tuple(sel["patterns"]), tuple(sel["op_types"])),
            fault_model=FaultModel(d["fault_model"]), bits=parse_bits(d["bits"]),
            value=ValueDistribution.parse(d["value"]) if d.get("value") else None,
            count=CountMode(d["count"]), faults_per_trial=d["faults_per_trial"],
            rates=tuple(d["rates"]), exact_count=d["exact_count"], trials=d["trials"],
            per_sample=d["per_sample"], pruned_weights=d.get("pruned_weights", "skip"),
            time_steps=d.get("time_steps"), seed=d["seed"], batch_size=d["batch_size"],
            provider=d["provider"], output=d["output"])

    def sampling_json(self) -> dict[str, Any]:
        """The settings that decide the faults and outcomes (not batch size, provider)."""
        d = self.to_json()
        for k in ("batch_size", "provider"):
            d.pop(k)
        return d


def parse_rates(text: str) -> tuple[float, ...]:
    """Parse ``1e-7,1e-6,1e-5`` or a log grid ``START:STOP:POINTS_PER_DECADE``.

    Raises:
        EnpheephError: malformed text, or a grid that yields no rate.
    """
    text = text.strip()
    try:
        if ":" in text:
            parts = text.split(":")
            if len(parts) != 3:
                raise ValueError
            start, stop, per = float(parts[0]), float(parts[1]), float(parts[2])
            if start <= 0 or stop <= 0 or per <= 0 or stop < start:
                raise EnpheephError(
                    f"fault-rate grid {text!r} yields no rate: use START:STOP:POINTS with "
                    "0 < START <= STOP and POINTS (per decade) > 0, e.g. 1e-7:1e-1:2"
                )
            lo, hi = math.log10(start), math.log10(stop)
            n = math.floor((hi - lo) * per + 1e-9) + 1
            return tuple(float(f"{10 ** (lo + i / per):.6g}") for i in range(n))
        return tuple(float(x) for x in text.split(",") if x.strip())
    except EnpheephError:
        raise
    except ValueError:
        raise EnpheephError(
            f"malformed fault rate {text!r}: use a list '1e-7,1e-6' or a grid '1e-7:1e-1:2'"
        ) from None


# -- sampling -------------------------------------------------------------------------------

def parse_steps(text: str) -> tuple[int, ...] | None:
    """``"3"`` -> (3,), ``"3-5"`` -> (3, 4, 5), ``"1,4"``; ``"all"``/``"*"`` -> None (every step).

    Raises:
        EnpheephError: malformed text.
    """
    t = text.strip().lower()
    if t in ("all", "*"):
        return None
    try:
        return parse_bits(t)
    except EnpheephError:
        raise EnpheephError(f"malformed time steps {text!r}: use '3', '3-5', '1,4' or 'all'"
                            ) from None


def allowed_elements(model: onnx.ModelProto, sites: list[FaultSite], mode: str
                     ) -> dict[str, np.ndarray]:
    """Flat indices a weight fault may hit under ``--pruned-weights`` (``skip``: unpruned
    elements, ``only``: pruned ones); weights absent from the result allow every element."""
    if mode == "include":
        return {}
    from .sites import constant_values, pruned_mask, quantization_params

    consts = constant_values(model)
    qp = quantization_params(model)
    out = {}
    for s in sites:
        if s.kind is SiteKind.WEIGHT and s.name in consts:
            mask = pruned_mask(consts[s.name], qp.get(s.name)).reshape(-1)
            out[s.name] = np.flatnonzero(mask if mode == "only" else ~mask)
    return out

def select_sites(sites: list[FaultSite], cfg: CampaignConfig) -> list[FaultSite]:
    """The sites ``cfg`` may hit (those with at least one candidate bit and one element).

    Raises:
        EnpheephError: the selection is empty.
    """
    bits = cfg.bits
    chosen = [s for s in sites if cfg.selection.matches(s) and s.static_elements > 0
              and (cfg.fault_model is FaultModel.VALUE or any(b < s.bits for b in bits))]
    if cfg.per_sample:
        chosen = [s for s in chosen if s.shape and not isinstance(s.shape[0], int)]
    if cfg.time_steps is not None:
        steps = parse_steps(cfg.time_steps)
        chosen = [s for s in chosen if s.time_step is not None
                  and (steps is None or s.time_step in steps)]
        if steps is not None:
            known = {s.time_step for s in sites if s.time_step is not None}
            beyond = [t for t in steps if known and t > max(known)]
            if beyond or not known:
                raise EnpheephError(
                    f"time step {beyond[0] if beyond else steps[0]} does not exist: the model "
                    + (f"has steps 0-{max(known)}" if known else "has no time-step annotations")
                )
    if not chosen:
        kinds = ",".join(k.value for k in cfg.selection.kinds)
        extra = "".join([f", --sites {' '.join(cfg.selection.patterns)}"
                         if cfg.selection.patterns else "",
                         f", --op-types {','.join(cfg.selection.op_types)}"
                         if cfg.selection.op_types else ""])
        raise EnpheephError(
            f"the site selection is empty: no {kinds} site matches bits "
            f"{format_bits(bits)}{extra}; check --kinds/--sites/--op-types/--bits "
            "(enpheeph-onnx sites MODEL lists the sites)"
        )
    return chosen


def _usable_bits(s: FaultSite, cfg: CampaignConfig) -> tuple[int, ...]:
    if cfg.fault_model is FaultModel.VALUE:
        return (0,)
    return tuple(b for b in cfg.bits if b < s.bits)


def fault_population(sites: list[FaultSite], cfg: CampaignConfig,
                     allowed: dict[str, np.ndarray] | None = None) -> int:
    """Elements x candidate bits over the selected sites (Leveugle's N)."""
    allowed = allowed or {}
    return int(sum((len(allowed[s.name]) if s.name in allowed else s.static_elements)
                   * len(_usable_bits(s, cfg)) for s in sites))


def trial_rng(seed: int, trial: int) -> np.random.Generator:
    """The independent random stream of trial ``trial``."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(trial,)))


class Sampler:
    """Draws the faults of each trial of a campaign (see the module docstring).

    Args:
        sites: the selected sites.
        cfg: the configuration.
        samples: inputs per trial (for ``per_sample``).
    """

    def __init__(self, sites: list[FaultSite], cfg: CampaignConfig, samples: int,
                 allowed: dict[str, np.ndarray] | None = None) -> None:
        self.cfg, self.samples = cfg, samples
        self.allowed = {k: v for k, v in (allowed or {}).items()}
        # permanent faults on neuron states: sample one representative per (layer, role)
        # and replicate the fault onto every time step
        self.replicas: dict[str, list[str]] = {}
        if cfg.time_steps is not None and parse_steps(cfg.time_steps) is None:
            groups: dict[tuple[str, str | None], list[FaultSite]] = {}
            for s in sites:
                if s.time_step is not None:
                    groups.setdefault((s.layer, s.role), []).append(s)
            reps = []
            for members in groups.values():
                members.sort(key=lambda m: m.time_step or 0)
                self.replicas[members[0].name] = [m.name for m in members]
                reps.append(members[0])
            sites = reps
        counts = [len(self.allowed[s.name]) if s.name in self.allowed else s.static_elements
                  for s in sites]
        self.sites = [s for s, c in zip(sites, counts, strict=True) if c > 0]
        if not self.sites:
            raise EnpheephError(
                f"no element to hit: with --pruned-weights {cfg.pruned_weights} the selected "
                "weights have none (a dense model has no pruned weights to hit with 'only')"
            )
        self.usable = [np.array(_usable_bits(s, cfg), dtype=np.int64) for s in self.sites]
        self.nbits = np.array([len(u) for u in self.usable], dtype=np.int64)
        self.elems = np.array([c for c in counts if c > 0], dtype=np.int64)
        ber = cfg.count is CountMode.BIT_ERROR_RATE
        weights = self.elems * self.nbits if ber else self.elems
        self.offsets = np.concatenate([[0], np.cumsum(weights)])
        self.population = int(self.offsets[-1])
        self.static = [[d for d in s.shape if isinstance(d, int)] for s in self.sites]
        self.ranges = {}
        for s in self.sites:
            d = BY_NAME[s.dtype]
            if not d.is_float:
                info = np.iinfo(d.numpy)
                self.ranges[s.name] = (int(info.min), int(info.max))

    def level_of(self, trial: int) -> int:
        return trial // self.cfg.trials

    def sample(self, trial: int) -> tuple[Fault, ...]:
        """The faults of trial ``trial`` (deterministic in the seed and ``trial``)."""
        cfg = self.cfg
        rng = trial_rng(cfg.seed, trial)
        rate = cfg.levels[self.level_of(trial)]
        groups = self.samples if cfg.per_sample else 1
        if rate is None:
            counts = np.full(groups, cfg.faults_per_trial, dtype=np.int64)
        elif cfg.exact_count:
            counts = np.full(groups, round(rate * self.population), dtype=np.int64)
        else:
            counts = rng.poisson(rate * self.population, size=groups)
        total = int(counts.sum())
        flat = rng.integers(0, self.population, size=total)
        which = np.searchsorted(self.offsets, flat, side="right") - 1
        local = flat - self.offsets[which]
        if cfg.count is CountMode.BIT_ERROR_RATE:
            elem, bitpos = local // self.nbits[which], local % self.nbits[which]
        else:
            elem = local
            bitpos = np.minimum((rng.random(total) * self.nbits[which]).astype(np.int64),
                                self.nbits[which] - 1)
        values = cfg.value.draw(rng, total) if cfg.value is not None else None
        sample_of = np.repeat(np.arange(groups), counts)
        # unravel each site's element numbers in one vectorized call
        coords: list[list[int | None]] = [[] for _ in range(total)]
        for w in np.unique(which).tolist():
            sel = np.flatnonzero(which == w)
            s = self.sites[w]
            static = self.static[w]
            flat_elem = elem[sel]
            if s.name in self.allowed:
                flat_elem = self.allowed[s.name][flat_elem]
            cols = np.unravel_index(flat_elem, static) if static else ()
            cols_iter = [c.tolist() for c in cols]
            per_dim: list[list[int | None]] = []
            j = 0
            for d in s.shape:
                if isinstance(d, int):
                    per_dim.append(cols_iter[j])  # type: ignore[arg-type]
                    j += 1
                else:
                    per_dim.append([None] * len(sel))
            if cfg.per_sample and s.shape:
                per_dim[0] = sample_of[sel].tolist()
            for k, idx in zip(sel.tolist(), zip(*per_dim, strict=True) if per_dim else
                              [()] * len(sel), strict=True):
                coords[k] = idx  # type: ignore[assignment]
        faults = []
        names = [s.name for s in self.sites]
        if values is not None:
            for k in range(total):
                w = int(which[k])
                v = float(values[k])
                if names[w] in self.ranges:  # integers saturate; NaN is stored as 0
                    lo, hi = self.ranges[names[w]]
                    v = 0.0 if math.isnan(v) else float(min(max(v, lo), hi))
                    v = float(round(v))
                faults.append(Fault.trusted(names[w], tuple(coords[k]), FaultModel.VALUE, (), v))
        else:
            bits = [self.usable[w][b] for w, b in zip(which.tolist(), bitpos.tolist(),
                                                        strict=True)]
            model = cfg.fault_model
            for k, w in enumerate(which.tolist()):
                faults.append(Fault.trusted(names[w], tuple(coords[k]), model, (int(bits[k]),)))
        if self.replicas:
            faults = [Fault.trusted(r, f.index, f.model, f.bits, f.value)
                      for f in faults for r in self.replicas.get(f.site, [f.site])]
        return tuple(faults)


def sample_trial(sites: list[FaultSite], cfg: CampaignConfig, trial: int,
                 samples: int = 1) -> tuple[Fault, ...]:
    """The faults of one trial (see :class:`Sampler`)."""
    return Sampler(sites, cfg, samples).sample(trial)


# -- plans ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class PlannedTrial:
    trial: int
    level: int
    rate: float | None
    faults: tuple[Fault, ...]


@dataclass(frozen=True)
class CampaignPlan:
    """The sampled fault lists of a campaign, to replay exactly (``campaign --plan``)."""

    config: CampaignConfig
    model_sha256: str
    samples: int
    trials: tuple[PlannedTrial, ...]

    def to_json(self) -> dict[str, Any]:
        return {"format": "enpheeph-onnx campaign plan", "version": 1,
                "config": self.config.to_json(), "model_sha256": self.model_sha256,
                "samples": self.samples,
                "trials": [{"trial": t.trial, "level": t.level, "rate": t.rate,
                            "faults": [f.to_json() for f in t.faults]} for t in self.trials]}

    def save(self, path: str | os.PathLike[str]) -> None:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(self.to_json(), separators=(",", ":")))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CampaignPlan:
        """Raises: EnpheephError for a missing or malformed plan."""
        p = Path(path)
        try:
            d = json.loads(p.read_text())
        except OSError as e:
            raise EnpheephError(f"cannot read campaign plan {p}: {e.strerror}") from None
        except json.JSONDecodeError as e:
            raise EnpheephError(f"campaign plan {p} is not valid JSON: {e.msg}") from None
        if not isinstance(d, dict) or d.get("format") != "enpheeph-onnx campaign plan":
            raise EnpheephError(
                f"{p} is not a campaign plan (write one with 'enpheeph-onnx plan'); "
                "a single fault list goes to 'inject --plan'"
            )
        try:
            from .faults import Fault as F

            trials = tuple(PlannedTrial(int(t["trial"]), int(t["level"]), t["rate"],
                                        tuple(F.from_json(f) for f in t["faults"]))
                           for t in d["trials"])
            return cls(CampaignConfig.from_json(d["config"]), str(d["model_sha256"]),
                       int(d["samples"]), trials)
        except (KeyError, TypeError, ValueError) as e:
            raise EnpheephError(f"campaign plan {p} is malformed ({e})") from None


def plan_campaign(model: ModelSource, cfg: CampaignConfig, samples: int) -> CampaignPlan:
    """Sample every trial's faults without running anything.

    Raises:
        EnpheephError: bad model or an empty site selection.
    """
    proto = load_model(model)
    sites = select_sites(discover_sites(proto), cfg)
    sampler = Sampler(sites, cfg, samples, allowed_elements(proto, sites, cfg.pruned_weights))
    trials = tuple(PlannedTrial(t, sampler.level_of(t), cfg.levels[sampler.level_of(t)],
                                sampler.sample(t)) for t in range(cfg.total_trials))
    return CampaignPlan(cfg, model_sha256(model), samples, trials)


# -- running --------------------------------------------------------------------------------

def classify(golden: dict[str, np.ndarray], faulty: dict[str, np.ndarray], output: str
             ) -> np.ndarray:
    """Per-sample outcome codes ``uint8 [N]``: 0 masked, 1 tolerable SDC, 2 critical SDC,
    3 DUE.

    Args:
        golden, faulty: outputs keyed by name, batch along axis 0.
        output: the classifier output (top-1 over its flattened non-batch axes).
    """
    n = len(golden[output])
    differs = np.zeros(n, dtype=bool)
    due = np.zeros(n, dtype=bool)
    for name, g in golden.items():
        f = faulty[name]
        if g.dtype != f.dtype or g.shape != f.shape:
            differs |= True
        else:
            differs |= (g.reshape(n, -1).view(np.uint8) != f.reshape(n, -1).view(np.uint8)
                        ).any(1)
        if np.issubdtype(f.dtype, np.floating):
            due |= ~np.isfinite(f.reshape(n, -1)).all(1)
    g_top = np.argmax(golden[output].reshape(n, -1), axis=1)
    f_top = np.argmax(faulty[output].reshape(n, -1), axis=1)
    code = np.where(differs, np.where(g_top != f_top, 2, 1), 0)
    return np.where(due, 3, code).astype(np.uint8)


@dataclass(frozen=True)
class CampaignResult:
    """A finished (or resumed-to-completion) campaign."""

    config: CampaignConfig
    golden_accuracy: float | None
    samples: int
    trials: tuple[TrialRecord, ...]
    summary: dict[str, Any]
    gates: tuple[dict[str, Any], ...] = ()
    db: Path | None = None
    providers: tuple[str, ...] = ()

    @property
    def mean_accuracy(self) -> float | None:
        return self.summary["mean_accuracy"]

    @property
    def accuracy_drop(self) -> float | None:
        """Golden accuracy minus mean faulty accuracy."""
        return self.summary["accuracy_drop"]

    @property
    def passed(self) -> bool:
        return all(g["passed"] for g in self.gates)

    def outcome_totals(self) -> dict[str, int]:
        return dict(self.summary["outcomes"])

    def to_json(self) -> dict[str, Any]:
        return {**self.summary, "providers": list(self.providers),
                "db": str(self.db) if self.db else None, "gates": list(self.gates),
                "passed": self.passed}


def _meta(model: ModelSource, sha: str, cfg: CampaignConfig, providers: list[str],
          samples: int) -> dict[str, Any]:
    import onnxruntime

    return {
        "tool_version": __version__,
        "model": str(model) if not isinstance(model, onnx.ModelProto) else "<ModelProto>",
        "model_sha256": sha,
        "config": cfg.to_json(),
        "providers": providers,
        "session_options": {"graph_optimization_level": "ORT_ENABLE_EXTENDED",
                            "session.disable_prepacking": "1",
                            "session.disable_quant_qdq": "1"},
        "versions": {"enpheeph_onnx": __version__, "onnx": onnx.__version__,
                     "onnxruntime": onnxruntime.__version__, "numpy": np.__version__,
                     "python": platform.python_version()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "samples": samples,
    }


def _open_store(db: str | os.PathLike[str], resume: bool, meta: dict[str, Any],
                kinds: dict[str, tuple[str, str]], cfg: CampaignConfig) -> ResultStore:
    if resume and Path(db).exists():
        store = ResultStore.open(db, kinds, cfg.per_sample)
        old = store.meta()
        if old.get("model_sha256") != meta["model_sha256"]:
            store.close()
            raise EnpheephError(
                f"cannot resume {db}: it holds a campaign on another model (sha256 "
                f"{str(old.get('model_sha256'))[:12]}..., this model {meta['model_sha256'][:12]}"
                "...); use a new --db"
            )
        was = CampaignConfig.from_json(old["config"]).sampling_json()
        if was != cfg.sampling_json():
            store.close()
            diff = sorted(k for k in was if was[k] != cfg.sampling_json().get(k))
            raise EnpheephError(
                f"cannot resume {db}: it was started with other settings ({', '.join(diff)}); "
                "resume with the same options or use a new --db"
            )
        return store
    return ResultStore.create(db, meta, kinds, cfg.per_sample)


def run_campaign(
    model: ModelSource,
    data: Dataset,
    config: CampaignConfig,
    db: str | os.PathLike[str] | None = None,
    *,
    resume: bool = False,
    plan: CampaignPlan | None = None,
    gates: tuple[tuple[str, float], ...] = (),
    progress: bool | None = None,
    commit_every: float = 1.0,
) -> CampaignResult:
    """Run (or resume) a campaign, storing every trial in SQLite when ``db`` is given.

    Args:
        model: path or ``ModelProto``.
        data: inputs and labels (labels optional: accuracy is then ``None``).
        config: what to inject (with ``plan``: its own config is used for sampling).
        db: results database; created, or continued with ``resume``.
        resume: continue the trials missing from ``db`` (refused for another model or
            other sampling settings); without it an existing ``db`` is refused.
        plan: replay these sampled trials instead of sampling.
        gates: ``(metric, threshold)`` pairs checked at every level (see
            :data:`enpheeph_onnx.summary.METRICS`).
        progress: tqdm bar on stderr; ``None`` shows it only on a terminal.
        commit_every: seconds between commits of finished trials.

    Returns:
        :class:`CampaignResult` with the summary of all trials (stored ones included).

    Raises:
        EnpheephError: bad model, data or configuration; a database that cannot be
            created or resumed.
        KeyboardInterrupt: after committing every finished trial.
    """
    proto = load_model(model)
    sha = model_sha256(model)
    all_sites = discover_sites(proto)
    if plan is not None:
        if plan.model_sha256 != sha:
            log.warning("the plan was sampled for another model (sha256 %s...)",
                        plan.model_sha256[:12])
        config = replace(plan.config, batch_size=config.batch_size, provider=config.provider,
                         output=config.output or plan.config.output)
        smap = site_map(all_sites)
        planned = [f for t in plan.trials for f in t.faults]
        validate_faults(smap, planned, proto)
        names = {f.site for f in planned}
        sites = [s for s in all_sites if s.name in names]
        if len(data) != plan.samples and config.per_sample:
            raise EnpheephError(f"the plan was sampled for {plan.samples} inputs per trial, "
                                f"the data has {len(data)}")
        trials_todo = {t.trial: t for t in plan.trials}
        sampler = None
    else:
        sites = select_sites(all_sites, config)
        sampler = Sampler(sites, config, len(data),
                          allowed_elements(proto, sites, config.pruned_weights))
        trials_todo = None
    engine = FaultEngine(proto, sites, config.provider)
    output = config.output or engine.output_names[0]
    if output not in engine.output_names:
        raise EnpheephError(f"unknown output {output!r}: the model has {engine.output_names}")
    feeds = check_feeds(_Inputs(engine), data.inputs)
    kinds = {s.name: (s.kind.value, s.layer) for s in all_sites}
    golden = engine.run(feeds, (), config.batch_size)  # before any file is written
    golden_acc = _accuracy(golden[output], data.labels)
    store = None
    created = False
    if db is not None:
        created = not (resume and Path(db).exists())
        meta = _meta(model, sha, config, engine.providers, len(data))
        meta["data_sha256"] = data_sha256(data)
        store = _open_store(db, resume, meta, kinds, config)
    committed = False
    try:
        if store:
            stored = store.meta()
            if stored.get("data_sha256", meta["data_sha256"]) != meta["data_sha256"]:
                raise EnpheephError(
                    f"cannot resume {db}: it was run on other data (sha256 "
                    f"{str(stored.get('data_sha256'))[:12]}...); use the same --data or a new "
                    "--db")
            old = stored.get("golden_accuracy")
            if old is not None and golden_acc is not None and old != golden_acc:
                raise EnpheephError(
                    f"cannot resume {db}: the golden accuracy changed ({old} -> {golden_acc}); "
                    "was the onnxruntime version changed? use a new --db")
            store.set_meta("golden_accuracy", golden_acc)
        numbers = sorted(trials_todo) if trials_todo is not None else list(
            range(config.total_trials))
        done = store.done_trials() if store else set()
        todo = [t for t in numbers if t not in done]
        if done:
            log.info("resuming: %d of %d trials already stored", len(done), len(numbers))
        records: list[TrialRecord] = []
        correct_sum, seen = 0.0, 0
        last_commit = time.monotonic()
        bar = tqdm(todo, desc="trials", unit="trial", leave=False,
                   disable=None if progress is None else not progress,
                   initial=0, total=len(todo))
        for t in bar:
            if trials_todo is not None:
                pt = trials_todo[t]
                level, rate, faults = pt.level, pt.rate, pt.faults
            else:
                assert sampler is not None
                level = sampler.level_of(t)
                rate, faults = config.levels[level], sampler.sample(t)
            start = time.perf_counter()
            out = engine.run(feeds, faults, config.batch_size) if faults else golden
            seconds = time.perf_counter() - start
            ref = engine.reference(feeds, faults, config.batch_size) if faults else golden
            codes = classify(ref, out, output)
            correct = None
            if data.labels is not None:
                correct = np.argmax(out[output].reshape(len(data), -1), 1) == data.labels
                correct_sum += float(np.mean(correct))
                seen += 1
                bar.set_postfix(acc=f"{correct_sum / seen:.4f}")
            rec = TrialRecord(t, level, rate, faults, codes, correct, seconds)
            records.append(rec)
            if store:
                store.add(rec)
                if time.monotonic() - last_commit >= commit_every:
                    store.flush()
                    committed = True
                    last_commit = time.monotonic()
        if store:
            store.flush()
            committed = True
            store.set_meta("status", "complete")
            records = list(store.trials())
    except KeyboardInterrupt:
        raise
    except BaseException:
        if store and created and not committed:  # a failed new campaign leaves no file
            store.close()
            store = None
            for suffix in ("", "-wal", "-shm"):
                Path(f"{db}{suffix}").unlink(missing_ok=True)
        raise
    finally:
        if store:
            store.close()
    rate_kind = config.count.value
    summary = summarize(records, golden_accuracy=golden_acc, samples=len(data),
                        rate_kind=rate_kind, kinds=kinds, per_sample=config.per_sample,
                        config=config.to_json())
    results = tuple(check_gates(summary, gates))
    return CampaignResult(config, golden_acc, len(data), tuple(records), summary, results,
                          Path(db) if db is not None else None, tuple(engine.providers))


class _Inputs:
    """Adapter so :func:`check_feeds` sees only the source model's data inputs."""

    def __init__(self, engine: FaultEngine) -> None:
        names = set(engine.input_names)
        self._inputs = [i for i in engine.session.get_inputs() if i.name in names]

    def get_inputs(self) -> list[Any]:
        return self._inputs


def _accuracy(logits: np.ndarray, labels: np.ndarray | None) -> float | None:
    if labels is None:
        return None
    top = np.argmax(logits.reshape(len(logits), -1), axis=1)
    return float(np.mean(top == labels))


def data_sha256(data: Dataset) -> str:
    """SHA-256 over the data's input arrays (sorted by name) and labels: dtype, shape, bytes."""
    import hashlib

    h = hashlib.sha256()
    arrays = sorted(data.inputs.items())
    if data.labels is not None:
        arrays.append(("labels", data.labels))
    for name, a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def trials_for_margin(sites: list[FaultSite], cfg: CampaignConfig, margin: float,
                      confidence: float, p: float = 0.5,
                      allowed: dict[str, np.ndarray] | None = None) -> int:
    """Trials per level for a margin of error at a confidence level (Leveugle et al.,
    DATE 2009), with N = elements x candidate bits of the selected sites."""
    return sample_size(fault_population(sites, cfg, allowed), margin, confidence, p)


def load_summary(db: str | os.PathLike[str]) -> dict[str, Any]:
    """The summary of a stored campaign (for ``report`` and ``export``).

    Raises:
        EnpheephError: missing or foreign database.
    """
    with ResultStore.open(db) as store:
        meta = store.meta()
        cfg = CampaignConfig.from_json(meta["config"])
        store.per_sample = cfg.per_sample
        records = list(store.trials())
        kinds = {row[0]: (row[1], row[2]) for row in store.conn.execute(
            "SELECT DISTINCT site, kind, layer FROM fault")}
    summary = summarize(records, golden_accuracy=meta.get("golden_accuracy"),
                        samples=int(meta.get("samples", 0)), rate_kind=cfg.count.value,
                        kinds=kinds, per_sample=cfg.per_sample, config=cfg.to_json())
    summary["model_sha256"] = meta.get("model_sha256")
    summary["status"] = meta.get("status", "incomplete")
    return summary


__all__ = ["CampaignConfig", "CampaignPlan", "CampaignResult", "CountMode", "Dataset",
           "Sampler", "SiteSelection", "ValueDistribution", "classify", "input_names",
           "load_dataset", "load_summary", "parse_rates", "plan_campaign", "run_campaign",
           "sample_trial", "select_sites", "trials_for_margin"]
