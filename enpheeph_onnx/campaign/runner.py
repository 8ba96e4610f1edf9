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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnx
from tqdm import tqdm

from .. import __version__
from ..engine import FaultEngine
from ..errors import EnpheephError
from ..faultset import FaultSet
from ..model import ModelSource, load_model, model_sha256
from ..rewrite import validate_fault_set
from ..runtime import check_feeds
from ..sites import FaultSite, discover_sites, site_map
from ..store import ResultStore, SiteInfo, TrialRecord, TrialTable, _trial_row
from ..summary import CampaignSummary, GateResult, check_gates, summarize
from .config import CampaignConfig
from .data import Dataset, data_sha256
from .outcomes import classify, correct
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
                   f"{meta['model_sha256'][:12]}...); use a new --db")
    elif old.get("data_sha256", meta["data_sha256"]) != meta["data_sha256"]:
        problem = (f"it was run on other data (sha256 {str(old.get('data_sha256'))[:12]}...); "
                   "use the same --data or a new --db")
    else:
        was = CampaignConfig.from_json(old["config"]).sampling_json()
        now = cfg.sampling_json()
        if was != now:
            diff = sorted(k for k in was if was[k] != now.get(k))
            problem = (f"it was started with other settings ({', '.join(diff)}); resume with "
                       "the same options or use a new --db")
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
    if plan.model_sha256 != sha:
        log.warning("the plan was sampled for another model (sha256 %s...)",
                    plan.model_sha256[:12])
    config = replace(plan.config, batch_size=config.batch_size, provider=config.provider,
                     output=config.output or plan.config.output,
                     store_faults=config.store_faults)
    smap = site_map(all_sites)
    names: set[str] = set()
    for t in plan.trials:
        validate_fault_set(smap, t.faults)
        names |= t.faults.hit_sites()
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

    Returns:
        :class:`CampaignResult` with the summary of all trials (stored ones included).

    Raises:
        EnpheephError: bad model, data or configuration; a database that cannot be
            created or resumed; a fault that cannot be applied.
        KeyboardInterrupt: after committing every finished trial.
    """
    proto = load_model(model)
    sha = model_sha256(model)
    all_sites = discover_sites(proto)
    config, sites, source = _source(proto, sha, all_sites, config, plan, len(data))
    order = layer_order(proto, all_sites)
    store = None
    created = False
    meta: dict[str, Any] = {}
    if db is not None:
        meta = _meta(model, sha, config, [], len(data))
        meta["data_sha256"] = data_sha256(data)
        meta["layer_order"] = order
        created = not (resume and Path(db).exists())
        if not created:  # resume: refuse a foreign database before any work
            store = _open_store(db, resume, meta, [], config)
            stored = store.meta()
            done = store.done_trials()
            if not [t for t in source.trial_numbers() if t not in done]:
                table = store.trial_table()  # finished: nothing to run
                store.close()
                summary = summarize(table, golden_accuracy=stored.get("golden_accuracy"),
                                    samples=len(data), rate_kind=config.count.value,
                                    config=config.to_json(), layer_order=order)
                return CampaignResult(config, stored.get("golden_accuracy"), len(data),
                                      summary, tuple(check_gates(summary, gates)), Path(db),
                                      tuple(stored.get("providers", ())))
    try:
        engine = FaultEngine(proto, sites, config.provider)
        output = config.output or engine.output_names[0]
        if output not in engine.output_names:
            raise EnpheephError(f"unknown output {output!r}: the model has "
                                f"{engine.output_names}")
        feeds = check_feeds(_Inputs(engine), data.inputs)
        golden = engine.run(feeds, FaultSet.empty(), config.batch_size)  # before any file
    except BaseException:
        if store:
            store.close()
        raise
    golden_acc = None if data.labels is None else float(
        np.mean(correct(golden[output], data.labels)))
    layers = {s.name: layer_of(s) for s in all_sites}
    ranks = {s.name: len(s.shape) for s in all_sites}
    if db is not None and created:
        meta["providers"] = engine.providers
        infos = [SiteInfo(s.name, s.kind.value, layer_of(s), len(s.shape)) for s in all_sites]
        store = _open_store(db, resume, meta, infos, config)
    committed = False
    rows: list[tuple[Any, ...]] = []  # trial-table rows (the faults are not kept)
    try:
        if store:
            old = store.meta().get("golden_accuracy")
            if old is not None and golden_acc is not None and old != golden_acc:
                raise EnpheephError(
                    f"cannot resume {db}: the golden accuracy changed ({old} -> {golden_acc}); "
                    "was the onnxruntime version changed? use a new --db")
            store.set_meta("golden_accuracy", golden_acc)
        done = store.done_trials() if store else set()
        todo = [t for t in source.trial_numbers() if t not in done]
        if done:
            log.info("resuming: %d trials already stored, %d to run", len(done), len(todo))
        correct_sum, seen = 0.0, 0
        last_commit = time.monotonic()
        bar = tqdm(todo, desc="trials", unit="trial", leave=False,
                   disable=None if progress is None else not progress, total=len(todo))
        for t in bar:
            spec = source.spec(t)
            fs = spec.faults
            start = time.perf_counter()
            out = engine.run(feeds, fs, config.batch_size) if len(fs) else golden
            seconds = time.perf_counter() - start
            ref = engine.reference(feeds, fs, config.batch_size) if len(fs) else golden
            codes = classify(ref, out, output)
            ok = None
            if data.labels is not None:
                ok = correct(out[output], data.labels, codes)
                correct_sum += float(np.mean(ok))
                seen += 1
                bar.set_postfix(acc=f"{correct_sum / seen:.4f}")
            rec = _record(spec, codes, ok, seconds, layers, ranks)
            if store:
                store.add(rec)
                if time.monotonic() - last_commit >= commit_every:
                    store.flush()
                    committed = True
                    last_commit = time.monotonic()
            else:
                rows.append(_trial_row(rec))
        if store:
            store.flush()
            committed = True
            store.set_meta("status", "complete")
            table = store.trial_table()
        else:
            table = TrialTable.from_rows(rows)
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
    summary = summarize(table, golden_accuracy=golden_acc, samples=len(data),
                        rate_kind=config.count.value, config=config.to_json(), layer_order=order)
    return CampaignResult(config, golden_acc, len(data), summary,
                          tuple(check_gates(summary, gates)),
                          Path(db) if db is not None else None, tuple(engine.providers))


def _record(spec: TrialSpec, codes: np.ndarray, ok: np.ndarray | None, seconds: float,
            layers: dict[str, str], ranks: dict[str, int]) -> TrialRecord:
    fs = spec.faults
    hit = {layers.get(name, name) for name in fs.hit_sites()}
    bits = np.unique(fs.single_bits()) if len(fs) else np.zeros(0, np.int64)
    first = fs.take(np.arange(min(2, len(fs)))).to_faults(ranks)
    st = spec.stratum
    return TrialRecord(
        spec.trial, spec.level, spec.rate, fs, codes, ok, seconds,
        stratum_layer=None if st is None else st.layer,
        stratum_bit=None if st is None else st.bit,
        # a stratified trial belongs to its stratum even when it drew no fault
        layer=st.layer if st is not None and st.layer is not None
        else next(iter(hit)) if len(hit) == 1 else None,
        bit=st.bit if st is not None and st.bit is not None
        else int(bits[0]) if len(bits) == 1 and bits[0] >= 0 else None,
        first_faults=tuple(str(f) for f in first))


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
    summary = summarize(table, golden_accuracy=meta.get("golden_accuracy"),
                        samples=int(meta.get("samples", 0)), rate_kind=cfg.count.value,
                        config=cfg.to_json(), layer_order=meta.get("layer_order"))
    return summary


def load_meta(db: str | os.PathLike[str]) -> dict[str, Any]:
    """The campaign metadata of a stored campaign (config, provenance, status)."""
    with ResultStore.open(db) as store:
        return store.meta()


__all__ = ["CampaignResult", "TrialSource", "load_meta", "load_summary", "run_campaign"]
