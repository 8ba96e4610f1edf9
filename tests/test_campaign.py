"""Campaign engine: golden run, run-time fault feeding, sampling, outcomes, store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from enpheeph_onnx import discover_sites, inject, load_model, parse_fault
from enpheeph_onnx.campaign import (
    CampaignConfig,
    Sampler,
    SiteSelection,
    classify,
    correct,
    load_dataset,
    run_campaign,
    sample_trial,
    select_sites,
)
from enpheeph_onnx.engine import FaultEngine
from enpheeph_onnx.errors import EnpheephError
from enpheeph_onnx.faults import FaultModel
from enpheeph_onnx.faultset import FaultSet
from enpheeph_onnx.runtime import make_session
from enpheeph_onnx.sites import SiteKind
from enpheeph_onnx.store import ResultStore


@pytest.fixture(scope="module")
def engine(model_path: Path) -> FaultEngine:
    m = load_model(model_path)
    return FaultEngine(m, discover_sites(m))


def test_golden_run_equals_unmodified_model(engine: FaultEngine, model_path: Path,
                                            digits: dict[str, np.ndarray]) -> None:
    x = {"input": digits["input"]}
    ref = make_session(load_model(model_path)).run(None, x)[0]
    for bs in (360, 100, 7):
        assert engine.run(x, (), bs)["logits"].tobytes() == ref.tobytes()
    acc = np.mean(np.argmax(ref, 1) == digits["labels"])
    assert acc == pytest.approx(359 / 360)


@pytest.mark.parametrize("faults", [
    ["conv1.weight[0,0,1,1]:bitflip:30"],
    ["fc1.bias[3]:stuck-at-0:0-31", "fc1.bias[3]:stuck-at-1:30"],
    ["/relu1/Relu_output_0[*,3,2,2]:stuck-at-1:23-30", "/relu1/Relu_output_0[1,3,2,2]:bitflip:31"],
    ["input[202,0,1,1]:bitflip:30", "logits[*,3]:value=100"],
    ["/conv2/Conv_output_0[*,5,1,1]:bitflip:30", "/conv2/Conv_output_0[*,5,1,1]:bitflip:30"],
    ["/fc1/Gemm_output_0[*,7]:bitflip:22", "/fc1/Gemm_output_0[17,7]:stuck-at-0:22",
     "/fc1/Gemm_output_0[*,7]:value=nan"],
])
def test_engine_equals_inject_bit_for_bit(engine: FaultEngine, model_path: Path,
                                          digits: dict[str, np.ndarray],
                                          faults: list[str]) -> None:
    fs = [parse_fault(f) for f in faults]
    x = {"input": digits["input"]}
    fed = engine.run(x, fs, batch_size=100)["logits"]
    standalone = make_session(inject(model_path, fs).model).run(None, x)[0]
    assert fed.view(np.uint32).tolist() == standalone.view(np.uint32).tolist()
    golden = engine.run(x)["logits"]
    if faults[0].startswith("/conv2") :  # the same flip twice cancels out
        assert fed.tobytes() == golden.tobytes()
    else:
        assert fed.tobytes() != golden.tobytes()


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


def test_classify_outcomes() -> None:
    g = {"y": np.array([[1.0, 2.0], [3.0, 1.0], [0.0, 1.0], [5.0, 4.0]], np.float32)}
    f = {"y": np.array([[1.0, 2.0], [3.5, 1.0], [2.0, 1.0], [np.nan, 4.0]], np.float32)}
    assert classify(g, f, "y").tolist() == [0, 1, 2, 3]
    assert classify(g, g, "y").tolist() == [0, 0, 0, 0]


def test_run_campaign_stores_every_trial(tmp_path: Path, model_path: Path,
                                         data_path: Path) -> None:
    data = load_dataset(data_path, ["input"])
    cfg = CampaignConfig(selection=SiteSelection((SiteKind.ACTIVATION,)), bits=(30,),
                         faults_per_trial=2, trials=8, seed=5, batch_size=128)
    db = tmp_path / "r.sqlite"
    res = run_campaign(model_path, data, cfg, db, progress=False)
    assert res.golden_accuracy == pytest.approx(359 / 360)
    with ResultStore.open(db) as store:
        meta = store.meta()
        table = store.trial_table()
        fault_sets = list(store.fault_sets())
        outcome_sets = list(store.outcome_sets())
    assert meta["golden_accuracy"] == res.golden_accuracy
    assert meta["config"]["bits"] == "30" and meta["status"] == "complete"
    assert len(meta["model_sha256"]) == 64
    assert table.trial.tolist() == res.trials.trial.tolist() == list(range(8))
    assert table.counts.tolist() == res.trials.counts.tolist()
    assert table.accuracy.tolist() == res.trials.accuracy.tolist()
    assert (table.counts.sum(1) == 360).all()
    assert table.n_faults.tolist() == [2] * 8
    # the stored faults are the sampler's, the stored outcomes the trial table's counts
    sites = select_sites(discover_sites(load_model(model_path)), cfg)
    sampler = Sampler(sites, cfg, len(data))
    assert [t for t, _ in fault_sets] == list(range(8))
    for t, fs in fault_sets:
        assert fs.equals(sampler.sample(t))
    assert [t for t, _, _ in outcome_sets] == list(range(8))
    for i, (_, codes, ok) in enumerate(outcome_sets):
        assert len(codes) == 360 and ok is not None
        assert np.bincount(codes, minlength=4).tolist() == table.counts[i].tolist()
        assert float(np.mean(ok)) == table.accuracy[i]
    # every stored trial replays to the same outcomes and accuracy through inject + a fresh
    # session
    golden = make_session(load_model(model_path)).run(None, data.inputs)[0]
    for i, (_, fs) in enumerate(fault_sets):  # trials 4 and 6 have DUEs
        logits = make_session(inject(model_path, fs).model).run(None, data.inputs)[0]
        codes = classify({"logits": golden}, {"logits": logits}, "logits")
        assert codes.tolist() == outcome_sets[i][1].tolist()
        assert float(np.mean(correct(logits, data.labels, codes))) == table.accuracy[i]
    assert res.trials.first_faults[0] == json.dumps(
        [str(f) for f in fault_sets[0][1].to_faults(sampler.ranks)])


def test_bad_config() -> None:
    with pytest.raises(EnpheephError, match="trials"):
        CampaignConfig(trials=0)
    with pytest.raises(EnpheephError, match="needs --value"):
        CampaignConfig(fault_model=FaultModel.VALUE)


def test_session_variants_agree_with_full_instrumentation(model_path: Path,
                                                          digits: dict[str, np.ndarray]) -> None:
    m = load_model(model_path)
    acts = [s for s in discover_sites(m) if s.kind is SiteKind.ACTIVATION]
    x = {"input": digits["input"]}
    cached = FaultEngine(m, acts, max_variants=16)
    full_only = FaultEngine(m, acts, max_variants=0)
    plans = [[parse_fault("/relu1/Relu_output_0[*,3,2,2]:bitflip:30")],
             [parse_fault("/conv2/Conv_output_0[*,1,1,1]:bitflip:29"),
              parse_fault("/fc1/Gemm_output_0[*,5]:stuck-at-1:30")],
             [parse_fault("logits[*,2]:bitflip:31")]]
    golden = cached.run(x)["logits"]
    for faults in [*plans, *plans]:  # a set of hit sites gets its session when it recurs
        a = cached.run(x, faults, 100)["logits"]
        b = full_only.run(x, faults, 100)["logits"]
        assert a.tobytes() == b.tobytes()
        assert cached.reference(x, faults, 100)["logits"].tobytes() == golden.tobytes()
        assert full_only.reference(x, faults, 100)["logits"].tobytes() == golden.tobytes()
    # one session per distinct set of hit sites, plus the base (weights only)
    assert len(cached._variants) == 2 + len(plans)  # + the full one for first sightings
    assert set(full_only._variants) == {frozenset(), frozenset(s.name for s in acts)}
