"""Hostile input (issue 9): every case a one-line error with exit code 2, no traceback, no
output file, every input file byte-identical afterwards."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from .conftest import DATA, MODEL
from .helpers import assert_user_error, invoke

ACT = "/relu1/Relu_output_0[0,0,0,0]"


def _files(tmp: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(tmp.iterdir()) if p.is_file()}


@pytest.fixture()
def work(tmp_path: Path) -> Path:
    d = dict(np.load(DATA))
    (tmp_path / "m.onnx").write_bytes(MODEL.read_bytes())
    np.savez(tmp_path / "d.npz", **d)
    np.savez(tmp_path / "big_labels.npz", input=d["input"], labels=d["labels"] + 100)
    np.savez(tmp_path / "neg_labels.npz", input=d["input"], labels=d["labels"] - 100)
    x = d["input"].copy()
    x[3, 0, 1, 1] = np.inf
    np.savez(tmp_path / "inf.npz", input=x, labels=d["labels"])
    np.savez(tmp_path / "objects.npz", input=np.array([{"a": 1}], dtype=object),
             labels=d["labels"][:1])
    (tmp_path / "dup.json").write_text('{"faults": [], "faults": []}')
    (tmp_path / "dup_site.json").write_text(
        '{"faults": [{"site": "a", "site": "b", "index": [0], "model": "bitflip", '
        '"bits": [1]}]}')
    (tmp_path / "deep.json").write_text("[" * 200_000 + "]" * 200_000)
    (tmp_path / "bytes.json").write_bytes(b"\xff\xfe\x00\x81 not text")
    (tmp_path / "t1.toml").write_text("db = 5\n")
    (tmp_path / "t2.toml").write_text("trials = 2.5\n")
    (tmp_path / "t3.toml").write_text("allow-nonfinite-inputs = 1\n")
    (tmp_path / "t4.toml").write_text("[trials]\nx = 1\n")
    return tmp_path


CASES = [
    ("bits beyond 63", ["campaign", "m.onnx", "--data", "d.npz", "--bits", "0-999999999",
                        "--db", "o.sqlite"], "bit 999999999 does not exist"),
    ("fault bits beyond 63", ["inject", "m.onnx", "-o", "o.onnx", "--fault",
                              f"{ACT}:bitflip:0-999999999"], "bit 999999999 does not exist"),
    ("faults per trial", ["campaign", "m.onnx", "--data", "d.npz", "--faults-per-trial",
                          "100000000000", "--db", "o.sqlite"], "--faults-per-trial"),
    ("rate grid points", ["campaign", "m.onnx", "--data", "d.npz", "--fault-rate",
                          "1e-7:1e-1:1000000000", "--db", "o.sqlite"], "at most 10,000"),
    ("duplicate keys", ["inject", "m.onnx", "-o", "o.onnx", "--plan", "dup.json"],
     "'faults' appears twice"),
    ("duplicate site key", ["inject", "m.onnx", "-o", "o.onnx", "--plan", "dup_site.json"],
     "'site' appears twice"),
    ("deep nesting", ["inject", "m.onnx", "-o", "o.onnx", "--plan", "deep.json"],
     "nested too deeply"),
    ("deep campaign plan", ["campaign", "m.onnx", "--data", "d.npz", "--plan", "deep.json",
                            "--db", "o.sqlite"], "nested too deeply"),
    ("not UTF-8", ["inject", "m.onnx", "-o", "o.onnx", "--plan", "bytes.json"], "bytes.json"),
    ("labels too big", ["campaign", "m.onnx", "--data", "big_labels.npz", "--trials", "1",
                        "--db", "o.sqlite"], "label 109 is out of range"),
    ("negative labels", ["campaign", "m.onnx", "--data", "neg_labels.npz", "--trials", "1",
                         "--db", "o.sqlite"], "is negative"),
    ("inf in the data", ["campaign", "m.onnx", "--data", "inf.npz", "--trials", "1",
                         "--db", "o.sqlite"], "--allow-nonfinite-inputs"),
    ("pickled objects", ["campaign", "m.onnx", "--data", "objects.npz", "--trials", "1",
                         "--db", "o.sqlite"], "Python objects (a pickle)"),
    ("negative seed", ["campaign", "m.onnx", "--data", "d.npz", "--seed", "-1", "--db",
                       "o.sqlite"], "--seed -1"),
    ("unknown kind", ["campaign", "m.onnx", "--data", "d.npz", "--kinds", "bogus", "--db",
                      "o.sqlite"], "'bogus'"),
    ("inject onto its model", ["inject", "m.onnx", "-o", "./m.onnx", "--fault",
                               f"{ACT}:bitflip:3"], "also an input"),
    ("run onto its data", ["run", "m.onnx", "--inputs", "d.npz", "-o", "d.npz"],
     "also an input"),
    ("plan onto the model", ["plan", "m.onnx", "--data", "d.npz", "-o", "m.onnx"],
     "also an input"),
    ("inf in run's inputs", ["run", "m.onnx", "--inputs", "inf.npz", "-o", "o.npz"],
     "--allow-nonfinite-inputs"),
    ("unknown option", ["campaign", "m.onnx", "--data", "d.npz", "--trails", "3"],
     "Did you mean one of: '--metric', '--stratify', '--trials'"),
    ("missing argument", ["inject", "-o", "o.onnx"], "Missing argument 'MODEL'"),
    ("bad choice", ["run", "m.onnx", "--data", "d.npz", "--provider", "gpu"],
     "'gpu' is not one of"),
    ("bad kind", ["sites", "m.onnx", "--kinds", "bogus"], "unknown site kind 'bogus'"),
    ("not a number", ["campaign", "m.onnx", "--data", "d.npz", "--trials", "many",
                      "--db", "o.sqlite"], "'many' is not a valid integer"),
    ("unknown command", ["campaing", "m.onnx"], "No such command 'campaing'"),
    ("output under a file", ["inject", "m.onnx", "-o", "d.npz/o.onnx", "--fault",
                             f"{ACT}:bitflip:3"], "d.npz is a file, not a folder"),
    ("database under a file", ["campaign", "m.onnx", "--data", "d.npz", "--trials", "1",
                               "--db", "d.npz/r.sqlite"], "d.npz is a file, not a folder"),
    ("output folder missing", ["run", "m.onnx", "--inputs", "d.npz", "-o", "no/o.npz"],
     "no does not exist: create it first"),
    ("empty output path", ["inject", "m.onnx", "-o", "", "--fault", f"{ACT}:bitflip:3"],
     "is a folder, not a file"),
    ("empty kinds", ["campaign", "m.onnx", "--data", "d.npz", "--kinds", "", "--db",
                     "o.sqlite"], "--kinds is empty"),
    ("config: wrong type", ["campaign", "m.onnx", "--data", "d.npz", "--config", "t1.toml"],
     "db must be a string, not int 5"),
    ("config: float trials", ["campaign", "m.onnx", "--data", "d.npz", "--config",
                              "t2.toml"], "trials must be an integer, not float 2.5"),
    ("config: int flag", ["campaign", "m.onnx", "--data", "d.npz", "--config", "t3.toml",
                          "--db", "o.sqlite"], "must be true or false, not int 1"),
    ("config: a table", ["campaign", "m.onnx", "--data", "d.npz", "--config", "t4.toml",
                         "--db", "o.sqlite"], "trials must be an integer, not dict"),
]


@pytest.mark.parametrize(("name", "args", "words"), CASES, ids=[c[0] for c in CASES])
def test_hostile_input_is_refused_cleanly(work: Path, name: str, args: list[str],
                                          words: str, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    monkeypatch.chdir(work)
    before = _files(work)
    assert_user_error(*invoke(*args), words)
    assert _files(work) == before  # no output, no temp file, inputs untouched


def test_nonfinite_data_runs_when_allowed(work: Path, monkeypatch: pytest.MonkeyPatch
                                         ) -> None:
    monkeypatch.chdir(work)
    code, out, err = invoke("campaign", "m.onnx", "--data", "inf.npz", "--trials", "2",
                            "--allow-nonfinite-inputs", "--json", "--no-progress")
    assert code == 0, err
    res = json.loads(out)
    assert res["golden_accuracy"] < 1.0  # the Inf input's output is no correct answer


@pytest.mark.parametrize("where", ["../secret.bin", "ABSOLUTE", "link.bin"])
def test_external_data_outside_the_model_folder_is_refused(tmp_path: Path, where: str) -> None:
    import onnx
    from onnx import TensorProto
    from onnx import helper as h
    from onnx import numpy_helper as nh

    sub = tmp_path / "sub"
    sub.mkdir()
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(16, dtype=np.float32).tobytes())
    w = nh.from_array(np.ones((4, 4), np.float32), "W")
    g = h.make_graph([h.make_node("MatMul", ["x", "W"], ["y"])], "g",
                     [h.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                     [h.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], [w])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    m.ir_version = 9
    onnx.save(m, sub / "m.onnx", save_as_external_data=True, location="w.bin",
              size_threshold=0)
    if where == "link.bin":
        (sub / "link.bin").symlink_to(secret)
    loc = str(secret) if where == "ABSOLUTE" else where
    mm = onnx.load(sub / "m.onnx", load_external_data=False)
    for e in mm.graph.initializer[0].external_data:
        if e.key == "location":
            e.value = loc
    onnx.save(mm, sub / "evil.onnx")
    assert_user_error(*invoke("sites", sub / "evil.onnx"), "external data refused")


def test_a_huge_index_and_a_binary_config_are_user_errors(work: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    monkeypatch.chdir(work)
    (work / "bad.toml").write_bytes(b"\xff\xfe trials = 3")
    before = _files(work)
    assert_user_error(*invoke("inject", "m.onnx", "-o", "o.onnx", "--fault",
                              "conv1.weight[99999999999999999999999,0,0,0]:bitflip:3"),
                      "beyond any tensor")
    assert_user_error(*invoke("campaign", "m.onnx", "--data", "d.npz", "--config",
                              "bad.toml", "--db", "o.sqlite"), "not UTF-8")
    assert _files(work) == before
