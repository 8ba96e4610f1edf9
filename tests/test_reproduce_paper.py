"""scripts/reproduce_paper.py --quick: real training, real campaigns, consistent outputs."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from enpheeph_onnx.runtime import make_session

from .conftest import ROOT

pytest.importorskip("torch")
pytest.importorskip("mlxtend")

SCRIPT = ROOT / "scripts" / "reproduce_paper.py"
QUICK_PARAMS = 784 * 128 + 128 + 128 * 10 + 10
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("reproduce_paper")
    subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out),
                    "--model-dir", str(out / "model")],
                   check=True, capture_output=True, timeout=300, cwd=ROOT)
    return out, json.loads((out / "reproduce_paper.json").read_text())


def script_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("reproduce_paper", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    try:
        spec.loader.exec_module(mod)
    finally:
        del sys.modules[spec.name]
    return mod


def test_quick_model_and_golden_accuracy(quick: tuple[Path, dict[str, Any]]) -> None:
    out, res = quick
    model = res["model"]
    assert res["variant"] == "quick"
    assert model["architecture"] == "MLP 784-128-10"
    assert model["parameters"] == QUICK_PARAMS
    assert (model["train_images"], model["test_images"]) == (4000, 1000)
    golden = res["golden_accuracy"]
    assert golden > 0.8
    assert abs(golden - model["torch_test_accuracy"]) <= 0.002
    assert res["threshold_accuracy"] == pytest.approx(0.6 * golden)
    # the saved model and data are what the campaigns ran on: same golden accuracy
    with np.load(out / "model" / "mnist_mlp_quick_test.npz") as z:
        assert sorted(z.files) == ["input", "labels"]
        x, y = z["input"], z["labels"]
    assert x.shape == (1000, 784) and x.dtype == np.float32 and 0 <= x.min() < x.max() <= 1
    assert y.dtype == np.int64 and np.array_equal(np.bincount(y), [100] * 10)
    logits = make_session(str(out / "model" / "mnist_mlp_quick.onnx")).run(None, {"input": x})[0]
    assert float(np.mean(np.argmax(logits, 1) == y)) == golden


def test_sweep_levels(quick: tuple[Path, dict[str, Any]]) -> None:
    _, res = quick
    params, golden, trials = res["model"]["parameters"], res["golden_accuracy"], \
        res["trials_per_level"]
    sweeps = {s["key"]: s for s in res["sweeps"]}
    assert list(sweeps) == ["uniform", "bit30", "bits0_29"]
    share = {"uniform": 1 / 32, "bit30": 1.0, "bits0_29": 0.0}
    for key, sweep in sweeps.items():
        levels = sweep["levels"]
        rates = [lv["rate"] for lv in levels]
        assert rates == sorted(rates) and rates[0] <= 1e-8 and rates[-1] >= 1e-1
        assert 7e-7 in rates
        assert sweep["golden_accuracy"] == golden
        for lv in levels:
            assert lv["expected_faults"] == lv["rate"] * params
            assert lv["expected_bit30_faults"] == lv["expected_faults"] * share[key]
            assert lv["trials"] == trials
            assert lv["ci_low"] <= lv["accuracy"] <= lv["ci_high"]
            # Poisson(rate x parameters) faults per trial, not a fixed count: the mean is
            # within 5 sigma and the variance across trials is about the mean
            lam = lv["expected_faults"]
            if lam >= 1:
                assert abs(lv["mean_faults"] - lam) <= 5 * math.sqrt(lam / trials)
            if lam >= 10:
                assert 0.25 * lam < lv["var_faults"] < 3 * lam
        # (almost) no fault at the lowest rate: the golden accuracy
        assert abs(levels[0]["accuracy"] - golden) <= 0.005
    assert sweeps["bit30"]["levels"][-1]["accuracy"] < 0.1
    assert sweeps["uniform"]["levels"][-1]["accuracy"] < 0.5 * golden
    assert sweeps["bits0_29"]["levels"][-1]["accuracy"] > 0.8 * golden
    # the exponent MSB is what hurts: bit 30 alone crosses the 40 % line at a lower rate
    first = {k: s["first_rate_below_threshold"] for k, s in sweeps.items()}
    assert first["bits0_29"] is None
    assert first["bit30"] is not None and first["uniform"] is not None
    assert first["bit30"] < first["uniform"]
    for key in ("bit30", "uniform"):
        below = [lv for lv in sweeps[key]["levels"] if lv["accuracy"] < res["threshold_accuracy"]]
        assert below[0]["rate"] == first[key]


def test_single_bit30_flips(quick: tuple[Path, dict[str, Any]]) -> None:
    _, res = quick
    flips = res["single_bit30_flip"]
    rows = flips["trials"]
    assert len(rows) == flips["all"]["flips"] == 40
    assert flips["positive_weights"]["flips"] + flips["negative_weights"]["flips"] == 40
    assert all(abs(r["weight"]) < 2 for r in rows) and flips["max_abs_weight"] < 2
    # a negative weight blown up by 2^128 only silences its ReLU unit
    assert (flips["negative_weights"]["mean_accuracy"]
            > flips["positive_weights"]["mean_accuracy"])
    assert flips["all"]["mean_accuracy"] < res["golden_accuracy"]


def test_png_and_markdown(quick: tuple[Path, dict[str, Any]]) -> None:
    out, res = quick
    png = (out / "reproduce_paper.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE) and len(png) > 10_000
    md = (out / "reproduce_paper.md").read_text()
    assert md.startswith("### Reproducing the enpheeph paper's MNIST experiment")
    assert res["command"].startswith("python scripts/reproduce_paper.py --quick")
    assert f"```\n{res['command']}\n```" in md
    assert f"**{res['golden_accuracy']:.3f}**" in md
    rows = [line for line in md.splitlines() if line.startswith("| ") and "[" in line]
    assert len(rows) == len(res["sweeps"][0]["levels"])
    assert "(paper)" in md and "does not reproduce" in md


def test_crossing_rate_interpolates_in_log_rate() -> None:
    mod = script_module()
    assert mod.crossing_rate([1e-6, 1e-5], [1.0, 0.0], 0.5) == pytest.approx(10 ** -5.5)
    assert mod.crossing_rate([1e-6, 1e-5, 1e-4], [0.9, 0.8, 0.1], 0.45) == pytest.approx(
        10 ** -4.5)
    assert mod.crossing_rate([1e-6, 1e-5], [0.9, 0.8], 0.5) is None
    assert mod.crossing_rate([1e-6, 1e-5], [0.1, 0.0], 0.5) == 1e-6


def test_render_redraws_the_same_markdown(quick: tuple[Path, dict[str, Any]]) -> None:
    out, _ = quick
    md = (out / "reproduce_paper.md").read_bytes()
    (out / "reproduce_paper.md").unlink()
    (out / "reproduce_paper.png").unlink()
    subprocess.run([sys.executable, str(SCRIPT), "--render", "--out", str(out)], check=True,
                   capture_output=True, timeout=120, cwd=ROOT)
    assert (out / "reproduce_paper.md").read_bytes() == md
    assert (out / "reproduce_paper.png").read_bytes().startswith(PNG_SIGNATURE)


def test_cli_command_in_markdown_reruns_the_bit30_sweep(
        quick: tuple[Path, dict[str, Any]]) -> None:
    out, res = quick
    md = (out / "reproduce_paper.md").read_text()
    command = [line for line in md.splitlines() if line.startswith("enpheeph-onnx campaign ")]
    assert len(command) == 1
    args = command[0].split()[1:]
    r = subprocess.run([sys.executable, "-m", "enpheeph_onnx", *args, "--json"], check=True,
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    cli = json.loads(r.stdout)
    bit30 = next(s for s in res["sweeps"] if s["key"] == "bit30")
    assert cli["golden_accuracy"] == res["golden_accuracy"]
    assert [g["rate"] for g in cli["per_rate"]] == [lv["rate"] for lv in bit30["levels"]]
    assert [g["accuracy"]["mean"] for g in cli["per_rate"]] == [
        lv["accuracy"] for lv in bit30["levels"]]
    assert [g["mean_faults"] for g in cli["per_rate"]] == [
        lv["mean_faults"] for lv in bit30["levels"]]
