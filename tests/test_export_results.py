"""enpheeph_onnx.export_results (the export command's tables): CSV and Parquet files of
trials, faults and outcomes equal what the store holds, and the Parquet schema is fixed
even for a campaign without faults."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from enpheeph_onnx.export_results import _TYPES
from enpheeph_onnx.store import ResultStore

from .helpers import assert_user_error, invoke


def test_export_csv_and_parquet(tmp_path: Path, model_path: Path, data_path: Path) -> None:
    db = tmp_path / "r.sqlite"
    assert invoke("campaign", model_path, "--data", data_path, "--fault-rate", "1e-3",
                  "--trials", "4", "--db", db)[0] == 0
    out = tmp_path / "trials.csv"
    code, _, err = invoke("export-results", db, "-o", out)
    assert code == 0, err
    with open(out) as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4 and float(rows[0]["rate"]) == 1e-3
    assert list(rows[0]) == list(_TYPES["trials"])
    with ResultStore.open(db) as store:
        table = store.trial_table()
        ranks = {s.name: s.rank for s in store.sites()}
        stored = [(t, fs.to_faults(ranks)) for t, fs in store.fault_sets()]
    n_faults = sum(len(f) for _, f in stored)
    assert n_faults > 0
    assert [int(r["n_faults"]) for r in rows] == table.n_faults.tolist()
    assert sum(int(r["n_faults"]) for r in rows) == n_faults
    assert [float(r["accuracy"]) for r in rows] == table.accuracy.tolist()
    assert [[int(r[k]) for k in ("masked", "tolerable_sdc", "critical_sdc", "due")]
            for r in rows] == table.counts.tolist()
    fout = tmp_path / "faults.csv"
    code, _, err = invoke("export-results", db, "--table", "faults", "-o", fout)
    assert code == 0, err
    with open(fout) as fh:
        frows = list(csv.DictReader(fh))
    assert list(frows[0]) == list(_TYPES["faults"])
    expected = [(t, k, f.site, ["*" if i is None else i for i in f.index],
                 f.model.value, list(f.bits)) for t, faults in stored
                for k, f in enumerate(faults)]
    assert [(int(r["trial"]), int(r["ordinal"]), r["site"], json.loads(r["index"]),
             r["model"], json.loads(r["bits"])) for r in frows] == expected
    assert {r["kind"] for r in frows} == {"weight"} and all(r["value"] == "" for r in frows)
    pq = pytest.importorskip("pyarrow.parquet")
    pout = tmp_path / "outcomes.parquet"
    code, _, err = invoke("export-results", db, "--format", "parquet", "--table", "outcomes",
                          "-o", pout)
    assert code == 0, err
    table = pq.read_table(pout)
    assert table.num_rows == 4 * 360
    assert set(table.column("outcome_name").to_pylist()) <= {
        "masked", "tolerable_sdc", "critical_sdc", "due"}
    assert_user_error(*invoke("export-results", tmp_path / "none.sqlite", "-o", tmp_path / "x.csv"),
                      "not found")
    assert not (tmp_path / "x.csv").exists()


def test_parquet_schema_is_fixed_for_an_empty_campaign(tmp_path: Path, model_path: Path,
                                                       data_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    db = tmp_path / "r.sqlite"
    assert invoke("campaign", model_path, "--data", data_path, "--fault-rate", "1e-9",
                  "--trials", "2", "--db", db)[0] == 0
    out = tmp_path / "f.parquet"
    assert invoke("export-results", db, "--format", "parquet", "--table", "faults",
                  "-o", out)[0] == 0
    t = pq.read_table(out)
    assert t.num_rows == 0
    types = {"int": pa.int64(), "real": pa.float64(), "text": pa.string()}
    faults = [("trial", "int"), ("ordinal", "int"), ("site", "text"), ("kind", "text"),
              ("layer", "text"), ("index", "text"), ("model", "text"), ("bits", "text"),
              ("value", "real")]
    assert [(f.name, f.type) for f in t.schema] == [(n, types[k]) for n, k in faults]
    out = tmp_path / "o.parquet"
    assert invoke("export-results", db, "--format", "parquet", "--table", "outcomes",
                  "-o", out)[0] == 0
    t = pq.read_table(out)
    assert t.num_rows == 2 * 360  # the trials ran, without faults
    assert t.schema.field("sample").type == pa.int64()
    assert t.schema.field("correct").type == pa.int64()
