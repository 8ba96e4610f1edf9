"""Campaign aggregates: per fault rate, per layer, per bit position, with 95 % Wilson
confidence intervals (:func:`enpheeph_onnx.stats.proportion`).

The unit of every rate is the (trial, input sample) pair. All of a trial's faults reach
every input, except per-sample faults, which reach only their own sample.

Per-layer, per-bit and bit x layer rates use **exclusive attribution**: a pair counts for
layer L (bit b, cell (L, b)) only when every fault that reaches it lies in L (has bit b,
lies in the cell). The rate is then the vulnerability P(outcome | the layer/bit is hit),
not mixed with the effect of faults elsewhere. Pairs reached by faults in several layers
count only in the per-rate rows; single-fault trials (low fault rates,
``--faults-per-trial 1``) feed every table.

Note: pairs of one trial share its faults, so they are not independent; the intervals
are those of the guide (binomial over pairs) and are narrower than trial-level ones.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from .stats import proportion
from .store import OUTCOMES, TrialRecord

METRICS = ("masked_rate", "tolerable_sdc_rate", "critical_sdc_rate", "sdc_rate", "due_rate",
           "accuracy_drop")
"""Metrics a reliability gate (``--fail-above METRIC=THRESHOLD``) can check, per level."""


def _props(counts: np.ndarray) -> dict[str, Any]:
    """Outcome proportions from ``counts[4]`` (masked, tolerable, critical, DUE)."""
    n = int(counts.sum())
    out = {name: proportion(int(counts[i]), n).to_json() for i, name in enumerate(OUTCOMES)}
    out["sdc"] = proportion(int(counts[1] + counts[2]), n).to_json()
    return out


def _layer_of(site: str, kinds: dict[str, tuple[str, str]]) -> str:
    layer = kinds.get(site, ("", ""))[1]
    return layer or site


def summarize(records: Sequence[TrialRecord], *, golden_accuracy: float | None,
              samples: int, rate_kind: str, kinds: dict[str, tuple[str, str]],
              per_sample: bool = False, config: dict[str, Any] | None = None
              ) -> dict[str, Any]:
    """Aggregate trials into the campaign summary (the ``--json`` output and the report).

    Args:
        records: the trials.
        golden_accuracy: top-1 accuracy of the golden run (``None`` without labels).
        samples: inputs per trial.
        rate_kind: ``"fault_rate"``, ``"bit_error_rate"`` or ``"fixed"``.
        kinds: site name -> ``(kind, layer)``.
        per_sample: faults' first coordinate names the one input they reach.
        config: the campaign configuration, copied into the summary.

    Returns:
        A JSON-ready dict with ``golden_accuracy``, ``mean_accuracy``, ``accuracy_drop``,
        ``outcomes``, ``per_rate``, ``per_layer``, ``per_bit``, ``bit_layer`` and
        ``trials``; every proportion as ``{k, n, rate, ci_low, ci_high}``.
    """
    levels: dict[int, list[TrialRecord]] = defaultdict(list)
    for r in records:
        levels[r.level].append(r)
    per_rate = []
    for level in sorted(levels):
        recs = levels[level]
        counts = np.sum([np.bincount(r.outcomes, minlength=4) for r in recs], axis=0)
        entry: dict[str, Any] = {"level": level, "rate": recs[0].rate, "trials": len(recs),
                                 "mean_faults": float(np.mean([len(r.faults) for r in recs]))}
        if recs[0].correct is not None:
            k = int(sum(int(np.count_nonzero(r.correct)) for r in recs))  # type: ignore[arg-type]
            n = int(sum(r.samples for r in recs))
            p = proportion(k, n)
            mean = float(np.mean([r.accuracy for r in recs]))
            entry["accuracy"] = {"mean": mean, "ci_low": p.low, "ci_high": p.high}
            entry["accuracy_drop"] = (None if golden_accuracy is None
                                      else golden_accuracy - mean)
        else:
            entry["accuracy"] = entry["accuracy_drop"] = None
        entry.update(_props(counts))
        per_rate.append(entry)

    layer_counts: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(4, np.int64))
    bit_counts: dict[int, np.ndarray] = defaultdict(lambda: np.zeros(4, np.int64))
    cell_counts: dict[tuple[str, int], np.ndarray] = defaultdict(lambda: np.zeros(4, np.int64))
    layer_faults: dict[str, int] = defaultdict(int)
    bit_faults: dict[int, int] = defaultdict(int)
    for r in records:
        if not r.faults:
            continue
        groups: dict[int | None, list[tuple[str, tuple[int, ...]]]] = defaultdict(list)
        for f in r.faults:
            layer = _layer_of(f.site, kinds)
            layer_faults[layer] += 1
            for b in f.bits:
                bit_faults[b] += 1
            weight = kinds.get(f.site, ("", ""))[0] == "weight"
            key = f.index[0] if per_sample and not weight and f.index else None
            groups[key].append((layer, f.bits))
        shared = groups.pop(None, [])
        all_counts = np.bincount(r.outcomes, minlength=4)
        _accumulate(shared, all_counts, layer_counts, bit_counts, cell_counts)
        for sample, hits in groups.items():
            if sample is not None and 0 <= sample < r.samples:
                one = np.zeros(4, np.int64)
                one[r.outcomes[sample]] = 1
                _accumulate(hits, one, layer_counts, bit_counts, cell_counts)
    layers = sorted(set(layer_counts) | set(layer_faults),
                    key=lambda name: _layer_order(name, kinds))
    bits = sorted(set(bit_counts) | set(bit_faults))
    per_layer = [{"layer": name, "faults": layer_faults[name], **_props(layer_counts[name])}
                 for name in layers]
    per_bit = [{"bit": b, "faults": bit_faults[b], **_props(bit_counts[b])} for b in bits]
    grid, pairs = [], []
    for name in layers:
        row, prow = [], []
        for b in bits:
            c = cell_counts.get((name, b))
            n = int(c.sum()) if c is not None else 0
            row.append(float(c[2] / n) if n else None)
            prow.append(n)
        grid.append(row)
        pairs.append(prow)

    accs = [r.accuracy for r in records if r.accuracy is not None]
    mean_acc = float(np.mean(accs)) if accs else None
    total = (np.sum([np.bincount(r.outcomes, minlength=4) for r in records], axis=0)
             if records else np.zeros(4, np.int64))
    return {
        "golden_accuracy": golden_accuracy,
        "mean_accuracy": mean_acc,
        "accuracy_drop": (None if golden_accuracy is None or mean_acc is None
                          else golden_accuracy - mean_acc),
        "samples": samples,
        "rate_kind": rate_kind,
        "config": config or {},
        "outcomes": {name: int(total[i]) for i, name in enumerate(OUTCOMES)},
        "per_rate": per_rate,
        "per_layer": per_layer,
        "per_bit": per_bit,
        "bit_layer": {"layers": layers, "bits": bits, "critical_sdc_rate": grid,
                      "pairs": pairs},
        "trials": [r.to_json() for r in records],
    }


def _layer_order(name: str, kinds: dict[str, tuple[str, str]]) -> int:
    order = {}
    for site, (_, layer) in kinds.items():
        order.setdefault(layer or site, len(order))
    return order.get(name, len(order))


def _accumulate(hits: Iterable[tuple[str, tuple[int, ...]]], counts: np.ndarray,
                layer_counts: dict[str, np.ndarray], bit_counts: dict[int, np.ndarray],
                cell_counts: dict[tuple[str, int], np.ndarray]) -> None:
    hits = list(hits)
    layers = {h[0] for h in hits}
    bits = {b for h in hits for b in h[1]}
    if len(layers) == 1:
        layer_counts[next(iter(layers))] += counts
    if len(bits) == 1:
        bit_counts[next(iter(bits))] += counts
    cells = {(h[0], b) for h in hits for b in h[1]}
    if len(cells) == 1:
        cell_counts[next(iter(cells))] += counts


def gate_value(level: dict[str, Any], metric: str) -> float | None:
    """The value of a gate ``metric`` for one ``per_rate`` entry."""
    if metric == "accuracy_drop":
        return level.get("accuracy_drop")
    return level[metric.removesuffix("_rate")]["rate"]


def check_gates(summary: dict[str, Any], gates: Sequence[tuple[str, float]]
                ) -> list[dict[str, Any]]:
    """Evaluate ``--fail-above`` gates at every fault-rate level.

    Returns one entry per (gate, level): ``metric``, ``threshold``, ``rate``, ``value``,
    ``passed`` (value <= threshold; a missing value, e.g. accuracy without labels, fails).
    """
    results = []
    for metric, threshold in gates:
        for level in summary["per_rate"]:
            value = gate_value(level, metric)
            ok = value is not None and not np.isnan(value) and value <= threshold
            results.append({"metric": metric, "threshold": threshold, "rate": level["rate"],
                            "value": value, "passed": bool(ok)})
    return results
