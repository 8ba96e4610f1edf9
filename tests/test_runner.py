"""enpheeph_onnx.campaign.runner (``run_campaign``): every trial is stored and replays to
the same outcomes, per-sample faults reach only their input, a campaign resumed after
SIGKILL equals an uninterrupted one (and resuming refuses another model, other settings or
other data), and campaigns run on the shipped pruned, int8 and spiking models."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

from enpheeph_onnx import Fault, discover_sites, inject, load_model
from enpheeph_onnx.campaign import (
    CampaignConfig,
    CountMode,
    Dataset,
    Sampler,
    SiteSelection,
    classify,
    correct,
    input_names,
    load_dataset,
    run_campaign,
    select_sites,
)
from enpheeph_onnx.errors import EnpheephError
from enpheeph_onnx.runtime import make_session
from enpheeph_onnx.sites import SiteKind
from enpheeph_onnx.store import ResultStore

from .conftest import DATA, INT8_MODEL, MODEL, PRUNED_MODEL, SNN_DATA, SNN_MODEL
from .helpers import (
    DENSE_ACCURACY,
    accuracy,
    assert_user_error,
    initializers,
    int8_sites,
    invoke,
    run_input,
    selected_sites,
)


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
    engine = FaultEngine(m, selected_sites(model_path, cfg))
    golden_out = engine.run(data.inputs)
    golden = golden_out["logits"]
    ranks = {s.name: len(s.shape) for s in selected_sites(model_path, cfg)}
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


# -- resume --------------------------------------------------------------------------------

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


def test_resume_refuses_other_data(tmp_path: Path, model_path: Path,
                                   digits: dict[str, np.ndarray]) -> None:
    a = tmp_path / "a.npz"
    np.savez(a, input=digits["input"], labels=digits["labels"])
    b = tmp_path / "b.npz"
    order = np.random.default_rng(0).permutation(len(digits["labels"]))
    np.savez(b, input=digits["input"][order], labels=digits["labels"][order])
    db = tmp_path / "r.sqlite"
    assert invoke("campaign", model_path, "--data", a, "--trials", "2", "--db", db)[0] == 0
    assert_user_error(*invoke("campaign", model_path, "--data", b, "--trials", "2", "--db", db,
                              "--resume"), "other data")


# -- campaigns on the shipped pruned, int8 and spiking models ------------------------------

def _stored_faults(db: Path) -> dict[int, tuple[Fault, ...]]:
    """Trial -> its faults, read back from the results store."""
    with ResultStore.open(db) as store:
        ranks = {s.name: s.rank for s in store.sites()}
        return {t: fs.to_faults(ranks) for t, fs in store.fault_sets()}


def test_campaign_on_pruned_model_resurrection(data_path: Path, tmp_path: Path) -> None:
    data = load_dataset(data_path, ["input"])
    base = dict(count=CountMode.FAULT_RATE, rates=(1e-3,), bits=tuple(range(23, 31)),
                trials=4, seed=0)
    skip = run_campaign(PRUNED_MODEL, data, CampaignConfig(**base), tmp_path / "skip.sqlite",
                        progress=False)
    only = run_campaign(PRUNED_MODEL, data, CampaignConfig(**base, pruned_weights="only"),
                        tmp_path / "only.sqlite", progress=False)
    assert skip.golden_accuracy == only.golden_accuracy
    assert len(only.trials) == 4 and (only.trials.n_faults > 0).all()
    w = initializers(PRUNED_MODEL)
    for name, res in (("skip", skip), ("only", only)):
        faults = _stored_faults(tmp_path / f"{name}.sqlite")
        assert sorted(faults) == [0, 1, 2, 3]
        assert [len(faults[t]) for t in range(4)] == res.trials.n_faults.tolist()
        zero = [w[f.site][f.index] == 0 for fs in faults.values() for f in fs]
        assert zero and all(zero) == (name == "only") and any(zero) == (name == "only")


def test_campaign_on_int8_weights(digits: dict[str, np.ndarray], tmp_path: Path) -> None:
    data = Dataset({"input": digits["input"]}, digits["labels"])
    cfg = CampaignConfig(count=CountMode.FAULT_RATE, rates=(1e-3,), bits=tuple(range(8)),
                         trials=3, batch_size=360)
    db = tmp_path / "w.sqlite"
    res = run_campaign(INT8_MODEL, data, cfg, db, progress=False)
    assert res.golden_accuracy == pytest.approx(DENSE_ACCURACY)
    assert len(res.trials) == 3
    assert res.trials.counts.sum(1).tolist() == [360] * 3
    sites = int8_sites()
    faults = _stored_faults(db)
    assert sorted(faults) == [0, 1, 2]
    assert [len(faults[t]) for t in range(3)] == res.trials.n_faults.tolist()
    assert all(sites[f.site].kind is SiteKind.WEIGHT for fs in faults.values() for f in fs)
    hit = {sites[f.site].dtype for fs in faults.values() for f in fs}
    assert "int8" in hit


def test_campaign_on_int8_activations(digits: dict[str, np.ndarray], tmp_path: Path) -> None:
    data = Dataset({"input": digits["input"]}, digits["labels"])
    cfg = CampaignConfig(selection=SiteSelection((SiteKind.ACTIVATION,)),
                         count=CountMode.FAULT_RATE, rates=(1e-3,), bits=tuple(range(8)),
                         trials=3, seed=3, batch_size=360)
    db = tmp_path / "a.sqlite"
    res = run_campaign(INT8_MODEL, data, cfg, db, progress=False)
    t = res.trials
    assert len(t) == 3 and t.counts.sum(1).tolist() == [360] * 3
    sites = int8_sites()
    faults = _stored_faults(db)
    assert [len(faults[i]) for i in range(3)] == t.n_faults.tolist()
    assert t.n_faults.sum() > 0
    for i, fs in faults.items():
        assert all(sites[f.site].kind is SiteKind.ACTIVATION for f in fs)
        if fs:  # each trial replays to the same accuracy through inject
            logits = run_input(inject(INT8_MODEL, list(fs)).model, digits["input"])[0]
            assert accuracy(logits, digits["labels"]) == t.accuracy[t.trial == i][0]


@pytest.mark.parametrize("kinds", [(SiteKind.WEIGHT,), (SiteKind.ACTIVATION,)])
def test_campaign_on_the_shipped_snn(snn_model: onnx.ModelProto,
                                     snn_data: dict[str, np.ndarray],
                                     kinds: tuple[SiteKind, ...]) -> None:
    data = load_dataset(SNN_DATA, input_names(snn_model))
    cfg = CampaignConfig(selection=SiteSelection(kinds), count=CountMode.FAULT_RATE,
                         rates=(1e-3,), trials=3, seed=0)
    result = run_campaign(SNN_MODEL, data, cfg, progress=False)
    counts = make_session(snn_model).run(None, {"input": snn_data["input"]})[0]
    assert result.golden_accuracy == float(np.mean(np.argmax(counts, 1) == snn_data["labels"]))
    assert result.golden_accuracy == 351 / 360
    t = result.trials
    assert len(t) == 3 and t.trial.tolist() == [0, 1, 2]
    assert t.samples.tolist() == [360] * 3 and t.counts.sum(1).tolist() == [360] * 3
    assert not np.isnan(t.accuracy).any() and ((t.accuracy >= 0) & (t.accuracy <= 1)).all()
    assert (t.n_faults > 0).all()  # rate 1e-3 over thousands of elements
    assert result.mean_accuracy == pytest.approx(float(t.accuracy.mean()), abs=1e-15)


def test_a_damaged_database_blob_is_an_error(tmp_path: Path) -> None:
    from enpheeph_onnx.export_results import export_table

    db = tmp_path / "r.sqlite"
    run_campaign(MODEL, load_dataset(DATA, ["input"]), CampaignConfig(trials=2), db)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE fault_set SET layout = 'not json' WHERE trial = 1")
        conn.execute("UPDATE outcome_set SET outcome = x'00' WHERE trial = 0")
    with pytest.raises(EnpheephError, match="damaged: the faults of trial 1"):
        export_table(db, "faults", "csv", tmp_path / "f.csv")
    with pytest.raises(EnpheephError, match="damaged: the outcomes of trial 0"):
        export_table(db, "outcomes", "csv", tmp_path / "o.csv")
    assert not (tmp_path / "f.csv").exists() and not (tmp_path / "o.csv").exists()
