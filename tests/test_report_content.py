"""What a report says (issue 11): titles that name the campaign, score axes from 0, every
trial's score beside the mean (a collapsed trial stays visible), a legend on both panels
of the comparison, provenance and gates in summary.md and the self-contained report.html."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from enpheeph_onnx.campaign import load_meta
from enpheeph_onnx.report import _plot_accuracy, comparison_figure, describe

from .conftest import DATA, MODEL
from .helpers import invoke

PNG = b"\x89PNG\r\n\x1a\n"


def _campaign(db: Path, *extra: str) -> None:
    code, _, err = invoke("campaign", MODEL, "--data", DATA, "--fault-rate", "1e-3,1e-2",
                          "--trials", "6", "--seed", "1", "-o", db, "--no-progress", *extra)
    assert code in (0, 1), err


def test_titles_name_model_kinds_fault_model_bits_trials_and_policy(tmp_path: Path) -> None:
    db = tmp_path / "r.sqlite"
    _campaign(db, "--bits", "23-30", "--outcome", "topk", "--topk", "3")
    code, _, err = invoke("report", db, "-o", tmp_path / "rep")
    assert code == 0, err
    head = (tmp_path / "rep" / "summary.md").read_text().splitlines()[0]
    assert head == "# digits_cnn.onnx: weights, bitflip, bits 23-30, 6 trials/level, top-3"
    s = {"config": {"selection": {"kinds": ["activation", "input"]}, "fault_model":
                    "stuck-at-1", "bits": "0-63", "trials": 30, "count": "fixed",
                    "faults_per_trial": 4, "outcome": {"kind": "metric",
                                                       "metric": "m:iou"}},
         "model": "/x/det.onnx"}
    assert describe(s) == ("det.onnx: activations+inputs, stuck-at-1, all bits, 4 fault(s)/"
                           "trial, 30 trials/level, metric m:iou")


def _level_summary(scores: list[float]) -> dict:
    m = float(np.mean(scores))
    return {"score": "accuracy", "score_bounded": True, "golden_accuracy": 0.99,
            "per_rate": [{"level": 0, "rate": 1e-3, "trials": len(scores), "mean_faults": 14,
                          "accuracy": {"mean": m, "ci_low": m - 0.1, "ci_high": m + 0.05},
                          **{k: {"k": 0, "n": 10, "rate": 0.0, "ci_low": 0.0, "ci_high": 0.3}
                             for k in ("masked", "tolerable_sdc", "critical_sdc", "due")}}],
            "trials": [{"trial": i, "level": 0, "rate": 1e-3, "accuracy": a}
                       for i, a in enumerate(scores)]}


def test_one_collapsed_trial_among_30_is_visible_and_the_axis_starts_at_0() -> None:
    scores = [0.97] * 29 + [0.05]
    fig = Figure()
    FigureCanvasAgg(fig)
    s = _level_summary(scores)
    _plot_accuracy(fig, s["per_rate"], "fault_rate", 0.99, "t", s)
    ax = fig.axes[0]
    dots = [c for c in ax.collections if c.get_label() == "one trial"]
    assert len(dots) == 1
    xy = dots[0].get_offsets()
    assert len(xy) == 30 and sorted(xy[:, 1].tolist()) == sorted(scores)
    assert np.all(np.abs(np.log10(xy[:, 0] / 1e-3)) <= 0.06 + 1e-12)  # beside the mean
    assert ax.get_ylim()[0] == 0.0 and ax.get_ylim()[1] >= 1.0
    assert "top-1 accuracy" in ax.get_ylabel()


def test_the_comparison_has_a_legend_on_both_panels() -> None:
    a, b = _level_summary([0.9] * 5), _level_summary([0.5] * 5)
    fig = comparison_figure({"dense": a, "int8": b}, "t", {"fault_rate"})
    acc, rel = fig.axes
    for ax in (acc, rel):
        legend = ax.get_legend()
        assert legend is not None
        assert [t.get_text() for t in legend.get_texts()][-1].startswith("int8")
    assert acc.get_ylim()[0] == 0.0 and rel.get_ylim()[0] == 0.0


def test_html_report_is_self_contained_with_provenance_and_gates(tmp_path: Path) -> None:
    db = tmp_path / "r.sqlite"
    _campaign(db, "--fail-above", "critical_sdc_rate=0.5")
    out = tmp_path / "rep"
    code, _, err = invoke("report", db, "-o", out, "--html")
    assert code == 0, err
    page = (out / "report.html").read_text()
    imgs = re.findall(r'<img alt="[^"]*" src="([^"]*)">', page)
    assert len(imgs) == 3 and all(src.startswith("data:image/png;base64,") for src in imgs)
    assert all(base64.b64decode(src.split(",", 1)[1])[:8] == PNG for src in imgs)
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing outside the file
    meta = load_meta(db)
    assert meta["model_sha256"] in page and meta["versions"]["onnxruntime"] in page
    assert "CPUExecutionProvider" in page and "ORT_ENABLE_EXTENDED" in page
    # the gate the campaign was held to: 6 trials cannot bound the 1e-2 level below 0.5
    md = (out / "summary.md").read_text()
    assert "**Reliability gates: FAILED**" in md
    rows = [ln for ln in md.splitlines() if ln.startswith("| critical_sdc_rate")]
    assert [r.split("|")[3].strip() for r in rows] == ["1.0e-03", "1.0e-02"]
    assert rows[1].rstrip(" |").endswith("FAILED")
    assert '<span class="failed">FAILED</span>' in page


def test_report_gates_are_evaluated_anew_and_fail_with_exit_1(tmp_path: Path) -> None:
    db = tmp_path / "r.sqlite"
    _campaign(db)
    out = tmp_path / "rep"
    code, _, err = invoke("report", db, "-o", out, "--fail-above", "due_rate=0.0001")
    assert code == 1 and err.strip().splitlines()[-1].startswith("FAILED report:")
    assert (out / "summary.md").exists()  # the report is written, then the gate fails
    assert "**Reliability gates: FAILED**" in (out / "summary.md").read_text()
    code, _, err = invoke("report", db, "-o", out, "--fail-above", "due_rate=1")
    assert code == 0 and "**Reliability gates: PASSED**" in (out / "summary.md").read_text()
