"""Fault sampling: the faults of every trial of a campaign, as columnar :class:`FaultSet`\\ s.

Trial *t* (numbered across levels and strata) draws its faults from its own random stream,
``numpy.random.SeedSequence(seed, spawn_key=(t,))``, so it is the same whatever ran before
it: an interrupted campaign resumed with the same seed ends with exactly the results of an
uninterrupted one, and a trial's faults can be recomputed from the seed alone.

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

**Strata** (``stratify``): the trials of a level are split into equal groups, one per
stratum (a layer, a bit position, or a layer x bit cell, in network order); a trial's
faults are drawn only from its stratum, with N the stratum's elements.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..bits import BY_NAME
from ..errors import EnpheephError
from ..faults import FaultModel, format_bits
from ..faultset import CODE_OF, FaultSet, bits_mask
from ..model import ModelSource, as_model
from ..sites import FaultSite, SiteKind
from ..stats import sample_size
from .config import MAX_FAULTS_PER_TRIAL, CampaignConfig, CountMode, parse_steps


def allowed_elements(model: ModelSource, sites: list[FaultSite], mode: str
                     ) -> dict[str, np.ndarray]:
    """Flat indices a weight fault may hit under ``--pruned-weights`` (``skip``: unpruned
    elements, ``only``: pruned ones); weights absent from the result allow every element."""
    model = as_model(model)
    if mode == "include":
        return {}
    from ..sites import constant_values, pruned_mask, quantization_params

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


def usable_bits(s: FaultSite, cfg: CampaignConfig) -> tuple[int, ...]:
    """The candidate bits of ``cfg`` within the width of ``s`` (``(0,)`` for values)."""
    if cfg.fault_model is FaultModel.VALUE:
        return (0,)
    return tuple(b for b in cfg.bits if b < s.bits)


def fault_population(sites: list[FaultSite], cfg: CampaignConfig,
                     allowed: dict[str, np.ndarray] | None = None) -> int:
    """Elements x candidate bits over the selected sites (Leveugle's N)."""
    allowed = allowed or {}
    return int(sum((len(allowed[s.name]) if s.name in allowed else s.static_elements)
                   * len(usable_bits(s, cfg)) for s in sites))


def trial_rng(seed: int, trial: int) -> np.random.Generator:
    """The independent random stream of trial ``trial``."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(trial,)))


def layer_of(s: FaultSite) -> str:
    """The layer a site belongs to (its own name when it has none)."""
    return s.layer or s.name


@dataclass(frozen=True)
class Stratum:
    """One stratum of a stratified campaign: a layer, a bit position, or both."""

    layer: str | None = None
    bit: int | None = None

    @property
    def label(self) -> str:
        parts = ([self.layer] if self.layer is not None else []) + (
            [f"bit {self.bit}"] if self.bit is not None else [])
        return " / ".join(parts) or "all"


@dataclass(frozen=True)
class TrialSpec:
    """What one trial injects.

    Attributes:
        trial: global trial number.
        level: index of the fault rate (0 for a fixed count).
        rate: the level's fault rate or bit error rate, ``None`` for a fixed count.
        stratum: the stratum of a stratified campaign, else ``None``.
        faults: the faults, in application order.
    """

    trial: int
    level: int
    rate: float | None
    stratum: Stratum | None
    faults: FaultSet


class _Population:
    """The elements (and bits) that one group of sites offers, with vectorized draws."""

    def __init__(self, sites: list[FaultSite], table: dict[str, int], bits: list[np.ndarray],
                 allowed: dict[str, np.ndarray], ber: bool) -> None:
        self.sites = sites
        self.ids = np.array([table[s.name] for s in sites], np.int32)
        self.allowed = [allowed.get(s.name) for s in sites]
        self.elems = np.array([len(a) if a is not None else s.static_elements
                               for a, s in zip(self.allowed, sites, strict=True)], np.int64)
        self.nbits = np.array([len(b) for b in bits], np.int64)
        width = max([len(b) for b in bits] + [1])
        self.bit_table = np.zeros((len(sites), width), np.int64)
        for i, b in enumerate(bits):
            self.bit_table[i, :len(b)] = b
        weights = self.elems * self.nbits if ber else self.elems
        self.offsets = np.concatenate([[0], np.cumsum(weights)]).astype(np.int64)
        self.population = int(self.offsets[-1])
        self.static = [[int(d) for d in s.shape if isinstance(d, int)] for s in sites]
        self.ber = ber


class Sampler:
    """Draws the faults of each trial of a campaign (see the module docstring).

    Args:
        sites: the selected sites (their order is the fault sets' site table).
        cfg: the configuration.
        samples: inputs per trial (for ``per_sample``).
        allowed: flat element indices each weight may be hit at (``--pruned-weights``).
        layer_order: layer name -> position in the network, for the order of strata
            (default: the order of ``sites``).

    Raises:
        EnpheephError: nothing can be hit (e.g. no pruned weight with ``only``).
    """

    def __init__(self, sites: list[FaultSite], cfg: CampaignConfig, samples: int,
                 allowed: dict[str, np.ndarray] | None = None,
                 layer_order: dict[str, int] | None = None) -> None:
        self.cfg, self.samples = cfg, samples
        allowed = dict(allowed or {})
        self.table = [s.name for s in sites]
        self.ranks = {s.name: len(s.shape) for s in sites}
        self.rank = max([len(s.shape) for s in sites] + [1])
        ids = {name: i for i, name in enumerate(self.table)}
        # permanent faults on neuron states: sample one representative per (layer, role)
        # and replicate the fault onto every time step
        self.replicas: np.ndarray | None = None
        self.n_replicas: np.ndarray | None = None
        if cfg.time_steps is not None and parse_steps(cfg.time_steps) is None:
            groups: dict[tuple[str, str | None], list[FaultSite]] = {}
            for s in sites:
                if s.time_step is not None:
                    groups.setdefault((s.layer, s.role), []).append(s)
            reps = []
            members_of: dict[int, list[int]] = {}
            for members in groups.values():
                members.sort(key=lambda m: m.time_step or 0)
                members_of[ids[members[0].name]] = [ids[m.name] for m in members]
                reps.append(members[0])
            width = max(len(v) for v in members_of.values())
            self.replicas = np.zeros((len(sites), width), np.int32)
            self.n_replicas = np.ones(len(sites), np.int64)
            for i in range(len(sites)):
                mem = members_of.get(i, [i])
                self.replicas[i, :len(mem)] = mem
                self.n_replicas[i] = len(mem)
            sites = reps
        counts = [len(allowed[s.name]) if s.name in allowed else s.static_elements
                  for s in sites]
        sites = [s for s, c in zip(sites, counts, strict=True) if c > 0]
        if not sites:
            raise EnpheephError(
                f"no element to hit: with --pruned-weights {cfg.pruned_weights} the selected "
                "weights have none (a dense model has no pruned weights to hit with 'only')"
            )
        self.sites = sites
        self.int_range: dict[int, tuple[int, int]] = {}
        for s in sites:
            d = BY_NAME[s.dtype]
            if not d.is_float:
                info = np.iinfo(d.numpy)
                self.int_range[ids[s.name]] = (int(info.min), int(info.max))
        ber = cfg.count is CountMode.BIT_ERROR_RATE

        def population(group: list[FaultSite], bit: int | None) -> _Population:
            bits = [np.array(usable_bits(s, cfg) if bit is None else (bit,), np.int64)
                    for s in group]
            return _Population(group, ids, bits, allowed, ber)

        self.strata: list[Stratum | None] = [None]
        self.populations = [population(sites, None)]
        if cfg.stratify:
            order = layer_order or {}
            layers = list(dict.fromkeys(layer_of(s) for s in sites))
            first = {name: i for i, name in reversed(list(enumerate(layers)))}
            layers.sort(key=lambda name: (order.get(name, len(order)), first[name]))
            strata: list[Stratum] = []
            pops: list[_Population] = []
            for layer in layers if "layer" in cfg.stratify else [None]:
                group = [s for s in sites if layer is None or layer_of(s) == layer]
                if "bit" not in cfg.stratify:
                    strata.append(Stratum(layer))
                    pops.append(population(group, None))
                    continue
                for b in cfg.bits:
                    members = [s for s in group if b < s.bits]
                    if members:
                        strata.append(Stratum(layer, b))
                        pops.append(population(members, b))
            self.strata, self.populations = list(strata), pops
        self.population = self.populations[0].population if not cfg.stratify else sum(
            p.population for p in self.populations)
        biggest = max(p.population for p in self.populations) * (
            self.samples if cfg.per_sample else 1)
        for rate in cfg.rates:
            if rate * biggest > MAX_FAULTS_PER_TRIAL:
                raise EnpheephError(
                    f"fault rate {rate:g} draws ~{rate * biggest:,.0f} faults per trial from "
                    f"{biggest:,} elements: more than {MAX_FAULTS_PER_TRIAL:,}; use lower rates")

    @property
    def trials_per_level(self) -> int:
        return self.cfg.trials * len(self.strata)

    @property
    def total_trials(self) -> int:
        return len(self.cfg.levels) * self.trials_per_level

    def trial_numbers(self) -> list[int]:
        return list(range(self.total_trials))

    def level_of(self, trial: int) -> int:
        return trial // self.trials_per_level

    def stratum_of(self, trial: int) -> Stratum | None:
        return self.strata[(trial % self.trials_per_level) // self.cfg.trials]

    def spec(self, trial: int) -> TrialSpec:
        """The trial's level, rate, stratum and faults."""
        level = self.level_of(trial)
        return TrialSpec(trial, level, self.cfg.levels[level], self.stratum_of(trial),
                         self.sample(trial))

    def sample(self, trial: int) -> FaultSet:
        """The faults of trial ``trial`` (deterministic in the seed and ``trial``)."""
        cfg = self.cfg
        pop = self.populations[(trial % self.trials_per_level) // cfg.trials]
        rng = trial_rng(cfg.seed, trial)
        rate = cfg.levels[self.level_of(trial)]
        groups = self.samples if cfg.per_sample else 1
        if rate is None:
            counts = np.full(groups, cfg.faults_per_trial, dtype=np.int64)
        elif cfg.exact_count:
            counts = np.full(groups, round(rate * pop.population), dtype=np.int64)
        else:
            counts = rng.poisson(rate * pop.population, size=groups)
        total = int(counts.sum())
        flat = rng.integers(0, pop.population, size=total)
        which = np.searchsorted(pop.offsets, flat, side="right") - 1
        local = flat - pop.offsets[which]
        if pop.ber:
            elem, bitpos = local // pop.nbits[which], local % pop.nbits[which]
        else:
            elem = local
            bitpos = np.minimum((rng.random(total) * pop.nbits[which]).astype(np.int64),
                                pop.nbits[which] - 1)
        values = cfg.value.draw(rng, total) if cfg.value is not None else None
        index = np.zeros((total, self.rank), np.int64)
        present = np.flatnonzero(np.bincount(which, minlength=len(pop.sites)))
        if len(present) > 1:  # rows of each site: one stable radix sort of 16-bit keys
            key = which.astype(np.int16) if len(pop.sites) < 2**15 else which
            order = np.argsort(key, kind="stable")
            ends = np.cumsum(np.bincount(which, minlength=len(pop.sites))[present])
        for j, w in enumerate(present.tolist()):
            sel = (np.arange(total) if len(present) == 1
                   else order[(ends[j - 1] if j else 0):ends[j]])
            s = pop.sites[w]
            flat_elem = elem[sel]
            if pop.allowed[w] is not None:
                flat_elem = pop.allowed[w][flat_elem]
            static = pop.static[w]
            cols = iter(np.unravel_index(flat_elem, static) if static else ())
            for axis, d in enumerate(s.shape):
                index[sel, axis] = next(cols) if isinstance(d, int) else -1
            if cfg.per_sample and s.shape:
                index[sel, 0] = np.repeat(np.arange(groups), counts)[sel]
        site = pop.ids[which]
        if values is not None:
            model = np.full(total, CODE_OF[FaultModel.VALUE], np.uint8)
            masks = np.zeros(total, np.uint64)
            vals = np.asarray(values, np.float64)
            for sid, (lo, hi) in self.int_range.items():  # integers saturate; NaN -> 0
                sel = site == sid
                if sel.any():
                    v = vals[sel]
                    vals[sel] = np.round(np.clip(np.where(np.isnan(v), 0.0, v), lo, hi))
        else:
            model = np.full(total, CODE_OF[cfg.fault_model], np.uint8)
            masks = bits_mask(pop.bit_table[which, bitpos])
            vals = np.zeros(total, np.float64)
        fs = FaultSet(tuple(self.table), site.astype(np.int32), index, model, masks, vals)
        if self.replicas is not None and total:
            assert self.n_replicas is not None
            reps = self.n_replicas[site]
            rows = np.repeat(np.arange(total), reps)
            within = np.arange(len(rows)) - np.repeat(np.cumsum(reps) - reps, reps)
            fs = fs.take(rows)
            fs = FaultSet(fs.sites, self.replicas[fs.site, within].astype(np.int32), fs.index,
                          fs.model, fs.bits, fs.value)
        return fs


def sample_trial(sites: list[FaultSite], cfg: CampaignConfig, trial: int,
                 samples: int = 1) -> FaultSet:
    """The faults of one trial (see :class:`Sampler`)."""
    return Sampler(sites, cfg, samples).sample(trial)


def trials_for_margin(sites: list[FaultSite], cfg: CampaignConfig, margin: float,
                      confidence: float, p: float = 0.5,
                      allowed: dict[str, np.ndarray] | None = None) -> int:
    """Trials per level for a margin of error at a confidence level (Leveugle et al.,
    DATE 2009), with N = elements x candidate bits of the selected sites."""
    return sample_size(fault_population(sites, cfg, allowed), margin, confidence, p)


_PASS_THROUGH = {"DequantizeLinear", "QuantizeLinear", "Cast", "Identity", "Reshape",
                 "Transpose", "Unsqueeze", "Squeeze"}
"""Ops that only carry a weight to the node that computes with it (QDQ models keep every
weight's DequantizeLinear at the top of the graph)."""


def layer_order(model: ModelSource, sites: Sequence[FaultSite]) -> dict[str, int]:
    """Layer name -> its position in the network: the graph position of the node producing
    one of its activations, or of the first node computing with one of its weights or
    inputs (following DequantizeLinear and other pass-through ops to their consumers)."""
    model = as_model(model)
    nodes = list(model.graph.node)
    pos = {n.name: i for i, n in enumerate(nodes)}
    consumers: dict[str, list[int]] = {}
    for i, n in enumerate(nodes):
        for name in n.input:
            consumers.setdefault(name, []).append(i)

    def position(i: int, depth: int = 0) -> int:
        n = nodes[i]
        if n.op_type not in _PASS_THROUGH or depth >= 4:
            return i
        nxt = [c for o in n.output for c in consumers.get(o, [])]
        return min((position(c, depth + 1) for c in nxt), default=i)

    out: dict[str, int] = {}
    for s in sites:
        if (s.kind is SiteKind.ACTIVATION and s.node in pos
                and nodes[pos[s.node]].op_type not in _PASS_THROUGH):
            p = pos[s.node]  # where it is computed
        else:
            first = consumers.get(s.name, []) or ([pos[s.node]] if s.node in pos else [])
            p = min((position(c) for c in first), default=len(nodes))
        name = layer_of(s)
        out[name] = min(out.get(name, p), p)
    return out


__all__ = ["Sampler", "Stratum", "TrialSpec", "allowed_elements", "fault_population",
           "layer_of", "layer_order", "sample_trial", "select_sites", "trial_rng",
           "trials_for_margin", "usable_bits"]
