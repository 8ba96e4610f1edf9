"""enpheeph_onnx.faultset: columnar fault sets: exact round trips, the vectorized fold
against the numpy reference, compact encodings of sampled trials, ``.npz`` files, and the
refusal of a fault beyond the element width."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enpheeph_onnx import apply_faults, inject, parse_fault
from enpheeph_onnx.bits import BY_NAME
from enpheeph_onnx.campaign import CampaignConfig, Sampler, SiteSelection, select_sites
from enpheeph_onnx.engine import FaultEngine
from enpheeph_onnx.errors import EnpheephError
from enpheeph_onnx.faultset import FaultSet, fold
from enpheeph_onnx.model import load_model
from enpheeph_onnx.sites import SiteKind, discover_sites

from .conftest import MODEL
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


def test_a_fault_beyond_the_element_width_is_an_error() -> None:
    proto = load_model(MODEL)
    fs = FaultSet.from_faults([parse_fault("conv1.weight[0,0,1,1]:bitflip:40")])
    with pytest.raises(EnpheephError, match="beyond the 32-bit float32"):
        inject(proto, fs)
    engine = FaultEngine(proto, [s for s in discover_sites(proto) if s.name == "conv1.weight"])
    with pytest.raises(EnpheephError, match="beyond the 32-bit float32"):
        engine.run({"input": np.zeros((2, 1, 8, 8), np.float32)}, fs)
