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
from scipy.stats import t as student_t

from enpheeph_onnx import discover_sites, load_model
from enpheeph_onnx.campaign import (
    CampaignConfig,
    CampaignPlan,
    CountMode,
    Sampler,
    SiteSelection,
    ValueDistribution,
    classify,
    fault_population,
    load_dataset,
    parse_rates,
    plan_campaign,
    run_campaign,
    select_sites,
)
from enpheeph_onnx.cli import main
from enpheeph_onnx.errors import EnpheephError
from enpheeph_onnx.export_results import _TYPES
from enpheeph_onnx.faults import FaultModel
from enpheeph_onnx.sites import SiteKind
from enpheeph_onnx.stats import proportion, sample_size
from enpheeph_onnx.store import ResultStore

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
    assert len(faults) == round(1e-4 * WEIGHTS * 8) == 11
    bits = faults.single_bits()
    assert ((bits >= 0) & (bits < 8)).all()  # one bit each, among the candidates
    assert all(len(f.bits) == 1 and f.bits[0] < 8 for f in faults.to_faults(sampler.ranks))
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
    sampler = Sampler(_sites(model_path, cfg), cfg, 1)
    fs = sampler.sample(0)
    assert len(fs) == 200
    assert (fs.bits == 0).all()
    faults = fs.to_faults(sampler.ranks)
    vals = np.array([f.value for f in faults])
    assert vals.tolist() == fs.value.tolist()
    assert all(f.model is FaultModel.VALUE and f.bits == () for f in faults)
    assert vals.min() >= -2 and vals.max() <= 2 and vals.std() > 0.8
    assert ValueDistribution.parse("0") == ValueDistribution("constant", 0.0)
    with pytest.raises(EnpheephError):
        ValueDistribution.parse("uniform:3,1")


def test_per_sample_faults_hit_one_input_each(tmp_path: Path, model_path: Path,
                                             data_path: Path) -> None:
    data = load_dataset(data_path, ["input"])
    cfg = CampaignConfig(selection=SiteSelection((SiteKind.ACTIVATION,)), bits=(30,),
                         faults_per_trial=1, trials=3, per_sample=True, seed=4)
    db = tmp_path / "r.sqlite"
    res = run_campaign(model_path, data, cfg, db, progress=False)
    assert res.trials.n_faults.tolist() == [360] * 3
    with ResultStore.open(db) as store:
        stored = [fs for _, fs in store.fault_sets()]
        outcomes = [codes for _, codes, _ in store.outcome_sets()]
    assert len(stored) == 3
    for fs in stored:
        assert sorted(fs.index[:, 0].tolist()) == list(range(360))
    # A per-sample fault reaches only its own input: with one bit-30 fault per input, the
    # inputs whose fault lands after the last ReLU/pool feeding the logits differ, and no
    # input is hit by another's fault -> the outcomes equal those of each fault alone.
    from enpheeph_onnx.engine import FaultEngine

    m = load_model(model_path)
    engine = FaultEngine(m, _sites(model_path, cfg))
    golden_out = engine.run(data.inputs)
    golden = golden_out["logits"]
    ranks = {s.name: len(s.shape) for s in _sites(model_path, cfg)}
    hits = 0
    for f in stored[0].to_faults(ranks)[:12]:
        alone_out = engine.run(data.inputs, [f])
        alone = alone_out["logits"]
        s = f.index[0]
        changed = np.flatnonzero((alone != golden).any(1))
        assert set(changed) <= {s}
        hits += len(changed)
        # input s's outcome in the trial is that of its own fault alone
        assert classify(golden_out, alone_out, "logits")[s] == outcomes[0][s]
    assert hits > 0
    with pytest.raises(EnpheephError, match="per-sample"):
        CampaignConfig(per_sample=True)


# -- runs: sweeps, plans, resume ------------------------------------------------------------

def test_sweep_accuracy_falls_with_fault_rate(model_path: Path, data_path: Path) -> None:
    data = load_dataset(data_path, ["input"])
    cfg = CampaignConfig(count=CountMode.FAULT_RATE, rates=(1e-6, 1e-2), trials=12, seed=0)
    res = run_campaign(model_path, data, cfg, progress=False)
    summary = res.to_json()
    lo, hi = summary["per_rate"]
    assert lo["rate"] == 1e-6 and hi["rate"] == 1e-2
    assert lo["trials"] == hi["trials"] == 12
    # 1e-6 x 13706 parameters: no trial draws a fault, every trial has the golden accuracy
    assert lo["faults"] == 0 and lo["accuracy"]["trials"] == 12
    assert lo["accuracy"]["mean"] == pytest.approx(359 / 360)
    assert lo["accuracy"]["ci_low"] == pytest.approx(359 / 360)
    assert lo["accuracy"]["ci_high"] == pytest.approx(359 / 360)
    assert hi["accuracy"]["mean"] < 0.8
    assert hi["critical_sdc"]["rate"] + hi["due"]["rate"] > 0.2
    # trial-level statistics, recomputed here from the trial table
    t = res.trials
    sel = t.level == 1
    assert hi["faults"] == int(t.n_faults[sel].sum()) > 0
    acc = t.accuracy[sel]
    assert hi["accuracy"]["mean"] == pytest.approx(acc.mean())
    half = student_t.ppf(0.975, 11) * acc.std(ddof=1) / np.sqrt(12)
    assert hi["accuracy"]["ci_low"] == pytest.approx(max(acc.mean() - half, 0.0))
    assert hi["accuracy"]["ci_high"] == pytest.approx(min(acc.mean() + half, 1.0))
    # critical SDC: the pooled rate over (trial, input) pairs, with a Wilson interval at
    # the effective sample size n / deff (Kish), the design effect from the between-trial
    # variance: the pairs of a trial share its faults
    k_i = t.counts[sel, 2].astype(float)
    n = 12 * 360
    k = int(k_i.sum())
    assert (hi["critical_sdc"]["k"], hi["critical_sdc"]["n"]) == (k, n)
    p = k / n
    var = 12 / 11 * ((k_i - p * 360) ** 2).sum() / n**2
    n_eff = min(max(n / (var / (p * (1 - p) / n)), 12), n)
    z = 1.959963984540054
    centre, spread = p + z * z / (2 * n_eff), z * np.sqrt(p * (1 - p) / n_eff
                                                         + z * z / (4 * n_eff**2))
    assert hi["critical_sdc"]["ci_low"] == pytest.approx((centre - spread) / (1 + z * z / n_eff))
    assert hi["critical_sdc"]["ci_high"] == pytest.approx((centre + spread) / (1 + z * z / n_eff))
    pairs = proportion(k, n)  # the interval over pairs would be far too narrow
    assert hi["critical_sdc"]["ci_low"] < pairs.low < pairs.high < hi["critical_sdc"]["ci_high"]
    crit_trials = int((t.counts[sel, 2] > 0).sum())
    ptc = proportion(crit_trials, 12)
    assert hi["p_trial_critical"] == {"k": crit_trials, "n": 12, "rate": crit_trials / 12,
                                      "ci_low": ptc.low, "ci_high": ptc.high}
    # exclusive attribution: ~140 faults per trial at 1e-2 always span several layers and
    # the 1e-6 trials have none, so no trial is attributed to a layer
    assert summary["attribution"] == "exclusive"
    assert t.layer.tolist() == [None] * 24
    assert summary["per_layer"] == []
    # stratified by layer, every trial measures its layer (even one that draws no fault)
    strat = CampaignConfig(count=CountMode.FAULT_RATE, rates=(1e-3,), trials=4, seed=0,
                           stratify=("layer",))
    sres = run_campaign(model_path, data, strat, progress=False)
    ssum = sres.to_json()
    assert ssum["attribution"] == "stratified"
    assert [r["layer"] for r in ssum["per_layer"]] == ["conv1", "conv2", "fc1", "fc2"]
    assert [r["trials"] for r in ssum["per_layer"]] == [4, 4, 4, 4]
    st = sres.trials
    assert st.layer.tolist() == st.stratum_layer.tolist()
    assert (st.n_faults == 0).any()  # conv1 and fc2 (160 and 650 parameters) draw none
    for r in ssum["per_layer"]:
        rows = st.stratum_layer == r["layer"]
        assert r["faults"] == int(st.n_faults[rows].sum())
        assert r["accuracy"]["mean"] == pytest.approx(st.accuracy[rows].mean())
        assert r["critical_sdc"]["k"] == int(st.counts[rows, 2].sum())


def test_plan_replays_exactly(tmp_path: Path, model_path: Path, data_path: Path) -> None:
    args = ["--target", "activations", "--fault-rate", "1e-3,1e-2", "--trials", "3",
            "--seed", "9", "--bits", "0-31"]
    plan = tmp_path / "plan.json"
    code, _, err = invoke("plan", model_path, "--data", data_path, *args, "-o", plan)
    assert code == 0, err
    obj = json.loads(plan.read_text())
    assert len(obj["trials"]) == 6 and obj["config"]["rates"] == [1e-3, 1e-2]
    binary = tmp_path / "plan.npz"
    code, _, err = invoke("plan", model_path, "--data", data_path, *args, "-o", binary)
    assert code == 0, err
    assert binary.read_bytes()[:2] == b"PK"
    p_json, p_bin = CampaignPlan.load(plan), CampaignPlan.load(binary)
    assert [len(t.faults) for t in p_json.trials] == [len(t["faults"]) for t in obj["trials"]]
    assert sum(len(t.faults) for t in p_json.trials) > 0
    db = {name: tmp_path / f"{name}.sqlite" for name in ("direct", "json", "npz")}
    code, direct, err = invoke("campaign", model_path, "--data", data_path, *args, "--json",
                               "--db", db["direct"])
    assert code == 0, err
    runs = [json.loads(direct)]
    for name, path in (("json", plan), ("npz", binary)):
        code, replay, err = invoke("campaign", model_path, "--data", data_path, "--plan", path,
                                   "--json", "--db", db[name])
        assert code == 0, err
        runs.append(json.loads(replay))
    for b in runs[1:]:
        a = runs[0]
        for key in ("n_faults", "first_faults", "accuracy", "masked", "critical_sdc", "due"):
            assert [t[key] for t in a["trials"]] == [t[key] for t in b["trials"]], key
        assert a["per_rate"] == b["per_rate"]
    # every fault of every trial: sampled, planned (both formats) and replayed alike
    faults = {}
    for name, path in db.items():
        with ResultStore.open(path) as store:
            faults[name] = list(store.fault_sets())
    for name in ("json", "npz"):
        assert [t for t, _ in faults[name]] == [t for t, _ in faults["direct"]] == list(range(6))
        for (_, x), (_, y) in zip(faults[name], faults["direct"], strict=True):
            assert x.equals(y)
    for spec_j, spec_b, (_, stored) in zip(p_json.trials, p_bin.trials, faults["direct"],
                                           strict=True):
        assert spec_j.faults.equals(stored) and spec_b.faults.equals(stored)


CAMPAIGN = ["--fault-rate", "1e-4,1e-3", "--trials", "40", "--seed", "21", "--bits", "20-31",
            "--batch-size", "60"]


def _trial_rows(db: Path) -> list[list]:
    """Everything a campaign stores but the timings: trial rows, faults, outcomes."""
    with ResultStore.open(db) as store:
        t = store.trial_table()
        trials = list(zip(t.trial.tolist(), t.level.tolist(), t.rate.tolist(),
                          t.accuracy.tolist(), t.counts.tolist(), t.n_faults.tolist(),
                          t.layer.tolist(), t.bit.tolist(), t.first_faults, strict=True))
        ranks = {s.name: s.rank for s in store.sites()}
        faults = [(trial, fs.to_faults(ranks)) for trial, fs in store.fault_sets()]
        outcomes = [(trial, codes.tolist(), None if ok is None else ok.tolist())
                    for trial, codes, ok in store.outcome_sets()]
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
    rows = _trial_rows(whole)
    assert len(rows[0]) == len(rows[1]) == len(rows[2]) == 80
    assert sum(len(f) for _, f in rows[1]) == sum(r[5] for r in rows[0]) > 0
    assert _trial_rows(cut) == rows


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
    assert list(rows[0]) == list(_TYPES["trials"])
    with ResultStore.open(db) as store:
        table = store.trial_table()
        ranks = {s.name: s.rank for s in store.sites()}
        stored = [(t, fs.to_faults(ranks)) for t, fs in store.fault_sets()]
    n_faults = sum(len(f) for _, f in stored)
    assert n_faults > 0
    assert [int(r["n_faults"]) for r in rows] == table.n_faults.tolist()
    assert sum(int(r["n_faults"]) for r in rows) == n_faults
    assert [float(r["accuracy"]) for r in rows] == table.accuracy.tolist()
    assert [[int(r[k]) for k in ("masked", "tolerable_sdc", "critical_sdc", "due")]
            for r in rows] == table.counts.tolist()
    fout = tmp_path / "faults.csv"
    code, _, err = invoke("export", db, "--table", "faults", "-o", fout)
    assert code == 0, err
    with open(fout) as fh:
        frows = list(csv.DictReader(fh))
    assert list(frows[0]) == list(_TYPES["faults"])
    expected = [(t, k, f.site, ["*" if i is None else i for i in f.index],
                 f.model.value, list(f.bits)) for t, faults in stored
                for k, f in enumerate(faults)]
    assert [(int(r["trial"]), int(r["ordinal"]), r["site"], json.loads(r["index"]),
             r["model"], json.loads(r["bits"])) for r in frows] == expected
    assert {r["kind"] for r in frows} == {"weight"} and all(r["value"] == "" for r in frows)
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
    assert (a.config, a.model_sha256, a.samples) == (b.config, b.model_sha256, b.samples)
    assert len(a.trials) == len(b.trials) == 3
    assert a.faults == b.faults > 0
    for x, y in zip(a.trials, b.trials, strict=True):
        assert (x.trial, x.level, x.rate, x.stratum) == (y.trial, y.level, y.rate, y.stratum)
        assert x.faults.equals(y.faults)
    assert all(len(t.faults) for t in a.trials)
    other = plan_campaign(model_path, CampaignConfig(count=CountMode.FAULT_RATE, rates=(1e-3,),
                                                     trials=3, seed=2), 360)
    assert not any(x.faults.equals(y.faults) for x, y in zip(a.trials, other.trials,
                                                             strict=True))
    # the plan's faults are the sampler's
    sampler = Sampler(_sites(model_path, cfg), cfg, 360)
    assert all(t.faults.equals(sampler.sample(t.trial)) for t in a.trials)


def test_cli_runner_has_no_global_state() -> None:
    # the same invocation twice gives byte-identical JSON apart from timings
    r = CliRunner()
    assert r.invoke(main, ["--version"]).output.startswith("enpheeph-onnx")


def test_summary_attributes_layers_and_bits_exclusively() -> None:
    from enpheeph_onnx.campaign.runner import _record
    from enpheeph_onnx.campaign.sampling import TrialSpec
    from enpheeph_onnx.faults import parse_fault
    from enpheeph_onnx.faultset import FaultSet
    from enpheeph_onnx.stats import wilson
    from enpheeph_onnx.store import TrialTable
    from enpheeph_onnx.summary import summarize

    layers = {"a.weight": "a", "b.weight": "b"}
    ranks = {"a.weight": 1, "b.weight": 1}

    def rec(trial: int, faults: list[str], codes: list[int], ok: list[int]) -> object:
        spec = TrialSpec(trial, 0, None, None, FaultSet.from_faults(map(parse_fault, faults)))
        return _record(spec, np.array(codes, np.uint8), np.array(ok, bool), 0.0, layers,
                       ranks)

    crit, masked = [2, 2, 2, 2], [0, 0, 0, 0]
    recs = [
        rec(0, ["a.weight[0]:bitflip:30"], crit, [1, 0, 0, 0]),
        rec(1, ["a.weight[1]:bitflip:1"], masked, [1, 1, 1, 1]),
        # faults in two layers, all on bit 30: in the bit-30 row, in no layer row
        rec(2, ["a.weight[0]:bitflip:30", "b.weight[0]:bitflip:30"], crit, [0, 1, 0, 0]),
        rec(3, [], masked, [1, 1, 1, 1]),  # no fault: no layer, no bit
        # one layer, two bits: in the layer-b row, in no bit row
        rec(4, ["b.weight[2]:bitflip:1", "b.weight[3]:bitflip:30"], [0, 1, 2, 3], [1, 1, 0, 0]),
    ]
    assert [(r.layer, r.bit) for r in recs] == [("a", 30), ("a", 1), (None, 30), (None, None),
                                                ("b", None)]
    assert recs[2].first_faults == ("a.weight[0]:bitflip:30", "b.weight[0]:bitflip:30")
    s = summarize(TrialTable.from_records(recs), golden_accuracy=1.0, samples=4,
                  rate_kind="fixed", layer_order={"b": 0, "a": 1}).to_json()
    assert s["attribution"] == "exclusive"
    assert [r["layer"] for r in s["per_layer"]] == ["b", "a"]  # network order
    layer = {r["layer"]: r for r in s["per_layer"]}
    a, b = layer["a"], layer["b"]
    assert (a["trials"], a["faults"], b["trials"], b["faults"]) == (2, 2, 1, 2)
    assert (a["critical_sdc"]["k"], a["critical_sdc"]["n"]) == (4, 8)
    assert (a["masked"]["k"], a["p_trial_critical"]["k"], a["p_trial_critical"]["n"]) == (4, 1, 2)
    assert a["accuracy"]["mean"] == pytest.approx(0.625)  # trials 0.25 and 1.0
    assert [b[k]["k"] for k in ("masked", "tolerable_sdc", "critical_sdc", "due", "sdc")] == [
        1, 1, 1, 1, 2]
    assert b["accuracy"] == {"mean": 0.5, "ci_low": 0.0, "ci_high": 1.0, "trials": 1}
    bit = {r["bit"]: r for r in s["per_bit"]}
    assert sorted(bit) == [1, 30]
    assert (bit[30]["trials"], bit[30]["faults"]) == (2, 3)
    assert (bit[30]["critical_sdc"]["k"], bit[30]["critical_sdc"]["n"]) == (8, 8)
    assert (bit[1]["trials"], bit[1]["critical_sdc"]["k"], bit[1]["masked"]["k"]) == (1, 0, 4)
    grid = s["bit_layer"]
    assert grid["layers"] == ["b", "a"] and grid["bits"] == [1, 30]
    assert grid["critical_sdc_rate"] == [[None, None], [0.0, 1.0]]
    assert grid["trials"] == [[0, 0], [1, 1]]
    rate = s["per_rate"][0]
    assert (rate["trials"], rate["faults"], rate["mean_faults"]) == (5, 6, 1.2)
    assert (rate["critical_sdc"]["k"], rate["critical_sdc"]["n"]) == (9, 20)
    assert (rate["p_trial_critical"]["k"], rate["p_trial_critical"]["n"]) == (3, 5)
    # per-trial critical counts 4, 0, 4, 0, 1: the design effect (4.24) would leave 4.7
    # effective pairs, clamped to the 5 trials
    assert (rate["critical_sdc"]["ci_low"], rate["critical_sdc"]["ci_high"]) == pytest.approx(
        wilson(9 / 20, 5))
    assert wilson(9 / 20, 5) == pytest.approx((0.14308, 0.80037), abs=1e-5)  # by hand
    accs = np.array([0.25, 1.0, 0.25, 1.0, 0.5])
    assert rate["accuracy"]["mean"] == pytest.approx(0.6)
    assert rate["accuracy"]["ci_low"] == pytest.approx(
        0.6 - student_t.ppf(0.975, 4) * accs.std(ddof=1) / np.sqrt(5))
    assert rate["accuracy"]["ci_high"] == 1.0  # clipped
    assert rate["accuracy_drop"] == pytest.approx(0.4)
    assert s["trials"][2]["n_faults"] == 2 and s["trials"][2]["first_faults"] == list(
        recs[2].first_faults)
    assert s["outcomes"] == {"masked": 9, "tolerable_sdc": 1, "critical_sdc": 9, "due": 1}


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
