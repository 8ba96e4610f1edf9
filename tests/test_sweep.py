"""Issue-3 campaign features: fault rates, sweeps, selection, per-sample faults, plans,
resume after SIGKILL, gates, TOML configs, sample size, export."""

from __future__ import annotations

import csv
import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from enpheeph_onnx import discover_sites, load_model
from enpheeph_onnx.campaign import (
    CampaignConfig,
    CountMode,
    Sampler,
    SiteSelection,
    ValueDistribution,
    fault_population,
    load_dataset,
    parse_rates,
    plan_campaign,
    run_campaign,
    select_sites,
)
from enpheeph_onnx.cli import main
from enpheeph_onnx.errors import EnpheephError
from enpheeph_onnx.faults import FaultModel
from enpheeph_onnx.sites import SiteKind
from enpheeph_onnx.stats import proportion, sample_size

from .test_cli import assert_user_error, invoke

WEIGHTS = 13706  # parameters of the digits CNN


def _sites(model_path: Path, cfg: CampaignConfig) -> list:
    return select_sites(discover_sites(load_model(model_path)), cfg)


# -- sampling -------------------------------------------------------------------------------

def test_parse_rates() -> None:
    assert parse_rates("1e-7,1e-6,1e-5") == (1e-7, 1e-6, 1e-5)
    assert parse_rates("1e-7:1e-1:1") == (1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
    grid = parse_rates("1e-7:1e-1:2")
    assert len(grid) == 13 and grid[1] == pytest.approx(3.16228e-7)
    with pytest.raises(EnpheephError, match="yields no rate"):
        parse_rates("1e-1:1e-7:2")
    with pytest.raises(EnpheephError, match="malformed"):
        parse_rates("1e-7:abc:2")


def test_fault_rate_counts_are_poisson_with_the_right_mean(model_path: Path) -> None:
    cfg = CampaignConfig(count=CountMode.FAULT_RATE, rates=(1e-3,), trials=400, seed=2)
    sampler = Sampler(_sites(model_path, cfg), cfg, 1)
    assert sampler.population == WEIGHTS
    counts = np.array([len(sampler.sample(t)) for t in range(400)])
    # Poisson(13.706): mean 13.7, variance 13.7 (a fixed count would have variance 0)
    assert counts.mean() == pytest.approx(13.706, abs=0.6)
    assert counts.var() == pytest.approx(13.706, rel=0.3)
    exact = CampaignConfig(count=CountMode.FAULT_RATE, rates=(1e-3,), exact_count=True,
                           trials=5)
    s2 = Sampler(_sites(model_path, exact), exact, 1)
    assert [len(s2.sample(t)) for t in range(5)] == [14] * 5


def test_bit_error_rate_population_is_elements_times_bits(model_path: Path) -> None:
    cfg = CampaignConfig(count=CountMode.BIT_ERROR_RATE, rates=(1e-4,), bits=tuple(range(8)),
                         trials=1, exact_count=True)
    sampler = Sampler(_sites(model_path, cfg), cfg, 1)
    assert sampler.population == WEIGHTS * 8
    faults = sampler.sample(0)
    assert len(faults) == round(1e-4 * WEIGHTS * 8)
    assert all(f.bits[0] < 8 for f in faults)
    assert fault_population(_sites(model_path, cfg), cfg) == WEIGHTS * 8


def test_selection_by_glob_and_op_type(model_path: Path) -> None:
    sites = discover_sites(load_model(model_path))
    by_glob = select_sites(sites, CampaignConfig(selection=SiteSelection(patterns=("conv*",))))
    assert [s.name for s in by_glob] == ["conv1.weight", "conv1.bias", "conv2.weight",
                                         "conv2.bias"]
    gemm_acts = select_sites(sites, CampaignConfig(selection=SiteSelection(
        (SiteKind.ACTIVATION,), op_types=("Gemm",))))
    assert [s.name for s in gemm_acts] == ["/fc1/Gemm_output_0", "logits"]
    layer = select_sites(sites, CampaignConfig(selection=SiteSelection(
        (SiteKind.WEIGHT, SiteKind.ACTIVATION), patterns=("fc2",))))
    assert {s.name for s in layer} == {"fc2.weight", "fc2.bias", "logits"}
    with pytest.raises(EnpheephError, match="site selection is empty"):
        select_sites(sites, CampaignConfig(selection=SiteSelection(patterns=("nope*",))))


def test_value_model_draws_from_distribution(model_path: Path) -> None:
    cfg = CampaignConfig(fault_model=FaultModel.VALUE, value=ValueDistribution.parse(
        "uniform:-2,2"), faults_per_trial=200, trials=1)
    faults = Sampler(_sites(model_path, cfg), cfg, 1).sample(0)
    vals = np.array([f.value for f in faults])
    assert all(f.model is FaultModel.VALUE and f.bits == () for f in faults)
    assert vals.min() >= -2 and vals.max() <= 2 and vals.std() > 0.8
    assert ValueDistribution.parse("0") == ValueDistribution("constant", 0.0)
    with pytest.raises(EnpheephError):
        ValueDistribution.parse("uniform:3,1")


def test_per_sample_faults_hit_one_input_each(model_path: Path, data_path: Path) -> None:
    data = load_dataset(data_path, ["input"])
    cfg = CampaignConfig(selection=SiteSelection((SiteKind.ACTIVATION,)), bits=(30,),
                         faults_per_trial=1, trials=3, per_sample=True, seed=4)
    res = run_campaign(model_path, data, cfg, progress=False)
    for t in res.trials:
        assert sorted(f.index[0] for f in t.faults) == list(range(360))
    # A per-sample fault reaches only its own input: with one bit-30 fault per input, the
    # inputs whose fault lands after the last ReLU/pool feeding the logits differ, and no
    # input is hit by another's fault -> the outcomes equal those of each fault alone.
    from enpheeph_onnx.engine import FaultEngine

    m = load_model(model_path)
    engine = FaultEngine(m, _sites(model_path, cfg))
    golden = engine.run(data.inputs)["logits"]
    t = res.trials[0]
    for f in t.faults[:5]:
        alone = engine.run(data.inputs, [f])["logits"]
        s = f.index[0]
        changed = np.flatnonzero((alone != golden).any(1))
        assert set(changed) <= {s}
    with pytest.raises(EnpheephError, match="per-sample"):
        CampaignConfig(per_sample=True)


# -- runs: sweeps, plans, resume ------------------------------------------------------------

def test_sweep_accuracy_falls_with_fault_rate(model_path: Path, data_path: Path) -> None:
    data = load_dataset(data_path, ["input"])
    cfg = CampaignConfig(count=CountMode.FAULT_RATE, rates=(1e-6, 1e-2), trials=12, seed=0)
    res = run_campaign(model_path, data, cfg, progress=False)
    lo, hi = res.summary["per_rate"]
    assert lo["rate"] == 1e-6 and hi["rate"] == 1e-2
    assert lo["accuracy"]["mean"] == pytest.approx(359 / 360)
    assert hi["accuracy"]["mean"] < 0.8
    assert hi["critical_sdc"]["rate"] + hi["due"]["rate"] > 0.2
    n = 12 * 360
    k = hi["critical_sdc"]["k"]
    p = proportion(k, n)
    assert (hi["critical_sdc"]["ci_low"], hi["critical_sdc"]["ci_high"]) == (p.low, p.high)
    assert res.summary["per_layer"] and {r["layer"] for r in res.summary["per_layer"]} <= {
        "conv1", "conv2", "fc1", "fc2"}


def test_plan_replays_exactly(tmp_path: Path, model_path: Path, data_path: Path) -> None:
    args = ["--target", "activations", "--fault-rate", "1e-3,1e-2", "--trials", "3",
            "--seed", "9", "--bits", "0-31"]
    plan = tmp_path / "plan.json"
    code, _, err = invoke("plan", model_path, "--data", data_path, *args, "-o", plan)
    assert code == 0, err
    obj = json.loads(plan.read_text())
    assert len(obj["trials"]) == 6 and obj["config"]["rates"] == [1e-3, 1e-2]
    code, direct, err = invoke("campaign", model_path, "--data", data_path, *args, "--json")
    assert code == 0, err
    code, replay, err = invoke("campaign", model_path, "--data", data_path, "--plan", plan,
                               "--json")
    assert code == 0, err
    a, b = json.loads(direct), json.loads(replay)
    assert [t["faults"] for t in a["trials"]] == [t["faults"] for t in b["trials"]]
    assert [t["accuracy"] for t in a["trials"]] == [t["accuracy"] for t in b["trials"]]
    assert a["per_rate"] == b["per_rate"]


CAMPAIGN = ["--fault-rate", "1e-4,1e-3", "--trials", "40", "--seed", "21", "--bits", "20-31",
            "--batch-size", "60"]


def _trial_rows(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        trials = conn.execute("SELECT trial, level, rate, accuracy, masked, tolerable_sdc, "
                              "critical_sdc, due, n_faults FROM trial ORDER BY trial").fetchall()
        faults = conn.execute("SELECT trial, ordinal, site, idx, model, bits FROM fault "
                              "ORDER BY trial, ordinal").fetchall()
        outcomes = conn.execute("SELECT trial, sample, outcome, correct FROM outcome "
                                "ORDER BY trial, sample").fetchall()
    return [trials, faults, outcomes]


def test_resume_after_sigkill_equals_uninterrupted(tmp_path: Path, model_path: Path,
                                                   data_path: Path) -> None:
    whole = tmp_path / "whole.sqlite"
    code, _, err = invoke("campaign", model_path, "--data", data_path, *CAMPAIGN, "--db", whole)
    assert code == 0, err
    cut = tmp_path / "cut.sqlite"
    # a real process, slowed down (50 ms per faulty run) so that it is killed mid-campaign
    slow = ("import sys, time\n"
            "from enpheeph_onnx import engine\n"
            "run = engine.FaultEngine.run\n"
            "def slow(self, data, faults=(), batch_size=None):\n"
            "    time.sleep(0.05 if faults else 0)\n"
            "    return run(self, data, faults, batch_size)\n"
            "engine.FaultEngine.run = slow\n"
            "from enpheeph_onnx.cli import main\n"
            "main(sys.argv[1:], prog_name='enpheeph-onnx')\n")
    cmd = [sys.executable, "-c", slow, "campaign", str(model_path), "--data",
           str(data_path), *CAMPAIGN, "--db", str(cut)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    stored = 0
    while time.monotonic() < deadline:
        time.sleep(0.2)
        if cut.exists():
            try:
                with sqlite3.connect(cut) as conn:
                    stored = conn.execute("SELECT count(*) FROM trial").fetchone()[0]
            except sqlite3.OperationalError:
                continue
            if stored >= 10:
                break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 10 <= stored < 80, stored
    code, _, err = invoke("campaign", model_path, "--data", data_path, *CAMPAIGN, "--db", cut)
    assert_user_error(code, "", err, "already exists", "--resume")
    code, _, err = invoke("campaign", model_path, "--data", data_path, *CAMPAIGN, "--db", cut,
                          "--resume")
    assert code == 0, err
    assert _trial_rows(cut) == _trial_rows(whole)


def test_resume_refuses_other_model_or_settings(tmp_path: Path, model_path: Path,
                                                data_path: Path) -> None:
    db = tmp_path / "r.sqlite"
    assert invoke("campaign", model_path, "--data", data_path, "--trials", "2", "--db", db)[0] == 0
    other = tmp_path / "other.onnx"
    assert invoke("inject", model_path, "-o", other, "--fault", "fc2.bias[0]:bitflip:0")[0] == 0
    before = db.read_bytes()
    assert_user_error(*invoke("campaign", other, "--data", data_path, "--trials", "2", "--db",
                              db, "--resume"), "another model")
    assert_user_error(*invoke("campaign", model_path, "--data", data_path, "--trials", "3",
                              "--db", db, "--resume"), "other settings", "trials")
    assert db.read_bytes() == before


# -- pipelines ------------------------------------------------------------------------------

def test_gate_fails_with_exit_1_and_passes_otherwise(model_path: Path, data_path: Path) -> None:
    base = ["campaign", model_path, "--data", data_path, "--bits", "30", "--trials", "10"]
    code, _, err = invoke(*base, "--fail-above", "critical_sdc_rate=0.01")
    assert code == 1
    assert err.strip().splitlines()[-1].startswith("FAILED campaign:")
    assert "critical_sdc_rate" in err
    code, out, err = invoke(*base, "--fail-above", "critical_sdc_rate=0.99",
                            "--fail-above", "accuracy_drop=0.99", "--json")
    assert code == 0, err
    assert err.strip().splitlines()[-1].startswith("PASSED campaign:")
    gates = json.loads(out)["gates"]
    assert [g["metric"] for g in gates] == ["critical_sdc_rate", "accuracy_drop"]
    assert all(g["passed"] for g in gates)
    assert_user_error(*invoke(*base, "--fail-above", "speed=3"), "METRIC=THRESHOLD")


def test_toml_config_with_flag_override(tmp_path: Path, model_path: Path,
                                        data_path: Path) -> None:
    cfg = tmp_path / "campaign.toml"
    cfg.write_text('fault-rate = [1e-3, 1e-2]\ntrials = 3\nseed = 5\nbits = "28-31"\n'
                   'kinds = "weight"\n')
    code, out, err = invoke("campaign", model_path, "--data", data_path, "--config", cfg,
                            "--trials", "2", "--json")
    assert code == 0, err
    s = json.loads(out)
    assert s["config"]["rates"] == [1e-3, 1e-2] and s["config"]["trials"] == 2
    assert s["config"]["seed"] == 5 and s["config"]["bits"] == "28-31"
    assert len(s["trials"]) == 4
    cfg.write_text("trials = 3\nspeed = 11\n")
    assert_user_error(*invoke("campaign", model_path, "--data", data_path, "--config", cfg),
                      "unknown key 'speed'")


def test_sample_size_command() -> None:
    code, out, _ = invoke("sample-size", "--population", "1e9", "--margin", "0.01",
                          "--confidence", "0.99")
    assert code == 0 and int(out) == 16587 == sample_size(1e9, 0.01, 0.99)
    code, out, _ = invoke("sample-size", "--population", "1000", "--margin", "0.05", "--json")
    assert json.loads(out)["trials"] == 278
    assert_user_error(*invoke("sample-size", "--population", "1e6", "--margin", "2"), "margin")


def test_margin_sets_the_trial_count(model_path: Path, data_path: Path) -> None:
    code, out, err = invoke("campaign", model_path, "--data", data_path, "--bits", "30",
                            "--sites", "fc2.bias", "--margin", "0.2", "--confidence", "0.9",
                            "--json")
    assert code == 0, err
    # N = 10 elements x 1 bit; n = 10 / (1 + 0.04 * 9 / (1.6449^2 * 0.25)) = 6.53 -> 7
    assert len(json.loads(out)["trials"]) == sample_size(10, 0.2, 0.9) == 7


@pytest.mark.parametrize(("args", "words"), [
    (["--fault-rate", "-1e-3"], ["out of range"]),
    (["--fault-rate", "2"], ["out of range"]),
    (["--bit-error-rate", "1e-1:1e-7:2"], ["yields no rate"]),
    (["--sites", "nothing*"], ["site selection is empty"]),
    (["--kinds", "weight,activation", "--per-sample"], ["per-sample"]),
    (["--fault-rate", "1e-3", "--faults-per-trial", "2"], ["not both"]),
    (["--fault-model", "value"], ["needs --value"]),
    (["--resume"], ["--resume needs --db"]),
])
def test_campaign_bad_sampling_input(tmp_path: Path, model_path: Path, data_path: Path,
                                     args: list[str], words: list[str]) -> None:
    assert_user_error(*invoke("campaign", model_path, "--data", data_path, *args), *words)
    assert list(tmp_path.iterdir()) == []


def test_export_csv_and_parquet(tmp_path: Path, model_path: Path, data_path: Path) -> None:
    db = tmp_path / "r.sqlite"
    assert invoke("campaign", model_path, "--data", data_path, "--fault-rate", "1e-3",
                  "--trials", "4", "--db", db)[0] == 0
    out = tmp_path / "trials.csv"
    code, _, err = invoke("export", db, "-o", out)
    assert code == 0, err
    with open(out) as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4 and float(rows[0]["rate"]) == 1e-3
    with sqlite3.connect(db) as conn:
        n_faults = conn.execute("SELECT count(*) FROM fault").fetchone()[0]
    assert sum(int(r["n_faults"]) for r in rows) == n_faults
    assert sum(len(r["faults"].split("; ")) for r in rows if r["faults"]) == n_faults
    pq = pytest.importorskip("pyarrow.parquet")
    pout = tmp_path / "outcomes.parquet"
    code, _, err = invoke("export", db, "--format", "parquet", "--table", "outcomes", "-o", pout)
    assert code == 0, err
    table = pq.read_table(pout)
    assert table.num_rows == 4 * 360
    assert set(table.column("outcome_name").to_pylist()) <= {
        "masked", "tolerable_sdc", "critical_sdc", "due"}
    assert_user_error(*invoke("export", tmp_path / "none.sqlite", "-o", tmp_path / "x.csv"),
                      "not found")
    assert not (tmp_path / "x.csv").exists()


def test_plan_campaign_api_is_deterministic(model_path: Path) -> None:
    cfg = CampaignConfig(count=CountMode.FAULT_RATE, rates=(1e-3,), trials=3, seed=1)
    a = plan_campaign(model_path, cfg, 360)
    b = plan_campaign(model_path, cfg, 360)
    assert a == b and a.trials[0].faults


def test_cli_runner_has_no_global_state() -> None:
    # the same invocation twice gives byte-identical JSON apart from timings
    r = CliRunner()
    assert r.invoke(main, ["--version"]).output.startswith("enpheeph-onnx")


def test_summary_attributes_layers_and_bits_exclusively() -> None:
    from enpheeph_onnx.faults import parse_fault
    from enpheeph_onnx.store import TrialRecord
    from enpheeph_onnx.summary import summarize

    kinds = {"a.weight": ("weight", "a"), "b.weight": ("weight", "b")}
    codes = {"m": np.zeros(4, np.uint8), "c": np.full(4, 2, np.uint8)}
    recs = [
        TrialRecord(0, 0, None, (parse_fault("a.weight[0]:bitflip:30"),), codes["c"], None, 0),
        TrialRecord(1, 0, None, (parse_fault("a.weight[1]:bitflip:1"),), codes["m"], None, 0),
        # faults in two layers: counted in the per-rate row only
        TrialRecord(2, 0, None, (parse_fault("a.weight[0]:bitflip:30"),
                                 parse_fault("b.weight[0]:bitflip:30")), codes["c"], None, 0),
        TrialRecord(3, 0, None, (), codes["m"], None, 0),
    ]
    s = summarize(recs, golden_accuracy=None, samples=4, rate_kind="fixed", kinds=kinds)
    layer = {r["layer"]: r for r in s["per_layer"]}
    assert layer["a"]["critical_sdc"]["k"] == 4 and layer["a"]["critical_sdc"]["n"] == 8
    assert layer["a"]["faults"] == 3 and layer["b"]["faults"] == 1
    assert layer["b"]["critical_sdc"]["n"] == 0
    bit = {r["bit"]: r for r in s["per_bit"]}
    assert (bit[30]["critical_sdc"]["k"], bit[30]["critical_sdc"]["n"]) == (8, 8)
    assert (bit[1]["critical_sdc"]["k"], bit[1]["masked"]["k"]) == (0, 4)
    grid = s["bit_layer"]
    assert grid["layers"] == ["a", "b"] and grid["bits"] == [1, 30]
    assert grid["critical_sdc_rate"] == [[0.0, 1.0], [None, None]]
    rate = s["per_rate"][0]
    assert (rate["critical_sdc"]["k"], rate["critical_sdc"]["n"]) == (8, 16)
    assert rate["mean_faults"] == 1.0


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
