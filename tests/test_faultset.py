"""Columnar fault sets: exact round trips, the vectorized fold against the numpy reference,
compact encodings, binary plans, and the engine/inject paths that take them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enpheeph_onnx import FaultModel, FaultPlan, apply_faults, inject, parse_fault
from enpheeph_onnx.bits import BY_NAME
from enpheeph_onnx.campaign import (
    CampaignConfig,
    CampaignPlan,
    CountMode,
    Sampler,
    SiteSelection,
    plan_campaign,
    select_sites,
)
from enpheeph_onnx.engine import FaultEngine
from enpheeph_onnx.errors import EnpheephError
from enpheeph_onnx.faultset import FaultSet, fold
from enpheeph_onnx.model import load_model
from enpheeph_onnx.runtime import make_session
from enpheeph_onnx.sites import SiteKind, discover_sites

from .conftest import DATA, MODEL
from .helpers import as_bits, faults_for, raw_bits

DTYPES = ["float32", "float16", "bfloat16", "float64", "int8", "uint8", "int16", "uint32"]
SHAPE = (3, 4)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), name=st.sampled_from(DTYPES))
def test_fold_equals_the_numpy_reference(data: st.DataObject, name: str) -> None:
    """Any faults (all models, '*' coordinates, repeated elements, composed in order) fold
    into per-element transforms that give the reference's bits exactly."""
    d = BY_NAME[name]
    bits = data.draw(raw_bits(d, SHAPE))
    values = bits.view(d.numpy)
    faults = data.draw(st.lists(faults_for("w", SHAPE, d, dense=True), min_size=0, max_size=8))
    fs = FaultSet.from_faults(faults, ["w"])
    assert [repr(f) for f in fs.to_faults({"w": 2})] == [repr(f) for f in faults]  # exact
    lin, a, o, x = fold(fs, np.arange(len(fs)), SHAPE, d)
    assert len(np.unique(lin)) == len(lin)
    u = bits.copy().reshape(-1)
    u[lin] = ((u[lin] & a) | o) ^ x
    want = as_bits(apply_faults(values, faults, d)).reshape(-1)
    assert (u == want).all()


def test_round_trip_encodings_and_npz(tmp_path: Path) -> None:
    faults = [parse_fault(t) for t in (
        "conv1.weight[0,0,1,1]:bitflip:30", "fc2.bias[3]:value=nan",
        "/relu1/Relu_output_0[*,3,2,2]:stuck-at-1:23-30", "fc2.bias[1]:stuck-at-0:0,31",
        "fc2.bias[1]:value=-inf")]
    fs = FaultSet.from_faults(faults)
    layout, blob = fs.encode()
    back = FaultSet.decode(layout, blob, fs.sites)
    assert back.equals(fs)
    fs.save_npz(tmp_path / "p.npz")
    loaded = FaultSet.load_npz(tmp_path / "p.npz")
    assert loaded.equals(fs)
    ranks = {"conv1.weight": 4, "fc2.bias": 1, "/relu1/Relu_output_0": 4}
    got = loaded.to_faults(ranks)
    assert [str(f) for f in got] == [str(f) for f in faults]
    assert np.isnan(got[1].value) and got[4].value == -np.inf
    (tmp_path / "bad.npz").write_bytes(b"PK not a zip")
    with pytest.raises(EnpheephError, match=r"not a valid \.npz"):
        FaultSet.load_npz(tmp_path / "bad.npz")


def test_sampled_trial_stores_in_at_most_8_bytes_per_fault() -> None:
    """100k sampled activation and weight faults encode in <= 8 bytes each."""
    proto = load_model(MODEL)
    for kind in (SiteKind.WEIGHT, SiteKind.ACTIVATION):
        cfg = CampaignConfig(selection=SiteSelection((kind,)), faults_per_trial=100_000,
                             bits=tuple(range(32)), trials=1)
        sites = select_sites(discover_sites(proto), cfg)
        fs = Sampler(sites, cfg, 360).sample(0)
        layout, blob = fs.encode()
        assert len(fs) == 100_000
        assert (len(layout) + len(blob)) / len(fs) <= 8.0, kind
        assert FaultSet.decode(layout, blob, fs.sites).equals(fs)


def test_engine_takes_fault_sets_and_fault_objects_alike(digits: dict[str, np.ndarray]) -> None:
    proto = load_model(MODEL)
    sites = [s for s in discover_sites(proto) if s.name in ("conv2.weight", "/relu1/Relu_output_0")]
    engine = FaultEngine(proto, sites)
    faults = [parse_fault("conv2.weight[3,1,0,2]:bitflip:30"),
              parse_fault("/relu1/Relu_output_0[*,3,2,2]:stuck-at-1:30"),
              parse_fault("conv2.weight[3,1,0,2]:bitflip:30,2")]
    x = {"input": digits["input"][:64]}
    a = engine.run(x, faults)["logits"]
    b = engine.run(x, FaultSet.from_faults(faults))["logits"]
    assert a.tobytes() == b.tobytes()
    standalone = make_session(inject(proto, faults).model).run(None, x)[0]
    assert standalone.tobytes() == a.tobytes()
    with pytest.raises(EnpheephError, match="not one of the sites"):
        engine.run(x, [parse_fault("fc1.weight[0,0]:bitflip:1")])


def test_inject_a_fault_set_equals_inject_of_the_same_faults() -> None:
    proto = load_model(MODEL)
    cfg = CampaignConfig(faults_per_trial=20_000, bits=tuple(range(31)), trials=4)
    sites = select_sites(discover_sites(proto), cfg)
    fs = Sampler(sites, cfg, 1).sample(3)
    ranks = {s.name: len(s.shape) for s in sites}
    a = inject(proto, fs)
    b = inject(proto, FaultPlan(fs.to_faults(ranks)))
    ta = {t.name: t.raw_data for t in a.model.graph.initializer}
    tb = {t.name: t.raw_data for t in b.model.graph.initializer}
    assert ta == tb and ta != {t.name: t.raw_data for t in proto.graph.initializer}
    meta = {p.key: p.value for p in a.model.metadata_props}
    assert json.loads(meta["enpheeph.faults"]) == {"count": 20_000}
    assert len(meta["enpheeph.faults_sha256"]) == 64
    assert sum(w.faults for w in a.weights) == 20_000


def test_inject_cli_takes_a_binary_plan(tmp_path: Path) -> None:
    fs = FaultSet.from_faults([parse_fault("conv1.weight[0,0,1,1]:bitflip:30")])
    fs.save_npz(tmp_path / "p.npz")
    out = tmp_path / "f.onnx"
    r = subprocess.run([sys.executable, "-m", "enpheeph_onnx", "inject", str(MODEL), "-o",
                        str(out), "--plan", str(tmp_path / "p.npz"),
                        "--fault", "fc2.bias[3]:value=0"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    ref = inject(MODEL, [parse_fault("conv1.weight[0,0,1,1]:bitflip:30"),
                         parse_fault("fc2.bias[3]:value=0")]).model
    got = onnx.load(out)
    assert ({t.name: t.raw_data for t in got.graph.initializer}
            == {t.name: t.raw_data for t in ref.graph.initializer})


def test_binary_and_json_campaign_plans_replay_the_same(tmp_path: Path) -> None:
    proto = load_model(MODEL)
    cfg = CampaignConfig(count=CountMode.FAULT_RATE, rates=(1e-3, 1e-2), trials=3, seed=5,
                         stratify=("layer",))
    plan = plan_campaign(proto, cfg, 360)
    plan.save(tmp_path / "p.npz")
    plan.save(tmp_path / "p.json")
    for path in ("p.npz", "p.json"):
        back = CampaignPlan.load(tmp_path / path)
        assert back.config == plan.config and back.samples == 360
        assert [t.trial for t in back.trials] == [t.trial for t in plan.trials]
        assert all(a.faults.equals(b.faults) and a.stratum == b.stratum
                   for a, b in zip(back.trials, plan.trials, strict=True))
    assert (tmp_path / "p.npz").stat().st_size < (tmp_path / "p.json").stat().st_size / 4


def test_a_fault_beyond_the_element_width_is_an_error() -> None:
    proto = load_model(MODEL)
    fs = FaultSet.from_faults([parse_fault("conv1.weight[0,0,1,1]:bitflip:40")])
    with pytest.raises(EnpheephError, match="beyond the 32-bit float32"):
        inject(proto, fs)
    assert FaultModel.BIT_FLIP  # the model enum stays the user-facing name
    with np.load(DATA) as z:
        assert len(z["labels"]) == 360
