"""The four shipped variants end to end, and time-step addressing on the spiking model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from enpheeph_onnx import discover_sites, inject, load_model, parse_fault
from enpheeph_onnx.campaign import CampaignConfig, Sampler, SiteSelection, select_sites
from enpheeph_onnx.errors import EnpheephError
from enpheeph_onnx.sites import SiteKind
from enpheeph_onnx.store import ResultStore

from .conftest import ROOT
from .test_cli import assert_user_error, invoke

MODELS = ROOT / "models"
SNN = MODELS / "digits_snn.onnx"
SNN_DATA = MODELS / "digits_snn_test.npz"
VARIANTS = [("digits_cnn.onnx", "digits_test.npz"), ("digits_cnn_pruned.onnx", "digits_test.npz"),
            ("digits_cnn_int8.onnx", "digits_test.npz"), ("digits_snn.onnx", "digits_snn_test.npz")]


@pytest.mark.parametrize(("model", "data"), VARIANTS)
def test_campaign_cli_runs_on_every_variant(tmp_path: Path, model: str, data: str) -> None:
    db = tmp_path / "r.sqlite"
    code, out, err = invoke("campaign", MODELS / model, "--data", MODELS / data,
                            "--fault-rate", "1e-4,1e-2", "--trials", "3", "--bits", "0-31",
                            "--db", db, "--json")
    assert code == 0, err
    s = json.loads(out)
    assert s["golden_accuracy"] >= (0.85 if "snn" in model else 0.96)
    assert len(s["trials"]) == 6 and [r["rate"] for r in s["per_rate"]] == [1e-4, 1e-2]
    assert s["per_rate"][1]["mean_faults"] > s["per_rate"][0]["mean_faults"]
    code, _, err = invoke("report", db, "-o", tmp_path / "report")
    assert code == 0, err


def test_comparison_report_over_variants(tmp_path: Path) -> None:
    dbs = []
    for model, data in VARIANTS[:2]:
        db = tmp_path / f"{model}.sqlite"
        assert invoke("campaign", MODELS / model, "--data", MODELS / data, "--fault-rate",
                      "1e-3", "--trials", "2", "--db", db)[0] == 0
        dbs.append(db)
    out = tmp_path / "cmp"
    code, stdout, err = invoke("report", *dbs, "--label", "dense", "--label", "pruned",
                               "-o", out)
    assert code == 0, err
    assert len(stdout.splitlines()) == 1 + 2 * 4  # the comparison + 4 files per campaign
    assert (out / "compare_accuracy_vs_rate.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "dense" / "summary.md").exists() and (out / "pruned" / "layers.png").exists()
    assert_user_error(*invoke("report", *dbs, "--label", "one", "-o", tmp_path / "x"),
                      "--label")


# -- time steps on the spiking model -----------------------------------------------------------

def test_state_address_expands_to_the_annotated_tensors() -> None:
    res = inject(SNN, [parse_fault("lif1.membrane@3-5[*,7]:bitflip:30")])
    assert [f.site for f in res.plan] == ["lif1.membrane.t3", "lif1.membrane.t4",
                                          "lif1.membrane.t5"]
    res = inject(SNN, [parse_fault("lif2.spike@all[*,1]:stuck-at-0:0-31")])
    assert len(res.plan) == 16 and {f.index for f in res.plan} == {(None, 1)}
    with pytest.raises(EnpheephError, match="time step 16 does not exist"):
        inject(SNN, [parse_fault("lif1.membrane@16[*,7]:bitflip:30")])
    with pytest.raises(EnpheephError, match="unknown neuron state"):
        inject(SNN, [parse_fault("lif9.membrane@1[*,7]:bitflip:30")])


def test_time_step_state_fault_changes_only_later_outputs() -> None:
    data = np.load(SNN_DATA)
    from enpheeph_onnx.runtime import make_session

    x = data["input"][:40]
    golden = make_session(load_model(SNN)).run(None, {"input": x})[0]
    late = inject(SNN, [parse_fault("lif2.membrane@15[*,0]:stuck-at-1:30")]).model
    out = make_session(late).run(None, {"input": x})[0]
    # a stuck membrane at the last step changes at most that step's spike of class 0
    # (bit 30 set: a huge positive membrane spikes, a huge negative one cannot)
    assert set(np.unique(out[:, 0] - golden[:, 0])) <= {-1.0, 0.0, 1.0}
    assert (out[:, 1:] == golden[:, 1:]).all() and (out != golden).any()


def test_time_steps_selection_and_permanent_faults() -> None:
    m = load_model(SNN)
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


def test_time_steps_cli(tmp_path: Path) -> None:
    db = tmp_path / "r.sqlite"
    code, out, err = invoke("campaign", SNN, "--data", SNN_DATA, "--kinds", "activation",
                            "--time-steps", "2", "--faults-per-trial", "2", "--trials", "3",
                            "--bits", "30", "--db", db, "--json")
    assert code == 0, err
    s = json.loads(out)
    assert [t["n_faults"] for t in s["trials"]] == [2, 2, 2]
    texts = [f for t in s["trials"] for f in t["first_faults"]]
    assert len(texts) == 6 and all(parse_fault(f).site.endswith(".t2") for f in texts)
    with ResultStore.open(db) as store:
        sets = dict(store.fault_sets())
    assert sorted(sets) == [0, 1, 2]
    names = [n for fs in sets.values() for n in fs.site_names()]
    assert len(names) == 6 and all(n.endswith(".t2") for n in names)
    assert all((fs.single_bits() == 30).all() for fs in sets.values())
    assert_user_error(*invoke("campaign", SNN, "--data", SNN_DATA, "--kinds", "activation",
                              "--time-steps", "99"), "time step 99 does not exist")
    assert_user_error(*invoke("campaign", MODELS / "digits_cnn.onnx", "--data",
                              MODELS / "digits_test.npz", "--kinds", "activation",
                              "--time-steps", "2"), "no time-step annotations")
