"""The ``enpheeph-onnx`` command line: a thin shell over the Python API.

stdout carries results (tables, ``--json``); stderr carries logs, progress and the final
one-line summary. Exit codes: 0 success, 1 a check failed, 2 usage or input error (a
one-line message, no traceback, no output file).
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
import numpy as np

from . import __version__
from .errors import EnpheephError, GateFailedError
from .faults import FaultModel, FaultPlan, parse_bits, parse_fault

log = logging.getLogger("enpheeph_onnx")


class _Group(click.Group):
    """Turns :class:`EnpheephError` and click's usage errors into a one-line message and
    exit code 2 (click would print the usage block and a hint over three lines)."""

    def main(self, args: Any = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True,
             **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, False, **extra)
        except click.exceptions.NoArgsIsHelpError as e:  # no command: the help
            click.echo(e.format_message(), err=True)
            sys.exit(2)
        except click.UsageError as e:  # bad option, missing argument, bad value
            where = e.ctx.command_path if e.ctx is not None else "enpheeph-onnx"
            click.echo(f"Error: {e.format_message()} (see '{where} --help')", err=True)
            sys.exit(2)
        except click.ClickException as e:
            e.show()
            sys.exit(e.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)

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
    return click.option("--provider", type=click.Choice(["cpu", "cuda", "tensorrt"]),
                        default="cpu", show_default=True,
                        help="onnxruntime execution provider; cuda and tensorrt are "
                             "verified, never a silent CPU fallback.")(f)


def fallback_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--allow-cpu-fallback", is_flag=True,
                        help="Let --provider cuda/tensorrt run on the CPU (with a warning) "
                             "where no GPU can serve, instead of refusing.")(f)


def nonfinite_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--allow-nonfinite-inputs", is_flag=True,
                        help="Accept NaN/Inf in the data (refused by default: those inputs' "
                             "outputs would count as DUE without any fault).")(f)


def optimization_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--optimization", type=click.Choice(["extended", "all"]),
                        default="extended", show_default=True,
                        help="onnxruntime graph optimizations: extended (weights fed or "
                             "constant compute alike) or all (as a default session deploys "
                             "the model; weight faults on the weights onnxruntime holds, or "
                             "activation/input faults, not both at once).")(f)


def batch_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--batch-size", type=click.IntRange(min=1), default=512,
                        show_default=True, help="Samples per onnxruntime run.")(f)


def json_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True,
                        help="Print machine-readable JSON on stdout.")(f)


def fault_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--plan", "plan_path", type=click.Path(dir_okay=False, path_type=Path),
                     help="Fault plan: JSON {\"faults\": [{\"site\", \"index\", \"model\", "
                          "\"bits\", \"value\"}]}, or a binary .npz plan (columns, for "
                          "millions of faults; FaultSet.save_npz).")(f)
    return click.option("--fault", "fault_exprs", multiple=True, metavar="EXPR",
                        help="SITE[INDEX]:MODEL[:BITS], e.g. 'conv1.weight[0,0,1,1]:bitflip:30'"
                             " or '/relu1/Relu_output_0[*,3,2,2]:stuck-at-1:23-30' "
                             "(repeatable; applied after --plan, in order).")(f)


def _plan(fault_exprs: tuple[str, ...], plan_path: Path | None) -> Any:
    """A :class:`FaultPlan` (JSON plan and/or expressions) or, for a binary plan, a
    :class:`FaultSet` with the expressions appended."""
    from .faultset import FaultSet

    extra = [parse_fault(e) for e in fault_exprs]
    if plan_path is not None and _is_zip(plan_path):
        fs = FaultSet.load_npz(plan_path)
        return FaultSet.concat([fs, FaultSet.from_faults(extra)]) if extra else fs
    faults = list(FaultPlan.load(plan_path).faults) if plan_path else []
    return FaultPlan(tuple(faults + extra))


def _is_zip(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(2) == b"PK"
    except OSError as e:
        raise EnpheephError(f"cannot read plan {path}: {e.strerror}") from None


def _refuse_overwrite(out: Path | None, *inputs: Path | None, what: str = "output",
                      folder: bool = False) -> None:
    """Refuse an output path that is one of the command's inputs (it would be destroyed),
    and (``folder`` False) one that is a folder or empty.

    Raises:
        EnpheephError: ``out`` is (or resolves to, or is a hard link of) an input; a file
            output names a folder.
    """
    if out is None:
        return
    if not folder and (str(out) in ("", ".") or out.is_dir()):
        raise EnpheephError(f"{what} {str(out)!r} is a folder, not a file: give a file path")
    for src in inputs:
        if src is None:
            continue
        same = out.resolve() == src.resolve()
        if not same and out.exists() and src.exists():
            try:
                same = out.samefile(src)
            except OSError:
                same = False
        if same:
            raise EnpheephError(f"{what} {out} is also an input of this command; choose "
                                "another path (the input would be overwritten)")


def _summary(ok: bool, text: str) -> None:
    click.echo(f"{'PASSED' if ok else 'FAILED'} {text}", err=True)


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
              for r in rows]
    return "\n".join(lines)


def _per_batch_fault(model: Any) -> str | None:
    """The first recorded activation/input fault of an ``inject``-ed model whose first
    coordinate is an integer on a dynamic (batch) dimension, as text; else None."""
    from .faults import FaultPlan
    from .sites import SiteKind, discover_sites

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


# -- commands -------------------------------------------------------------------------------

@main.command()
@model_argument
@json_option
@click.option("--kind", "kinds", multiple=True,
              type=click.Choice(["weight", "activation", "input"]),
              help="Only sites of this kind (repeatable).")
@click.option("--data", "data_path", type=click.Path(exists=True, dir_okay=False,
                                                     path_type=Path),
              help="Inputs (.npz) to measure the tensors whose shape ONNX cannot infer on "
                   "(their first batch); without it they are listed with shape '?'.")
def sites(model: Path, as_json: bool, kinds: tuple[str, ...], data_path: Path | None) -> None:
    """List the fault sites of MODEL: weights, activations and inputs."""
    from .model import load_model
    from .runtime import batch_of, load_npz
    from .sites import (
        discover_sites,
        unresolved_body_tensors,
        unresolved_tensors,
        with_measured_shapes,
    )

    proto = load_model(model)
    if data_path is not None:
        proto = with_measured_shapes(proto, batch_of(load_npz(data_path), 0, 512))
    found = [s for s in discover_sites(proto) if not kinds or s.kind.value in kinds]
    acts = not kinds or "activation" in kinds
    unknown = unresolved_tensors(proto) if acts else []
    in_body = unresolved_body_tensors(proto) if acts else []
    if as_json:
        click.echo(json.dumps([*(s.to_json() for s in found),
                               *({"name": n, "kind": "activation", "shape": "?",
                                  "dtype": "?", "unresolved": True}
                                 for n in [*unknown, *in_body])], indent=1))
        return
    rows = [[s.name, s.kind.value, s.op_type, s.dtype, str(s.bits), _shape_text(s.shape),
             "?" if s.elements is None else str(s.elements),
             "" if s.sparsity is None else f"{s.sparsity:.3f}", _site_notes(s)]
            for s in found]
    rows += [[n, "activation", "?", "?", "?", "?", "?", "",
              "shape not inferable: give --data to measure it"] for n in unknown]
    rows += [[n, "activation", "?", "?", "?", "?", "?", "",
              "shape not inferable inside a body: no site"] for n in in_body]
    click.echo(_table(rows, ["name", "kind", "op", "dtype", "bits", "shape", "elements",
                             "sparsity", "notes"]))
    n_w = sum(s.kind.value == "weight" for s in found)
    params = sum(s.elements or 0 for s in found if s.kind.value == "weight")
    click.echo(f"{len(found)} sites: {n_w} weights ({params} parameters), "
               f"{len(found) - n_w} activations/inputs"
               + (f", {len(unknown)} tensor(s) of unknown shape (not sites without --data)"
                  if unknown else "")
               + (f", {len(in_body)} body tensor(s) of unknown shape (no sites)"
                  if in_body else ""), err=True)


@main.command()
@model_argument
@click.option("-o", "--output", "out", required=True,
              type=click.Path(dir_okay=False, path_type=Path), help="Faulty model to write.")
@fault_options
@click.option("--data", "data_path", type=click.Path(exists=True, dir_okay=False,
                                                     path_type=Path),
              help="Inputs (.npz) to measure the tensors whose shape ONNX cannot infer on, "
                   "so that they can be faulted (as campaigns do).")
@json_option
def inject(model: Path, out: Path, fault_exprs: tuple[str, ...], plan_path: Path | None,
           data_path: Path | None, as_json: bool) -> None:
    """Write a faulty copy of MODEL that runs in stock onnxruntime.

    Weight faults perturb the stored tensors; activation and input faults insert fault
    nodes (standard ONNX ops in a model-local function).
    """
    from .rewrite import inject as do_inject

    if not fault_exprs and plan_path is None:
        raise EnpheephError("no faults given: add --fault EXPR or --plan PLAN.json")
    _refuse_overwrite(out, model, plan_path, data_path)
    plan = _plan(fault_exprs, plan_path)
    sample = None
    if data_path is not None:
        from .runtime import batch_of, load_npz

        sample = batch_of(load_npz(data_path), 0, 512)
    res = do_inject(model, plan, sample)
    res.save(out)
    if as_json:
        click.echo(json.dumps({
            "output": str(out),
            "faults": plan.to_json()["faults"] if isinstance(plan, FaultPlan) else len(plan),
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
@nonfinite_option
@fallback_option
@provider_option
@optimization_option
@batch_option
@json_option
def run(model: Path, inputs_path: Path, out: Path | None, other: Path | None,
        allow_nonfinite_inputs: bool, allow_cpu_fallback: bool, provider: str,
        optimization: str, batch_size: int, as_json: bool) -> None:
    """Run MODEL in onnxruntime on the arrays of an .npz file."""
    from .runtime import cpu_fallback

    with cpu_fallback(allow_cpu_fallback):
        _run_command(model, inputs_path, out, other, allow_nonfinite_inputs, provider,
                     optimization, batch_size, as_json)


def _run_command(model: Path, inputs_path: Path, out: Path | None, other: Path | None,
                 allow_nonfinite_inputs: bool, provider: str, optimization: str,
                 batch_size: int, as_json: bool) -> None:
    from .model import atomic_path, load_model
    from .runtime import (
        Optimization,
        check_feeds,
        fixed_batch,
        load_npz,
        make_session,
        run_batched,
        sample_count,
    )
    from .runtime import session_options as _options

    so = _options(optimization=Optimization(optimization))

    _refuse_overwrite(out, model, inputs_path, other)
    arrays = load_npz(inputs_path)
    proto = load_model(model)
    sess = make_session(proto, provider, so)  # type: ignore[arg-type]
    feeds = check_feeds(sess, arrays, str(inputs_path))
    if not allow_nonfinite_inputs:
        from .campaign.data import refuse_nonfinite

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
        report["compare"] = {"model": str(other), "outputs": cmp}
    if out is not None:
        with atomic_path(out) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **outputs)
        report["written"] = str(out)
    if as_json:
        click.echo(json.dumps(_finite(report), indent=1, allow_nan=False))
    else:
        for name, info in report["outputs"].items():
            click.echo(f"output {name}: shape {info['shape']} {info['dtype']}")
        if other is not None:
            rows = [[k, f"{v['max_abs_diff']:.6g}", str(v["nan_mismatch"]),
                     f"{v['top1_agreement']:.4f}", "yes" if v["bit_identical"] else "no"]
                    for k, v in report["compare"]["outputs"].items()]
            click.echo(_table(rows, ["output", "max_abs_diff", "nan_mismatch",
                                     "top1_agreement", "bit_identical"]))
    _summary(True, f"run: {n} sample(s) on "
                   f"{sess.get_providers()[0]}")



# -- campaigns ------------------------------------------------------------------------------

def _load_toml_config(ctx: click.Context, param: click.Parameter, value: Path | None) -> None:
    """``--config FILE.toml``: its keys become the command's defaults (flags override)."""
    if value is None:
        return
    import tomllib

    try:
        data = tomllib.loads(Path(value).read_text())
    except OSError as e:
        raise EnpheephError(f"cannot read config {value}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise EnpheephError(f"config {value} is not UTF-8 text (TOML)") from None
    except tomllib.TOMLDecodeError as e:
        raise EnpheephError(f"config {value} is not valid TOML: {e}") from None
    data = data.get("campaign", data)
    known = {p.name: p for p in ctx.command.params if p.name not in ("config", "model")}
    flags = {opt.lstrip("-").replace("-", "_"): p.name for p in ctx.command.params
             for opt in [*getattr(p, "opts", []), *getattr(p, "secondary_opts", [])]
             if opt.startswith("--")}
    negated = {opt.lstrip("-").replace("-", "_") for p in ctx.command.params
               for opt in getattr(p, "secondary_opts", [])}
    defaults: dict[str, Any] = {}
    for key, v in data.items():
        if key.replace("-", "_") in negated and isinstance(v, bool):
            v = not v  # e.g. no-progress = true
        name = flags.get(key.replace("-", "_"))
        if name is None or name not in known:
            raise EnpheephError(
                f"config {value}: unknown key {key!r}; the keys are the command's long flags, "
                f"e.g. fault-rate, trials, seed"
            )
        opt = known[name]
        for item in v if isinstance(v, list) else [v]:
            _check_toml_type(value, key, opt, item)
        if isinstance(v, list) and not getattr(opt, "multiple", False):
            v = ",".join(str(x) for x in v)
        elif getattr(opt, "multiple", False) and not isinstance(v, list):
            v = [v]
        defaults[name] = v
    ctx.default_map = {**(ctx.default_map or {}), **defaults}


def _check_toml_type(path: Path, key: str, opt: click.Parameter, v: Any) -> None:
    """Refuse a config value of the wrong type (click would crash on it, or truncate a
    float given for an integer)."""
    t = opt.type
    if getattr(opt, "is_flag", False):
        want, ok = "true or false", isinstance(v, bool)
    elif isinstance(t, click.types.IntParamType):
        want, ok = "an integer", isinstance(v, int) and not isinstance(v, bool)
    elif isinstance(t, click.types.FloatParamType):
        want, ok = "a number", isinstance(v, int | float) and not isinstance(v, bool)
    elif isinstance(t, click.Path | click.Choice):
        want, ok = "a string", isinstance(v, str)
    else:  # free-form options (rates, bits) parse numbers and strings alike
        want, ok = "a string or a number", isinstance(v, str | int | float) and not isinstance(
            v, bool)
    if not ok:
        raise EnpheephError(f"config {path}: {key} must be {want}, not {type(v).__name__} "
                            f"{v!r}")


def sampling_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The options that decide which faults a campaign draws (shared by plan/campaign)."""
    opts = [
        click.option("--kinds", default=None,
                     help="Site kinds to hit, comma-separated: weight,activation,input "
                          "[default: weight]."),
        click.option("--target", type=click.Choice(["weights", "activations", "inputs"]),
                     default=None, help="Shorthand for --kinds with one kind."),
        click.option("--sites", "site_globs", multiple=True, metavar="GLOB",
                     help="Only sites whose name or layer matches this shell glob "
                          "(repeatable), e.g. 'conv*' or '*fc1*'."),
        click.option("--op-types", default=None,
                     help="Only sites produced/consumed by these ops, e.g. Conv,Gemm,MatMul."),
        click.option("--fault-model",
                     type=click.Choice(["bitflip", "stuck-at-0", "stuck-at-1", "value"]),
                     default="bitflip", show_default=True),
        click.option("--value", "value_text", default=None,
                     help="For --fault-model value: a number, 'uniform:LOW,HIGH' or "
                          "'normal:MEAN,STD'."),
        click.option("--bits", "bits_text", default="all", show_default=True,
                     help="Candidate bit positions: a list/ranges ('30', '0-7,31') or 'all'."),
        click.option("--fault-rate", default=None,
                     help="Faults per parameter: '1e-6', a list '1e-7,1e-6' or a log grid "
                          "START:STOP:POINTS_PER_DECADE ('1e-7:1e-1:2')."),
        click.option("--bit-error-rate", default=None,
                     help="Faults per stored bit; same forms as --fault-rate."),
        click.option("--exact-count", is_flag=True,
                     help="round(rate x N) faults per trial instead of Poisson(rate x N)."),
        click.option("--faults-per-trial", type=click.IntRange(min=0), default=None,
                     help="A fixed number of faults per trial (K) [default: 1 without a rate]."),
        click.option("--trials", type=click.IntRange(min=1), default=None,
                     help="Trials per fault-rate level [default: 100]."),
        click.option("--margin", type=float, default=None,
                     help="Margin of error (e.g. 0.01): sets --trials by Leveugle et al."),
        click.option("--confidence", type=float, default=0.95, show_default=True,
                     help="Confidence level for --margin."),
        click.option("--per-sample", is_flag=True,
                     help="Each input gets its own faults (activations/inputs only)."),
        click.option("--pruned-weights", type=click.Choice(["skip", "only", "include"]),
                     default="skip", show_default=True,
                     help="Pruned (zero) weights: skip them (a sparse accelerator does not "
                          "store them), hit only them (resurrection), or include them."),
        click.option("--time-steps", default=None,
                     help="Spiking/recurrent models: only neuron states of these time steps "
                          "('3', '3-5'; transient faults), or 'all' (permanent faults: the "
                          "same neuron at every step)."),
        click.option("--stratify", default=None,
                     type=click.Choice(["layer", "bit", "layer,bit", "bit,layer"]),
                     help="Stratified sampling: --trials trials per layer, bit position or "
                          "layer x bit cell at each level, each trial's faults confined to "
                          "its stratum (measured per-layer/per-bit vulnerability)."),
        click.option("--seed", type=int, default=0, show_default=True,
                     help="Root seed; the same seed gives identical trials."),
        click.option("--output", "output_name", default=None,
                     help="Classifier output for top-1 (default: the first output)."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def outcome_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """How a campaign judges a differing output (critical or tolerable SDC)."""
    opts = [
        click.option("--outcome", "outcome_kind",
                     type=click.Choice(["top1", "topk", "tolerance"]), default=None,
                     help="Critical SDC when: the top-1 class changes (top1, default), the "
                          "golden top-1 leaves the faulty top-k (topk), or an output leaves "
                          "its --sdc-tolerance (tolerance; no labels needed)."),
        click.option("--topk", type=click.IntRange(min=1), default=None,
                     help="k of --outcome topk [5]."),
        click.option("--sdc-tolerance", "tolerances", multiple=True,
                     metavar="NAME:atol=A,rtol=R",
                     help="Per-output tolerance of --outcome tolerance (repeatable; NAME * "
                          "for every output without its own): within |faulty - golden| <= "
                          "atol + rtol |golden| a difference is tolerable."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _outcome(kind: str | None, topk: int | None, tolerances: tuple[str, ...]) -> Any:
    from .campaign.outcomes import OutcomePolicy, PolicyKind, Tolerance

    if kind is None:
        kind = "tolerance" if tolerances else "topk" if topk is not None else "top1"
    if topk is not None and kind != "topk":
        raise EnpheephError(f"--topk applies to --outcome topk, not {kind}")
    return OutcomePolicy(PolicyKind(kind), 5 if topk is None else topk,
                         tuple(Tolerance.parse(t) for t in tolerances))


def _kinds(kinds: str | None, target: str | None) -> tuple[Any, ...]:
    from .sites import SiteKind

    if kinds and target:
        raise EnpheephError("give --kinds or --target, not both")
    if kinds is not None and not kinds.strip(", "):
        raise EnpheephError("--kinds is empty: give weight, activation and/or input")
    if target:
        return ({"weights": SiteKind.WEIGHT, "activations": SiteKind.ACTIVATION,
                 "inputs": SiteKind.INPUT}[target],)
    out = []
    for given in (kinds or "weight").split(","):
        k = given.strip()
        k = k[:-1] if k.endswith("s") and k[:-1] in {m.value for m in SiteKind} else k
        try:
            out.append(SiteKind(k))
        except ValueError:
            raise EnpheephError(f"unknown site kind {given.strip()!r}: use weight, activation, "
                                "input"
                                ) from None
    return tuple(out)


def _build_config(model: Path, kinds: str | None, target: str | None,
                  site_globs: tuple[str, ...], op_types: str | None, fault_model: str,
                  value_text: str | None, bits_text: str, fault_rate: str | None,
                  bit_error_rate: str | None, exact_count: bool, faults_per_trial: int | None,
                  trials: int | None, margin: float | None, confidence: float,
                  per_sample: bool, pruned_weights: str, time_steps: str | None,
                  stratify: str | None, seed: int, output_name: str | None,
                  batch_size: int = 512, provider: str = "cpu", store_faults: str = "all"
                  ) -> Any:
    from .campaign import (
        CampaignConfig,
        CountMode,
        SiteSelection,
        ValueDistribution,
        allowed_elements,
        parse_rates,
        select_sites,
        trials_for_margin,
    )
    from .model import load_model
    from .sites import discover_sites

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
        selection=SiteSelection(_kinds(kinds, target), tuple(site_globs),
                                tuple(o.strip() for o in (op_types or "").split(",")
                                      if o.strip())),
        fault_model=FaultModel.parse(fault_model), bits=bits,
        value=ValueDistribution.parse(value_text) if value_text is not None else None,
        count=count, faults_per_trial=1 if faults_per_trial is None else faults_per_trial,
        rates=rates, exact_count=exact_count, trials=trials or 100, per_sample=per_sample,
        pruned_weights=pruned_weights, time_steps=time_steps, seed=seed,
        batch_size=batch_size, provider=provider,  # type: ignore[arg-type]
        output=output_name, stratify=tuple((stratify or "").split(",")) if stratify else (),
        store_faults=store_faults)
    if margin is not None:
        proto = load_model(model)
        sites = select_sites(discover_sites(proto), cfg)
        n = trials_for_margin(sites, cfg, margin, confidence,
                              allowed=allowed_elements(proto, sites, cfg.pruned_weights))
        log.info("--margin %g at %g confidence: %d trials per level", margin, confidence, n)
        cfg = replace(cfg, trials=n)
    return cfg


def _gates(specs: tuple[str, ...]) -> tuple[tuple[str, float], ...]:
    from .summary import METRICS

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
    from .summary import validate_gates

    validate_gates(out)
    return tuple(out)


def _fmt(x: float | None, spec: str = ".4f") -> str:
    if x is None:
        return "-"
    text = format(x, spec)
    return text[1:] if text.startswith("-") and float(text) == 0 else text  # no "-0.0000"


@main.command()
@model_argument
@click.option("--data", "data_path", required=True,
              type=click.Path(dir_okay=False, path_type=Path),
              help=".npz with the model inputs (keyed by name) and int 'labels'.")
@sampling_options
@click.option("-o", "--out", "out", required=True,
              type=click.Path(dir_okay=False, path_type=Path),
              help="Campaign plan to write (.json, or binary .npz).")
def plan(model: Path, data_path: Path, out: Path, **opts: Any) -> None:
    """Sample the fault lists of a campaign without running them.

    Replay them exactly with 'campaign MODEL --plan PLAN'. A .json path gets a JSON plan;
    any other (e.g. plan.npz) a compact binary one (columns, for millions of faults).
    """
    from .campaign import input_names, load_dataset, plan_campaign
    from .model import load_model

    _refuse_overwrite(out, model, data_path)
    cfg = _build_config(model, **opts)
    data = load_dataset(data_path, input_names(load_model(model)), require_labels=False,
                        allow_nonfinite=True)  # (only the sample count is used)
    p = plan_campaign(model, cfg, len(data))
    p.save(out)
    _summary(True, f"plan: {len(p.trials)} trials, {p.faults} faults -> {out}")


@main.command()
@model_argument
@click.option("--config", type=click.Path(dir_okay=False, path_type=Path), is_eager=True,
              expose_value=False, callback=_load_toml_config,
              help="TOML file with the same keys as the long flags (flags override).")
@click.option("--data", "data_path", required=True,
              type=click.Path(dir_okay=False, path_type=Path),
              help=".npz with the model inputs (keyed by name) and int 'labels'.")
@sampling_options
@click.option("--plan", "plan_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Replay the trials of a campaign plan (from 'enpheeph-onnx plan').")
@click.option("--db", type=click.Path(dir_okay=False, path_type=Path),
              help="SQLite results file (an existing one is refused without --resume).")
@click.option("--resume", is_flag=True,
              help="Continue the campaign stored in --db where it stopped.")
@click.option("--fail-above", "fail_above", multiple=True, metavar="METRIC=THRESHOLD",
              help="Reliability gate: exit 1 unless the upper 95 % bound of METRIC is at most "
                   "THRESHOLD at every fault rate; METRIC is one of masked_rate, "
                   "tolerable_sdc_rate, critical_sdc_rate, sdc_rate, due_rate, accuracy_drop "
                   "(repeatable).")
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
@nonfinite_option
@fallback_option
@click.option("--backend", type=click.Choice(["serial", "local", "ray"]), default="serial",
              show_default=True,
              help="Where trials run: this process, --workers local processes, or Ray "
                   "actors (pip install 'enpheeph-onnx[ray]'); the results are the same.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Worker processes / Ray actors [default: the cores / the cluster's CPUs].")
@click.option("--address", default=None,
              help="Ray cluster to join (what 'ray start --head' prints, or 'auto') "
                   "[default: start a local one].")
@provider_option
@optimization_option
@batch_option
@json_option
def campaign(model: Path, data_path: Path, plan_path: Path | None, db: Path | None,
             resume: bool, fail_above: tuple[str, ...], suffix: bool, cache_mb: float,
             store_faults: str, progress: bool | None, allow_nonfinite_inputs: bool,
             outcome_kind: str | None, topk: int | None, tolerances: tuple[str, ...],
             allow_cpu_fallback: bool, backend: str, workers: int | None, address: str | None,
             provider: str, optimization: str, batch_size: int, as_json: bool,
             **opts: Any) -> None:
    """Run a fault-injection campaign on MODEL over labelled data.

    A golden run, then trials of sampled faults (a fixed count, or Poisson at each fault
    rate of a sweep); prints accuracy, the outcome rates (masked, tolerable SDC, critical
    SDC, DUE) with 95 % confidence intervals, per fault rate and per layer, and a final
    PASSED/FAILED line.
    """
    from .campaign import CampaignPlan, input_names, load_dataset, run_campaign
    from .campaign.backends import Backend, BackendKind
    from .model import load_model

    policy = _outcome(outcome_kind, topk, tolerances)
    spread = Backend(BackendKind(backend), workers, address)
    if workers is not None and spread.kind is BackendKind.SERIAL:
        raise EnpheephError("--workers needs --backend local or --backend ray")
    _refuse_overwrite(db, model, data_path, plan_path, what="--db")
    if resume and db is None:
        raise EnpheephError("--resume needs --db RESULTS.sqlite")
    gates = _gates(fail_above)
    if plan_path is not None:
        from .campaign import CampaignConfig

        ctx = click.get_current_context()
        given = [name for name in opts if name != "output_name"
                 and ctx.get_parameter_source(name) not in (
                     click.core.ParameterSource.DEFAULT, None)]
        if given:
            flag = "--" + given[0].replace("_text", "").replace("site_globs", "sites").replace(
                "_", "-")
            raise EnpheephError(f"{flag} has no effect with --plan: the plan fixes every "
                                "trial's faults; drop it, or sample anew without --plan")
        cp = CampaignPlan.load(plan_path)
        cfg = CampaignConfig(selection=cp.config.selection, batch_size=batch_size,
                             provider=provider,  # type: ignore[arg-type]
                             output=opts.get("output_name"), store_faults=store_faults,
                             suffix=suffix, cache_mb=cache_mb,
                             optimization=optimization)  # type: ignore[arg-type]
    else:
        cp = None
        cfg = replace(_build_config(model, batch_size=batch_size, provider=provider,
                                    store_faults=store_faults, **opts),
                      suffix=suffix, cache_mb=cache_mb,
                      optimization=optimization)  # type: ignore[arg-type]
    from .campaign.outcomes import PolicyKind

    cfg = replace(cfg, outcome=policy, allow_cpu_fallback=allow_cpu_fallback)
    data = load_dataset(data_path, input_names(load_model(model)),
                        require_labels=policy.kind is not PolicyKind.TOLERANCE,
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
        click.echo(json.dumps(_finite(res.to_json()), indent=1, default=_json_default,
                              allow_nan=False))
    else:
        _print_summary(res.summary)
    sx = res.suffix
    if sx.get("enabled") and (sx.get("cuts") or sx.get("boundaries")):
        click.echo(f"suffix re-execution: {len(sx['cuts'])} weight cut(s), "
                   f"{sx.get('boundaries', 0)} activation boundary(ies) in "
                   f"{sx.get('sessions', 0)} segment session(s) (~"
                   f"{sx.get('session_bytes', 0) / 2**20:.1f} MiB), golden cache "
                   f"{sx['cache_bytes'] / 2**20:.1f} MiB (bound on both: --cache-mb)", err=True)
    tail = f", results in {db}" if db else ""
    head = (f"campaign: golden {_fmt(res.golden_accuracy)}, mean {_fmt(res.mean_accuracy)}, "
            f"drop {_fmt(res.accuracy_drop)}, {len(res.trials)} trials{tail}")
    failed = [g for g in res.gates if not g.passed]
    if failed:
        g = failed[0]
        where = "" if g.rate is None else f" at rate {g.rate:g}"
        raise GateFailedError(f"{head}; {g.metric} {_fmt(g.value)} (95 % upper bound "
                              f"{_fmt(g.bound)}) > {g.threshold:g}{where} ({len(failed)} gate "
                              "check(s) failed)")
    if res.gates:
        worst = max(res.gates, key=lambda g: (g.bound or 0.0) - g.threshold)
        head += (f"; gates hold: worst {worst.metric} {_fmt(worst.value)} (95 % upper bound "
                 f"{_fmt(worst.bound)}) <= {worst.threshold:g}")
    _summary(True, head)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(type(o).__name__)


def _finite(obj: Any) -> Any:
    """``obj`` with NaN/Inf floats replaced by None: ``--json`` output is strict JSON."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def _ci(p: Any) -> str:
    """``rate [low, high]`` of a proportion (:class:`~enpheeph_onnx.stats.Proportion` or
    :class:`~enpheeph_onnx.stats.ClusteredProportion`)."""
    if not p.n:
        return "-"
    return f"{_fmt(p.rate)} [{_fmt(p.low)}, {_fmt(p.high)}]"


def _acc(g: Any) -> str:
    a = g.accuracy
    return "-" if a is None else f"{a.mean:.4f} [{_fmt(a.low)}, {_fmt(a.high)}]"


def _print_summary(s: Any) -> None:
    """The campaign tables of a :class:`~enpheeph_onnx.summary.CampaignSummary`."""
    click.echo(f"golden accuracy  {_fmt(s.golden_accuracy)}  ({s.samples} samples)")
    click.echo(f"mean accuracy    {_fmt(s.mean_accuracy)}  over {len(s.table)} trials")
    click.echo(f"accuracy drop    {_fmt(s.accuracy_drop)}"
               + ("  (stratified: every stratum weighs the same, not an estimate for the "
                  "whole model)" if s.attribution == "stratified" else ""))
    n = max(sum(s.outcomes.values()), 1)
    click.echo("outcomes         " + "  ".join(f"{k} {v / n:.4f}" for k, v in s.outcomes.items()))
    click.echo("")
    rk = {"fault_rate": "fault rate", "bit_error_rate": "bit err rate", "fixed": "level"}
    rows = [[("-" if r.key["rate"] is None else f"{r.key['rate']:.1e}"), str(r.trials),
             f"{r.mean_faults:.2f}", _acc(r), _ci(r.outcomes.masked),
             _ci(r.outcomes.critical_sdc), _ci(r.outcomes.due), _ci(r.p_trial_critical)]
            for r in s.per_rate]
    click.echo(_table(rows, [rk[s.rate_kind], "trials", "faults", "accuracy [95% CI]",
                             "masked", "critical SDC", "DUE", "P(trial critical)"]))
    click.echo("(95 % Wilson intervals with the trials as the sample: accuracy, outcome rates "
               "and P(trial critical))")
    for groups, label in ((s.per_layer, "layer"), (s.per_bit, "bit")):
        if groups:
            click.echo("")
            rows = [[str(g.key[label]), str(g.trials), f"{g.mean_faults:.2f}", _acc(g),
                     _ci(g.outcomes.critical_sdc), _ci(g.outcomes.due),
                     _ci(g.p_trial_critical)] for g in groups]
            click.echo(_table(rows, [label, "trials", "faults", "accuracy [95% CI]",
                                     "critical SDC", "DUE", "P(trial critical)"]))
    if s.per_layer or s.per_bit:
        click.echo("(stratified: trials of that stratum)" if s.attribution == "stratified"
                   else "(trials whose faults all lie in that layer / have that bit; "
                        "--stratify measures every layer and bit)")
    if len(s.table) <= 50:
        click.echo("")
        rows = [[str(t["trial"]), "-" if t["rate"] is None else f"{t['rate']:.1e}",
                 t["stratum"] or "-", _fmt(t["accuracy"]), str(t["masked"]),
                 str(t["tolerable_sdc"]), str(t["critical_sdc"]), str(t["due"]),
                 str(t["n_faults"]), "; ".join(t["first_faults"])
                 + (" ..." if t["n_faults"] > len(t["first_faults"]) else "")]
                for t in s.trial_rows()]
        click.echo(_table(rows, ["trial", "rate", "stratum", "accuracy", "masked", "sdc",
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
    """
    from .stats import normal_quantile, sample_size

    n = sample_size(population, margin, confidence, p)
    if as_json:
        click.echo(json.dumps({"trials": n, "population": population, "margin": margin,
                               "confidence": confidence, "p": p,
                               "t": normal_quantile(confidence)}))
    else:
        click.echo(n)


@main.command()
@click.argument("dbs", nargs=-1, required=True,
                type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--out", "out_dir", required=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the PNG plots and summary.md.")
@click.option("--label", "labels", multiple=True,
              help="Name of each campaign in the comparison figure (default: file stems).")
def report(dbs: tuple[Path, ...], out_dir: Path, labels: tuple[str, ...]) -> None:
    """Write plots (accuracy and critical SDC vs fault rate, per layer, bit x layer) and
    summary.md for stored campaigns.

    With several RESULTS.sqlite files, each gets a subfolder named after its label and
    compare_accuracy_vs_rate.png puts their accuracy-versus-fault-rate curves side by side
    (e.g. the dense, pruned, int8 and spiking variants of a model).
    """
    from .report import write_comparison, write_report

    _refuse_overwrite(out_dir, *dbs, folder=True)

    if labels and len(labels) != len(dbs):
        raise EnpheephError(f"{len(labels)} --label for {len(dbs)} databases: give one each")
    names = list(labels) if labels else [db.stem for db in dbs]
    if len(set(names)) != len(names):
        raise EnpheephError("campaign labels must differ: use --label")
    summaries = {name: _stored_summary(db) for name, db in zip(names, dbs, strict=True)}
    paths: list[Path] = []
    if len(dbs) == 1:
        paths += write_report(summaries[names[0]], out_dir,
                              title=f"enpheeph-onnx campaign: {dbs[0].name}")
    else:
        paths.append(write_comparison(summaries, out_dir))  # creates out_dir
        for name in names:
            paths += write_report(summaries[name], out_dir / name,
                                  title=f"enpheeph-onnx campaign: {name}")
    for p in paths:
        click.echo(str(p))
    _summary(True, f"report: {len(paths)} files in {out_dir}")


def _stored_summary(db: Path) -> dict[str, Any]:
    from .campaign import load_meta, load_summary

    meta = load_meta(db)
    return {**load_summary(db).to_json(), "model_sha256": meta.get("model_sha256"),
            "status": meta.get("status", "incomplete")}


@main.command()
@click.argument("db", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["csv", "parquet"]), default=None,
              help="Results export: file format [default: from the -o suffix, else csv].")
@click.option("--table", type=click.Choice(["trials", "faults", "outcomes"]), default="trials",
              show_default=True,
              help="Results export: trials (one row per trial), faults (one per fault) or "
                   "outcomes (one per (trial, input)).")
@click.option("--model", "factory", metavar="PKG.MODULE:FACTORY",
              help="Model export: a callable returning the torch module.")
@click.option("--weights", type=click.Path(dir_okay=False, path_type=Path),
              help="Model export: state dict loaded with torch.load(weights_only=True).")
@click.option("--input-shape", default=None,
              help="Model export: example input shape, e.g. 1,1,8,8 (batch first).")
@click.option("--input-name", default="input", show_default=True)
@click.option("--output-name", default="logits", show_default=True)
@click.option("--quantize", type=click.Choice(["int8"]), default=None,
              help="Model export: quantize (QDQ, static) with --calibration data.")
@click.option("--calibration", type=click.Path(dir_okay=False, path_type=Path),
              help="Model export: .npz of calibration inputs (keyed by input name).")
@click.option("-o", "--out", "out", required=True,
              type=click.Path(dir_okay=False, path_type=Path))
def export(db: Path | None, fmt: str, table: str, factory: str | None, weights: Path | None,
           input_shape: str | None, input_name: str, output_name: str, quantize: str | None,
           calibration: Path | None, out: Path) -> None:
    """Export results or a model.

    \b
    Results: export RESULTS.sqlite [--format csv|parquet] [--table ...] -o PATH
      a stored campaign as CSV or Parquet for pandas/polars.
    Model:   export --model pkg.module:factory [--weights W.pt] --input-shape 1,1,8,8
                    [--quantize int8 --calibration DATA.npz] -o MODEL.onnx
      a PyTorch module (dense, pruned with torch.nn.utils.prune, ...) to ONNX at opset 26,
      checked against torch before writing; pruning masks are folded and recorded.
    """
    if factory is None:
        if db is None:
            raise EnpheephError("give RESULTS.sqlite to export results, or --model "
                                "pkg.module:factory to export a model")
        from .export_results import export_table

        _refuse_overwrite(out, db)
        suffix = out.suffix.lower().lstrip(".")
        if fmt is None:
            fmt = suffix if suffix in ("csv", "parquet") else "csv"
        elif suffix in ("csv", "parquet") and suffix != fmt:
            raise EnpheephError(f"--format {fmt} but -o {out} ends in .{suffix}: make them "
                                "agree")
        n = export_table(db, table, fmt, out)
        _summary(True, f"export: {n} {table} rows -> {out}")
        return
    if db is not None:
        raise EnpheephError("give either RESULTS.sqlite or --model, not both")
    if quantize and calibration is None:
        raise EnpheephError("--quantize int8 needs --calibration DATA.npz (representative "
                            "inputs, keyed by input name)")
    if input_shape is None:
        raise EnpheephError("--model needs --input-shape, e.g. 1,1,8,8")
    try:
        shape = tuple(int(x) for x in input_shape.split(","))
    except ValueError:
        raise EnpheephError(f"--input-shape {input_shape!r}: write integers like 1,1,8,8"
                            ) from None
    if any(d < 1 for d in shape):
        raise EnpheephError(f"--input-shape {input_shape!r}: dimensions must be >= 1")
    from .export.core import export_model, load_factory, load_weights
    from .runtime import load_npz

    _refuse_overwrite(out, weights, calibration)

    calib = load_npz(calibration) if calibration is not None else None
    if calib is not None and input_name not in calib:
        raise EnpheephError(f"calibration data {calibration} lacks the input {input_name!r} "
                            f"(it has {sorted(calib)})")
    make = load_factory(factory)
    try:
        module = make()
    except Exception as e:
        raise EnpheephError(f"--model {factory}: the factory failed: {type(e).__name__}: {e}"
                            ) from None
    if weights is not None:
        load_weights(module, weights)
    import torch

    gen = torch.Generator().manual_seed(0)
    example = torch.rand(shape, generator=gen)
    meta = {"enpheeph.source": factory}
    if quantize:
        from .export.quantize import quantize_int8

        float_model = export_model(module, (example,), None, input_names=(input_name,),
                                   output_names=(output_name,), metadata=meta)
        assert calib is not None
        quantize_int8(float_model, {input_name: calib[input_name]}, out)
    else:
        export_model(module, (example,), out, input_names=(input_name,),
                     output_names=(output_name,), metadata=meta)
    _summary(True, f"export: {factory} -> {out}")


if __name__ == "__main__":  # pragma: no cover
    main()
