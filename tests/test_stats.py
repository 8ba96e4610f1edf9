"""Trial-level statistics: intervals over trials, clustered outcome rates, gates on the upper
bound, and the stratified per-layer / per-bit vulnerability of the shipped CNN."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import bootstrap

from enpheeph_onnx.campaign import (
    CampaignConfig,
    CountMode,
    Sampler,
    load_dataset,
    run_campaign,
    select_sites,
)
from enpheeph_onnx.model import load_model
from enpheeph_onnx.sites import discover_sites
from enpheeph_onnx.stats import clustered_proportion, mean_interval, proportion, wilson
from enpheeph_onnx.store import TrialTable
from enpheeph_onnx.summary import check_gates, summarize

from .conftest import DATA, MODEL


def test_mean_interval_is_the_t_interval() -> None:
    v = np.array([0.9, 0.8, 1.0, 0.7])
    m = mean_interval(v)
    from scipy.stats import t

    half = t.ppf(0.975, 3) * v.std(ddof=1) / 2
    assert m.mean == pytest.approx(0.85) and m.trials == 4
    assert (m.low, m.high) == pytest.approx((0.85 - half, 0.85 + half))
    one = mean_interval(np.array([0.5]), bounds=(0.0, 1.0))
    assert (one.low, one.high) == (0.0, 1.0)  # one trial says nothing about the spread


def test_clustered_rate_is_as_wide_as_the_trials_say() -> None:
    # 30 trials of 360 inputs; one trial collapses (every input critical)
    k = np.array([0] * 29 + [360])
    n = np.full(30, 360)
    c = clustered_proportion(k, n)
    pooled = proportion(int(k.sum()), int(n.sum()))
    assert c.rate == pytest.approx(1 / 30)
    assert c.trials == 30 and c.n_eff == pytest.approx(30.0)
    # the pooled-pairs Wilson interval is ~10x narrower than the trial-level one
    assert (c.high - c.low) > 8 * (pooled.high - pooled.low)
    assert (c.low, c.high) == pytest.approx(wilson(1 / 30, 30.0))
    # independent pairs (binomial spread across trials) keep the full sample size
    rng = np.random.default_rng(0)
    kb = rng.binomial(360, 0.2, size=200)
    cb = clustered_proportion(kb, np.full(200, 360))
    assert 0.5 * 72000 < cb.n_eff <= 72000
    # nothing observed: the bound comes from the number of trials, not of pairs
    z = clustered_proportion(np.zeros(30), np.full(30, 360))
    assert z.rate == 0 and z.high == pytest.approx(wilson(0.0, 30.0)[1]) and z.high > 0.1


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
    assert drop.value == 0.0 and drop.passed  # no spread at all: bound = estimate


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


def test_bit_strata_only_as_wide_as_the_dtype() -> None:
    proto = load_model(MODEL.parent / "digits_cnn_int8.onnx")
    cfg = CampaignConfig(trials=2, stratify=("layer", "bit"))
    sites = select_sites(discover_sites(proto), cfg)
    sampler = Sampler(sites, cfg, 1)
    bits = {st.bit for st in sampler.strata}
    assert bits <= set(range(32)) and 7 in bits
    int8 = [s.name for s in sites if s.bits == 8]
    assert int8
    for t in range(sampler.total_trials):
        st = sampler.stratum_of(t)
        fs = sampler.sample(t)
        assert len(fs) == 1 and int(fs.single_bits()[0]) == st.bit
        site = fs.site_names()[0]
        if site in int8:
            assert st.bit < 8
