"""``sites``, ``inject`` and ``run``: a model's fault sites, a faulty copy, a run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import numpy as np

from ..errors import EnpheephError
from ..faults import FaultPlan, parse_fault
from .common import echo_json, refuse_overwrite, summary, table
from .group import main
from .options import (
    data_option,
    fault_options,
    json_option,
    kinds_option,
    model_argument,
    output_option,
    parse_kinds,
    session_options,
)


def fault_plan(fault_exprs: tuple[str, ...], plan_path: Path | None) -> Any:
    """A :class:`FaultPlan` (JSON plan and/or expressions) or, for a binary plan, a
    :class:`FaultSet` with the expressions appended."""
    from ..faultset import FaultSet

    extra = [parse_fault(e) for e in fault_exprs]
    if plan_path is not None and _is_zip(plan_path):
        fs = FaultSet.load_npz(plan_path)
        return FaultSet.concat([fs, FaultSet.from_faults(extra)]) if extra else fs
    faults = list(FaultPlan.load(plan_path).faults) if plan_path else []
    return FaultPlan(tuple(faults + extra))


def sample_batch(data_path: Path, model: Any) -> dict[str, np.ndarray]:
    """The first batch (512 samples) of ``--data`` for measuring tensor shapes.

    Raises:
        EnpheephError: the file is unreadable or lacks one of the model's inputs.
    """
    from ..campaign.data import input_names, require_inputs
    from ..runtime import batch_of, load_npz

    arrays = load_npz(data_path)
    require_inputs(arrays, input_names(model), data_path)
    return batch_of(arrays, 0, 512)


def _is_zip(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(2) == b"PK"
    except OSError as e:
        raise EnpheephError(f"cannot read plan {path}: {e.strerror}") from None


def _per_batch_fault(model: Any) -> str | None:
    """The first recorded activation/input fault of an ``inject``-ed model whose first
    coordinate is an integer on a dynamic (batch) dimension, as text; else None."""
    from ..sites import SiteKind, discover_sites

    meta = {p.key: p.value for p in model.metadata_props}
    if "enpheeph.faults" not in meta:
        return None
    try:
        plan = FaultPlan.from_json(json.loads(meta["enpheeph.faults"]))
    except (ValueError, EnpheephError):
        return None
    sites = {s.name: s for s in discover_sites(model)}
    for f in plan:
        s = sites.get(f.site)
        if (s is not None and s.kind is not SiteKind.WEIGHT and f.index and s.shape
                and f.index[0] is not None and not isinstance(s.shape[0], int)):
            return str(f)
    return None


def _site_notes(s: Any) -> str:
    """Quantization parameters and spiking annotations, for the sites table."""
    parts = []
    if s.scale is not None:
        scale = s.scale if isinstance(s.scale, float) else f"[{len(s.scale)} per channel]"
        zp = s.zero_point if isinstance(s.zero_point, int | None) else "[per channel]"
        parts.append(f"scale {scale:.4g} zp {zp}" if isinstance(scale, float)
                     else f"scale {scale} zp {zp}")
    if s.role:
        parts.append(f"{s.layer} {s.role}" + ("" if s.time_step is None
                                               else f" t={s.time_step}"))
    return "; ".join(parts)


def _shape_text(shape: tuple[Any, ...]) -> str:
    return "[" + ",".join("?" if d is None else str(d) for d in shape) + "]"


@main.command()
@model_argument
@kinds_option(None)
@data_option("Inputs to measure the tensors whose shape ONNX cannot infer on (their first "
             "batch); without it they are listed with shape '?'.")
@json_option
def sites(model: Path, kinds: tuple[str, ...], data_path: Path | None, as_json: bool) -> None:
    """List the fault sites of MODEL: weights, activations and inputs.

    \b
    Example:
      enpheeph-onnx sites models/digits_cnn.onnx --kinds weights
    """
    from ..model import load_model
    from ..sites import (
        SiteKind,
        discover_sites,
        unresolved_body_tensors,
        unresolved_tensors,
        with_measured_shapes,
    )

    wanted = parse_kinds(kinds, default=None) or tuple(SiteKind)
    proto = load_model(model)
    if data_path is not None:
        proto = with_measured_shapes(proto, sample_batch(data_path, proto))
    found = [s for s in discover_sites(proto) if s.kind in wanted]
    acts = SiteKind.ACTIVATION in wanted
    unknown = unresolved_tensors(proto) if acts else []
    in_body = unresolved_body_tensors(proto) if acts else []
    n_w = sum(s.kind is SiteKind.WEIGHT for s in found)
    params = sum(s.elements or 0 for s in found if s.kind is SiteKind.WEIGHT)
    if as_json:
        echo_json([*(s.to_json() for s in found),
                   *({"name": n, "kind": "activation", "shape": "?", "dtype": "?",
                      "unresolved": True} for n in [*unknown, *in_body])])
    else:
        rows = [[s.name, s.kind.value, s.op_type, s.dtype, str(s.bits), _shape_text(s.shape),
                 "?" if s.elements is None else str(s.elements),
                 "" if s.sparsity is None else f"{s.sparsity:.3f}", _site_notes(s)]
                for s in found]
        rows += [[n, "activation", "?", "?", "?", "?", "?", "",
                  "shape not inferable: give --data to measure it"] for n in unknown]
        rows += [[n, "activation", "?", "?", "?", "?", "?", "",
                  "shape not inferable inside a body: no site"] for n in in_body]
        click.echo(table(rows, ["name", "kind", "op", "dtype", "bits", "shape", "elements",
                                "sparsity", "notes"]))
    summary(True, f"sites: {len(found)} sites: {n_w} weights ({params} parameters), "
                  f"{len(found) - n_w} activations/inputs"
                  + (f", {len(unknown)} tensor(s) of unknown shape (not sites without --data)"
                     if unknown else "")
                  + (f", {len(in_body)} body tensor(s) of unknown shape (no sites)"
                     if in_body else ""))


@main.command()
@model_argument
@output_option("Faulty model to write (.onnx).")
@fault_options
@data_option("Inputs to measure the tensors whose shape ONNX cannot infer on, so that they "
             "can be faulted (as campaigns do).")
@json_option
def inject(model: Path, out: Path, fault_exprs: tuple[str, ...], plan_path: Path | None,
           data_path: Path | None, as_json: bool) -> None:
    """Write a faulty copy of MODEL that runs in stock onnxruntime.

    Weight faults perturb the stored tensors; activation and input faults insert fault
    nodes (standard ONNX ops in a model-local function).

    \b
    Example:
      enpheeph-onnx inject models/digits_cnn.onnx -o faulty.onnx \\
        --fault 'conv1.weight[0,0,1,1]:bitflip:30'
    """
    from ..rewrite import inject as do_inject

    if not fault_exprs and plan_path is None:
        raise EnpheephError("no faults given: add --fault EXPR or --plan PLAN.json")
    refuse_overwrite(out, model, plan_path, data_path)
    plan = fault_plan(fault_exprs, plan_path)
    sample = None
    if data_path is not None:
        from ..model import load_model

        sample = sample_batch(data_path, load_model(model))
    res = do_inject(model, plan, sample)
    res.save(out)
    if as_json:
        echo_json({
            "output": str(out),
            "faults": plan.to_json()["faults"] if isinstance(plan, FaultPlan) else len(plan),
            "weights": [{"site": w.site, "elements_changed": w.elements_changed}
                        for w in res.weights],
            "nodes": list(res.nodes), "source_sha256": res.source_sha256,
            "converted_from_opset": res.converted_from_opset})
    else:
        for w in res.weights:
            click.echo(f"weight      {w.site}: {w.elements_changed} element(s) changed")
        for n in res.nodes:
            click.echo(f"fault node  {n}")
    summary(True, f"inject: {len(plan)} fault(s) -> {out}")


@main.command()
@model_argument
@data_option("One array per model input, keyed by input name.", required=True)
@output_option(".npz to write, one array per model output.", required=False)
@click.option("--compare", "other", type=click.Path(dir_okay=False, path_type=Path),
              help="Also run this model; print per output the max abs difference and the "
                   "top-1 agreement.")
@session_options
@json_option
def run(model: Path, data_path: Path, out: Path | None, other: Path | None, provider: str,
        allow_cpu_fallback: bool, optimization: str, batch_size: int,
        allow_nonfinite_inputs: bool, as_json: bool) -> None:
    """Run MODEL in onnxruntime on the arrays of an .npz file.

    \b
    Example:
      enpheeph-onnx run faulty.onnx --data models/digits_test.npz \\
        --compare models/digits_cnn.onnx
    """
    from ..runtime import cpu_fallback

    with cpu_fallback(allow_cpu_fallback):
        _run_command(model, data_path, out, other, allow_nonfinite_inputs, provider,
                     optimization, batch_size, as_json)


def _run_command(model: Path, inputs_path: Path, out: Path | None, other: Path | None,
                 allow_nonfinite_inputs: bool, provider: str, optimization: str,
                 batch_size: int, as_json: bool) -> None:
    from ..model import atomic_path, load_model
    from ..runtime import (
        Optimization,
        check_feeds,
        fixed_batch,
        load_npz,
        make_session,
        run_batched,
        sample_count,
    )
    from ..runtime import session_options as _options

    so = _options(optimization=Optimization(optimization))

    refuse_overwrite(out, model, inputs_path, other)
    from .campaign_commands import refuse_tensor_path

    refuse_tensor_path(out, model)
    arrays = load_npz(inputs_path)
    proto = load_model(model)
    sess = make_session(proto, provider, so)  # type: ignore[arg-type]
    feeds = check_feeds(sess, arrays, str(inputs_path))
    if not allow_nonfinite_inputs:
        from ..campaign.data import refuse_nonfinite

        refuse_nonfinite(feeds, inputs_path)
    n = sample_count(feeds)
    fixed = fixed_batch(sess)
    if fixed is not None:  # the model takes batches of exactly that size
        batch_size = fixed
    for m, path in ((proto, model), *(((load_model(other), other),) if other else ())):
        fixed = _per_batch_fault(m)
        if fixed and batch_size < n:
            raise EnpheephError(
                f"{path} injects {fixed} into one sample index of each onnxruntime run; with "
                f"--batch-size {batch_size} < {n} samples it would hit that index in every "
                f"batch: use --batch-size {n}"
            )
    outputs = run_batched(sess, feeds, batch_size)
    report: dict[str, Any] = {"model": str(model), "providers": sess.get_providers(),
                              "outputs": {k: {"shape": list(v.shape), "dtype": v.dtype.name}
                                          for k, v in outputs.items()}}
    if other is not None:
        sess2 = make_session(load_model(other), provider, so)  # type: ignore[arg-type]
        theirs = run_batched(sess2, check_feeds(sess2, arrays, str(inputs_path)), batch_size)
        report["compare"] = {"model": str(other), "outputs": _compare(outputs, theirs, other)}
    if out is not None:
        with atomic_path(out) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **outputs)
        report["written"] = str(out)
    if as_json:
        echo_json(report)
    else:
        for name, info in report["outputs"].items():
            click.echo(f"output {name}: shape {info['shape']} {info['dtype']}")
        if other is not None:
            rows = [[k, f"{v['max_abs_diff']:.6g}", str(v["nan_mismatch"]),
                     f"{v['top1_agreement']:.4f}", "yes" if v["bit_identical"] else "no"]
                    for k, v in report["compare"]["outputs"].items()]
            click.echo(table(rows, ["output", "max_abs_diff", "nan_mismatch",
                                    "top1_agreement", "bit_identical"]))
    summary(True, f"run: {n} sample(s) on {sess.get_providers()[0]}")


def _compare(outputs: dict[str, np.ndarray], theirs: dict[str, np.ndarray], other: Path
             ) -> dict[str, dict[str, Any]]:
    """Per output: max abs difference (NaN where only one side is NaN), NaN mismatches,
    bit identity and top-1 agreement of two runs on the same inputs."""
    cmp = {}
    for name, a in outputs.items():
        if name not in theirs:
            raise EnpheephError(f"{other} has no output {name!r}: cannot compare")
        b = theirs[name]
        if a.shape != b.shape:
            raise EnpheephError(f"output {name!r} shapes differ: {a.shape} vs {b.shape}")
        fa, fb = a.astype(np.float64), b.astype(np.float64)
        both_nan = np.isnan(fa) & np.isnan(fb)
        with np.errstate(invalid="ignore"):
            diff = np.where(both_nan, 0.0, np.abs(fa - fb))  # NaN vs number stays NaN
        top = (np.argmax(a.reshape(len(a), -1), 1) == np.argmax(b.reshape(len(b), -1), 1)
               if a.ndim >= 1 and len(a) else np.array([True]))
        cmp[name] = {"max_abs_diff": float(np.max(diff)) if diff.size else 0.0,
                     "nan_mismatch": int(np.count_nonzero(np.isnan(fa) != np.isnan(fb))),
                     "bit_identical": bool(a.dtype == b.dtype and a.tobytes() == b.tobytes()),
                     "top1_agreement": float(np.mean(top))}
    return cmp
