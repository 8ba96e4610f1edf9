"""``plan``, ``campaign`` and ``sample-size``: fault-injection campaigns."""

from __future__ import annotations

import logging
import signal
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from ..errors import EnpheephError, GateFailedError
from ..faults import FaultModel, parse_bits
from .common import echo_json, fmt, refuse_overwrite, summary, table
from .group import main
from .options import (
    config_option,
    data_option,
    gate_option,
    json_option,
    model_argument,
    outcome_options,
    output_option,
    parse_kinds,
    sampling_options,
    session_options,
)

log = logging.getLogger("enpheeph_onnx")


def outcome_policy(kind: str | None, topk: int | None, tolerances: tuple[str, ...],
                   metric: str | None) -> Any:
    """The :class:`~enpheeph_onnx.campaign.outcomes.OutcomePolicy` of the outcome options
    (the kind follows from the other options when not given); a metric is imported now,
    so that a bad one fails before any work.

    Raises:
        EnpheephError: options of another kind, a bad tolerance or metric.
    """
    from ..campaign.outcomes import OutcomePolicy, PolicyKind, Tolerance

    if kind is None:
        kind = ("metric" if metric else "tolerance" if tolerances
                else "topk" if topk is not None else "top1")
    if topk is not None and kind not in ("topk", "topk-set"):
        raise EnpheephError(f"--topk applies to --outcome topk or topk-set, not {kind}")
    policy = OutcomePolicy(PolicyKind(kind), 5 if topk is None else topk,
                           tuple(Tolerance.parse(t) for t in tolerances), metric)
    policy.load()
    return policy


_FILE_SUFFIXES = (".sqlite", ".db", ".json", ".npz", ".npy", ".onnx")


def refuse_tensor_path(out: Path | None, model: Path) -> None:
    """Refuse ``-o/--output NAME`` where NAME is one of the model's outputs: the old
    spelling of ``--logits``.

    Raises:
        EnpheephError: ``out`` names an output tensor and is no existing file.
    """
    if out is None or out.exists() or out.suffix.lower() in _FILE_SUFFIXES:
        return  # (no model load for what is plainly a file)
    from ..model import load_model

    try:
        names = [o.name for o in load_model(model).graph.output]
    except EnpheephError:
        return  # the command reports the model itself
    if str(out) in names:
        raise EnpheephError(f"-o/--output {out} names an output of the model: -o/--output "
                            "is the file this command writes; the output to judge is "
                            f"--logits {out}")


def build_config(model: Path, kinds: tuple[str, ...], target: str | None,
                 site_globs: tuple[str, ...], op_types: str | None, fault_model: str,
                 value_text: str | None, bits_text: str, fault_rate: str | None,
                 bit_error_rate: str | None, exact_count: bool, faults_per_trial: int | None,
                 trials: int | None, margin: float | None, confidence: float,
                 per_sample: bool, pruned_weights: str, time_steps: str | None,
                 stratify: str | None, seed: int, logits: str | None = None,
                 batch_size: int = 512, provider: str = "cpu", store_faults: str = "all"
                 ) -> Any:
    """The :class:`~enpheeph_onnx.campaign.CampaignConfig` of the sampling options.

    Raises:
        EnpheephError: conflicting or malformed options.
    """
    from ..campaign import (
        CampaignConfig,
        CountMode,
        SiteSelection,
        ValueDistribution,
        allowed_elements,
        parse_rates,
        select_sites,
        trials_for_margin,
    )
    from ..model import load_model
    from ..sites import discover_sites

    if fault_rate and bit_error_rate:
        raise EnpheephError("give --fault-rate or --bit-error-rate, not both")
    rate_text = fault_rate or bit_error_rate
    if rate_text and faults_per_trial is not None:
        raise EnpheephError("give a fault rate or --faults-per-trial, not both")
    if margin is not None and trials is not None:
        raise EnpheephError("give --margin or --trials, not both")
    rates = parse_rates(rate_text) if rate_text else ()
    if rate_text and not rates:
        raise EnpheephError(f"--fault-rate {rate_text!r} yields no rate")
    count = (CountMode.FAULT_RATE if fault_rate else CountMode.BIT_ERROR_RATE if bit_error_rate
             else CountMode.FIXED)
    bits = tuple(range(64)) if bits_text.strip().lower() == "all" else parse_bits(bits_text)
    cfg = CampaignConfig(
        selection=SiteSelection(parse_kinds(kinds, target), tuple(site_globs),
                                tuple(o.strip() for o in (op_types or "").split(",")
                                      if o.strip())),
        fault_model=FaultModel.parse(fault_model), bits=bits,
        value=ValueDistribution.parse(value_text) if value_text is not None else None,
        count=count, faults_per_trial=1 if faults_per_trial is None else faults_per_trial,
        rates=rates, exact_count=exact_count, trials=trials or 100, per_sample=per_sample,
        pruned_weights=pruned_weights, time_steps=time_steps, seed=seed,
        batch_size=batch_size, provider=provider,  # type: ignore[arg-type]
        output=logits, stratify=tuple((stratify or "").split(",")) if stratify else (),
        store_faults=store_faults)
    if margin is not None:
        proto = load_model(model)
        sites = select_sites(discover_sites(proto), cfg)
        n = trials_for_margin(sites, cfg, margin, confidence,
                              allowed=allowed_elements(proto, sites, cfg.pruned_weights))
        log.info("--margin %g at %g confidence: %d trials per level", margin, confidence, n)
        cfg = replace(cfg, trials=n)
    return cfg


def parse_gates(specs: tuple[str, ...]) -> tuple[tuple[str, float], ...]:
    """``METRIC=THRESHOLD`` gates, validated.

    Raises:
        EnpheephError: an unknown metric, a threshold that is no number or out of range.
    """
    from ..summary import METRICS, validate_gates

    out = []
    for spec in specs:
        name, sep, val = spec.partition("=")
        name = name.strip()
        if not sep or name not in METRICS:
            raise EnpheephError(f"bad --fail-above {spec!r}: use METRIC=THRESHOLD with METRIC "
                                f"one of {', '.join(METRICS)}")
        try:
            out.append((name, float(val)))
        except ValueError:
            raise EnpheephError(f"bad --fail-above {spec!r}: the threshold is a number") from None
    validate_gates(out)
    return tuple(out)


@main.command()
@model_argument
@data_option("Model inputs (keyed by name); only the sample count is used.", required=True)
@sampling_options
@output_option("Campaign plan to write (.json, or binary .npz).")
@json_option
def plan(model: Path, data_path: Path, out: Path, as_json: bool, **opts: Any) -> None:
    """Sample the fault lists of a campaign without running them.

    Replay them exactly with 'campaign MODEL --plan PLAN'. A .json path gets a JSON plan;
    any other (e.g. plan.npz) a compact binary one (columns, for millions of faults).

    \b
    Example:
      enpheeph-onnx plan models/digits_cnn.onnx --data models/digits_test.npz \\
        --fault-rate 1e-4 --trials 30 -o plan.json
    """
    from ..campaign import input_names, load_dataset, plan_campaign
    from ..model import load_model

    refuse_overwrite(out, model, data_path)
    refuse_tensor_path(out, model)
    cfg = build_config(model, **opts)
    data = load_dataset(data_path, input_names(load_model(model)), require_labels=False,
                        allow_nonfinite=True)  # (only the sample count is used)
    p = plan_campaign(model, cfg, len(data))
    p.save(out)
    if as_json:
        echo_json({"output": str(out), "trials": len(p.trials), "faults": p.faults,
                   "config": p.config.to_json()})
    summary(True, f"plan: {len(p.trials)} trials, {p.faults} faults -> {out}")


@main.command()
@model_argument
@config_option
@data_option("Model inputs (keyed by name) and, for top1/topk, int 'labels'.", required=True)
@sampling_options
@click.option("--plan", "plan_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Replay the trials of a campaign plan (from 'enpheeph-onnx plan').")
@output_option("SQLite results file (an existing one is refused without --resume).",
               required=False, aliases=("--db",), dest="db")
@click.option("--resume", is_flag=True,
              help="Continue the campaign stored in -o/--output where it stopped.")
@gate_option
@click.option("--suffix/--no-suffix", default=True, show_default=True,
              help="Run each trial from its first faulted site on, on golden tensors cached "
                   "per batch (each cut checked bit-identical to the full model).")
@click.option("--cache-mb", type=float, default=512.0, show_default=True,
              help="Most memory (MiB) suffix re-execution may hold (golden tensors and extra "
                   "segment sessions); beyond it, runs from the inputs or fine segments.")
@click.option("--store-faults", type=click.Choice(["all", "none"]), default="all",
              show_default=True,
              help="Store every trial's faults, or only their count (trials are "
                   "reproducible from the seed either way).")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar on stderr [default: only on a terminal].")
@outcome_options
@click.option("--backend", type=click.Choice(["serial", "local", "ray"]), default="serial",
              show_default=True,
              help="Where trials run: this process, --workers local processes, or Ray "
                   "actors (pip install 'enpheeph-onnx[ray]'); the results are the same.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Worker processes / Ray actors [default: the cores / the cluster's CPUs].")
@click.option("--address", default=None,
              help="Ray cluster to join (what 'ray start --head' prints, or 'auto') "
                   "[default: start a local one].")
@session_options
@json_option
def campaign(model: Path, data_path: Path, plan_path: Path | None, db: Path | None,
             resume: bool, fail_above: tuple[str, ...], suffix: bool, cache_mb: float,
             store_faults: str, progress: bool | None, logits: str | None,
             outcome_kind: str | None, topk: int | None, tolerances: tuple[str, ...],
             metric: str | None, backend: str, workers: int | None, address: str | None,
             provider: str, allow_cpu_fallback: bool, optimization: str, batch_size: int,
             allow_nonfinite_inputs: bool, as_json: bool, **opts: Any) -> None:
    """Run a fault-injection campaign on MODEL over the inputs of --data.

    A golden run, then trials of sampled faults (a fixed count, or Poisson at each fault
    rate of a sweep); prints the score (top-1 accuracy with labels; the fraction of
    acceptable inputs, or a --metric's score, without), the outcome rates (masked,
    tolerable SDC, critical SDC, DUE) with 95 % intervals over trials, per fault rate and
    per layer, and a final PASSED/FAILED line.

    \b
    Example:
      enpheeph-onnx campaign models/digits_cnn.onnx --data models/digits_test.npz \\
        --fault-rate 1e-7:1e-1:2 --trials 30 -o results/digits.sqlite --resume
    """
    from ..campaign import CampaignPlan, input_names, load_dataset, run_campaign
    from ..campaign.backends import Backend, BackendKind
    from ..campaign.outcomes import PolicyKind
    from ..model import load_model

    policy = outcome_policy(outcome_kind, topk, tolerances, metric)
    spread = Backend(BackendKind(backend), workers, address)
    if workers is not None and spread.kind is BackendKind.SERIAL:
        raise EnpheephError("--workers needs --backend local or --backend ray")
    refuse_overwrite(db, model, data_path, plan_path)
    refuse_tensor_path(db, model)
    if resume and db is None:
        raise EnpheephError("--resume needs -o/--output RESULTS.sqlite")
    gates = parse_gates(fail_above)
    if plan_path is not None:
        from ..campaign import CampaignConfig

        ctx = click.get_current_context()
        given = [name for name in opts
                 if ctx.get_parameter_source(name) not in (
                     click.core.ParameterSource.DEFAULT, None)]
        if given:
            flag = "--" + given[0].replace("_text", "").replace("site_globs", "sites").replace(
                "_", "-")
            raise EnpheephError(f"{flag} has no effect with --plan: the plan fixes every "
                                "trial's faults; drop it, or sample anew without --plan")
        cp = CampaignPlan.load(plan_path)
        cfg = CampaignConfig(selection=cp.config.selection, batch_size=batch_size,
                             provider=provider,  # type: ignore[arg-type]
                             output=logits, store_faults=store_faults,
                             suffix=suffix, cache_mb=cache_mb,
                             optimization=optimization)  # type: ignore[arg-type]
    else:
        cp = None
        cfg = replace(build_config(model, batch_size=batch_size, provider=provider,
                                   store_faults=store_faults, logits=logits, **opts),
                      suffix=suffix, cache_mb=cache_mb,
                      optimization=optimization)  # type: ignore[arg-type]
    cfg = replace(cfg, outcome=policy, allow_cpu_fallback=allow_cpu_fallback)
    data = load_dataset(data_path, input_names(load_model(model)),
                        require_labels=policy.kind in (PolicyKind.TOP1, PolicyKind.TOPK),
                        allow_nonfinite=allow_nonfinite_inputs)

    def _terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _terminate)  # SIGTERM: keep finished trials
    try:
        res = run_campaign(model, data, cfg, db, resume=resume, plan=cp, gates=gates,
                           progress=progress, backend=spread)
    except KeyboardInterrupt:
        click.echo(f"interrupted: finished trials are kept in {db}; continue with --resume"
                   if db else "interrupted", err=True)
        sys.exit(130)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if as_json:
        echo_json(res.to_json())
    else:
        print_summary(res.summary)
    sx = res.suffix
    if sx.get("enabled") and (sx.get("cuts") or sx.get("boundaries")):
        click.echo(f"suffix re-execution: {len(sx['cuts'])} weight cut(s), "
                   f"{sx.get('boundaries', 0)} activation boundary(ies) in "
                   f"{sx.get('sessions', 0)} segment session(s) (~"
                   f"{sx.get('session_bytes', 0) / 2**20:.1f} MiB), golden cache "
                   f"{sx['cache_bytes'] / 2**20:.1f} MiB (bound on both: --cache-mb)", err=True)
    tail = f", results in {db}" if db else ""
    score = res.summary.score
    sp = ".4f" if res.summary.score_bounded else "auto"
    head = (f"campaign: golden {score} {fmt(res.golden_accuracy, sp)}, mean "
            f"{fmt(res.mean_accuracy, sp)}, drop {fmt(res.accuracy_drop, sp)}, "
            f"{len(res.trials)} trials{tail}")
    failed = [g for g in res.gates if not g.passed]
    if failed:
        g = failed[0]
        where = "" if g.rate is None else f" at rate {g.rate:g}"
        raise GateFailedError(f"{head}; {g.metric} {fmt(g.value)} (95 % upper bound "
                              f"{fmt(g.bound)}) > {g.threshold:g}{where} ({len(failed)} gate "
                              "check(s) failed)")
    if res.gates:
        worst = max(res.gates, key=lambda g: (g.bound or 0.0) - g.threshold)
        head += (f"; gates hold: worst {worst.metric} {fmt(worst.value)} (95 % upper bound "
                 f"{fmt(worst.bound)}) <= {worst.threshold:g}")
    summary(True, head)


def _ci(p: Any) -> str:
    """``rate [low, high]`` of a proportion (:class:`~enpheeph_onnx.stats.Proportion` or
    :class:`~enpheeph_onnx.stats.ClusteredProportion`)."""
    if not p.n:
        return "-"
    return f"{fmt(p.rate)} [{fmt(p.low)}, {fmt(p.high)}]"


def _acc(g: Any, spec: str = ".4f") -> str:
    a = g.accuracy
    return "-" if a is None else f"{fmt(a.mean, spec)} [{fmt(a.low, spec)}, {fmt(a.high, spec)}]"


def print_summary(s: Any) -> None:
    """The campaign tables of a :class:`~enpheeph_onnx.summary.CampaignSummary`."""
    name = s.score
    sp = ".4f" if s.score_bounded else "auto"  # a metric's scores may have any magnitude
    click.echo(f"golden {name:<9} {fmt(s.golden_accuracy, sp)}  ({s.samples} samples)")
    click.echo(f"mean {name:<11} {fmt(s.mean_accuracy, sp)}  over {len(s.table)} trials")
    click.echo(f"{name + ' drop':<16} {fmt(s.accuracy_drop, sp)}"
               + ("  (stratified: every stratum weighs the same, not an estimate for the "
                  "whole model)" if s.attribution == "stratified" else ""))
    n = max(sum(s.outcomes.values()), 1)
    click.echo("outcomes         " + "  ".join(f"{k} {v / n:.4f}" for k, v in s.outcomes.items()))
    click.echo("")
    rk = {"fault_rate": "fault rate", "bit_error_rate": "bit err rate", "fixed": "level"}
    col = f"{name} [95% CI]"
    rows = [[("-" if r.key["rate"] is None else f"{r.key['rate']:.1e}"), str(r.trials),
             f"{r.mean_faults:.2f}", _acc(r, sp), _ci(r.outcomes.masked),
             _ci(r.outcomes.critical_sdc), _ci(r.outcomes.due), _ci(r.p_trial_critical)]
            for r in s.per_rate]
    click.echo(table(rows, [rk[s.rate_kind], "trials", "faults", col, "masked",
                            "critical SDC", "DUE", "P(trial critical)"]))
    how = "Wilson" if s.score_bounded else f"Wilson (t for {name})"
    click.echo(f"(95 % {how} intervals with the trials as the sample: {name}, outcome rates "
               "and P(trial critical))")
    for groups, label in ((s.per_layer, "layer"), (s.per_bit, "bit")):
        if groups:
            click.echo("")
            rows = [[str(g.key[label]), str(g.trials), f"{g.mean_faults:.2f}", _acc(g, sp),
                     _ci(g.outcomes.critical_sdc), _ci(g.outcomes.due),
                     _ci(g.p_trial_critical)] for g in groups]
            click.echo(table(rows, [label, "trials", "faults", col, "critical SDC", "DUE",
                                    "P(trial critical)"]))
    if s.per_layer or s.per_bit:
        click.echo("(stratified: trials of that stratum)" if s.attribution == "stratified"
                   else "(trials whose faults all lie in that layer / have that bit; "
                        "--stratify measures every layer and bit)")
    if len(s.table) <= 50:
        click.echo("")
        rows = [[str(t["trial"]), "-" if t["rate"] is None else f"{t['rate']:.1e}",
                 t["stratum"] or "-", fmt(t["accuracy"], sp), str(t["masked"]),
                 str(t["tolerable_sdc"]), str(t["critical_sdc"]), str(t["due"]),
                 str(t["n_faults"]), "; ".join(t["first_faults"])
                 + (" ..." if t["n_faults"] > len(t["first_faults"]) else "")]
                for t in s.trial_rows()]
        click.echo(table(rows, ["trial", "rate", "stratum", name, "masked", "sdc",
                                "critical", "due", "faults", "first faults"]))


@main.command("sample-size")
@click.option("--population", required=True, type=float,
              help="Fault population N (elements x bits).")
@click.option("--margin", required=True, type=float, help="Margin of error, e.g. 0.01.")
@click.option("--confidence", default=0.95, show_default=True, type=float,
              help="Confidence level, e.g. 0.99.")
@click.option("--p", "p", default=0.5, show_default=True, type=float,
              help="Estimated proportion (0.5 = worst case).")
@json_option
def sample_size_cmd(population: float, margin: float, confidence: float, p: float,
                    as_json: bool) -> None:
    """Trials for a margin of error (statistical fault injection, Leveugle et al., DATE 2009).

    n = N / (1 + e^2 (N - 1) / (t^2 p (1 - p))), t the two-sided normal quantile of the
    confidence level (scipy.stats.norm.ppf(1 - (1 - C) / 2): 1.96 at 95 %, 2.5758 at 99 %).

    \b
    Example:
      enpheeph-onnx sample-size --population 1e9 --margin 0.01 --confidence 0.99
    """
    from ..stats import normal_quantile, sample_size

    n = sample_size(population, margin, confidence, p)
    if as_json:
        echo_json({"trials": n, "population": population, "margin": margin,
                   "confidence": confidence, "p": p, "t": normal_quantile(confidence)})
    else:
        click.echo(n)
    summary(True, f"sample-size: {n} trials for margin {margin:g} at {confidence:g} "
                  f"confidence (N = {population:g})")
