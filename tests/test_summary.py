"""enpheeph_onnx.summary: the trial-level statistics of campaign summaries (intervals over
trials, clustered outcome rates and their design effect), exclusive and stratified
per-layer / per-bit attribution, gates on the upper bound, and strict JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import bootstrap

from enpheeph_onnx.campaign import (
    CampaignConfig,
    CountMode,
    Dataset,
    load_dataset,
    run_campaign,
)
from enpheeph_onnx.stats import clustered_proportion, proportion, wilson
from enpheeph_onnx.store import TrialTable
from enpheeph_onnx.summary import check_gates, summarize

from .conftest import DATA, MODEL
from .helpers import invoke, strict_json


def _table(acc: list[float], crit: list[int], n: int = 360) -> TrialTable:
    rows = []
    for i, (a, c) in enumerate(zip(acc, crit, strict=True)):
        rows.append((i, 0, 1e-3, None, None, a, n, n - c, 0, c, 0, 5, None, None, "[]", 0.0))
    return TrialTable.from_rows(rows)


def test_one_collapsed_trial_widens_the_accuracy_interval_like_a_bootstrap() -> None:
    acc = [0.9972] * 19 + [0.1]
    crit = [0] * 19 + [324]
    s = summarize(_table(acc, crit), golden_accuracy=0.9972, samples=360, rate_kind="fault_rate")
    a = s.per_rate[0].accuracy
    assert a is not None
    boot = bootstrap((np.array(acc),), np.mean, random_state=0).confidence_interval
    centre = (boot.low + boot.high) / 2
    assert a.low <= centre <= a.high
    assert (a.high - a.low) >= 0.7 * (boot.high - boot.low)
    assert s.per_rate[0].p_trial_critical.k == 1 and s.per_rate[0].p_trial_critical.n == 20


def test_gates_fail_on_too_little_evidence() -> None:
    """No critical SDC in 5 trials does not demonstrate a rate below 1 %; in 2000 it does."""
    few = summarize(_table([1.0] * 5, [0] * 5), golden_accuracy=1.0, samples=360,
                    rate_kind="fault_rate")
    many = summarize(_table([1.0] * 2000, [0] * 2000), golden_accuracy=1.0, samples=360,
                     rate_kind="fault_rate")
    g_few = check_gates(few, [("critical_sdc_rate", 0.01)])[0]
    g_many = check_gates(many, [("critical_sdc_rate", 0.01)])[0]
    assert g_few.value == 0.0 and g_few.bound > 0.3 and not g_few.passed
    assert g_many.value == 0.0 and g_many.bound < 0.01 and g_many.passed
    drop = check_gates(few, [("accuracy_drop", 0.0)])[0]
    assert drop.value == 0.0 and drop.bound > 0.3 and not drop.passed  # 5 equal trials


def test_summary_attributes_layers_and_bits_exclusively() -> None:
    from enpheeph_onnx.campaign.runner import _record
    from enpheeph_onnx.campaign.sampling import TrialSpec
    from enpheeph_onnx.faults import parse_fault
    from enpheeph_onnx.faultset import FaultSet
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
    assert b["accuracy"]["mean"] == 0.5 and b["accuracy"]["trials"] == 1
    assert (b["accuracy"]["ci_low"], b["accuracy"]["ci_high"]) == pytest.approx(wilson(0.5, 1))
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
    # per-trial critical counts 4, 0, 4, 0, 1: a Wilson interval with the 5 trials as sample
    assert (rate["critical_sdc"]["ci_low"], rate["critical_sdc"]["ci_high"]) == pytest.approx(
        wilson(9 / 20, 5))
    assert wilson(9 / 20, 5) == pytest.approx((0.14308, 0.80037), abs=1e-5)  # by hand
    accs = np.array([0.25, 1.0, 0.25, 1.0, 0.5])
    assert rate["accuracy"]["mean"] == pytest.approx(0.6)
    assert accs.mean() == pytest.approx(0.6)
    assert (rate["accuracy"]["ci_low"], rate["accuracy"]["ci_high"]) == pytest.approx(
        wilson(0.6, 5))
    assert wilson(0.6, 5) == pytest.approx((0.23072, 0.88238), abs=1e-5)  # by hand
    assert rate["accuracy_drop"] == pytest.approx(0.4)
    assert s["trials"][2]["n_faults"] == 2 and s["trials"][2]["first_faults"] == list(
        recs[2].first_faults)
    assert s["outcomes"] == {"masked": 9, "tolerable_sdc": 1, "critical_sdc": 9, "due": 1}


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
    # nothing varied, yet 12 trials cannot exclude a rare catastrophic trial
    assert (lo["accuracy"]["ci_low"], lo["accuracy"]["ci_high"]) == pytest.approx(
        wilson(359 / 360, 12))
    assert lo["accuracy"]["ci_low"] < 0.8
    assert hi["accuracy"]["mean"] < 0.8
    assert hi["critical_sdc"]["rate"] + hi["due"]["rate"] > 0.2
    # trial-level statistics, recomputed here from the trial table
    t = res.trials
    sel = t.level == 1
    assert hi["faults"] == int(t.n_faults[sel].sum()) > 0
    acc = t.accuracy[sel]
    assert hi["accuracy"]["mean"] == pytest.approx(acc.mean())
    assert (hi["accuracy"]["ci_low"], hi["accuracy"]["ci_high"]) == pytest.approx(
        wilson(float(acc.mean()), 12))
    # critical SDC: the pooled rate over (trial, input) pairs, with a Wilson interval over
    # the 12 trials (the pairs of a trial share its faults)
    k_i = t.counts[sel, 2].astype(float)
    n = 12 * 360
    k = int(k_i.sum())
    assert (hi["critical_sdc"]["k"], hi["critical_sdc"]["n"]) == (k, n)
    p = k / n
    z = 1.959963984540054
    centre, spread = p + z * z / 24, z * np.sqrt(p * (1 - p) / 12 + z * z / (4 * 144))
    assert hi["critical_sdc"]["ci_low"] == pytest.approx((centre - spread) / (1 + z * z / 12))
    assert hi["critical_sdc"]["ci_high"] == pytest.approx((centre + spread) / (1 + z * z / 12))
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


# -- stratified by layer -------------------------------------------------------------------

@pytest.fixture(scope="module")
def stratified() -> dict:
    data = load_dataset(DATA, ["input"])
    cfg = CampaignConfig(count=CountMode.FIXED, faults_per_trial=1, bits=(30,), trials=12,
                         seed=0, stratify=("layer",))
    return run_campaign(MODEL, data, cfg).to_json()


def test_layer_strata_get_equal_trials_in_network_order(stratified: dict) -> None:
    layers = [r["layer"] for r in stratified["per_layer"]]
    assert layers == ["conv1", "conv2", "fc1", "fc2"]
    assert [r["trials"] for r in stratified["per_layer"]] == [12] * 4
    assert stratified["attribution"] == "stratified"
    assert len(stratified["trials"]) == 48
    assert {t["stratum"] for t in stratified["trials"]} == set(layers)


def test_layer_vulnerabilities_differ_and_come_from_their_own_trials(stratified: dict) -> None:
    by_layer = {r["layer"]: r for r in stratified["per_layer"]}
    trials = stratified["trials"]
    rates = {}
    for name, r in by_layer.items():
        mine = [t for t in trials if t["stratum"] == name]
        k = sum(t["critical_sdc"] for t in mine)
        assert r["critical_sdc"]["k"] == k and r["critical_sdc"]["n"] == 12 * 360
        p = clustered_proportion(np.array([t["critical_sdc"] for t in mine]), np.full(12, 360))
        assert (r["critical_sdc"]["ci_low"], r["critical_sdc"]["ci_high"]) == pytest.approx(
            (p.low, p.high))
        rates[name] = r["critical_sdc"]["rate"]
    assert len(set(rates.values())) == 4  # the layers differ in vulnerability
    assert max(rates.values()) > 0.1


# -- strict JSON ---------------------------------------------------------------------------

def test_campaign_json_is_strict(model_path: Path, data_path: Path,
                                digits: dict[str, np.ndarray]) -> None:
    code, out, err = invoke("campaign", model_path, "--data", data_path, "--faults-per-trial",
                            "1", "--trials", "4", "--json")
    assert code == 0, err
    s = strict_json(out)
    # exclusive attribution: a single-fault trial counts for exactly one layer and one bit,
    # and only layers / bits with trials get a row (no empty row with a NaN rate)
    assert s["attribution"] == "exclusive"
    assert sum(r["trials"] for r in s["per_layer"]) == 4
    assert sum(r["trials"] for r in s["per_bit"]) == 4
    assert sum(map(sum, s["bit_layer"]["trials"])) == 4
    assert all(r["trials"] >= 1 and isinstance(r["critical_sdc"]["rate"], float)
               for r in [*s["per_layer"], *s["per_bit"]])
    # without labels the score is the fraction of acceptable inputs (neither critical SDC
    # nor DUE; 1 for the golden run), with its drop and gates as for accuracy
    res = run_campaign(model_path, Dataset({"input": digits["input"]}),
                       CampaignConfig(faults_per_trial=5, trials=2), progress=False,
                       gates=(("score_drop", 0.1),))
    s = strict_json(json.dumps(res.to_json(), allow_nan=False))
    assert s["score"] == "acceptable" and s["score_bounded"] is True
    assert s["golden_accuracy"] == 1.0
    want = [(r["masked"] + r["tolerable_sdc"]) / 360 for r in s["trials"]]
    assert [r["accuracy"] for r in s["trials"]] == want
    assert s["mean_accuracy"] == pytest.approx(np.mean(want))
    assert s["accuracy_drop"] == pytest.approx(1 - np.mean(want))
    assert s["per_rate"][0]["masked"]["n"] == 2 * 360
    [gate] = s["gates"]
    assert gate["metric"] == "score_drop" and gate["value"] == pytest.approx(1 - np.mean(want))
    assert gate["bound"] == pytest.approx(1 - s["per_rate"][0]["accuracy"]["ci_low"])
