"""IO binding (issue 10): the path CUDA sessions take (inputs as device OrtValues, read-only
data copied once, outputs copied back once per run) gives the bits of a plain
``session.run``; checked on the CPU provider, which takes the same code path when forced."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from enpheeph_onnx import runtime
from enpheeph_onnx.campaign import CampaignConfig, Dataset, run_campaign
from enpheeph_onnx.campaign.config import SiteSelection
from enpheeph_onnx.sites import SiteKind
from enpheeph_onnx.store import ResultStore

from .conftest import DATA, MODEL


def _outcomes(db: Path) -> dict[int, bytes]:
    with ResultStore.open(db) as s:
        return {t: c.tobytes() for t, c, _ in s.outcome_sets()}


@pytest.mark.parametrize("kind", [SiteKind.WEIGHT, SiteKind.ACTIVATION])
def test_bound_runs_equal_plain_runs(kind: SiteKind, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    d = np.load(DATA)
    data = Dataset({"input": d["input"]}, d["labels"])
    cfg = CampaignConfig(selection=SiteSelection(kinds=(kind,)), faults_per_trial=3,
                         bits=(30, 22, 3), trials=25, seed=2, batch_size=100)
    run_campaign(MODEL, data, cfg, tmp_path / "plain.sqlite", progress=False)
    calls = []
    bound = runtime.run_bound

    def counting(*a, **k):  # type: ignore[no-untyped-def]
        calls.append(1)
        return bound(*a, **k)

    monkeypatch.setattr(runtime, "BIND_ON", {"CPUExecutionProvider"})
    monkeypatch.setattr(runtime, "run_bound", counting)
    run_campaign(MODEL, data, cfg, tmp_path / "bound.sqlite", progress=False)
    assert calls, "the bound path did not run"
    plain, got = _outcomes(tmp_path / "plain.sqlite"), _outcomes(tmp_path / "bound.sqlite")
    assert len(plain) == 25 and got == plain
    assert data.inputs["input"].flags.writeable  # the caller's array is left writable


def test_read_only_inputs_are_copied_to_the_device_once(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    made = []
    real = runtime.ort.OrtValue.ortvalue_from_numpy

    def spy(a, device, i):  # type: ignore[no-untyped-def]
        made.append(device)
        return real(a, "cpu", 0)

    monkeypatch.setattr(runtime.ort.OrtValue, "ortvalue_from_numpy", spy)
    monkeypatch.setattr(runtime, "_DEVICE_COPIES", type(runtime._DEVICE_COPIES)())
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    x.setflags(write=False)
    a = runtime._device_value(x, "cuda")
    assert runtime._device_value(x[:], "cuda") is a and made == ["cuda"]
    w = np.ones(4, np.float32)  # writable: copied every time (weights change in place)
    runtime._device_value(w, "cuda")
    runtime._device_value(w, "cuda")
    assert made == ["cuda", "cuda", "cuda"]
