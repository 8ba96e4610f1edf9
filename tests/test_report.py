"""enpheeph_onnx.report: campaign reports (the four files, valid non-blank PNGs and the
Markdown numbers), malformed summaries, and the report command on real campaigns, one or
several compared."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from enpheeph_onnx.errors import EnpheephError
from enpheeph_onnx.report import write_report

from .conftest import MODELS
from .helpers import VARIANTS, assert_user_error, invoke

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ROOT = Path(__file__).resolve().parents[1]
NAMES = ["accuracy_vs_rate.png", "layers.png", "bits_layers.png", "summary.md"]
OUTCOMES = ("masked", "tolerable_sdc", "critical_sdc", "due", "sdc")


def prop(k: int, n: int) -> dict[str, Any]:
    """A Prop with a 95 % Wilson score interval (NaN when n == 0)."""
    if n == 0:
        return {"k": 0, "n": 0, "rate": math.nan, "ci_low": math.nan, "ci_high": math.nan}
    z = 1.959963984540054
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return {"k": k, "n": n, "rate": p, "ci_low": max(0.0, centre - half),
            "ci_high": min(1.0, centre + half)}


def outcomes(n: int, crit: int, due: int, tol: int) -> dict[str, Any]:
    masked = n - crit - due - tol
    return {"masked": prop(masked, n), "tolerable_sdc": prop(tol, n),
            "critical_sdc": prop(crit, n), "due": prop(due, n), "sdc": prop(crit + tol, n)}


LAYERS = ["conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight|bias"]
BITS = list(range(32))
SAMPLES = 36
"""Inputs per trial of the sweep: an outcome rate of ``t`` trials is over ``t * SAMPLES``
(trial, input) pairs."""
EXCLUSIVE = "only trials whose faults all lie in one layer / have one bit count there"
STRATIFIED = "stratified: every trial of a layer / bit confines its faults to it"


def bit_layer_grid() -> dict[str, Any]:
    rates: list[list[float | None]] = []
    trials: list[list[int]] = []
    for i, _ in enumerate(LAYERS):
        row_r: list[float | None] = []
        row_t: list[int] = []
        for b in BITS:
            if b == 31 - i:  # a cell no trial measured: shown blank
                row_r.append(None)
                row_t.append(0)
            else:
                row_r.append(0.9 if b == 30 else round(0.02 * (i + 1) * (b % 5) / 4, 4))
                row_t.append(1 + b % 3)
        rates.append(row_r)
        trials.append(row_t)
    return {"layers": LAYERS, "bits": BITS, "critical_sdc_rate": rates, "trials": trials}


def sweep_summary() -> dict[str, Any]:
    golden = 0.9833
    per_rate = []
    for i, (rate, acc) in enumerate(zip([1e-7, 1e-6, 1e-5, 1e-4, 1e-3],
                                        [0.9831, 0.9790, 0.9512, 0.6120, 0.1050],
                                        strict=True)):
        n = 50 * SAMPLES
        per_rate.append({
            "level": i, "rate": rate, "trials": 50, "faults": 2 * 10**i,
            "mean_faults": 0.04 * 10**i,
            "accuracy": {"mean": acc, "ci_low": acc - 0.004 * (i + 1),
                         "ci_high": min(1.0, acc + 0.004 * (i + 1)), "trials": 50},
            "accuracy_drop": golden - acc,
            **outcomes(n, crit=int(n * (golden - acc)), due=3 * i, tol=20 * i),
            "p_trial_critical": prop(min(50, 10 * i), 50),
        })
    # exclusive attribution: conv1 measured by 10 trials (100 faults), conv2 by 20, ...
    per_layer = [{"layer": name, "trials": 10 * (j + 1), "faults": 100 * (j + 1),
                  **outcomes(10 * (j + 1) * SAMPLES, crit=7 * (j + 1), due=j, tol=10),
                  "p_trial_critical": prop(j + 1, 10 * (j + 1))}
                 for j, name in enumerate(LAYERS)]
    per_bit = [{"bit": b, "trials": 4, "faults": 40,
                **outcomes(4 * SAMPLES, crit=100 if b == 30 else b % 3,
                           due=3 if b == 30 else 0, tol=5),
                "p_trial_critical": prop(4 if b == 30 else min(b % 3, 4), 4)}
               for b in BITS]
    return {
        "golden_accuracy": golden,
        "samples": SAMPLES,
        "attribution": "exclusive",
        "config": {"model": "models/digits_cnn.onnx", "target": "weight", "trials": 50,
                   "fault_rates": [1e-7, 1e-6, 1e-5, 1e-4, 1e-3], "bits": [0, 31],
                   "fault_model": "bit_flip", "seed": 0, "confidence": 0.95,
                   "provider": None},
        "rate_kind": "fault_rate",
        "per_rate": per_rate,
        "per_layer": per_layer,
        "per_bit": per_bit,
        "bit_layer": bit_layer_grid(),
        "trials": [{"trial": 0, "level": 0, "n_faults": 0, "first_faults": []}],
    }


def fixed_summary() -> dict[str, Any]:
    n = 5000
    return {
        "golden_accuracy": 0.9833,
        "samples": 100,
        "attribution": "stratified",
        "config": {"faults_per_trial": 3, "trials": 50, "stratify": ["layer", "bit"]},
        "rate_kind": "fixed",
        "per_rate": [{"level": 0, "rate": None, "trials": 50, "faults": 150, "mean_faults": 3.0,
                      "accuracy": {"mean": 0.9421, "ci_low": 0.9302, "ci_high": 0.9533,
                                   "trials": 50},
                      "accuracy_drop": 0.0412,
                      **outcomes(n, crit=206, due=0, tol=900)}],
        # stratified layer x bit: 25 trials per layer, 25 per bit, 12-13 per cell
        "per_layer": [{"layer": "conv1.weight", "trials": 25, "faults": 75,
                       **outcomes(2500, crit=310, due=0, tol=40)},
                      {"layer": "fc1.weight", "trials": 25, "faults": 75,
                       **outcomes(2500, crit=70, due=0, tol=10)}],
        "per_bit": [{"bit": 30, "trials": 25, "faults": 75,
                     **outcomes(2500, crit=350, due=0, tol=10)},
                    {"bit": 22, "trials": 25, "faults": 75,
                     **outcomes(2500, crit=30, due=0, tol=40)}],
        "bit_layer": {"layers": ["conv1.weight", "fc1.weight"], "bits": [22, 30],
                      "critical_sdc_rate": [[0.025, 0.31], [0.0, 0.057]],
                      "trials": [[13, 12], [12, 13]]},
        "trials": [],
    }


def empty_summary() -> dict[str, Any]:
    return {
        "golden_accuracy": None,
        "samples": 10,
        "config": {},
        "rate_kind": "bit_error_rate",
        "per_rate": [],
        "per_layer": [],
        "per_bit": [],
        "bit_layer": {"layers": [], "bits": [], "critical_sdc_rate": [], "trials": []},
        "trials": [],
    }


def check_png(path: Path) -> None:
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert path.stat().st_size > 5000
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 100 and image.shape[1] > 100
    assert float(image[..., :3].std()) > 0


def check_outputs(paths: list[Path], out: Path) -> str:
    assert [p.name for p in paths] == NAMES
    assert all(p.parent == out and p.is_file() for p in paths)
    assert sorted(f.name for f in out.iterdir()) == sorted(NAMES)  # no temp files left
    for p in paths[:3]:
        check_png(p)
    return paths[3].read_text(encoding="utf-8")


def test_sweep_report(tmp_path: Path) -> None:
    out = tmp_path / "report"
    md = check_outputs(write_report(sweep_summary(), out, title="digits sweep"), out)
    assert md.startswith("# digits sweep\n")
    assert "| fault_rates | [1e-07, 1e-06, 1e-05, 0.0001, 0.001] |" in md
    assert "| provider | none |" in md
    assert "**Golden top-1 accuracy:** 0.9833 on 36 samples" in md
    row = next(line for line in md.splitlines() if line.startswith("| 1.0e-05 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:5] == ["1.0e-05", "50", "4.00", "0.9512 [0.9392, 0.9632]", "0.0321"]
    crit = prop(int(1800 * (0.9833 - 0.9512)), 1800)
    assert cells[7] == f"{crit['rate']:.4f} [{crit['ci_low']:.4f}, {crit['ci_high']:.4f}]"
    for rate in ("1.0e-07", "1.0e-06", "1.0e-04", "1.0e-03"):
        assert f"\n| {rate} | 50 |" in md
    assert "| bit error rate |" not in md and "| fault rate | trials |" in md
    assert "| layer | trials | faults | masked |" in md
    assert "| bit | trials | faults | masked |" in md
    conv1 = outcomes(360, crit=7, due=0, tol=10)
    assert (f"| conv1.weight | 10 | 100 | {conv1['masked']['rate']:.4f} "
            f"[{conv1['masked']['ci_low']:.4f}, {conv1['masked']['ci_high']:.4f}] |") in md
    assert "| fc2.weight\\|bias | 40 | 400 |" in md  # pipes escaped in table cells
    assert "| 30 | 4 | 40 | 0.2500 [" in md  # bit 30: masked 36/144
    assert EXCLUSIVE in md and STRATIFIED not in md
    for name in NAMES[:3]:
        assert f"]({name})" in md


def test_fixed_single_level(tmp_path: Path) -> None:
    md = check_outputs(write_report(fixed_summary(), tmp_path), tmp_path)
    assert "| fixed | 50 | 3.00 | 0.9421 [0.9302, 0.9533] | 0.0412 |" in md
    assert "| 0.0000 [0.0000, 0.0008] |" in md  # DUE 0/5000 keeps its interval
    assert "| conv1.weight | 25 | 75 | 0.8600 [" in md  # masked 2150/2500
    assert "| 22 | 25 | 75 | 0.9720 [" in md  # masked 2430/2500
    assert STRATIFIED in md and EXCLUSIVE not in md


def test_empty_summary(tmp_path: Path) -> None:
    md = check_outputs(write_report(empty_summary(), tmp_path / "r"), tmp_path / "r")
    assert "**Golden top-1 accuracy:** n/a" in md and md.startswith("# enpheeph-onnx campaign\n")
    assert md.count("No trial's faults all lie in one layer / have one bit") == 2
    assert "No trials." in md


def test_nan_rates_and_missing_parts(tmp_path: Path) -> None:
    summary = sweep_summary()
    summary["per_layer"].append({"layer": "unhit", "trials": 0, "faults": 0,
                                 **outcomes(0, 0, 0, 0)})
    summary["per_rate"][0]["accuracy"] = None
    del summary["bit_layer"]
    del summary["rate_kind"]  # inferred: rates present -> fault_rate
    md = check_outputs(write_report(summary, tmp_path), tmp_path)
    assert "| unhit | 0 | 0 | n/a | n/a | n/a | n/a |" in md
    assert "| 1.0e-07 | 50 | 0.04 | n/a |" in md


def test_overwrites_existing_report(tmp_path: Path) -> None:
    write_report(empty_summary(), tmp_path)
    paths = write_report(sweep_summary(), tmp_path)
    assert "| 1.0e-05 |" in paths[3].read_text(encoding="utf-8")


def test_missing_parent_raises_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "missing" / "report"
    with pytest.raises(EnpheephError, match="parent") as info:
        write_report(sweep_summary(), out)
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("summary, match", [
    ([1, 2], "must be a dict"),
    ({**empty_summary(), "rate_kind": "per_hour"}, "rate_kind"),
    ({**empty_summary(), "bit_layer": {"layers": ["a"], "bits": [0, 1],
                                       "critical_sdc_rate": [[0.1]]}}, "grid"),
    ({**empty_summary(), "bit_layer": {"layers": ["a"], "bits": [0],
                                       "critical_sdc_rate": [[0.1]], "trials": [[1, 2]]}},
     "trials is not a 1 x 1 grid"),
])
def test_malformed_summary_raises_and_writes_nothing(tmp_path: Path, summary: Any,
                                                     match: str) -> None:
    with pytest.raises(EnpheephError, match=match):
        write_report(summary, tmp_path / "r")
    assert list(tmp_path.iterdir()) == []


def test_out_dir_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "report"
    f.write_text("x")
    with pytest.raises(EnpheephError, match="not a folder"):
        write_report(empty_summary(), f)


def test_matplotlib_lazy_and_no_pyplot(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from enpheeph_onnx.report import write_report\n"
        "assert 'matplotlib' not in sys.modules\n"
        f"write_report({{'per_rate': []}}, {str(tmp_path / 'r')!r})\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    assert len(list((tmp_path / "r").iterdir())) == 4


# -- the report command --------------------------------------------------------------------

def test_report_command_writes_plots(tmp_path: Path, model_path: Path, data_path: Path) -> None:
    db = tmp_path / "r.sqlite"
    assert invoke("campaign", model_path, "--data", data_path, "--fault-rate", "1e-4,1e-2",
                  "--trials", "5", "--db", db)[0] == 0
    out = tmp_path / "report"
    code, stdout, err = invoke("report", db, "-o", out)
    assert code == 0, err
    assert len(stdout.splitlines()) == 4
    names = sorted(p.name for p in out.iterdir())
    assert names == ["accuracy_vs_rate.png", "bits_layers.png", "layers.png", "summary.md"]
    md = (out / "summary.md").read_text()
    assert "1.0e-04" in md and "1.0e-02" in md
    assert (out / "accuracy_vs_rate.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert_user_error(*invoke("report", tmp_path / "missing.sqlite", "-o", tmp_path / "r2"),
                      "not found")
    assert not (tmp_path / "r2").exists()


def test_comparison_report_over_variants(tmp_path: Path) -> None:
    dbs = []
    for model, data in VARIANTS[:2]:
        db = tmp_path / f"{model}.sqlite"
        assert invoke("campaign", MODELS / model, "--data", MODELS / data, "--fault-rate",
                      "1e-3", "--trials", "2", "--db", db)[0] == 0
        dbs.append(db)
    out = tmp_path / "cmp"
    code, stdout, err = invoke("report", *dbs, "--label", "dense", "--label", "pruned",
                               "-o", out)
    assert code == 0, err
    assert len(stdout.splitlines()) == 1 + 2 * 4  # the comparison + 4 files per campaign
    assert (out / "compare_accuracy_vs_rate.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "dense" / "summary.md").exists() and (out / "pruned" / "layers.png").exists()
    assert_user_error(*invoke("report", *dbs, "--label", "one", "-o", tmp_path / "x"),
                      "--label")
