"""enpheeph_onnx.campaign.plan: campaign plans (``plan_campaign``, CampaignPlan) are
deterministic, save and load as JSON and binary ``.npz`` alike, and replay exactly what a
direct campaign samples (the plan command and ``campaign --plan``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from enpheeph_onnx.campaign import CampaignConfig, CampaignPlan, CountMode, Sampler, plan_campaign
from enpheeph_onnx.model import load_model
from enpheeph_onnx.store import ResultStore

from .conftest import DATA, MODEL
from .helpers import invoke, selected_sites


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
    sampler = Sampler(selected_sites(model_path, cfg), cfg, 360)
    assert all(t.faults.equals(sampler.sample(t.trial)) for t in a.trials)


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


def test_json_plan_writes_each_fault_with_its_own_rank(tmp_path: Path) -> None:
    cfg = CampaignConfig(count=CountMode.FAULT_RATE, rates=(1e-2,), trials=2, seed=0)
    plan = plan_campaign(MODEL, cfg, 360)
    plan.save(tmp_path / "p.json")
    d = json.loads((tmp_path / "p.json").read_text())
    ranks = {"conv1.weight": 4, "conv2.weight": 4, "fc1.weight": 2, "fc2.weight": 2,
             "conv1.bias": 1, "conv2.bias": 1, "fc1.bias": 1, "fc2.bias": 1}
    faults = [f for t in d["trials"] for f in t["faults"]]
    assert len(faults) > 100
    assert all(len(f["index"]) == ranks[f["site"]] for f in faults)
    # a trial's faults are a valid fault plan for inject
    from enpheeph_onnx import FaultPlan, inject

    inject(MODEL, FaultPlan.from_json({"faults": d["trials"][0]["faults"]}))


def test_a_plan_level_outside_its_configuration_is_refused(tmp_path: Path) -> None:
    from enpheeph_onnx.campaign import load_dataset, run_campaign
    from enpheeph_onnx.errors import EnpheephError

    cfg = CampaignConfig(count=CountMode.FAULT_RATE, rates=(1e-3, 1e-2), trials=1, seed=0)
    plan_campaign(MODEL, cfg, 360).save(tmp_path / "p.json")
    d = json.loads((tmp_path / "p.json").read_text())
    d["trials"][0]["level"] = 7
    (tmp_path / "bad.json").write_text(json.dumps(d))
    bad = CampaignPlan.load(tmp_path / "bad.json")
    with pytest.raises(EnpheephError, match="level 7"):
        run_campaign(MODEL, load_dataset(DATA, ["input"]), cfg, plan=bad)
    d["version"] = 99
    (tmp_path / "v.json").write_text(json.dumps(d))
    with pytest.raises(EnpheephError, match="version 99"):
        CampaignPlan.load(tmp_path / "v.json")
