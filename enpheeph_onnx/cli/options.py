"""Shared option groups (Polygraphy-style decorators): an option has the same name, help
and validation in every command that takes it.

Conventions (checked by ``tests/test_cli_conventions.py``): ``-o/--output`` is always the
path a command writes, ``--data`` the ``.npz`` of model inputs, ``--kinds`` takes
``weight``/``weights`` alike, ``--logits`` names the output a campaign judges, and every
command has ``--json``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ..errors import EnpheephError

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def _stack(f: Callable[..., Any], opts: list[Decorator]) -> Callable[..., Any]:
    for o in reversed(opts):
        f = o(f)
    return f


def _hidden_alias(flag: str, name: str, into: str, multiple: bool = False,
                  required: str | None = None, **kw: Any) -> Decorator:
    """A hidden old spelling ``flag`` of the option whose parameter is ``into``.

    ``required`` names the option to report missing when neither is given (the visible
    option cannot be click-required, or the alias alone would be refused)."""

    def deco(f: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            alias = kwargs.pop(name)
            if multiple:
                kwargs[into] = (*kwargs[into], *alias)
            elif alias is not None:
                if kwargs[into] is not None:
                    raise click.UsageError(f"{flag} is the old spelling of the same option: "
                                           "give it once", click.get_current_context())
                kwargs[into] = alias
            if required and not kwargs[into]:
                raise click.UsageError(f"Missing option '{required}'.",
                                       click.get_current_context())
            return f(*args, **kwargs)

        return click.option(flag, name, hidden=True, multiple=multiple, **kw)(wrapper)

    return deco


def model_argument(f: Callable[..., Any]) -> Callable[..., Any]:
    """``MODEL``: an ONNX file."""
    return click.argument("model", type=click.Path(dir_okay=False, path_type=Path))(f)


def _once(ctx: click.Context, param: click.Parameter, value: tuple[Path, ...]) -> Path | None:
    if len(value) > 1:
        hint = (" (the output tensor a campaign judges is --logits NAME)"
                if ctx.command.name in ("plan", "campaign") else "")
        raise click.BadParameter(
            f"given {len(value)} times ({', '.join(map(str, value))}): it is the one path "
            f"this command writes{hint}", ctx, param)
    return value[0] if value else None


def output_option(help: str, required: bool = True, folder: bool = False,
                  aliases: tuple[str, ...] = (), dest: str = "out") -> Decorator:
    """``-o/--output PATH``: the file (or, ``folder``, the folder) the command writes.

    Given twice is refused (``plan --output logits -o p.json`` used to write a plan naming
    a nonexistent output)."""
    return click.option("-o", "--output", *aliases, dest, multiple=True, required=required,
                        callback=_once, metavar="FOLDER" if folder else "PATH",
                        type=click.Path(dir_okay=folder, file_okay=not folder,
                                        path_type=Path),
                        help=help)


def data_option(help: str, required: bool = False) -> Decorator:
    """``--data IN.npz`` (``--inputs`` is kept as a hidden old spelling)."""
    text = help + (" [required]" if required else "")

    def deco(f: Callable[..., Any]) -> Callable[..., Any]:
        f = _hidden_alias("--inputs", "inputs_alias", "data_path",
                          required="--data" if required else None,
                          type=click.Path(dir_okay=False, path_type=Path))(f)
        return click.option("--data", "data_path", metavar="IN.npz", help=text,
                            type=click.Path(dir_okay=False, path_type=Path))(f)

    return deco


KIND_HELP = ("Site kinds, comma-separated and/or repeated: weight, activation, input "
             "(plural accepted: weights, ...)")


def kinds_option(default: str | None) -> Decorator:
    """``--kinds weight,activation`` (singular or plural; repeatable; hidden ``--kind``)."""

    def deco(f: Callable[..., Any]) -> Callable[..., Any]:
        f = _hidden_alias("--kind", "kind_alias", "kinds", multiple=True)(f)
        return click.option("--kinds", "kinds", multiple=True, metavar="KINDS",
                            help=KIND_HELP + (f" [default: {default}]." if default
                                              else " [default: all]."))(f)

    return deco


_PLURAL = {"weights": "weight", "activations": "activation", "inputs": "input"}


def parse_kinds(values: tuple[str, ...] | str | None, target: str | None = None,
                default: str | None = "weight") -> tuple[Any, ...]:
    """Site kinds from ``--kinds`` values (comma lists, singular or plural) or ``--target``.

    Returns:
        :class:`~enpheeph_onnx.sites.SiteKind` values in the order given, without
        duplicates; ``default``'s kinds when none is given (empty tuple: all kinds).

    Raises:
        EnpheephError: an unknown kind, an empty value, or ``--kinds`` with ``--target``.
    """
    from ..sites import SiteKind

    if isinstance(values, str):
        values = (values,)
    values = tuple(values or ())
    if values and target:
        raise EnpheephError("give --kinds or --target, not both")
    if target:
        values = (target,)
    if not values:
        values = (default,) if default else ()
    out: list[SiteKind] = []
    for value in values:
        if not value.strip(", "):
            raise EnpheephError("--kinds is empty: give weight, activation and/or input")
        for given in value.split(","):
            k = given.strip().lower()
            if not k:
                continue
            try:
                kind = SiteKind(_PLURAL.get(k, k))
            except ValueError:
                raise EnpheephError(f"unknown site kind {given.strip()!r}: use weight, "
                                    "activation or input (or their plurals)") from None
            if kind not in out:
                out.append(kind)
    return tuple(out)


def json_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--json``: machine-readable JSON on stdout instead of tables."""
    return click.option("--json", "as_json", is_flag=True,
                        help="Print machine-readable JSON on stdout.")(f)


def session_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """How onnxruntime runs the model: provider, CPU fallback, optimizations, batch size,
    and whether NaN/Inf inputs are accepted (``run`` and ``campaign``)."""
    return _stack(f, [
        click.option("--provider", type=click.Choice(["cpu", "cuda", "tensorrt"]),
                     default="cpu", show_default=True,
                     help="onnxruntime execution provider; cuda and tensorrt are verified, "
                          "never a silent CPU fallback."),
        click.option("--allow-cpu-fallback", is_flag=True,
                     help="Let --provider cuda/tensorrt run on the CPU (with a warning) "
                          "where no GPU can serve, instead of refusing."),
        click.option("--optimization", type=click.Choice(["extended", "all"]),
                     default="extended", show_default=True,
                     help="onnxruntime graph optimizations: extended (weights fed or "
                          "constant compute alike) or all (as a default session deploys the "
                          "model; weight faults on the weights onnxruntime holds, or "
                          "activation/input faults, not both at once)."),
        click.option("--batch-size", type=click.IntRange(min=1), default=512,
                     show_default=True, help="Samples per onnxruntime run."),
        click.option("--allow-nonfinite-inputs", is_flag=True,
                     help="Accept NaN/Inf in the data (refused by default: those inputs' "
                          "outputs would count as DUE without any fault)."),
    ])


def fault_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Hand-written faults: ``--plan`` and repeated ``--fault EXPR``."""
    return _stack(f, [
        click.option("--plan", "plan_path", type=click.Path(dir_okay=False, path_type=Path),
                     help="Fault plan: JSON {\"faults\": [{\"site\", \"index\", \"model\", "
                          "\"bits\", \"value\"}]}, or a binary .npz plan (columns, for "
                          "millions of faults; FaultSet.save_npz)."),
        click.option("--fault", "fault_exprs", multiple=True, metavar="EXPR",
                     help="SITE[INDEX]:MODEL[:BITS], e.g. 'conv1.weight[0,0,1,1]:bitflip:30'"
                          " or '/relu1/Relu_output_0[*,3,2,2]:stuck-at-1:23-30' "
                          "(repeatable; applied after --plan, in order)."),
    ])


def sampling_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Which faults a campaign draws (``plan`` and ``campaign``)."""
    f = kinds_option("weight")(f)
    return _stack(f, [
        click.option("--target", type=click.Choice(
            ["weight", "weights", "activation", "activations", "input", "inputs"]),
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
    ])


def outcome_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """How a campaign judges a differing output (critical or tolerable SDC)."""
    return _stack(f, [
        click.option("--logits", "logits", default=None, metavar="NAME",
                     help="The output judged by top1/topk and scored for accuracy "
                          "[default: the first output]."),
        click.option("--outcome", "outcome_kind",
                     type=click.Choice(["top1", "topk", "topk-set", "tolerance", "metric"]),
                     default=None,
                     help="Critical SDC when: the top-1 class changes (top1, default), the "
                          "golden top-1 leaves the faulty top-k (topk), the set of the top k "
                          "classes changes (topk-set), an output leaves its --sdc-tolerance "
                          "(tolerance; no labels needed), or --metric says so (metric)."),
        click.option("--topk", type=click.IntRange(min=1), default=None,
                     help="k of --outcome topk / topk-set [5]."),
        click.option("--sdc-tolerance", "tolerances", multiple=True,
                     metavar="NAME:atol=A,rtol=R,l2=E",
                     help="Per-output tolerance of --outcome tolerance (repeatable; NAME * "
                          "for every output without its own): within |faulty - golden| <= "
                          "atol + rtol |golden| at every element (atol alone: max-abs) "
                          "and, with l2, ||faulty - golden||_2 <= l2 ||golden||_2 a "
                          "difference is tolerable."),
        click.option("--metric", "metric", default=None, metavar="PKG.MODULE:FUNCTION",
                     help="A user outcome metric, called per batch as f(golden, faulty, "
                          "labels or None) with dicts of output arrays; returns per-sample "
                          "critical flags (bool [N]) or (flags, scores float [N]). The "
                          "current folder is importable."),
    ])


def gate_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--fail-above METRIC=THRESHOLD``: a reliability gate (``campaign``, ``report``)."""
    return click.option(
        "--fail-above", "fail_above", multiple=True, metavar="METRIC=THRESHOLD",
        help="Reliability gate: exit 1 unless the upper 95 % bound of METRIC is at most "
             "THRESHOLD at every fault rate; METRIC is one of masked_rate, tolerable_sdc_rate, "
             "critical_sdc_rate, sdc_rate, due_rate, accuracy_drop, score_drop (repeatable). "
             "report evaluates it on the stored trials, after writing the report.")(f)


def config_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--config FILE.toml``: its keys (the long flags) become the command's defaults."""
    return click.option("--config", type=click.Path(dir_okay=False, path_type=Path),
                        is_eager=True, expose_value=False, callback=_load_toml_config,
                        help="TOML file with the same keys as the long flags (flags "
                             "override).")(f)


def _load_toml_config(ctx: click.Context, param: click.Parameter, value: Path | None) -> None:
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
