"""Campaign configuration: which sites, which fault model, how many faults, how many trials."""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np

from ..errors import EnpheephError
from ..faults import FaultModel, format_bits, parse_bits, parse_ranges
from ..runtime import Optimization, Provider
from ..sites import FaultSite, SiteKind
from .outcomes import OutcomePolicy


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
        provider: ``"cpu"``, ``"cuda"`` or ``"tensorrt"``.
        output: the classifier output used for top-1 (default: the first output).
        stratify: ``()`` (a plain sweep), ``("layer",)``, ``("bit",)`` or
            ``("layer", "bit")``: every stratum (layer, bit position, or layer x bit
            cell) gets ``trials`` trials per level, each trial's faults confined to its
            stratum (stratified sampling: per-layer and per-bit vulnerability are measured,
            not attributed). Fault rates are then per parameter of the stratum.
        suffix: run each trial from its first hit site on (suffix re-execution, on golden
            tensors cached per batch; each cut verified bit-identical before use).
        cache_mb: the most memory (MiB) suffix re-execution may hold (golden tensors,
            extra segment sessions); beyond it, full runs or fine segments.
        optimization: onnxruntime graph optimizations
            (:class:`enpheeph_onnx.runtime.Optimization`): ``extended`` (default) or ``all``
            (as deployed: weight faults on the weights onnxruntime holds,
            :mod:`enpheeph_onnx.held`, or activation/input faults; not both kinds at once).
        store_faults: ``"all"`` stores every trial's faults; ``"none"`` only their count
            (trials are reproducible from the seed either way).
        allow_cpu_fallback: let ``cuda``/``tensorrt`` run on the CPU (with a warning)
            when no GPU can serve, instead of refusing.
        outcome: when a differing output is a critical SDC
            (:class:`~enpheeph_onnx.campaign.outcomes.OutcomePolicy`: top-1, top-k,
            per-output tolerances).
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
    stratify: tuple[str, ...] = ()
    store_faults: str = "all"
    suffix: bool = True
    cache_mb: float = 512.0
    optimization: Optimization = Optimization.EXTENDED
    outcome: OutcomePolicy = field(default_factory=OutcomePolicy)
    allow_cpu_fallback: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.stratify, str):
            object.__setattr__(self, "stratify", tuple(self.stratify.split(",")))
        axes = tuple(a for a in ("layer", "bit") if a in self.stratify)
        if len(axes) != len(set(self.stratify)):
            raise EnpheephError(f"--stratify {','.join(self.stratify)}: use layer, bit or "
                                "layer,bit")
        object.__setattr__(self, "stratify", axes)
        try:
            object.__setattr__(self, "optimization", Optimization(self.optimization))
        except ValueError:
            raise EnpheephError(f"--optimization {self.optimization}: use extended or all"
                                ) from None
        weights = SiteKind.WEIGHT in self.selection.kinds
        if (self.optimization is Optimization.ALL and weights
                and set(self.selection.kinds) - {SiteKind.WEIGHT}):
            raise EnpheephError(
                "--optimization all runs weight faults on the graph onnxruntime optimizes, "
                "where activations are no longer the model's tensors, so one campaign cannot "
                "mix weights with activations or inputs; use --kinds weight, or "
                "--kinds activation,input, or --optimization extended")
        if self.optimization is Optimization.ALL and not self.suffix and not weights:
            raise EnpheephError(
                "--optimization all needs suffix re-execution: without it faults are fed by "
                "fault nodes, which change onnxruntime's layout optimizations (trials would "
                "no longer equal inject + run); drop --no-suffix or use --optimization "
                "extended")
        if not (self.cache_mb >= 0 and math.isfinite(self.cache_mb)):
            raise EnpheephError(f"--cache-mb {self.cache_mb}: give a size in MiB >= 0")
        if self.store_faults not in ("all", "none"):
            raise EnpheephError(f"--store-faults {self.store_faults!r}: use all or none")
        if "bit" in axes and self.fault_model is FaultModel.VALUE:
            raise EnpheephError("--stratify bit needs a bit fault model: the value model "
                                "replaces whole elements")
        if axes and self.count is CountMode.BIT_ERROR_RATE:
            raise EnpheephError("--stratify works with --fault-rate or a fixed count, not "
                                "--bit-error-rate (whose population, elements x bits, is not "
                                "split into strata); use --fault-rate")
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
        if self.faults_per_trial > MAX_FAULTS_PER_TRIAL:
            raise EnpheephError(
                f"--faults-per-trial {self.faults_per_trial:,} is more than "
                f"{MAX_FAULTS_PER_TRIAL:,} (each fault takes ~50 bytes while a trial runs); "
                "use fewer faults per trial")
        if len(self.rates) > MAX_LEVELS:
            raise EnpheephError(f"{len(self.rates):,} fault-rate levels: at most {MAX_LEVELS:,}"
                                "; use fewer points per decade")
        if self.trials < 1:
            raise EnpheephError("--trials must be >= 1")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise EnpheephError(f"--seed {self.seed}: give an integer >= 0 (numpy "
                                "SeedSequence entropy)")
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
            "stratify": list(self.stratify),
            "store_faults": self.store_faults,
            "suffix": self.suffix,
            "cache_mb": self.cache_mb,
            "optimization": self.optimization.value,
            "outcome": self.outcome.to_json(),
            "allow_cpu_fallback": self.allow_cpu_fallback,
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
            provider=d["provider"], output=d["output"],
            stratify=tuple(d.get("stratify", ())), store_faults=d.get("store_faults", "all"),
            suffix=d.get("suffix", True), cache_mb=d.get("cache_mb", 512.0),
            optimization=Optimization(d.get("optimization", "extended")),
            outcome=OutcomePolicy.from_json(d.get("outcome")),
            allow_cpu_fallback=bool(d.get("allow_cpu_fallback", False)))

    def sampling_json(self) -> dict[str, Any]:
        """The settings that decide the faults and outcomes (not batch size, provider,
        fault storage)."""
        d = self.to_json()
        for k in ("batch_size", "provider", "store_faults", "suffix", "cache_mb",
                  "allow_cpu_fallback"):
            d.pop(k)
        return d


MAX_FAULTS_PER_TRIAL = 100_000_000
"""Faults one trial may draw (fixed count, or expected count at a fault rate): a trial's
faults live in memory as columns of ~50 bytes each."""

MAX_LEVELS = 10_000
"""Fault-rate levels one campaign may have."""


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
            if not all(math.isfinite(v) for v in (start, stop, per)) or (
                    start <= 0 or stop <= 0 or per <= 0 or stop < start):
                raise EnpheephError(
                    f"fault-rate grid {text!r} yields no rate: use START:STOP:POINTS with "
                    "0 < START <= STOP and POINTS (per decade) > 0, e.g. 1e-7:1e-1:2"
                )
            lo, hi = math.log10(start), math.log10(stop)
            n = math.floor((hi - lo) * per + 1e-9) + 1
            if n > MAX_LEVELS:
                raise EnpheephError(
                    f"fault-rate grid {text!r} yields {n:,} levels: at most {MAX_LEVELS:,}; "
                    "use fewer points per decade")
            return tuple(float(f"{10 ** (lo + i / per):.6g}") for i in range(n))
        rates = tuple(float(x) for x in text.split(",") if x.strip())
        if not all(math.isfinite(r) for r in rates):
            raise EnpheephError(f"fault rate {text!r} is not a finite number: use e.g. "
                                "'1e-7,1e-6' or a grid '1e-7:1e-1:2'")
        return rates
    except EnpheephError:
        raise
    except ValueError:
        raise EnpheephError(
            f"malformed fault rate {text!r}: use a list '1e-7,1e-6' or a grid '1e-7:1e-1:2'"
        ) from None


def parse_steps(text: str) -> tuple[int, ...] | None:
    """``"3"`` -> (3,), ``"3-5"`` -> (3, 4, 5), ``"1,4"``; ``"all"``/``"*"`` -> None (every step).

    Raises:
        EnpheephError: malformed text.
    """
    t = text.strip().lower()
    if t in ("all", "*"):
        return None
    try:
        return parse_ranges(t, 1_000_000)
    except EnpheephError:
        raise EnpheephError(f"malformed time steps {text!r}: use '3', '3-5', '1,4' or 'all'"
                            ) from None


__all__ = ["CampaignConfig", "CountMode", "SiteSelection", "ValueDistribution", "parse_rates",
           "parse_steps"]
