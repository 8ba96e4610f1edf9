"""Campaign aggregates with trial-level statistics: per fault rate, per layer, per bit.

The **trial** is the sampling unit (a trial's inputs share its faults, so their outcomes
are not independent). For each group of trials (a fault-rate level, a layer, a bit, a
layer x bit cell):

* ``accuracy``: the mean of the trials' *scores* with a 95 % interval over trials: a
  Wilson interval for scores in [0, 1] (:func:`enpheeph_onnx.stats.bounded_mean_interval`:
  top-1 accuracy with labels; without labels the fraction of acceptable inputs, neither
  critical SDC nor DUE), a Student t interval for a user metric's scores
  (:func:`enpheeph_onnx.stats.mean_interval`). ``score`` names which;
* ``masked``, ``tolerable_sdc``, ``critical_sdc``, ``due``, ``sdc``: pooled rates over the
  (trial, input) pairs with a Wilson interval over trials
  (:func:`enpheeph_onnx.stats.clustered_proportion`);
* ``p_trial_critical``: the fraction of trials with at least one critical SDC, with a
  Wilson interval over trials (:func:`enpheeph_onnx.stats.proportion`).

**Per layer and per bit.** A trial counts for layer L (bit b, cell (L, b)) when every one
of its faults lies in L (has bit b, lies in the cell). In a stratified campaign
(``--stratify``) that is every trial of the stratum, so the tables *measure* each
stratum's vulnerability with as many trials as any other; in a plain sweep only trials
whose faults happen to share a layer count (single-fault trials always do), which leaves
the tables sparse at high fault rates: ``attribution`` says which applies.

All of it reads only the per-trial rows (:class:`enpheeph_onnx.store.TrialTable`), never
the faults.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import EnpheephError
from .stats import (
    ClusteredProportion,
    MeanInterval,
    Proportion,
    bounded_mean_interval,
    clustered_proportion,
    mean_interval,
    proportion,
)
from .store import OUTCOMES, TrialTable

METRICS = ("masked_rate", "tolerable_sdc_rate", "critical_sdc_rate", "sdc_rate", "due_rate",
           "accuracy_drop", "score_drop")
"""Metrics a reliability gate (``--fail-above METRIC=THRESHOLD``) can check, per level
(``score_drop`` is ``accuracy_drop`` by the name that fits a campaign without labels)."""


@dataclass(frozen=True)
class Score:
    """What a campaign's trial score is (the ``trial.accuracy`` column): ``accuracy`` (top-1,
    labels), ``acceptable`` (the fraction of inputs neither critical SDC nor DUE, no labels)
    or a user metric's name; ``bounded``: the scores lie in [0, 1] (Wilson intervals over
    trials), else a metric's unbounded scores (t intervals)."""

    name: str = "accuracy"
    bounded: bool = True

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "bounded": self.bounded}

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> Score:
        """The stored ``score`` metadata; databases from before it held accuracy."""
        return cls() if not d else cls(str(d["name"]), bool(d["bounded"]))


@dataclass(frozen=True)
class OutcomeRates:
    """Pooled outcome rates of a group of trials, with Wilson intervals over trials."""

    masked: ClusteredProportion
    tolerable_sdc: ClusteredProportion
    critical_sdc: ClusteredProportion
    due: ClusteredProportion
    sdc: ClusteredProportion

    @classmethod
    def of(cls, t: TrialTable) -> OutcomeRates:
        c = t.counts
        n = t.samples
        props = [clustered_proportion(c[:, i], n) for i in range(4)]
        return cls(*props, clustered_proportion(c[:, 1] + c[:, 2], n))

    def get(self, name: str) -> ClusteredProportion:
        return getattr(self, name)  # type: ignore[no-any-return]

    def to_json(self) -> dict[str, Any]:
        return {name: self.get(name).to_json() for name in (*OUTCOMES, "sdc")}


@dataclass(frozen=True)
class GroupSummary:
    """The trial-level statistics of one group of trials (see the module docstring).

    Attributes:
        key: what the group is: ``{"level": i, "rate": r}``, ``{"layer": name}``,
            ``{"bit": b}``.
        trials: number of trials.
        faults: total faults over the trials; ``mean_faults`` per trial.
        accuracy: mean accuracy over trials with its interval (``None`` without labels).
        accuracy_drop: golden accuracy minus the mean, and ``accuracy_drop_high`` the
            golden accuracy minus the interval's lower bound (``None`` without labels).
        outcomes: pooled outcome rates.
        p_trial_critical: trials with any critical SDC, over trials (Wilson).
    """

    key: dict[str, Any]
    trials: int
    faults: int
    accuracy: MeanInterval | None
    accuracy_drop: float | None
    accuracy_drop_high: float | None
    outcomes: OutcomeRates
    p_trial_critical: Proportion

    @property
    def mean_faults(self) -> float:
        return self.faults / self.trials if self.trials else float("nan")

    @classmethod
    def of(cls, key: dict[str, Any], t: TrialTable, golden: float | None,
           bounded: bool = True) -> GroupSummary:
        acc = None
        drop = drop_high = None
        if len(t) and not np.isnan(t.accuracy).all():
            acc = (bounded_mean_interval(t.accuracy) if bounded
                   else mean_interval(t.accuracy))
            if golden is not None:
                drop, drop_high = golden - acc.mean, golden - acc.low
        crit = int(np.count_nonzero(t.counts[:, 2] > 0))
        return cls(key, len(t), int(t.n_faults.sum()), acc, drop, drop_high,
                   OutcomeRates.of(t), proportion(crit, len(t)))

    def metric(self, name: str) -> tuple[float | None, float | None]:
        """``(estimate, upper 95 % bound)`` of a gate metric (:data:`METRICS`)."""
        if name in ("accuracy_drop", "score_drop"):
            return self.accuracy_drop, self.accuracy_drop_high
        p = self.outcomes.get(name.removesuffix("_rate"))
        return p.rate, p.high

    def to_json(self) -> dict[str, Any]:
        return {**self.key, "trials": self.trials, "faults": self.faults,
                "mean_faults": self.mean_faults,
                "accuracy": None if self.accuracy is None else self.accuracy.to_json(),
                "accuracy_drop": self.accuracy_drop,
                "accuracy_drop_high": self.accuracy_drop_high,
                **self.outcomes.to_json(), "p_trial_critical": self.p_trial_critical.to_json()}


@dataclass(frozen=True)
class BitLayerGrid:
    """Critical-SDC rate per (layer, bit) cell; ``None`` where no trial measured it."""

    layers: tuple[str, ...]
    bits: tuple[int, ...]
    critical_sdc_rate: tuple[tuple[float | None, ...], ...]
    trials: tuple[tuple[int, ...], ...]

    def to_json(self) -> dict[str, Any]:
        return {"layers": list(self.layers), "bits": list(self.bits),
                "critical_sdc_rate": [list(r) for r in self.critical_sdc_rate],
                "trials": [list(r) for r in self.trials]}


@dataclass(frozen=True)
class CampaignSummary:
    """Everything a campaign measured; :meth:`to_json` is the ``--json`` output."""

    golden_accuracy: float | None
    mean_accuracy: float | None
    accuracy_drop: float | None
    samples: int
    rate_kind: str
    attribution: str
    outcomes: dict[str, int]
    per_rate: tuple[GroupSummary, ...]
    per_layer: tuple[GroupSummary, ...]
    per_bit: tuple[GroupSummary, ...]
    bit_layer: BitLayerGrid
    table: TrialTable
    config: dict[str, Any] = field(default_factory=dict)
    score: str = "accuracy"
    score_bounded: bool = True

    def trial_rows(self, limit: int | None = None) -> list[dict[str, Any]]:
        t = self.table
        rows = []
        for i in range(len(t) if limit is None else min(limit, len(t))):
            rate = float(t.rate[i])
            acc = float(t.accuracy[i])
            stratum = [x for x in (t.stratum_layer[i], None if t.stratum_bit[i] < 0
                                   else f"bit {int(t.stratum_bit[i])}") if x is not None]
            rows.append({
                "trial": int(t.trial[i]), "level": int(t.level[i]),
                "rate": None if math.isnan(rate) else rate,
                "stratum": " / ".join(stratum) if stratum else None,
                "accuracy": None if math.isnan(acc) else acc,
                **{k: int(t.counts[i, j]) for j, k in enumerate(OUTCOMES)},
                "n_faults": int(t.n_faults[i]), "first_faults": _texts(t.first_faults[i]),
                "seconds": float(t.seconds[i])})
        return rows

    def to_json(self) -> dict[str, Any]:
        return {
            "golden_accuracy": self.golden_accuracy, "mean_accuracy": self.mean_accuracy,
            "accuracy_drop": self.accuracy_drop, "samples": self.samples,
            "score": self.score, "score_bounded": self.score_bounded,
            "rate_kind": self.rate_kind, "attribution": self.attribution,
            "config": self.config, "outcomes": dict(self.outcomes),
            "per_rate": [g.to_json() for g in self.per_rate],
            "per_layer": [g.to_json() for g in self.per_layer],
            "per_bit": [g.to_json() for g in self.per_bit],
            "bit_layer": self.bit_layer.to_json(),
            "trials": self.trial_rows(),
        }


def _texts(cell: str) -> list[str]:
    import json

    return list(json.loads(cell)) if cell else []


def summarize(table: TrialTable, *, golden_accuracy: float | None, samples: int,
              rate_kind: str, config: dict[str, Any] | None = None,
              layer_order: dict[str, int] | None = None, score: str = "accuracy",
              bounded: bool = True) -> CampaignSummary:
    """Aggregate the trials into the campaign summary (the ``--json`` output and the report).

    Args:
        table: the trials' rows (:meth:`enpheeph_onnx.store.ResultStore.trial_table`).
        golden_accuracy: top-1 accuracy of the golden run (``None`` without labels).
        samples: inputs per trial.
        rate_kind: ``"fault_rate"``, ``"bit_error_rate"`` or ``"fixed"``.
        config: the campaign configuration (JSON), copied into the summary.
        layer_order: layer -> network position, the order of ``per_layer``.
        score: what the trials' ``accuracy`` column holds: ``accuracy`` (top-1, labels),
            ``acceptable`` (fraction neither critical SDC nor DUE, no labels) or a user
            metric's name; ``bounded``: the scores lie in [0, 1] (Wilson intervals), else
            t intervals.
    """
    config = config or {}
    order = layer_order or {}

    def group(rows: np.ndarray | Sequence[int], key: dict[str, Any]) -> GroupSummary:
        return GroupSummary.of(key, table.take(np.asarray(rows, np.int64)), golden_accuracy,
                               bounded)

    per_rate = []
    for level in np.unique(table.level).tolist():
        rows = np.flatnonzero(table.level == level)
        rate = float(table.rate[rows[0]])
        per_rate.append(group(rows, {"level": level, "rate": None if math.isnan(rate) else rate}))

    with_layer = np.array([x is not None for x in table.layer], bool)
    names = sorted({x for x in table.layer if x is not None},
                   key=lambda n: (order.get(n, len(order)), n))
    per_layer = [group(np.flatnonzero(with_layer & (table.layer == n)), {"layer": n})
                 for n in names]
    bits = sorted(int(b) for b in np.unique(table.bit) if b >= 0)
    per_bit = [group(np.flatnonzero(table.bit == b), {"bit": b}) for b in bits]
    grid, counts = [], []
    for n in names:
        row, crow = [], []
        for b in bits:
            sel = np.flatnonzero(with_layer & (table.layer == n) & (table.bit == b))
            c = table.counts[sel]
            pairs = int(c.sum())
            row.append(float(c[:, 2].sum() / pairs) if pairs else None)
            crow.append(len(sel))
        grid.append(tuple(row))
        counts.append(tuple(crow))
    accs = table.accuracy[~np.isnan(table.accuracy)]
    mean_acc = float(accs.mean()) if len(accs) else None
    total = table.counts.sum(0) if len(table) else np.zeros(4, np.int64)
    stratified = bool(config.get("stratify"))
    return CampaignSummary(
        golden_accuracy=golden_accuracy, mean_accuracy=mean_acc,
        accuracy_drop=(None if golden_accuracy is None or mean_acc is None
                       else golden_accuracy - mean_acc),
        samples=samples, rate_kind=rate_kind,
        attribution="stratified" if stratified else "exclusive",
        outcomes={name: int(total[i]) for i, name in enumerate(OUTCOMES)},
        per_rate=tuple(per_rate), per_layer=tuple(per_layer), per_bit=tuple(per_bit),
        bit_layer=BitLayerGrid(tuple(names), tuple(bits), tuple(grid), tuple(counts)),
        table=table, config=config, score=score, score_bounded=bounded)


@dataclass(frozen=True)
class GateResult:
    """One reliability gate at one level: passes when the upper 95 % bound of the metric
    is at most the threshold (a demonstration: too few trials fail)."""

    metric: str
    threshold: float
    rate: float | None
    value: float | None
    bound: float | None

    @property
    def passed(self) -> bool:
        return (self.bound is not None and not math.isnan(self.bound)
                and self.bound <= self.threshold)

    def to_json(self) -> dict[str, Any]:
        return {"metric": self.metric, "threshold": self.threshold, "rate": self.rate,
                "value": self.value, "bound": self.bound, "passed": self.passed}


def validate_gates(gates: Sequence[tuple[str, float]]) -> None:
    """Check gates before a campaign runs.

    Raises:
        EnpheephError: an unknown metric, or a threshold that is not a number a bound can
            be compared with (rates in [0, 1], ``accuracy_drop`` in [-1, 1]).
    """
    for metric, threshold in gates:
        if metric not in METRICS:
            raise EnpheephError(f"unknown gate metric {metric!r}: use one of "
                                f"{', '.join(METRICS)}")
        if metric == "score_drop":  # a user metric's scores may have any range
            if not (isinstance(threshold, int | float) and math.isfinite(threshold)):
                raise EnpheephError(f"gate {metric}={threshold}: the threshold must be a "
                                    "finite number")
            continue
        lo = -1.0 if metric == "accuracy_drop" else 0.0
        if not (isinstance(threshold, int | float) and lo <= threshold <= 1.0):
            raise EnpheephError(f"gate {metric}={threshold}: the threshold must be a number in "
                                f"[{lo:g}, 1] (a fraction, e.g. 0.01)")


def check_gates(summary: CampaignSummary, gates: Sequence[tuple[str, float]]
                ) -> list[GateResult]:
    """Evaluate ``--fail-above`` gates at every fault-rate level (a missing value, e.g.
    accuracy without labels, fails)."""
    out = []
    for metric, threshold in gates:
        for level in summary.per_rate:
            value, bound = level.metric(metric)
            out.append(GateResult(metric, threshold, level.key["rate"], value, bound))
    return out



__all__ = ["METRICS", "BitLayerGrid", "CampaignSummary", "GateResult", "GroupSummary",
           "OutcomeRates", "Score", "check_gates", "summarize", "validate_gates"]
