"""enpheeph_onnx.export.core (torch -> ONNX, through the export command): the exported
model equals torch, weights files load, pruning masks are recorded and folded, int8
quantization on export, every input error, and the shipped pruned model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from enpheeph_onnx import discover_sites, load_model
from enpheeph_onnx.model import default_opset
from enpheeph_onnx.runtime import make_session

from .conftest import PRUNED_MODEL
from .helpers import assert_user_error, initializers, invoke

torch = pytest.importorskip("torch")


def test_export_command_matches_torch(tmp_path: Path) -> None:
    from tests.exportable import small_cnn

    out = tmp_path / "m.onnx"
    code, _, err = invoke("export-model", "--model", "tests.exportable:small_cnn", "--input-shape",
                          "2,1,8,8", "-o", out)
    assert code == 0, err
    m = onnx.load(out)
    assert default_opset(m) == 26 and m.ir_version <= 13
    x = np.random.default_rng(0).random((5, 1, 8, 8), dtype=np.float32)
    with torch.no_grad():
        ref = small_cnn().eval()(torch.from_numpy(x)).numpy()
    got = make_session(m).run(None, {"input": x})[0]
    assert np.abs(got - ref).max() <= 1e-5
    assert [i.name for i in m.graph.input] == ["input"]
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_export_with_weights_file(tmp_path: Path) -> None:
    from tests.exportable import small_cnn

    net = small_cnn()
    with torch.no_grad():
        net.fc.bias.fill_(3.0)
    w = tmp_path / "w.pt"
    torch.save(net.state_dict(), w)
    out = tmp_path / "m.onnx"
    assert invoke("export-model", "--model", "tests.exportable:small_cnn", "--weights", w,
                  "--input-shape", "1,1,8,8", "-o", out)[0] == 0
    assert (initializers(out)["fc.bias"] == 3.0).all()


def test_export_pruned_records_and_folds_masks(tmp_path: Path) -> None:
    from tests.exportable import pruned_cnn

    out = tmp_path / "p.onnx"
    assert invoke("export-model", "--model", "tests.exportable:pruned_cnn", "--input-shape",
                  "2,1,8,8", "-o", out)[0] == 0
    m = onnx.load(out)
    meta = json.loads({p.key: p.value for p in m.metadata_props}["enpheeph.pruned"])
    assert set(meta) == {"fc.weight", "conv1.weight"}
    assert meta["fc.weight"]["method"] == "L1Unstructured"
    assert meta["fc.weight"]["sparsity"] == pytest.approx(0.6)
    w = initializers(out)
    assert np.count_nonzero(w["fc.weight"] == 0) == round(0.6 * w["fc.weight"].size)
    # structured: 2 of 4 output channels of conv1 are all zero
    assert sum(bool((w["conv1.weight"][c] == 0).all()) for c in range(4)) == 2
    sites = {s.name: s for s in discover_sites(m)}
    assert sites["fc.weight"].sparsity == pytest.approx(0.6)
    assert sites["conv1.weight"].sparsity == pytest.approx(0.5)
    x = np.random.default_rng(1).random((3, 1, 8, 8), dtype=np.float32)
    with torch.no_grad():
        ref = pruned_cnn().eval()(torch.from_numpy(x)).numpy()
    assert np.abs(make_session(m).run(None, {"input": x})[0] - ref).max() <= 1e-5


def test_export_quantize_int8_command(tmp_path: Path) -> None:
    calib = tmp_path / "calib.npz"
    np.savez(calib, input=np.random.default_rng(0).random((64, 1, 8, 8), dtype=np.float32))
    out = tmp_path / "q.onnx"
    code, _, err = invoke("export-model", "--model", "tests.exportable:small_cnn", "--input-shape",
                          "1,1,8,8", "--quantize", "int8", "--calibration", calib, "-o", out)
    assert code == 0, err
    m = onnx.load(out)
    assert default_opset(m) == 26
    ops = {n.op_type for n in m.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    sites = [s for s in discover_sites(m) if s.kind.value == "weight" and s.dtype == "int8"
             and s.name.endswith("_quantized")]
    assert sites and all(s.scale is not None and s.zero_point is not None for s in sites)
    bad = tmp_path / "bad.npz"
    np.savez(bad, image=np.zeros((4, 1, 8, 8), np.float32))
    out2 = tmp_path / "q2.onnx"
    assert_user_error(*invoke("export-model", "--model", "tests.exportable:small_cnn",
                              "--input-shape", "1,1,8,8", "--quantize", "int8",
                              "--calibration", bad, "-o", out2), "lacks the input")
    assert not out2.exists()


@pytest.mark.parametrize(("args", "words"), [
    (["--model", "nosuch.module:make", "--input-shape", "1,1,8,8"], ["cannot import"]),
    (["--model", "tests.exportable:nothing", "--input-shape", "1,1,8,8"], ["has no"]),
    (["--model", "tests.exportable", "--input-shape", "1,1,8,8"], ["package.module:name"]),
    (["--model", "tests.exportable:broken", "--input-shape", "1,1,8,8"], ["factory failed"]),
    (["--model", "tests.exportable:unexportable", "--input-shape", "1,1,8,8"],
     ["torch cannot export", "fft"]),
    (["--model", "tests.exportable:small_cnn"], ["--input-shape"]),
    (["--model", "tests.exportable:small_cnn", "--input-shape", "1,x"], ["--input-shape"]),
    (["--model", "tests.exportable:small_cnn", "--input-shape", "1,1,8,8", "--quantize",
      "int8"], ["--calibration"]),
    ([], ["--model"]),
])
def test_export_bad_input(tmp_path: Path, args: list[str], words: list[str]) -> None:
    out = tmp_path / "m.onnx"
    assert_user_error(*invoke("export-model", *args, "-o", out), *words)
    assert list(tmp_path.iterdir()) == []


def test_export_weights_that_do_not_match(tmp_path: Path) -> None:
    w = tmp_path / "w.pt"
    torch.save({"other.weight": torch.zeros(2)}, w)
    out = tmp_path / "m.onnx"
    assert_user_error(*invoke("export-model", "--model", "tests.exportable:small_cnn",
                              "--weights", w, "--input-shape", "1,1,8,8", "-o", out),
                      "do not match")
    assert not out.exists()


# -- the shipped pruned model --------------------------------------------------------------

def test_shipped_pruned_model(digits: dict[str, np.ndarray]) -> None:
    m = load_model(PRUNED_MODEL)
    w = initializers(PRUNED_MODEL)
    names = [n for n in w if n.endswith("weight")]
    zeros = sum(int(np.count_nonzero(w[n] == 0)) for n in names)
    assert zeros / sum(w[n].size for n in names) >= 0.5
    logits = make_session(m).run(None, {"input": digits["input"]})[0]
    acc = float(np.mean(np.argmax(logits, 1) == digits["labels"]))
    assert acc >= 0.9972 - 0.03
