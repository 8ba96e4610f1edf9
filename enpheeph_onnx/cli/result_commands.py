"""``report``, ``export-results`` and ``export-model`` (and the old ``export``, refused)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..errors import EnpheephError
from .common import echo_json, refuse_overwrite, summary
from .group import main
from .options import gate_option, json_option, output_option


@main.command()
@click.argument("dbs", nargs=-1, required=True, metavar="RESULTS.sqlite...",
                type=click.Path(dir_okay=False, path_type=Path))
@output_option("Folder for the PNG plots and summary.md.", folder=True)
@click.option("--label", "labels", multiple=True,
              help="Name of each campaign in the comparison figure (default: file stems).")
@click.option("--html", is_flag=True,
              help="Also write report.html: one self-contained file (images inlined) with "
                   "the tables, the provenance and the gate results.")
@gate_option
@json_option
def report(dbs: tuple[Path, ...], out: Path, labels: tuple[str, ...], html: bool,
           fail_above: tuple[str, ...], as_json: bool) -> None:
    """Write plots (score and critical SDC vs fault rate with every trial's score, per
    layer, bit x layer), summary.md and (--html) report.html for stored campaigns.

    With several RESULTS.sqlite files, each gets a subfolder named after its label and
    compare_accuracy_vs_rate.png puts their accuracy-versus-fault-rate curves side by side
    (e.g. the dense, pruned, int8 and spiking variants of a model).

    \b
    Example:
      enpheeph-onnx report results/digits.sqlite -o results/report --html
    """
    from ..report import write_comparison, write_report
    from .campaign_commands import parse_gates

    refuse_overwrite(out, *dbs, folder=True)
    gates = parse_gates(fail_above)
    if labels and len(labels) != len(dbs):
        raise EnpheephError(f"{len(labels)} --label for {len(dbs)} databases: give one each")
    names = list(labels) if labels else [db.stem for db in dbs]
    if len(set(names)) != len(names):
        raise EnpheephError("campaign labels must differ: use --label")
    summaries = {name: stored_summary(db, gates) for name, db in zip(names, dbs, strict=True)}
    paths: list[Path] = []
    if len(dbs) == 1:
        paths += write_report(summaries[names[0]], out, html=html)
    else:
        paths.append(write_comparison(summaries, out))  # creates out
        for name in names:
            paths += write_report(summaries[name], out / name, html=html)
    failed = [(name, g) for name, s in summaries.items() for g in s.get("gates") or []
              if not g["passed"]]
    if as_json:
        echo_json({"output": str(out), "files": [str(p) for p in paths],
                   "gates": {name: s.get("gates") or [] for name, s in summaries.items()},
                   "passed": not failed})
    else:
        for p in paths:
            click.echo(str(p))
    text = f"report: {len(paths)} files in {out}"
    if failed and gates:
        name, g = failed[0]
        where = "" if g["rate"] is None else f" at rate {g['rate']:g}"
        summary(False, f"{text}; {name}: {g['metric']} upper 95 % bound "
                       f"{g['bound'] if g['bound'] is None else round(g['bound'], 4)} > "
                       f"{g['threshold']:g}{where} ({len(failed)} gate check(s) failed)")
        raise SystemExit(1)
    summary(True, text)


def stored_summary(db: Path, gates: tuple[tuple[str, float], ...] = ()) -> dict[str, Any]:
    """The summary JSON of a stored campaign for :func:`~enpheeph_onnx.report.write_report`,
    with its model, provenance and gates (``gates`` given: evaluated anew on its trials)."""
    from ..campaign import load_meta, load_summary
    from ..summary import check_gates

    meta = load_meta(db)
    s = load_summary(db)
    stored = meta.get("gates") or []
    return {**s.to_json(), "model": meta.get("model"), "model_sha256": meta.get("model_sha256"),
            "status": meta.get("status", "incomplete"),
            "gates": [g.to_json() for g in check_gates(s, gates)] if gates else stored,
            "provenance": {k: meta.get(k) for k in (
                "model", "model_sha256", "data_sha256", "created", "tool_version",
                "providers", "versions", "session_options", "golden_deviation", "status")}}


@main.command("export-results")
@click.argument("db", metavar="RESULTS.sqlite",
                type=click.Path(dir_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["csv", "parquet"]), default=None,
              help="File format [default: from the -o suffix, else csv].")
@click.option("--table", type=click.Choice(["trials", "faults", "outcomes"]), default="trials",
              show_default=True,
              help="trials (one row per trial), faults (one per fault) or outcomes (one per "
                   "(trial, input)).")
@output_option("CSV or Parquet file to write.")
@json_option
def export_results(db: Path, fmt: str | None, table: str, out: Path, as_json: bool) -> None:
    """Export a stored campaign as CSV or Parquet for pandas/polars.

    \b
    Example:
      enpheeph-onnx export-results results/digits.sqlite --table faults -o faults.parquet
    """
    from ..export_results import export_table

    refuse_overwrite(out, db)
    suffix = out.suffix.lower().lstrip(".")
    if fmt is None and suffix not in ("csv", "parquet"):
        raise EnpheephError(f"-o {out}: end it in .csv or .parquet, or give --format csv|parquet")
    if fmt is None:
        fmt = suffix
    elif suffix in ("csv", "parquet") and suffix != fmt:
        raise EnpheephError(f"--format {fmt} but -o {out} ends in .{suffix}: make them agree")
    n = export_table(db, table, fmt, out)
    if as_json:
        echo_json({"output": str(out), "table": table, "format": fmt, "rows": n})
    summary(True, f"export-results: {n} {table} rows -> {out}")


@main.command("export-model")
@click.option("--model", "factory", required=True, metavar="PKG.MODULE:FACTORY",
              help="A callable returning the torch module (the current folder is "
                   "importable).")
@click.option("--weights", type=click.Path(dir_okay=False, path_type=Path),
              help="State dict loaded with torch.load(weights_only=True).")
@click.option("--input-shape", required=True,
              help="Example input shape, e.g. 1,1,8,8 (batch first).")
@click.option("--input-name", default="input", show_default=True)
@click.option("--output-name", default="logits", show_default=True,
              help="Name of the exported model's output tensor.")
@click.option("--quantize", type=click.Choice(["int8"]), default=None,
              help="Quantize (QDQ, static) with --calibration data.")
@click.option("--calibration", type=click.Path(dir_okay=False, path_type=Path),
              help=".npz of calibration inputs (keyed by input name).")
@output_option("ONNX model to write.")
@json_option
def export_model_cmd(factory: str, weights: Path | None, input_shape: str, input_name: str,
                     output_name: str, quantize: str | None, calibration: Path | None,
                     out: Path, as_json: bool) -> None:
    """Export a PyTorch module (dense, pruned with torch.nn.utils.prune, ...) to ONNX at
    opset 26, checked against torch before writing; pruning masks are folded and recorded.

    \b
    Example (from the project root, where tests/ is importable):
      enpheeph-onnx export-model --model tests.exportable:small_cnn \\
        --input-shape 1,1,8,8 -o small_cnn.onnx
    """
    if quantize and calibration is None:
        raise EnpheephError("--quantize int8 needs --calibration DATA.npz (representative "
                            "inputs, keyed by input name)")
    try:
        shape = tuple(int(x) for x in input_shape.split(","))
    except ValueError:
        raise EnpheephError(f"--input-shape {input_shape!r}: write integers like 1,1,8,8"
                            ) from None
    if any(d < 1 for d in shape):
        raise EnpheephError(f"--input-shape {input_shape!r}: dimensions must be >= 1")
    from ..export.core import export_model, load_factory, load_weights
    from ..model import model_sha256
    from ..runtime import load_npz

    refuse_overwrite(out, weights, calibration)
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
        from ..export.quantize import quantize_int8

        float_model = export_model(module, (example,), None, input_names=(input_name,),
                                   output_names=(output_name,), metadata=meta)
        assert calib is not None
        quantize_int8(float_model, {input_name: calib[input_name]}, out)
    else:
        export_model(module, (example,), out, input_names=(input_name,),
                     output_names=(output_name,), metadata=meta)
    if as_json:
        echo_json({"output": str(out), "model": factory, "sha256": model_sha256(out),
                   "quantize": quantize})
    summary(True, f"export-model: {factory} -> {out}")


@main.command(hidden=True, context_settings={"ignore_unknown_options": True,
                                              "allow_extra_args": True})
def export() -> None:
    """The old ``export``: now two commands."""
    raise EnpheephError("'export' is now two commands: 'export-results RESULTS.sqlite -o "
                        "OUT.csv' and 'export-model --model pkg.module:factory --input-shape "
                        "1,1,8,8 -o MODEL.onnx'")
