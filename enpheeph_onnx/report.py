"""Campaign reports: three PNG figures and a Markdown summary.

:func:`write_report` turns a campaign summary (the dict described in its docstring) into

* ``accuracy_vs_rate.png`` — top-1 accuracy versus fault rate with its 95 % confidence band
  and the golden accuracy, above the critical-SDC and DUE rates versus fault rate;
* ``layers.png`` — critical-SDC (and DUE) rate per layer with 95 % error bars over trials;
* ``bits_layers.png`` — heatmap of the critical-SDC rate per layer and bit position;
* ``summary.md`` — the configuration, per-rate, per-layer and per-bit tables, linking the
  three images.

matplotlib is imported only when a report is written, and only its object-oriented API
(``matplotlib.figure.Figure`` with the Agg canvas) is used: no pyplot, no global state.
Every file is written atomically (:func:`enpheeph_onnx.model.atomic_path`).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import EnpheephError
from .model import atomic_path

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

ACCURACY_PNG = "accuracy_vs_rate.png"
LAYERS_PNG = "layers.png"
BITS_LAYERS_PNG = "bits_layers.png"
SUMMARY_MD = "summary.md"
REPORT_HTML = "report.html"

RATE_KINDS = ("fault_rate", "bit_error_rate", "fixed")
_RATE_AXIS_LABEL = {
    "fault_rate": "fault rate (faults per parameter)",
    "bit_error_rate": "bit error rate (faults per bit)",
    "fixed": "mean number of faults per trial",
}
_RATE_COLUMN = {
    "fault_rate": "fault rate",
    "bit_error_rate": "bit error rate",
    "fixed": "fault rate",
}
_OUTCOMES = (
    ("masked", "masked"),
    ("tolerable_sdc", "tolerable SDC"),
    ("critical_sdc", "critical SDC"),
    ("due", "DUE"),
)
_DPI = 120
_MAX_LABEL = 40
_ANNOTATE_MAX_COLS = 40
_ANNOTATE_MAX_ROWS = 20
_NA = "n/a"
_NOT_CONFINED = ("No trial's faults all lie in one layer / have one bit (exclusive "
                 "attribution); run with `--stratify layer,bit` to measure every cell.")


def describe(summary: Mapping[str, Any]) -> str:
    """One line naming what a campaign measured, for titles: the model, the target kinds,
    the fault model, the bits, the trials per level and the outcome policy, e.g.
    ``digits_cnn.onnx: weights, bitflip, bits 0-63, 30 trials/level, top-1``."""
    cfg = summary.get("config") or {}
    model = summary.get("model")
    if not cfg:
        return Path(str(model)).name if model else "enpheeph-onnx campaign"
    parts = []
    kinds = (cfg.get("selection") or {}).get("kinds") or []
    if kinds:
        parts.append("+".join(f"{k}s" for k in kinds))
    if cfg.get("fault_model"):
        fm = str(cfg["fault_model"])
        parts.append(fm + (f" {cfg['value']}" if cfg.get("value") else ""))
    bits = cfg.get("bits")
    if bits not in (None, "", "0-63"):
        parts.append(f"bits {bits}")
    elif bits == "0-63":
        parts.append("all bits")
    if cfg.get("count") == "fixed" and cfg.get("faults_per_trial") is not None:
        parts.append(f"{cfg['faults_per_trial']} fault(s)/trial")
    if cfg.get("stratify"):
        parts.append("stratified by " + ",".join(cfg["stratify"]))
    if cfg.get("trials") is not None:
        parts.append(f"{cfg['trials']} trials/level")
    outcome = cfg.get("outcome") or {}
    kind = outcome.get("kind", "top1")
    tols = " ".join(f"{t[0]}:" + ",".join(f"{k}={v:g}" for k, v in zip(
        ("atol", "rtol", "l2"), t[1:], strict=False) if v) for t in outcome.get("tolerances")
                    or [])
    parts.append({"top1": "top-1", "topk": f"top-{outcome.get('k', 5)}",
                  "topk-set": f"top-{outcome.get('k', 5)} set",
                  "tolerance": f"tolerance {tols}".strip(),
                  "metric": f"metric {outcome.get('metric')}"}.get(kind, str(kind)))
    head = Path(str(model)).name if model else "campaign"
    return f"{head}: {', '.join(parts)}"


def write_report(
    summary: Any,
    out_dir: str | os.PathLike[str],
    title: str | None = None,
    html: bool = False,
) -> list[Path]:
    """Write the PNG figures and the Markdown summary of a campaign into ``out_dir``.

    Files written (always all four; a figure without data says "no faults" / "no data"):

    * ``accuracy_vs_rate.png`` — top panel: mean top-1 accuracy versus fault rate (log
      x-axis for ``fault_rate`` / ``bit_error_rate``) with the 95 % confidence band and the
      golden accuracy as a dashed line; bottom panel: critical-SDC and DUE rates with their
      bands over trials. For ``rate_kind == "fixed"`` the x-axis is the mean number of faults per
      trial (log when it spans >= 20x, else linear). A single level is drawn as points with
      error bars.
    * ``layers.png`` — critical-SDC rate per layer (bars, asymmetric error bars over trials,
      layers in the given order), plus the DUE rate as a second series when any DUE occurred.
    * ``bits_layers.png`` — heatmap of the critical-SDC rate, rows = layers, columns = bit
      positions; cells without faults are blank; values are printed in the cells when the
      grid has <= 40 columns and <= 20 rows.
    * ``summary.md`` — title, configuration table, golden accuracy, per-rate, per-layer and
      per-bit tables (rates ``.4f`` as ``rate [ci_low, ci_high]``, fault rates ``.1e``) and
      links to the three images.

    Args:
        summary: a :class:`~enpheeph_onnx.summary.CampaignSummary`, or its JSON form (what
            ``campaign --json`` prints, so a saved summary can be rendered again). ``Prop``
            below is
            ``{"k": int, "n": int, "rate": float, "ci_low": float, "ci_high": float}``
            (NaN rate and bounds when ``n == 0``)::

                {"golden_accuracy": float | None, "samples": int,
                 "config": {str: str | int | float | list | None, ...},
                 "rate_kind": "fault_rate" | "bit_error_rate" | "fixed",
                 "per_rate": [{"rate": float | None, "trials": int, "mean_faults": float,
                               "accuracy": {"mean", "ci_low", "ci_high"} | None,
                               "accuracy_drop": float | None, "masked": Prop,
                               "tolerable_sdc": Prop, "critical_sdc": Prop, "due": Prop,
                               "sdc": Prop}, ...],
                 "per_layer": [{"layer": str, "faults": int, <outcome>: Prop, ...}, ...],
                 "per_bit": [{"bit": int, "faults": int, <outcome>: Prop, ...}, ...],
                 "bit_layer": {"layers": [str], "bits": [int],
                               "critical_sdc_rate": [[float | None] per layer],
                               "trials": [[int] per layer]},
                 "trials": [...]}

            ``per_rate``, ``per_layer``, ``per_bit`` and ``bit_layer`` may be empty; a missing
            ``rate_kind`` is ``"fixed"`` when every rate is None, else ``"fault_rate"``.
        out_dir: folder for the four files; created when missing (its parent must exist).
            Existing files of the same names are replaced.
        title: heading of the Markdown summary and title of the figures (default:
            :func:`describe` of the summary: model, kinds, fault model, bits, trials per
            level, outcome policy).
        html: also write ``report.html``: one self-contained file (the images inlined as
            base64 PNG) with the same tables, the provenance and the gate results.

    The per-trial scores (``summary["trials"]``) are drawn as dots beside each level's
    mean, so that a heavy tail (one collapsed trial among 30) stays visible; ``provenance``
    (model sha256, versions, providers, session options) and ``gates`` (the stored or
    re-evaluated reliability gates) are rendered when the summary has them.

    Returns:
        The paths written: accuracy_vs_rate.png, layers.png, bits_layers.png, summary.md
        (and report.html).

    Raises:
        EnpheephError: the parent of ``out_dir`` does not exist, ``out_dir`` is not a folder
            or cannot be created, or ``summary`` is malformed (not a mapping, unknown
            ``rate_kind``, a ``bit_layer`` grid whose shape does not match its labels).
            Nothing is written in these cases.
    """
    if hasattr(summary, "to_json"):
        summary = summary.to_json()
    rate_kind, grid = _check_summary(summary)
    title = title or describe(summary)
    out = _prepare_out_dir(out_dir)

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    def new_figure(width: float, height: float) -> Figure:
        fig = Figure(figsize=(width, height), layout="constrained")
        FigureCanvasAgg(fig)
        return fig

    paths = [out / ACCURACY_PNG, out / LAYERS_PNG, out / BITS_LAYERS_PNG, out / SUMMARY_MD]
    per_rate = list(summary.get("per_rate") or [])
    per_layer = list(summary.get("per_layer") or [])
    golden = _num(summary.get("golden_accuracy"))

    fig = new_figure(7.5, 7.0)
    _plot_accuracy(fig, per_rate, rate_kind, golden, title, summary)
    _save(fig, paths[0])

    fig = new_figure(min(max(6.0, 0.4 * len(per_layer) + 2.5), 40.0), 4.8)
    _plot_layers(fig, per_layer, title)
    _save(fig, paths[1])

    layers, bits, values = grid
    fig = new_figure(
        min(max(6.5, 0.3 * len(bits) + 3.5), 40.0),
        min(max(4.0, 0.4 * len(layers) + 2.0), 40.0),
    )
    _plot_bits_layers(fig, layers, bits, values, title)
    _save(fig, paths[2])

    text = _markdown(summary, rate_kind, title)
    with atomic_path(paths[3]) as tmp:
        tmp.write_text(text, encoding="utf-8")
    if html:
        from .report_html import markdown_to_html

        paths.append(out / REPORT_HTML)
        with atomic_path(paths[-1]) as tmp:
            tmp.write_text(markdown_to_html(text, out, title), encoding="utf-8")
    log.info("report written to %s", out)
    return paths


# --------------------------------------------------------------------------- input checks


def _check_summary(
    summary: Any,
) -> tuple[str, tuple[list[str], list[int], np.ndarray]]:
    """Validate the parts of ``summary`` that could make a report fail half-way."""
    if not isinstance(summary, Mapping):
        raise EnpheephError(
            f"report summary must be a dict (campaign summary JSON), got {type(summary).__name__}"
        )
    for key in ("per_rate", "per_layer", "per_bit"):
        value = summary.get(key)
        if value is not None and not isinstance(value, Sequence):
            raise EnpheephError(f"summary[{key!r}] must be a list, got {type(value).__name__}")
    rate_kind = summary.get("rate_kind")
    if rate_kind is None:
        rates = [r.get("rate") for r in summary.get("per_rate") or []]
        rate_kind = "fixed" if all(r is None for r in rates) else "fault_rate"
    if rate_kind not in RATE_KINDS:
        raise EnpheephError(
            f"summary rate_kind {rate_kind!r} is unknown: use one of {', '.join(RATE_KINDS)}"
        )
    return rate_kind, _bit_layer_grid(summary.get("bit_layer"))


def _bit_layer_grid(bit_layer: Any) -> tuple[list[str], list[int], np.ndarray]:
    """Labels and a float grid (NaN = no data) from ``summary["bit_layer"]``."""
    if not bit_layer:
        return [], [], np.zeros((0, 0))
    if not isinstance(bit_layer, Mapping):
        raise EnpheephError(
            f"summary['bit_layer'] must be a dict, got {type(bit_layer).__name__}"
        )
    layers = [str(x) for x in bit_layer.get("layers") or []]
    bits = [int(b) for b in bit_layer.get("bits") or []]
    rows = bit_layer.get("critical_sdc_rate") or []
    pairs = bit_layer.get("trials", bit_layer.get("pairs"))
    shape = (len(layers), len(bits))
    if len(rows) != shape[0] or any(len(r) != shape[1] for r in rows):
        raise EnpheephError(
            f"summary['bit_layer'] critical_sdc_rate is not a {shape[0]} x {shape[1]} grid "
            "(one row per layer, one column per bit)"
        )
    values = np.full(shape, np.nan)
    for i, row in enumerate(rows):
        for j, v in enumerate(row):
            values[i, j] = _num(v)
    if pairs:
        if len(pairs) != shape[0] or any(len(r) != shape[1] for r in pairs):
            raise EnpheephError(
                f"summary['bit_layer'] trials is not a {shape[0]} x {shape[1]} grid"
            )
        values[np.asarray(pairs, dtype=float) <= 0] = np.nan
    return layers, bits, values


def _prepare_out_dir(out_dir: str | os.PathLike[str]) -> Path:
    out = Path(out_dir)
    if out.exists():
        if not out.is_dir():
            raise EnpheephError(f"report folder {out} exists and is not a folder")
        return out
    from .model import require_folder

    require_folder(out.parent, f"parent folder of report folder {out}:")
    try:
        out.mkdir()
    except OSError as e:
        raise EnpheephError(f"cannot create report folder {out}: {e.strerror or e}") from None
    return out


# ------------------------------------------------------------------------------- numbers


def _num(x: Any) -> float:
    """``x`` as a float; None, non-numbers and non-finite values become NaN."""
    if x is None or isinstance(x, bool):
        return math.nan
    try:
        v = float(x)
    except (TypeError, ValueError):
        return math.nan
    return v if math.isfinite(v) else math.nan


def _prop(entry: Mapping[str, Any], key: str) -> tuple[float, float, float]:
    """(rate, ci_low, ci_high) of a Prop in ``entry``; NaN when absent or ``n == 0``."""
    p = entry.get(key)
    if not isinstance(p, Mapping) or not p.get("n"):
        return math.nan, math.nan, math.nan
    return _num(p.get("rate")), _num(p.get("ci_low")), _num(p.get("ci_high"))


def _yerr(mean: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Asymmetric error bar lengths ``[[below], [above]]``, NaN and negatives as 0."""
    err = np.vstack([mean - low, high - mean])
    return np.clip(np.nan_to_num(err, nan=0.0), 0.0, None)


def _fmt(x: Any, spec: str = ".4f") -> str:
    v = _num(x)
    if math.isnan(v):
        return _NA
    if spec == ".4f" and abs(v) >= 1e5:
        spec = ".4g"  # a metric's unbounded score (rates and accuracies stay .4f)
    text = format(v, spec)
    return text[1:] if text.startswith("-") and float(text) == 0 else text  # no "-0.0000"


def _fmt_ci(mean: Any, low: Any, high: Any) -> str:
    if math.isnan(_num(mean)):
        return _NA
    return f"{_fmt(mean)} [{_fmt(low)}, {_fmt(high)}]"


def _fmt_prop(entry: Mapping[str, Any], key: str) -> str:
    return _fmt_ci(*_prop(entry, key))


def _fmt_int(x: Any) -> str:
    v = _num(x)
    return _NA if math.isnan(v) else str(int(v))


def _fmt_config(v: Any) -> str:
    if v is None:
        return "none"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return format(v, ".6g")
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_fmt_config(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return json.dumps(v, default=str, sort_keys=True)
    return str(v)


def _md_cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _short(label: str) -> str:
    return label if len(label) <= _MAX_LABEL else label[: _MAX_LABEL - 1] + "…"


# ------------------------------------------------------------------------------- figures


def _save(fig: Figure, dest: Path) -> None:
    try:
        with atomic_path(dest) as tmp:
            fig.savefig(tmp, format="png", dpi=_DPI)
    finally:
        fig.clear()
    log.debug("wrote %s", dest)


def _no_data(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=14, color="0.35",
            transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def score_label(summary: Mapping[str, Any]) -> str:
    """What the trials' score is, for axes and tables: ``top-1 accuracy``, ``acceptable
    fraction`` (no labels) or the user metric's name."""
    name = str(summary.get("score") or "accuracy")
    return {"accuracy": "top-1 accuracy", "acceptable": "acceptable fraction"}.get(name, name)


def _plot_accuracy(fig: Figure, per_rate: list[Mapping[str, Any]], rate_kind: str,
                   golden: float, title: str, summary: Mapping[str, Any] | None = None
                   ) -> None:
    summary = summary or {}
    label = score_label(summary)
    bounded = bool(summary.get("score_bounded", True))
    ax_acc, ax_out = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
    fig.suptitle(_wrap(title, fig))
    key = "mean_faults" if rate_kind == "fixed" else "rate"
    rows = [r for r in per_rate if not math.isnan(_num(r.get(key)))]
    if len(rows) < len(per_rate):
        log.warning("accuracy plot: %d level(s) without a %s skipped",
                    len(per_rate) - len(rows), key)
    rows.sort(key=lambda r: _num(r.get(key)))
    if not rows:
        _no_data(ax_acc, "no data")
        _no_data(ax_out, "no data")
        ax_out.set_xlabel(_RATE_AXIS_LABEL[rate_kind])
        return
    x = np.array([_num(r.get(key)) for r in rows])
    acc = np.array([
        [_num((r.get("accuracy") or {}).get(f)) for f in ("mean", "ci_low", "ci_high")]
        for r in rows
    ]).reshape(len(rows), 3)
    band = len(rows) > 1

    def series(ax: Axes, mean: np.ndarray, low: np.ndarray, high: np.ndarray,
               label: str, color: str, marker: str) -> None:
        if band:
            ax.plot(x, mean, marker=marker, color=color, label=label)
            ax.fill_between(x, low, high, color=color, alpha=0.2, linewidth=0,
                            label=f"{label}: 95 % CI over trials")
        else:
            ax.errorbar(x, mean, yerr=_yerr(mean, low, high), fmt=marker, color=color,
                        capsize=5, markersize=7, label=f"{label} (95 % CI over trials)")

    if np.all(np.isnan(acc[:, 0])):
        _no_data(ax_acc, f"no {label}")
    else:
        dots = _trial_points(summary, rows, key)
        if len(dots):
            ax_acc.scatter(dots[:, 0], dots[:, 1], s=14, color="0.3", alpha=0.5,
                           linewidths=0, zorder=3, label="one trial")
        series(ax_acc, acc[:, 0], acc[:, 1], acc[:, 2], f"mean {label}", "C0", "o")
        ax_acc.set_ylabel(label)
        ax_acc.grid(True, which="both", alpha=0.3)
        if bounded:
            ax_acc.set_ylim(0.0, 1.03)
    if not math.isnan(golden):
        ax_acc.axhline(golden, color="k", linestyle="--", linewidth=1.2,
                       label=f"golden {golden:.4f}")
    if ax_acc.get_legend_handles_labels()[0]:
        ax_acc.legend(loc="best", fontsize="small")

    for outcome, label, color, marker in (("critical_sdc", "critical SDC", "C3", "o"),
                                          ("due", "DUE", "C1", "s")):
        p = np.array([_prop(r, outcome) for r in rows]).reshape(len(rows), 3)
        series(ax_out, p[:, 0], p[:, 1], p[:, 2], label, color, marker)
    ax_out.set_ylabel("rate (fraction of outcomes)")
    ax_out.set_xlabel(_RATE_AXIS_LABEL[rate_kind])
    ax_out.set_ylim(bottom=0)
    ax_out.grid(True, which="both", alpha=0.3)
    ax_out.legend(loc="best", fontsize="small")

    positive = x[x > 0]
    if rate_kind != "fixed":
        if len(positive) == len(x):
            ax_out.set_xscale("log")
        else:  # a zero-rate level: linear near zero, logarithmic above the smallest rate
            top = float(positive.max()) if len(positive) else 1.0
            ax_out.set_xscale("symlog", linthresh=float(positive.min()) if len(positive)
                              else 1.0)
            ax_out.set_xlim(0.0, top * 1.5)
    elif len(positive) == len(x) and positive.max() / positive.min() >= 20:
        ax_out.set_xscale("log")
    if rate_kind == "fixed" and len(x) <= 8:
        ax_out.set_xticks(x, [format(v, ".4g") for v in x])
    if not band:
        lo, hi = float(x[0]), float(x[0])
        if ax_out.get_xscale() == "log":
            ax_out.set_xlim(lo / 3, hi * 3)
        elif lo != 0:
            ax_out.set_xlim(lo - 0.5 * abs(lo), hi + 0.5 * abs(hi))


def _wrap(title: str, fig: Figure) -> str:
    """``title`` broken into lines that fit the figure's width (~11 characters an inch)."""
    import textwrap

    return "\n".join(textwrap.wrap(title, max(int(fig.get_figwidth() * 11), 20))) or title


def _trial_points(summary: Mapping[str, Any], rows: list[Mapping[str, Any]], key: str
                  ) -> np.ndarray:
    """``[M, 2]`` (x, score) of every trial with a score at the plotted levels, spread
    a little along x (multiplicatively on a log axis) so that equal scores do not hide
    each other; deterministic (a fixed-seed generator)."""
    trials = summary.get("trials") or []
    by_level = {r.get("level"): _num(r.get(key)) for r in rows if "level" in r}
    by_rate = {_num(r.get("rate")): _num(r.get(key)) for r in rows}
    rng = np.random.default_rng(0)
    pts = []
    for t in trials:
        acc = _num(t.get("accuracy"))
        if math.isnan(acc):
            continue
        x = by_level.get(t.get("level"), by_rate.get(_num(t.get("rate")), math.nan))
        if math.isnan(x):
            continue
        spread = rng.uniform(-1.0, 1.0)
        pts.append((x * 10 ** (0.06 * spread) if x > 0 else x + 0.03 * spread, acc))
    return np.array(pts, np.float64).reshape(-1, 2)


def _plot_layers(fig: Figure, per_layer: list[Mapping[str, Any]], title: str) -> None:
    ax = fig.subplots()
    fig.suptitle(_wrap(title, fig))
    ax.set_title("critical SDC per layer")
    if not per_layer:
        _no_data(ax, "no trial confined to one layer / bit:\nrun with --stratify layer,bit")
        return
    names = [_short(str(r.get("layer", "?"))) for r in per_layer]
    pos = np.arange(len(names), dtype=float)
    crit = np.array([_prop(r, "critical_sdc") for r in per_layer]).reshape(len(names), 3)
    due = np.array([_prop(r, "due") for r in per_layer]).reshape(len(names), 3)
    any_due = bool(np.nansum(due[:, 0]) > 0)
    width = 0.4 if any_due else 0.7
    shift = width / 2 if any_due else 0.0
    ax.bar(pos - shift, np.nan_to_num(crit[:, 0]), width,
           yerr=_yerr(crit[:, 0], crit[:, 1], crit[:, 2]), capsize=3, color="C3",
           label="critical SDC (95 % CI over trials)")
    if any_due:
        ax.bar(pos + shift, np.nan_to_num(due[:, 0]), width,
               yerr=_yerr(due[:, 0], due[:, 1], due[:, 2]), capsize=3, color="C1",
               label="DUE (95 % CI over trials)")
    ax.set_xticks(pos, names, rotation=45, ha="right", rotation_mode="anchor",
                  fontsize="small" if len(names) > 12 else None)
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_xlabel("layer")
    ax.set_ylabel("rate (fraction of outcomes)")
    ax.set_ylim(bottom=0)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="best", fontsize="small")


def _plot_bits_layers(fig: Figure, layers: list[str], bits: list[int], values: np.ndarray,
                      title: str) -> None:
    import matplotlib as mpl

    ax = fig.subplots()
    fig.suptitle(_wrap(title, fig))
    ax.set_title("critical SDC per layer and bit")
    if values.size == 0:
        _no_data(ax, "no trial confined to one layer / bit:\nrun with --stratify layer,bit")
        return
    data = np.ma.masked_invalid(values)
    vmax = float(data.max()) if data.count() else 1.0
    cmap = mpl.colormaps["viridis"].with_extremes(bad="white")
    image = ax.imshow(data, cmap=cmap, vmin=0.0, vmax=vmax if vmax > 0 else 1.0,
                      aspect="auto", interpolation="nearest")
    fig.colorbar(image, ax=ax, label="critical SDC rate")
    ax.set_xticks(np.arange(len(bits)), [str(b) for b in bits],
                  fontsize="small" if len(bits) > 16 else None)
    ax.set_yticks(np.arange(len(layers)), [_short(name) for name in layers],
                  fontsize="small" if len(layers) > 12 else None)
    ax.set_xlabel("bit position")
    ax.set_ylabel("layer")
    if len(bits) <= _ANNOTATE_MAX_COLS and len(layers) <= _ANNOTATE_MAX_ROWS:
        size = 8 if len(bits) <= 16 else 6
        norm = image.norm
        for (i, j), v in np.ndenumerate(values):
            if math.isnan(v):
                ax.text(j, i, "n/a", ha="center", va="center", fontsize=size - 1,
                        color="0.45")
                continue
            color = "white" if norm(v) < 0.5 else "black"
            ax.text(j, i, format(v, ".2g"), ha="center", va="center", fontsize=size,
                    color=color)
    if not data.count():
        ax.text(0.5, 0.5, "no critical-SDC data", ha="center", va="center",
                transform=ax.transAxes, color="0.35")


# ------------------------------------------------------------------------------ markdown


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return lines


def _markdown(summary: Mapping[str, Any], rate_kind: str, title: str) -> str:
    outcome_headers = [label for _, label in _OUTCOMES]
    lines = [f"# {_md_cell(title)}", ""]
    if summary.get("status") not in (None, "complete"):
        lines += [f"**Incomplete campaign** ({len(summary.get('trials') or [])} trials stored; "
                  "continue it with `campaign ... --resume`).", ""]

    lines += ["## Campaign configuration", ""]
    config = summary.get("config") or {}
    if isinstance(config, Mapping) and config:
        lines += _table(["key", "value"],
                        [["logits" if k == "output" else str(k), _fmt_config(v)]
                         for k, v in config.items()])
    else:
        lines.append("No configuration recorded.")
    lines.append("")

    golden = _num(summary.get("golden_accuracy"))
    samples = summary.get("samples")
    label = score_label(summary)
    golden_text = _NA if math.isnan(golden) else f"{golden:.4f}"
    on = f" on {_fmt_int(samples)} samples" if samples is not None else ""
    lines += [f"**Golden {label}:** {golden_text}{on}", ""]
    lines += _gates_markdown(summary.get("gates"))

    per_rate = list(summary.get("per_rate") or [])
    lines += ["## Accuracy and outcomes per fault rate", ""]
    if per_rate:
        rate_col = _RATE_COLUMN[rate_kind]
        rows = []
        for r in per_rate:
            rate = r.get("rate")
            rate_text = "fixed" if rate is None else _fmt(rate, ".1e")
            acc = r.get("accuracy") or {}
            rows.append([
                rate_text, _fmt_int(r.get("trials")), _fmt(r.get("mean_faults"), ".2f"),
                _fmt_ci(acc.get("mean"), acc.get("ci_low"), acc.get("ci_high")),
                _fmt(r.get("accuracy_drop")),
                *(_fmt_prop(r, key) for key, _ in _OUTCOMES),
            ])
        lines += _table([rate_col, "trials", "mean faults", f"{label} [95 % CI]",
                         f"{label} drop", *outcome_headers], rows)
    else:
        lines.append("No trials.")
    lines += ["", f"![accuracy versus fault rate]({ACCURACY_PNG})", ""]

    per_layer = list(summary.get("per_layer") or [])
    lines += ["## Outcomes per layer", ""]
    if per_layer:
        lines += _table(["layer", "trials", "faults", *outcome_headers], [
            [str(r.get("layer", "?")), _fmt_int(r.get("trials")), _fmt_int(r.get("faults")),
             *(_fmt_prop(r, key) for key, _ in _OUTCOMES)]
            for r in per_layer
        ])
    else:
        lines.append(_NOT_CONFINED)
    lines += ["", f"![critical SDC per layer]({LAYERS_PNG})", ""]

    per_bit = list(summary.get("per_bit") or [])
    lines += ["## Outcomes per bit position", ""]
    if per_bit:
        lines += _table(["bit", "trials", "faults", *outcome_headers], [
            [_fmt_int(r.get("bit")), _fmt_int(r.get("trials")), _fmt_int(r.get("faults")),
             *(_fmt_prop(r, key) for key, _ in _OUTCOMES)]
            for r in per_bit
        ])
    else:
        lines.append(_NOT_CONFINED)
    lines += ["", f"![critical SDC per layer and bit]({BITS_LAYERS_PNG})", ""]
    how = ("stratified: every trial of a layer / bit confines its faults to it"
           if summary.get("attribution") == "stratified" else
           "only trials whose faults all lie in one layer / have one bit count there; run "
           "with `--stratify layer,bit` to measure every cell")
    lines.append("Rates are fractions with 95 % intervals over trials as `rate [low, high]` "
                 "(Wilson intervals with the trials as the sample: a trial's inputs share its "
                 f"faults); {_NA} where no outcome was observed. Per layer and "
                 f"bit: {how}.")
    lines += ["", *_provenance_markdown(summary.get("provenance"))]
    return "\n".join(lines) + "\n"


def _gates_markdown(gates: Any) -> list[str]:
    """The reliability gates: one row per (metric, level), PASSED/FAILED."""
    if not gates:
        return ["No reliability gates (give `--fail-above METRIC=T` to `campaign` or "
                "`report`).", ""]
    rows = [[str(g.get("metric")), _fmt(g.get("threshold"), "g"),
             "fixed" if g.get("rate") is None else _fmt(g.get("rate"), ".1e"),
             _fmt(g.get("value")), _fmt(g.get("bound")),
             "PASSED" if g.get("passed") else "FAILED"] for g in gates]
    failed = sum(not g.get("passed") for g in gates)
    verdict = (f"**Reliability gates: FAILED** ({failed} of {len(gates)} checks)" if failed
               else f"**Reliability gates: PASSED** ({len(gates)} checks)")
    return [verdict + " — a gate passes when the upper 95 % bound is at most the "
            "threshold.", "", *_table(["metric", "threshold", "rate", "estimate",
                                       "upper 95 % bound", "result"], rows), ""]


def _provenance_markdown(prov: Any) -> list[str]:
    """Model sha256, package versions, providers and session options of the campaign."""
    if not isinstance(prov, Mapping) or not prov:
        return []
    rows = [[str(k), _fmt_config(v)] for k, v in prov.items() if v is not None]
    return ["## Provenance", "", *_table(["key", "value"], rows)]


COMPARE_PNG = "compare_accuracy_vs_rate.png"


def write_comparison(summaries: Mapping[str, Any], out_dir: str | os.PathLike[str],
                     title: str | None = None) -> Path:
    """One figure comparing several campaigns: top-1 accuracy (with 95 % bands, left) and
    accuracy normalised by each model's golden accuracy (right) versus fault rate (log
    axis), one line per campaign (e.g. the dense, pruned, int8 and spiking variants of a
    model).

    Args:
        summaries: label -> campaign summary (as for :func:`write_report`); campaigns of a
            fixed fault count are plotted against their mean number of faults per trial.
        out_dir: folder (created when missing; its parent must exist).
        title: figure title (default: the campaigns' labels and their common settings,
            :func:`describe`).

    Returns:
        The path of ``compare_accuracy_vs_rate.png``.

    Raises:
        EnpheephError: no summaries, or a folder problem as in :func:`write_report`.
    """
    if not summaries:
        raise EnpheephError("nothing to compare: give at least one campaign")
    summaries = {k: v.to_json() if hasattr(v, "to_json") else v for k, v in summaries.items()}
    kinds = {str(s.get("rate_kind", "fault_rate")) for s in summaries.values()}
    if title is None:
        settings = {describe(s).partition(": ")[2] for s in summaries.values()}
        title = (f"{', '.join(summaries)}: "
                 + (settings.pop() if len(settings) == 1 else "settings differ"))
    out = _prepare_out_dir(out_dir)
    fig = comparison_figure(summaries, title, kinds)
    dest = out / COMPARE_PNG
    _save(fig, dest)
    return dest


def comparison_figure(summaries: Mapping[str, Mapping[str, Any]], title: str,
                      kinds: set[str]) -> Figure:
    """The figure of :func:`write_comparison` (summaries as JSON), not yet saved."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11.0, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax_acc, ax_rel = fig.subplots(1, 2)
    log_x = False
    for label, s in summaries.items():
        levels = [r for r in (s.get("per_rate") or []) if r.get("accuracy")]
        if not levels:
            continue
        kind = s.get("rate_kind", "fault_rate")
        x = np.array([_num(r["rate"]) if kind != "fixed" else _num(r["mean_faults"])
                      for r in levels])
        mean = np.array([_num(r["accuracy"]["mean"]) for r in levels])
        low = np.array([_num(r["accuracy"]["ci_low"]) for r in levels])
        high = np.array([_num(r["accuracy"]["ci_high"]) for r in levels])
        golden = _num(s.get("golden_accuracy"))
        positive = x > 0
        log_x = log_x or bool(positive.any())
        line = ax_acc.plot(x, mean, marker="o", label=f"{label} (golden {golden:.3f})")[0]
        ax_acc.fill_between(x, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
        if golden and golden == golden:
            ax_rel.plot(x, mean / golden, marker="o", color=line.get_color(), label=label)
    xlabel = ("bit error rate (faults per bit)" if kinds == {"bit_error_rate"}
              else "fault rate (faults per parameter)" if "fixed" not in kinds
              else "faults per trial")
    for ax in (ax_acc, ax_rel):
        if log_x:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.grid(True, which="both", alpha=0.3)
    labels = {score_label(s) for s in summaries.values()}
    name = labels.pop() if len(labels) == 1 else "score"
    ax_acc.set_ylabel(f"{name} (mean over trials, 95 % CI band)")
    ax_acc.set_ylim(0.0, 1.03)
    ax_rel.set_ylabel(f"{name} / golden {name}")
    ax_rel.set_ylim(0.0, 1.1)
    ax_acc.legend(fontsize=8, loc="lower left")
    if ax_rel.get_legend_handles_labels()[0]:
        ax_rel.legend(fontsize=8, loc="lower left")
    ax_acc.set_title("absolute", fontsize="medium")
    ax_rel.set_title("normalised by each model's golden run", fontsize="medium")
    fig.suptitle(title)
    return fig
