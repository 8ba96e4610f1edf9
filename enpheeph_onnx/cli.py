"""The ``enpheeph-onnx`` command line: a thin shell over the Python API.

stdout carries results (tables, ``--json``); stderr carries logs, progress and the final
one-line summary. Exit codes: 0 success, 1 a check failed, 2 usage or input error (a
one-line message, no traceback, no output file).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import numpy as np

from . import __version__
from .errors import EnpheephError, GateFailedError
from .faults import FaultModel, FaultPlan, format_bits, parse_bits, parse_fault

log = logging.getLogger("enpheeph_onnx")


class _Group(click.Group):
    """Turns :class:`EnpheephError` into a one-line message and exit code 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EnpheephError as e:
            click.echo(f"Error: {e}", err=True)
            ctx.exit(2)
        except GateFailedError as e:
            click.echo(f"FAILED {e}", err=True)
            ctx.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="enpheeph-onnx")
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-v info, -vv debug).")
def main(verbose: int) -> None:
    """Fault injection for deep neural networks on ONNX graphs.

    Declare faults (bit flip, stuck-at-0/1, value) on weights, activations or inputs,
    get a faulty model that runs in stock onnxruntime, and run fault-injection campaigns.
    """
    if verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.DEBUG if verbose > 1 else logging.INFO)


# -- shared option groups -------------------------------------------------------------------

def model_argument(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.argument("model", type=click.Path(dir_okay=False, path_type=Path))(f)


def provider_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--provider", type=click.Choice(["cpu", "cuda"]), default="cpu",
                        show_default=True,
                        help="onnxruntime execution provider; cuda is verified, never a "
                             "silent CPU fallback.")(f)


def batch_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--batch-size", type=click.IntRange(min=1), default=512,
                        show_default=True, help="Samples per onnxruntime run.")(f)


def json_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True,
                        help="Print machine-readable JSON on stdout.")(f)


def fault_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--plan", "plan_path", type=click.Path(dir_okay=False, path_type=Path),
                     help="Fault plan JSON: {\"faults\": [{\"site\", \"index\", \"model\", "
                          "\"bits\", \"value\"}]}.")(f)
    return click.option("--fault", "fault_exprs", multiple=True, metavar="EXPR",
                        help="SITE[INDEX]:MODEL[:BITS], e.g. 'conv1.weight[0,0,1,1]:bitflip:30'"
                             " or '/relu1/Relu_output_0[*,3,2,2]:stuck-at-1:23-30' "
                             "(repeatable; applied after --plan, in order).")(f)


def _plan(fault_exprs: tuple[str, ...], plan_path: Path | None) -> FaultPlan:
    faults = list(FaultPlan.load(plan_path).faults) if plan_path else []
    faults += [parse_fault(e) for e in fault_exprs]
    return FaultPlan(tuple(faults))


def _summary(ok: bool, text: str) -> None:
    click.echo(f"{'PASSED' if ok else 'FAILED'} {text}", err=True)


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
              for r in rows]
    return "\n".join(lines)


def _shape_text(shape: tuple[Any, ...]) -> str:
    return "[" + ",".join("?" if d is None else str(d) for d in shape) + "]"


# -- commands -------------------------------------------------------------------------------

@main.command()
@model_argument
@json_option
@click.option("--kind", "kinds", multiple=True,
              type=click.Choice(["weight", "activation", "input"]),
              help="Only sites of this kind (repeatable).")
def sites(model: Path, as_json: bool, kinds: tuple[str, ...]) -> None:
    """List the fault sites of MODEL: weights, activations and inputs."""
    from .model import load_model
    from .sites import discover_sites

    found = [s for s in discover_sites(load_model(model)) if not kinds or s.kind.value in kinds]
    if as_json:
        click.echo(json.dumps([s.to_json() for s in found], indent=1))
        return
    rows = [[s.name, s.kind.value, s.op_type, s.dtype, str(s.bits), _shape_text(s.shape),
             "?" if s.elements is None else str(s.elements),
             "" if s.zero_fraction is None else f"{s.zero_fraction:.3f}"] for s in found]
    click.echo(_table(rows, ["name", "kind", "op", "dtype", "bits", "shape", "elements",
                             "zeros"]))
    n_w = sum(s.kind.value == "weight" for s in found)
    params = sum(s.elements or 0 for s in found if s.kind.value == "weight")
    click.echo(f"{len(found)} sites: {n_w} weights ({params} parameters), "
               f"{len(found) - n_w} activations/inputs", err=True)


@main.command()
@model_argument
@click.option("-o", "--output", "out", required=True,
              type=click.Path(dir_okay=False, path_type=Path), help="Faulty model to write.")
@fault_options
@json_option
def inject(model: Path, out: Path, fault_exprs: tuple[str, ...], plan_path: Path | None,
           as_json: bool) -> None:
    """Write a faulty copy of MODEL that runs in stock onnxruntime.

    Weight faults perturb the stored tensors; activation and input faults insert fault
    nodes (standard ONNX ops in a model-local function).
    """
    from .rewrite import inject as do_inject

    if not fault_exprs and plan_path is None:
        raise EnpheephError("no faults given: add --fault EXPR or --plan PLAN.json")
    plan = _plan(fault_exprs, plan_path)
    res = do_inject(model, plan)
    res.save(out)
    if as_json:
        click.echo(json.dumps({
            "output": str(out), "faults": plan.to_json()["faults"],
            "weights": [{"site": w.site, "elements_changed": w.elements_changed}
                        for w in res.weights],
            "nodes": list(res.nodes), "source_sha256": res.source_sha256,
            "converted_from_opset": res.converted_from_opset}, indent=1))
    else:
        for w in res.weights:
            click.echo(f"weight      {w.site}: {w.elements_changed} element(s) changed")
        for n in res.nodes:
            click.echo(f"fault node  {n}")
    _summary(True, f"inject: {len(plan)} fault(s) -> {out}")


@main.command()
@model_argument
@click.option("--inputs", "inputs_path", required=True,
              type=click.Path(dir_okay=False, path_type=Path),
              help=".npz with one array per model input, keyed by input name.")
@click.option("-o", "--output", "out", type=click.Path(dir_okay=False, path_type=Path),
              help=".npz to write, one array per model output.")
@click.option("--compare", "other", type=click.Path(dir_okay=False, path_type=Path),
              help="Also run this model; print per output the max abs difference and the "
                   "top-1 agreement.")
@provider_option
@batch_option
@json_option
def run(model: Path, inputs_path: Path, out: Path | None, other: Path | None, provider: str,
        batch_size: int, as_json: bool) -> None:
    """Run MODEL in onnxruntime on the arrays of an .npz file."""
    from .model import atomic_path, load_model
    from .runtime import check_feeds, load_npz, make_session, run_batched

    arrays = load_npz(inputs_path)
    sess = make_session(load_model(model), provider)  # type: ignore[arg-type]
    feeds = check_feeds(sess, arrays, str(inputs_path))
    outputs = run_batched(sess, feeds, batch_size)
    report: dict[str, Any] = {"model": str(model), "providers": sess.get_providers(),
                              "outputs": {k: {"shape": list(v.shape), "dtype": v.dtype.name}
                                          for k, v in outputs.items()}}
    if other is not None:
        sess2 = make_session(load_model(other), provider)  # type: ignore[arg-type]
        theirs = run_batched(sess2, check_feeds(sess2, arrays, str(inputs_path)), batch_size)
        cmp = {}
        for name, a in outputs.items():
            if name not in theirs:
                raise EnpheephError(f"{other} has no output {name!r}: cannot compare")
            b = theirs[name]
            if a.shape != b.shape:
                raise EnpheephError(f"output {name!r} shapes differ: {a.shape} vs {b.shape}")
            diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
            top = (np.argmax(a.reshape(len(a), -1), 1) == np.argmax(b.reshape(len(b), -1), 1)
                   if a.ndim >= 1 and len(a) else np.array([True]))
            cmp[name] = {"max_abs_diff": float(np.nanmax(diff)) if diff.size else 0.0,
                         "nan_mismatch": int(np.count_nonzero(np.isnan(a) != np.isnan(b))),
                         "bit_identical": bool(a.tobytes() == b.tobytes()),
                         "top1_agreement": float(np.mean(top))}
        report["compare"] = {"model": str(other), "outputs": cmp}
    if out is not None:
        with atomic_path(out) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **outputs)
        report["written"] = str(out)
    if as_json:
        click.echo(json.dumps(report, indent=1))
    else:
        for name, info in report["outputs"].items():
            click.echo(f"output {name}: shape {info['shape']} {info['dtype']}")
        if other is not None:
            rows = [[k, f"{v['max_abs_diff']:.6g}", f"{v['top1_agreement']:.4f}",
                     "yes" if v["bit_identical"] else "no"]
                    for k, v in report["compare"]["outputs"].items()]
            click.echo(_table(rows, ["output", "max_abs_diff", "top1_agreement",
                                     "bit_identical"]))
    _summary(True, f"run: {len(next(iter(feeds.values())))} sample(s) on "
                   f"{sess.get_providers()[0]}")


@main.command()
@model_argument
@click.option("--data", "data_path", required=True,
              type=click.Path(dir_okay=False, path_type=Path),
              help=".npz with the model inputs (keyed by name) and int 'labels'.")
@click.option("--target", type=click.Choice(["weights", "activations", "inputs"]),
              default="weights", show_default=True, help="Kind of fault site to hit.")
@click.option("--fault-model", type=click.Choice(["bitflip", "stuck-at-0", "stuck-at-1"]),
              default="bitflip", show_default=True)
@click.option("--bits", "bits_text", default="all", show_default=True,
              help="Candidate bit positions: a list/ranges ('30', '0-7,31') or 'all'.")
@click.option("--faults-per-trial", type=click.IntRange(min=0), default=1, show_default=True,
              help="Faults per trial (K).")
@click.option("--trials", type=click.IntRange(min=1), default=100, show_default=True,
              help="Number of trials (N).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Root seed; the same seed gives identical trials.")
@click.option("--db", type=click.Path(dir_okay=False, path_type=Path),
              help="SQLite results file to create (refused if it exists).")
@click.option("--output", "output_name", help="Classifier output for top-1 (default: first).")
@provider_option
@batch_option
@json_option
def campaign(model: Path, data_path: Path, target: str, fault_model: str, bits_text: str,
             faults_per_trial: int, trials: int, seed: int, db: Path | None,
             output_name: str | None, provider: str, batch_size: int, as_json: bool) -> None:
    """Run a fault-injection campaign on MODEL over labelled data.

    A golden run, then N trials of K faults each at uniformly random positions of the
    targeted sites and uniformly random bits; prints golden and faulty top-1 accuracy and
    per-trial outcomes (masked, tolerable SDC, critical SDC, DUE).
    """
    from .campaign import CampaignConfig, load_dataset, run_campaign
    from .model import load_model
    from .sites import SiteKind

    bits = tuple(range(64)) if bits_text.strip().lower() == "all" else parse_bits(bits_text)
    cfg = CampaignConfig(
        target={"weights": SiteKind.WEIGHT, "activations": SiteKind.ACTIVATION,
                "inputs": SiteKind.INPUT}[target],
        fault_model=FaultModel.parse(fault_model), bits=bits,
        faults_per_trial=faults_per_trial, trials=trials, seed=seed, batch_size=batch_size,
        provider=provider, output=output_name)  # type: ignore[arg-type]
    proto = load_model(model)
    input_names = [i.name for i in proto.graph.input
                   if i.name not in {t.name for t in proto.graph.initializer}]
    data = load_dataset(data_path, input_names)
    res = run_campaign(model, data, cfg, db)
    if as_json:
        click.echo(json.dumps(res.to_json(), indent=1))
    else:
        click.echo(f"golden accuracy  {res.golden_accuracy:.4f}  ({res.samples} samples)")
        click.echo(f"mean accuracy    {res.mean_accuracy:.4f}  over {len(res.trials)} trials of "
                   f"{faults_per_trial} {fault_model} fault(s) on {target}, bits "
                   f"{format_bits([b for b in bits if b < 64]) if bits_text != 'all' else 'all'}")
        click.echo(f"accuracy drop    {res.accuracy_drop:.4f}")
        tot = res.outcome_totals()
        n = sum(tot.values())
        click.echo("outcomes         " + "  ".join(f"{k} {v / n:.4f}" for k, v in tot.items()))
        rows = [[str(t.trial), f"{t.accuracy:.4f}", str(t.masked), str(t.tolerable_sdc),
                 str(t.critical_sdc), str(t.due),
                 "; ".join(str(f) for f in t.faults[:3]) + (" ..." if len(t.faults) > 3 else "")]
                for t in res.trials]
        click.echo(_table(rows, ["trial", "accuracy", "masked", "sdc", "critical", "due",
                                 "faults"]))
    where = f", results in {db}" if db else ""
    _summary(True, f"campaign: golden {res.golden_accuracy:.4f}, mean {res.mean_accuracy:.4f}, "
                   f"drop {res.accuracy_drop:.4f}{where}")


if __name__ == "__main__":  # pragma: no cover
    main()
