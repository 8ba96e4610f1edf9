"""Running a campaign: prepare, golden run, trial loop, finish.

One :class:`~enpheeph_onnx.engine.FaultEngine` (one onnxruntime session, plus sessions
for recurring hit sets) serves every trial; faults flow as columnar
:class:`~enpheeph_onnx.faultset.FaultSet`\\ s from the sampler (or a replayed plan) through
the engine into the store, and the summary reads only the per-trial rows.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnx
from tqdm import tqdm

from .. import __version__
from ..engine import FaultEngine
from ..errors import EnpheephError, RunFailure
from ..faultset import FaultSet
from ..model import ModelSource, load_model, model_sha256
from ..rewrite import validate_fault_set
from ..runtime import (
    batch_of,
    check_feeds,
    cpu_fallback,
    fixed_batch,
    option_entries,
    session_options,
)
from ..sites import FaultSite, discover_sites, site_map, with_measured_shapes
from ..store import ResultStore, SiteInfo, TrialRecord, TrialTable, _trial_row
from ..summary import (
    CampaignSummary,
    GateResult,
    Score,
    check_gates,
    summarize,
    validate_gates,
)
from .backends import Backend, run_trials
from .config import CampaignConfig
from .data import Dataset, data_sha256
from .outcomes import Outcome, PolicyKind, correct, judge
from .plan import CampaignPlan
from .sampling import Sampler, TrialSpec, allowed_elements, layer_of, layer_order, select_sites

log = logging.getLogger(__name__)


class TrialSource(Protocol):
    """What the runner replays: a :class:`Sampler` or a :class:`CampaignPlan`."""

    def trial_numbers(self) -> list[int]: ...

    def spec(self, trial: int) -> TrialSpec: ...


@dataclass(frozen=True)
class CampaignResult:
    """A finished (or resumed-to-completion) campaign."""

    config: CampaignConfig
    golden_accuracy: float | None
    samples: int
    summary: CampaignSummary
    gates: tuple[GateResult, ...] = ()
    db: Path | None = None
    providers: tuple[str, ...] = ()
    suffix: dict[str, Any] = field(default_factory=dict)
    """Suffix re-execution: ``enabled``, ``cuts`` (verified cut positions), ``cache_bytes``."""
    golden_deviation: float = 0.0
    """Largest absolute difference between the campaign's golden outputs and a plain
    onnxruntime session of the unmodified model (0.0: bit-identical; non-zero for weight
    campaigns at ``--optimization all``, whose fed weights are not pre-packed)."""
    backend: dict[str, Any] = field(default_factory=dict)
    """Where this run's trials ran: ``kind``, ``workers``, ``restarts`` (dead workers
    replaced), ``address``."""

    @property
    def trials(self) -> TrialTable:
        return self.summary.table

    @property
    def mean_accuracy(self) -> float | None:
        return self.summary.mean_accuracy

    @property
    def accuracy_drop(self) -> float | None:
        """Golden accuracy minus mean faulty accuracy."""
        return self.summary.accuracy_drop

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    def outcome_totals(self) -> dict[str, int]:
        return dict(self.summary.outcomes)

    def to_json(self) -> dict[str, Any]:
        return {**self.summary.to_json(), "providers": list(self.providers),
                "suffix": dict(self.suffix), "golden_deviation": self.golden_deviation,
                "backend": dict(self.backend),
                "db": str(self.db) if self.db else None,
                "gates": [g.to_json() for g in self.gates], "passed": self.passed}


def _meta(model: ModelSource, sha: str, cfg: CampaignConfig, providers: list[str],
          samples: int) -> dict[str, Any]:
    import onnxruntime

    return {
        "tool_version": __version__,
        "model": str(model) if not isinstance(model, onnx.ModelProto) else "<ModelProto>",
        "model_sha256": sha,
        "config": cfg.to_json(),
        "providers": providers,
        "session_options": dict(option_entries(session_options(
            optimization=cfg.optimization))),
        "versions": {"enpheeph_onnx": __version__, "onnx": onnx.__version__,
                     "onnxruntime": onnxruntime.__version__, "numpy": np.__version__,
                     "python": platform.python_version()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "samples": samples,
    }


def _open_store(db: str | os.PathLike[str], resume: bool, meta: dict[str, Any],
                sites: list[SiteInfo], cfg: CampaignConfig) -> ResultStore:
    keep = cfg.store_faults == "all"
    if not (resume and Path(db).exists()):
        return ResultStore.create(db, meta, sites, keep)
    store = ResultStore.open(db, keep)
    old = store.meta()
    problem = None
    if old.get("model_sha256") != meta["model_sha256"]:
        problem = (f"it holds a campaign on another model (sha256 "
                   f"{str(old.get('model_sha256'))[:12]}..., this model "
                   f"{meta['model_sha256'][:12]}...); use a new -o/--output")
    elif old.get("data_sha256", meta["data_sha256"]) != meta["data_sha256"]:
        problem = (f"it was run on other data (sha256 {str(old.get('data_sha256'))[:12]}...); "
                   "use the same --data or a new -o/--output")
    elif old["config"].get("store_faults", "all") != cfg.store_faults:
        problem = (f"it stores faults with --store-faults "
                   f"{old['config'].get('store_faults', 'all')}; resume with the same option "
                   "(a mixed database would hold the faults of some trials only)")
    else:
        was = CampaignConfig.from_json(old["config"]).sampling_json()
        now = cfg.sampling_json()
        if was != now:
            diff = sorted(k for k in was if was[k] != now.get(k))
            problem = (f"it was started with other settings ({', '.join(diff)}); resume with "
                       "the same options or use a new -o/--output")
    if problem:
        store.close()
        raise EnpheephError(f"cannot resume {db}: {problem}")
    return store


def _source(proto: onnx.ModelProto, sha: str, all_sites: list[FaultSite],
            config: CampaignConfig, plan: CampaignPlan | None, samples: int
            ) -> tuple[CampaignConfig, list[FaultSite], TrialSource]:
    if plan is None:
        sites = select_sites(all_sites, config)
        sampler = Sampler(sites, config, samples,
                          allowed_elements(proto, sites, config.pruned_weights),
                          layer_order(proto, sites))
        return config, sites, sampler
    foreign = plan.model_sha256 != sha
    config = replace(plan.config, batch_size=config.batch_size, provider=config.provider,
                     output=config.output or plan.config.output,
                     store_faults=config.store_faults, suffix=config.suffix,
                     cache_mb=config.cache_mb, optimization=config.optimization,
                     outcome=config.outcome, allow_cpu_fallback=config.allow_cpu_fallback)
    smap = site_map(all_sites)
    levels = config.levels
    numbers = [t.trial for t in plan.trials]
    if len(set(numbers)) != len(numbers):
        raise EnpheephError("the campaign plan lists a trial number twice; write it again "
                            "with 'enpheeph-onnx plan'")
    for t in plan.trials:
        if not 0 <= t.level < len(levels) or t.rate != levels[t.level]:
            raise EnpheephError(
                f"campaign plan trial {t.trial}: level {t.level} (rate {t.rate}) is not one "
                f"of the plan's levels {list(levels)}; write it again with 'enpheeph-onnx "
                "plan'")
    names: set[str] = set()
    try:
        for t in plan.trials:
            validate_fault_set(smap, t.faults)
            names |= t.faults.hit_sites()
    except EnpheephError as e:
        if not foreign:
            raise
        raise EnpheephError(f"{e} (the plan was sampled for another model, sha256 "
                            f"{plan.model_sha256[:12]}...)") from None
    if foreign:  # e.g. the same faults replayed on a new build of the model
        log.warning("the plan was sampled for another model (sha256 %s...)",
                    plan.model_sha256[:12])
    if samples != plan.samples and config.per_sample:
        raise EnpheephError(f"the plan was sampled for {plan.samples} inputs per trial, "
                            f"the data has {samples}")
    return config, [s for s in all_sites if s.name in names], plan


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
    backend: Backend | None = None,
) -> CampaignResult:
    """Run (or resume) a campaign, storing every trial in SQLite when ``db`` is given.

    Args:
        model: path or ``ModelProto``.
        data: inputs and labels (labels optional: accuracy is then ``None``).
        config: what to inject (with ``plan``: its own config is used for sampling).
        db: results database; created, or continued with ``resume``.
        resume: continue the trials missing from ``db`` (refused for another model, other
            data or other sampling settings); without it an existing ``db`` is refused.
        plan: replay these sampled trials instead of sampling.
        gates: ``(metric, threshold)`` pairs checked at every level against the upper 95 %
            bound (see :data:`enpheeph_onnx.summary.METRICS`).
        progress: tqdm bar on stderr; ``None`` shows it only on a terminal.
        commit_every: seconds between commits of finished trials.
        backend: where the trials run (:class:`~enpheeph_onnx.campaign.backends.Backend`:
            serial, local processes, Ray actors; ``None``: serial); the results are the
            same with every backend.

    Returns:
        :class:`CampaignResult` with the summary of all trials (stored ones included).

    Raises:
        EnpheephError: bad model, data or configuration; a database that cannot be
            created or resumed; a fault that cannot be applied.
        KeyboardInterrupt: after committing every finished trial.
    """
    validate_gates(gates)
    run = _Run(model, data, config, db, resume, plan)
    result = run.stored_result(gates)  # resuming a finished campaign runs nothing
    if result is None:
        run.backend = backend or Backend()
        with cpu_fallback(run.config.allow_cpu_fallback):
            run.golden()
            table = run.trials(progress, commit_every)
            result = run.result(table, gates)
    if db is not None and gates:  # the report shows the gates the campaign was held to
        with ResultStore.open(db) as store:
            store.set_meta("gates", [g.to_json() for g in result.gates])
    return result


class _Run:
    """The state of one :func:`run_campaign` call: prepare, golden, trials, result."""

    def __init__(self, model: ModelSource, data: Dataset, config: CampaignConfig,
                 db: str | os.PathLike[str] | None, resume: bool,
                 plan: CampaignPlan | None) -> None:
        self.model, self.data, self.db, self.resume = model, data, db, resume
        self.plan = plan
        self.threads: int | None = None  # onnxruntime intra-op threads (None: its default)
        self.backend = Backend()
        self.backend_stats: dict[str, int] = {}  # workers, restarts (run_trials)
        self.proto = load_model(model)
        self.sha = model_sha256(model)
        # tensors shape inference cannot type (com.microsoft, ai.onnx.ml, Loop outputs):
        # measured on the first batch, so they are sites too
        n = len(data)
        first = batch_of(data.inputs, 0, min(n, config.batch_size))
        self.proto = with_measured_shapes(self.proto, first)
        self.all_sites = discover_sites(self.proto)
        self.config, self.sites, self.source = _source(self.proto, self.sha, self.all_sites,
                                                       config, plan, len(data))
        self.order = layer_order(self.proto, self.all_sites)
        self.layers = {s.name: layer_of(s) for s in self.all_sites}
        self.ranks = {s.name: len(s.shape) for s in self.all_sites}
        self.store: ResultStore | None = None
        self.created = db is not None and not (resume and Path(db).exists())
        self.meta: dict[str, Any] = {}
        if db is not None:
            self.meta = _meta(model, self.sha, self.config, [], len(data))
            self.meta["data_sha256"] = data_sha256(data)
            self.meta["layer_order"] = self.order
            if not self.created:  # resume: refuse a foreign database before any work
                self.store = _open_store(db, resume, self.meta, [], self.config)

    def stored_result(self, gates: tuple[tuple[str, float], ...]) -> CampaignResult | None:
        """The result of a resumed campaign whose trials are all stored, else ``None``."""
        if self.store is None:
            return None
        done = self.store.done_trials()
        if any(t not in done for t in self.source.trial_numbers()):
            return None
        stored = self.store.meta()
        table = self.store.trial_table()
        self.store.close()
        self.providers = tuple(stored.get("providers", ()))
        self.golden_acc = stored.get("golden_accuracy")
        self.score = Score.from_json(stored.get("score"))
        self.deviation = float(stored.get("golden_deviation", 0.0))
        return self.result(table, gates)

    def golden(self, deviation: bool = True) -> None:
        """Build the engine and run the golden pass (before any file is written);
        ``deviation``: also measure it against a plain session of the model (workers of
        a backend skip that: the driver measured it)."""
        cfg = self.config
        try:
            self.engine = FaultEngine(self.proto, self.sites, cfg.provider, self.threads,
                                      suffix=cfg.suffix, cache_mb=cfg.cache_mb,
                                      optimization=cfg.optimization)
            names = self.engine.output_names
            self.output = cfg.output or names[0]
            if self.output not in names:
                raise EnpheephError(f"unknown output {self.output!r}: the model has {names}")
            cfg.outcome.check_outputs(names)
            self.feeds = {k: _read_only(v) for k, v in
                          check_feeds(_Inputs(self.engine), self.data.inputs).items()}
            fixed = fixed_batch(_Inputs(self.engine))
            if fixed is not None and cfg.batch_size != fixed:
                log.info("the model takes batches of exactly %d samples: --batch-size %d "
                         "ignored", fixed, cfg.batch_size)
                cfg = self.config = replace(cfg, batch_size=fixed)
            self.golden_out = self.engine.run(self.feeds, FaultSet.empty(), cfg.batch_size)
            self.deviation = self.engine.golden_deviation(
                self.feeds, cfg.batch_size, self.golden_out) if deviation else 0.0
        except BaseException:
            if self.store:
                self.store.close()
            raise
        self.providers = tuple(self.engine.providers)
        try:
            self._golden_score()
        except BaseException:
            if self.store:
                self.store.close()
            raise
        if self.deviation != 0.0:
            log.warning("the campaign's golden outputs differ from a plain onnxruntime "
                        "session of the unmodified model by up to %.3g (at --optimization "
                        "all its fed weights are not pre-packed); trials are judged against "
                        "the campaign's own golden run", self.deviation)
        if self.db is not None and self.created:
            self.meta["providers"] = self.engine.providers
            self.meta["golden_deviation"] = self.deviation
            infos = [SiteInfo(s.name, s.kind.value, layer_of(s), len(s.shape))
                     for s in self.all_sites]
            self.store = _open_store(self.db, self.resume, self.meta, infos, self.config)

    def _golden_score(self) -> None:
        """What a trial's score is (``self.score``) and the golden run's: a user metric's
        mean score when it scores, else top-1 accuracy with labels, else the fraction of
        acceptable inputs (neither critical SDC nor DUE; 1 for the golden run)."""
        cfg, labels = self.config, self.data.labels
        if cfg.outcome.kind is PolicyKind.METRIC:
            j = judge(self.golden_out, self.golden_out, self.output, cfg.outcome, labels,
                      cfg.batch_size)
            if j.scores is not None:
                self.score = Score(str(cfg.outcome.metric).rpartition(":")[2], False)
                self.golden_acc = float(np.mean(j.scores)) if len(j.scores) else None
                return
        if labels is None:
            self.score = Score("acceptable")
            self.golden_acc = 1.0
            return
        out = self.golden_out[self.output]
        classes = int(np.prod(out.shape[1:])) if out.ndim > 1 else 1
        if len(labels) and labels.max() >= classes:
            raise EnpheephError(
                f"label {int(labels.max())} is out of range: output {self.output!r} has "
                f"{classes} classes (0-{classes - 1}); check the labels, or pick the "
                "classifier output with --logits")
        self.score = Score()
        self.golden_acc = float(np.mean(correct(out, labels)))

    def trials(self, progress: bool | None, commit_every: float) -> TrialTable:
        """Run every trial not stored yet; returns the table of all trials."""
        store, committed = self.store, False
        rows: list[tuple[Any, ...]] = []  # trial-table rows (the faults are not kept)
        try:
            if store:
                old = store.meta().get("golden_accuracy")
                if old is not None and self.golden_acc is not None and old != self.golden_acc:
                    raise EnpheephError(
                        f"cannot resume {self.db}: the golden accuracy changed ({old} -> "
                        f"{self.golden_acc}); was the onnxruntime version changed? use a new "
                        "-o/--output")
                store.set_meta("golden_accuracy", self.golden_acc)
                store.set_meta("score", self.score.to_json())
            done = store.done_trials() if store else set()
            todo = [t for t in self.source.trial_numbers() if t not in done]
            if done:
                log.info("resuming: %d trials already stored, %d to run", len(done), len(todo))
            correct_sum = 0.0
            last_commit = time.monotonic()
            workers: dict[str, list[str]] = {}

            def on_worker(name: str, providers: list[str]) -> None:
                workers[name] = providers
                if store:
                    store.set_meta("workers", {**store.meta().get("workers", {}),
                                               name: {"providers": providers}})

            bar = tqdm(run_trials(self, todo, self.backend, on_worker, self.backend_stats),
                       desc="trials",
                       unit="trial", leave=False,
                       disable=None if progress is None else not progress, total=len(todo))
            for seen, (rec, worker) in enumerate(bar, 1):
                if rec.correct is not None:
                    correct_sum += float(np.mean(rec.correct))
                    bar.set_postfix(acc=f"{correct_sum / seen:.4f}")
                if store:
                    store.add(rec, worker)
                    if time.monotonic() - last_commit >= commit_every:
                        store.flush()
                        committed = True
                        last_commit = time.monotonic()
                else:
                    rows.append(_trial_row(rec))
            if not store:
                return TrialTable.from_rows(rows)
            store.flush()
            committed = True
            store.set_meta("status", "complete")
            return store.trial_table()
        except KeyboardInterrupt:
            raise
        except BaseException:
            if store and self.created and not committed:  # a failed new campaign: no file
                store.close()
                store = self.store = None
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{self.db}{suffix}").unlink(missing_ok=True)
            raise
        finally:
            if store:
                store.close()

    def trial(self, spec: TrialSpec) -> TrialRecord:
        """Run one trial and judge its outcomes against the session's own golden run."""
        fs, bs, golden = spec.faults, self.config.batch_size, self.golden_out
        start = time.perf_counter()
        try:
            out = self.engine.run(self.feeds, fs, bs) if len(fs) else golden
        except RunFailure as e:  # the faulty network crashed onnxruntime: detected
            seconds = time.perf_counter() - start
            log.info("trial %d: %s; its inputs count as DUE", spec.trial, e)
            n = len(golden[self.output])
            codes = np.full(n, Outcome.DUE, np.uint8)
            return self._judged(spec, codes, None, None, seconds)
        seconds = time.perf_counter() - start
        ref = self.engine.reference(self.feeds, fs, bs) if len(fs) else golden
        j = judge(ref, out, self.output, self.config.outcome, self.data.labels, bs)
        return self._judged(spec, j.codes, j.scores, out, seconds)

    def _judged(self, spec: TrialSpec, codes: np.ndarray, scores: np.ndarray | None,
                out: dict[str, np.ndarray] | None, seconds: float) -> TrialRecord:
        """The record of a judged trial (``out`` None: onnxruntime aborted the run, every
        input is a DUE and scores 0)."""
        labels, n = self.data.labels, len(codes)
        if not self.score.bounded:  # a user metric's own scores
            if scores is None:
                if out is not None:
                    raise EnpheephError(f"--metric {self.config.outcome.metric} returned "
                                        "scores for the golden run but none for trial "
                                        f"{spec.trial}: return them always or never")
                scores = np.zeros(n)
            return _record(spec, codes, None, seconds, self.layers, self.ranks, scores=scores)
        if labels is not None:
            ok = (np.zeros(n, bool) if out is None
                  else correct(out[self.output], labels, codes))
            return _record(spec, codes, ok, seconds, self.layers, self.ranks)
        return _record(spec, codes, None, seconds, self.layers, self.ranks,
                       score=float(np.mean(codes <= Outcome.TOLERABLE_SDC)) if n else None)

    def result(self, table: TrialTable, gates: tuple[tuple[str, float], ...]
               ) -> CampaignResult:
        cfg = self.config
        score = getattr(self, "score", Score())
        summary = summarize(table, golden_accuracy=self.golden_acc, samples=len(self.data),
                            rate_kind=cfg.count.value, config=cfg.to_json(),
                            layer_order=self.order, score=score.name, bounded=score.bounded)
        engine = getattr(self, "engine", None)
        stats = engine.chain_stats() if engine is not None else {
            "boundaries": 0, "sessions": 0, "session_bytes": 0, "runtime_graph_sites": 0}
        suffix = {"enabled": bool(cfg.suffix and engine is not None and engine.suffix),
                  "cuts": engine.cuts if engine is not None else [], **stats,
                  "cache_bytes": engine.cache_bytes if engine is not None else 0}
        if engine is not None and (suffix["cuts"] or suffix["boundaries"]):
            log.info("suffix re-execution: %d weight cuts, %d activation boundaries "
                     "(%d segment sessions, ~%.1f MiB), golden cache %.1f MiB",
                     len(suffix["cuts"]), suffix["boundaries"], suffix["sessions"],
                     suffix["session_bytes"] / 2**20, suffix["cache_bytes"] / 2**20)
        return CampaignResult(cfg, self.golden_acc, len(self.data), summary,
                              tuple(check_gates(summary, gates)),
                              Path(self.db) if self.db is not None else None, self.providers,
                              suffix, getattr(self, "deviation", 0.0),
                              {**self.backend.to_json(), **self.backend_stats})


def _record(spec: TrialSpec, codes: np.ndarray, ok: np.ndarray | None, seconds: float,
            layers: dict[str, str], ranks: dict[str, int], scores: np.ndarray | None = None,
            score: float | None = None) -> TrialRecord:
    fs = spec.faults
    hit = {layers.get(name, name) for name in fs.hit_sites()}
    bit = fs.same_bits()
    first = fs.take(np.arange(min(2, len(fs)))).to_faults(ranks)
    st = spec.stratum
    return TrialRecord(
        spec.trial, spec.level, spec.rate, fs, codes, ok, seconds,
        stratum_layer=None if st is None else st.layer,
        stratum_bit=None if st is None else st.bit,
        # a stratified trial belongs to its stratum even when it drew no fault
        layer=st.layer if st is not None and st.layer is not None
        else next(iter(hit)) if len(hit) == 1 else None,
        bit=st.bit if st is not None and st.bit is not None else bit,
        first_faults=tuple(str(f) for f in first), scores=scores, score=score)


def _read_only(a: Any) -> Any:
    """A read-only view of the data (IO binding copies read-only inputs to the device once,
    :func:`enpheeph_onnx.runtime.run_bound`; the caller's array stays as it is)."""
    if not isinstance(a, np.ndarray):
        return a
    v = a.view()
    v.setflags(write=False)
    return v


class _Inputs:
    """Adapter so :func:`check_feeds` sees only the source model's data inputs."""

    def __init__(self, engine: FaultEngine) -> None:
        names = set(engine.input_names)
        self._inputs = [i for i in engine.session.get_inputs() if i.name in names]

    def get_inputs(self) -> list[Any]:
        return self._inputs


def load_summary(db: str | os.PathLike[str]) -> CampaignSummary:
    """The summary of a stored campaign (for ``report`` and ``export``); reads only the
    per-trial rows.

    Raises:
        EnpheephError: missing or foreign database.
    """
    with ResultStore.open(db) as store:
        meta = store.meta()
        table = store.trial_table()
    cfg = CampaignConfig.from_json(meta["config"])
    score = Score.from_json(meta.get("score"))
    summary = summarize(table, golden_accuracy=meta.get("golden_accuracy"),
                        samples=int(meta.get("samples", 0)), rate_kind=cfg.count.value,
                        config=cfg.to_json(), layer_order=meta.get("layer_order"),
                        score=score.name, bounded=score.bounded)
    return summary


def load_meta(db: str | os.PathLike[str]) -> dict[str, Any]:
    """The campaign metadata of a stored campaign (config, provenance, status)."""
    with ResultStore.open(db) as store:
        return store.meta()


__all__ = ["CampaignResult", "TrialSource", "load_meta", "load_summary", "run_campaign"]
