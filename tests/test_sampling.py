"""enpheeph_onnx.campaign.sampling: site selection (kinds, globs, op types, time steps) and
the Sampler's draws: uniform over elements and deterministic, fault and bit-error rates,
value distributions and their saturation on integer sites, pruned weights, strata and
permanent faults over time steps."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from enpheeph_onnx import discover_sites, load_model
from enpheeph_onnx.campaign import (
    CampaignConfig,
    CountMode,
    Sampler,
    SiteSelection,
    ValueDistribution,
    allowed_elements,
    fault_population,
    sample_trial,
    select_sites,
)
from enpheeph_onnx.errors import EnpheephError
from enpheeph_onnx.faults import FaultModel
from enpheeph_onnx.faultset import FaultSet
from enpheeph_onnx.sites import SiteKind

from .conftest import INT8_MODEL, MODEL, PRUNED_MODEL, SNN_MODEL
from .helpers import (
    assert_user_error,
    initializers,
    invoke,
    selected_sites,
    stored_trials,
)

WEIGHTS = 13706  # parameters of the digits CNN


# -- uniform draws -------------------------------------------------------------------------

def test_sampling_is_uniform_over_elements_and_deterministic(model_path: Path) -> None:
    cfg = CampaignConfig(bits=(30, 31), faults_per_trial=5, trials=1000, seed=7)
    sites = select_sites(discover_sites(load_model(model_path)), cfg)
    ranks = {s.name: len(s.shape) for s in sites}
    assert sample_trial(sites, cfg, 3).equals(sample_trial(sites, cfg, 3))
    assert not sample_trial(sites, cfg, 3).equals(sample_trial(sites, cfg, 4))
    assert len(sample_trial(sites, cfg, 3)) == 5
    counts: dict[str, int] = {}
    bits: list[int] = []
    for t in range(400):
        fs = sample_trial(sites, cfg, t)
        assert FaultSet.from_faults(fs.to_faults(ranks), fs.sites).equals(fs)
        for f in fs.to_faults(ranks):
            counts[f.site] = counts.get(f.site, 0) + 1
            bits += f.bits
            assert f.model is FaultModel.BIT_FLIP
    total = sum(counts.values())
    # fc1.weight holds 8192 of 13706 parameters: ~59.8 % of the faults
    assert counts["fc1.weight"] / total == pytest.approx(8192 / 13706, abs=0.03)
    assert set(bits) == {30, 31}
    assert np.mean(bits) == pytest.approx(30.5, abs=0.05)


def test_activation_sampling_uses_star_for_batch(model_path: Path) -> None:
    cfg = CampaignConfig(selection=SiteSelection((SiteKind.ACTIVATION,)), bits=(3,),
                         faults_per_trial=50, seed=1)
    sites = select_sites(discover_sites(load_model(model_path)), cfg)
    fs = sample_trial(sites, cfg, 0)
    assert len(fs) == 50
    assert (fs.index[:, 0] == -1).all()
    for f in fs.to_faults({s.name: len(s.shape) for s in sites}):
        assert f.index[0] is None
        site = next(s for s in sites if s.name == f.site)
        assert len(f.index) == len(site.shape)
        assert all(0 <= i < n for i, n in zip(f.index[1:], site.shape[1:], strict=True))


# -- fault and bit-error rates -------------------------------------------------------------

def test_fault_rate_counts_are_poisson_with_the_right_mean(model_path: Path) -> None:
    cfg = CampaignConfig(count=CountMode.FAULT_RATE, rates=(1e-3,), trials=400, seed=2)
    sampler = Sampler(selected_sites(model_path, cfg), cfg, 1)
    assert sampler.population == WEIGHTS
    counts = np.array([len(sampler.sample(t)) for t in range(400)])
    # Poisson(13.706): mean 13.7, variance 13.7 (a fixed count would have variance 0)
    assert counts.mean() == pytest.approx(13.706, abs=0.6)
    assert counts.var() == pytest.approx(13.706, rel=0.3)
    exact = CampaignConfig(count=CountMode.FAULT_RATE, rates=(1e-3,), exact_count=True,
                           trials=5)
    s2 = Sampler(selected_sites(model_path, exact), exact, 1)
    assert [len(s2.sample(t)) for t in range(5)] == [14] * 5


def test_bit_error_rate_population_is_elements_times_bits(model_path: Path) -> None:
    cfg = CampaignConfig(count=CountMode.BIT_ERROR_RATE, rates=(1e-4,), bits=tuple(range(8)),
                         trials=1, exact_count=True)
    sampler = Sampler(selected_sites(model_path, cfg), cfg, 1)
    assert sampler.population == WEIGHTS * 8
    faults = sampler.sample(0)
    assert len(faults) == round(1e-4 * WEIGHTS * 8) == 11
    bits = faults.single_bits()
    assert ((bits >= 0) & (bits < 8)).all()  # one bit each, among the candidates
    assert all(len(f.bits) == 1 and f.bits[0] < 8 for f in faults.to_faults(sampler.ranks))
    assert fault_population(selected_sites(model_path, cfg), cfg) == WEIGHTS * 8


# -- site selection ------------------------------------------------------------------------

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


# -- value faults --------------------------------------------------------------------------

def test_value_model_draws_from_distribution(model_path: Path) -> None:
    cfg = CampaignConfig(fault_model=FaultModel.VALUE, value=ValueDistribution.parse(
        "uniform:-2,2"), faults_per_trial=200, trials=1)
    sampler = Sampler(selected_sites(model_path, cfg), cfg, 1)
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


def test_value_faults_on_int8_sites_saturate(tmp_path: Path, data_path: Path) -> None:
    dtypes = {s.name: s.dtype for s in discover_sites(load_model(INT8_MODEL))}
    # integers saturate to their range (NaN -> 0); float sites keep the value
    want = {"nan": {"int8": 0.0, "int32": 0.0, "float32": math.nan},
            "inf": {"int8": 127.0, "int32": 2147483647.0, "float32": math.inf},
            "-1e9": {"int8": -128.0, "int32": -1e9, "float32": -1e9}}
    for value, expect in want.items():
        db = tmp_path / f"{value}.sqlite"
        code, _, err = invoke("campaign", INT8_MODEL, "--data", data_path, "--fault-model", "value",
                              "--value", value, "--trials", "2", "--faults-per-trial", "40",
                              "--sites", "*bias_quantized", "--sites", "*_scale", "--sites",
                              "conv1.weight_quantized", "--db", db)
        assert code == 0, err
        got: dict[str, set[str]] = {}
        for fs in stored_trials(db)[0].values():
            for name, v in zip(fs.site_names(), fs.value.tolist(), strict=True):
                got.setdefault(dtypes[name], set()).add(repr(v))
        assert got == {dt: {repr(v)} for dt, v in expect.items()}, value
    assert_user_error(*invoke("campaign", INT8_MODEL, "--data", data_path, "--fault-model", "value",
                              "--value", "uniform:0,inf"), "finite")


# -- pruned weights ------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["skip", "only", "include"])
def test_pruned_weights_sampling(mode: str) -> None:
    m = load_model(PRUNED_MODEL)
    cfg = CampaignConfig(faults_per_trial=200, trials=5, pruned_weights=mode, seed=3)
    sites = select_sites(discover_sites(m), cfg)
    allowed = allowed_elements(m, sites, mode)
    sampler = Sampler(sites, cfg, 1, allowed)
    w = initializers(PRUNED_MODEL)
    faults = [f for t in range(5) for f in sampler.sample(t).to_faults(sampler.ranks)]
    assert len(faults) == 5 * 200
    hits = [w[f.site][f.index] for f in faults]
    zero = np.array([h == 0 for h in hits])
    if mode == "skip":
        assert not zero.any()
    elif mode == "only":
        assert zero.all()
        assert sampler.sample(0).hit_sites() <= {"conv1.weight", "conv2.weight",
                                                  "fc1.weight", "fc2.weight"}
    else:
        assert zero.any() and not zero.all()
    total = sum(v.size for v in w.values())
    pruned = sum(int(np.count_nonzero(v == 0)) for v in w.values())
    expect = {"skip": total - pruned, "only": pruned, "include": total}[mode]
    assert sampler.population == expect


def test_pruned_only_on_dense_model_is_an_error(model_path: Path) -> None:
    from enpheeph_onnx.errors import EnpheephError

    m = load_model(model_path)
    cfg = CampaignConfig(pruned_weights="only")
    sites = select_sites(discover_sites(m), cfg)
    with pytest.raises(EnpheephError, match="no element to hit"):
        Sampler(sites, cfg, 1, allowed_elements(m, sites, "only"))


# -- strata --------------------------------------------------------------------------------

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


# -- time steps on the spiking model -------------------------------------------------------

def test_time_steps_selection_and_permanent_faults() -> None:
    m = load_model(SNN_MODEL)
    sites = discover_sites(m)
    sel = SiteSelection((SiteKind.ACTIVATION,))
    transient = CampaignConfig(selection=sel, time_steps="3-4", faults_per_trial=50, trials=1)
    chosen = select_sites(sites, transient)
    assert chosen and {s.time_step for s in chosen} == {3, 4}
    assert {s.role for s in chosen} == {"membrane", "spike", "synaptic_current"}
    permanent = CampaignConfig(selection=sel, time_steps="all", faults_per_trial=3, trials=1,
                               seed=2)
    chosen = select_sites(sites, permanent)
    sampler = Sampler(chosen, permanent, 1)
    faults = sampler.sample(0).to_faults(sampler.ranks)
    assert len(faults) == 3 * 16
    by_state: dict[tuple, list[int]] = {}
    step = {s.name: s for s in chosen}
    for f in faults:
        s = step[f.site]
        by_state.setdefault((s.layer, s.role, f.index, f.bits), []).append(s.time_step)
    assert len(by_state) == 3 and all(sorted(v) == list(range(16)) for v in by_state.values())
    with pytest.raises(EnpheephError, match="time step 20 does not exist"):
        select_sites(sites, CampaignConfig(selection=sel, time_steps="20"))


def test_layers_are_in_network_order_on_the_int8_model() -> None:
    from enpheeph_onnx.campaign import layer_order

    from .conftest import INT8_MODEL

    proto = load_model(INT8_MODEL)
    order = layer_order(proto, discover_sites(proto))
    names = [k for k, _ in sorted(order.items(), key=lambda kv: kv[1])]
    layers = [n for n in names if n in ("conv1", "relu1", "conv2", "relu2", "fc1", "relu3",
                                        "fc2")]
    assert layers == ["conv1", "relu1", "conv2", "relu2", "fc1", "relu3", "fc2"]
