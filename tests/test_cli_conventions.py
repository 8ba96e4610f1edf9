"""One consistent CLI (issue 11): walk every command's ``--help`` and check the conventions;
the old spellings are refused (or kept as hidden aliases) with a hint."""

from __future__ import annotations

import json
import re
from pathlib import Path

import click
import numpy as np
import onnx
import pytest

from enpheeph_onnx import discover_sites
from enpheeph_onnx.campaign import allowed_elements, input_names, layer_order
from enpheeph_onnx.cli import main

from .conftest import DATA, MODEL
from .helpers import assert_user_error, invoke

COMMANDS = sorted(name for name, c in main.commands.items() if not c.hidden)
WRITES = {"inject", "run", "plan", "campaign", "report", "export-results", "export-model"}
READS_DATA = {"sites", "inject", "run", "plan", "campaign"}
# same name, but what the command writes / reads / computes: help of its own
PER_COMMAND_HELP = {"--output", "--data", "--plan", "--margin", "--confidence"}


def _help(name: str) -> str:
    code, out, err = invoke(name, "--help")
    assert code == 0, err
    return out


def _options(name: str) -> dict[str, click.Option]:
    return {opt: p for p in main.commands[name].params if isinstance(p, click.Option)
            and not p.hidden for opt in p.opts if opt.startswith("--")}


def test_the_command_list() -> None:
    assert COMMANDS == ["campaign", "export-model", "export-results", "inject", "plan",
                        "report", "run", "sample-size", "sites"]


@pytest.mark.parametrize("name", COMMANDS)
def test_every_help_follows_the_conventions(name: str) -> None:
    text = _help(name)
    # one example, a runnable command line of this very command
    m = re.search(r"Example[^:\n]*:\n", text)
    assert m is not None, text
    example = text[m.end():].strip().splitlines()[0]
    assert example.startswith(f"enpheeph-onnx {name} "), example
    assert "--json" in text
    opts = _options(name)
    assert ("--output" in opts) == (name in WRITES), name
    if name in WRITES:
        assert "-o" in opts["--output"].opts  # always -o/--output
    assert ("--data" in opts) == (name in READS_DATA), name
    for old in ("--out", "--inputs", "--kind", "--target-output"):
        assert old not in opts, (name, old)
    if "--kinds" in opts:
        assert "plural accepted" in (opts["--kinds"].help or "")


def test_a_shared_option_has_one_name_and_one_help() -> None:
    seen: dict[str, tuple[str, str, str]] = {}
    for name in COMMANDS:
        for opt, p in _options(name).items():
            if opt in PER_COMMAND_HELP:
                continue
            # the same help and type; a default of its own is named at the end
            sig = (re.sub(r" \[default: [^\]]*\]\.$", "", p.help or ""), p.type.name)
            if opt in seen:
                assert sig == seen[opt][1:], (opt, name, seen[opt][0])
            else:
                seen[opt] = (name, *sig)
    # the options several commands share (the decorators of cli/options.py)
    assert {"--provider", "--batch-size", "--optimization", "--kinds", "--seed",
            "--json"} <= set(seen)


def test_old_spellings(tmp_path: Path) -> None:
    # plan --output NAME -o PATH used to write a plan naming a nonexistent output
    assert_user_error(*invoke("plan", MODEL, "--data", DATA, "--output", "plan.json", "-o",
                              tmp_path / "p.json"), "given 2 times", "--logits")
    assert not (tmp_path / "p.json").exists()
    # the classifier output name given to -o/--output: the hint names --logits
    assert_user_error(*invoke("campaign", MODEL, "--data", DATA, "--output", "logits"),
                      "names an output of the model", "--logits logits")
    assert not Path("logits").exists()
    # the old export: two commands now
    assert_user_error(*invoke("export", "r.sqlite", "-o", "x.csv"), "export-results",
                      "export-model")
    # hidden aliases keep old command lines working
    code, out, err = invoke("run", MODEL, "--inputs", DATA, "--json")
    assert code == 0, err
    assert json.loads(out)["outputs"]["logits"]["shape"] == [360, 10]
    assert_user_error(*invoke("run", MODEL, "--data", DATA, "--inputs", DATA),
                      "--inputs is the old spelling")
    assert_user_error(*invoke("run", MODEL), "Missing option '--data'")


@pytest.mark.parametrize("kinds", [["--kinds", "weight"], ["--kinds", "weights"],
                                   ["--kind", "weight"], ["--kinds", "Weights,weight"]])
def test_kinds_singular_plural_and_old(kinds: list[str]) -> None:
    code, out, _ = invoke("sites", MODEL, *kinds, "--json")
    assert code == 0
    assert {s["kind"] for s in json.loads(out)} == {"weight"}
    code, out, err = invoke("plan", MODEL, "--data", DATA, *kinds, "--trials", "2", "-o",
                            "/dev/null", "--json")
    assert code == 0, err
    assert json.loads(out)["config"]["selection"]["kinds"] == ["weight"]


def test_campaign_kinds_accept_both_forms(tmp_path: Path) -> None:
    outs = []
    for kinds in (["--kinds", "activations,weight"], ["--kinds", "activation", "--kinds",
                                                      "weights"], ["--target", "activation"]):
        code, out, err = invoke("plan", MODEL, "--data", DATA, *kinds, "--trials", "3",
                                "--seed", "1", "-o", tmp_path / "p.json", "--json")
        assert code == 0, err
        outs.append(json.loads(out)["config"]["selection"]["kinds"])
        (tmp_path / "p.json").unlink()
    assert outs == [["activation", "weight"], ["activation", "weight"], ["activation"]]


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_prints_a_summary_line_and_json(tmp_path: Path, name: str) -> None:
    db = tmp_path / "r.sqlite"
    if name in ("report", "export-results"):
        assert invoke("campaign", MODEL, "--data", DATA, "--trials", "2", "-o", db)[0] == 0
    if name == "export-model":
        pytest.importorskip("torch")
    args = {
        "sites": [MODEL],
        "inject": [MODEL, "--fault", "conv1.weight[0,0,1,1]:bitflip:30", "-o",
                   tmp_path / "f.onnx"],
        "run": [MODEL, "--data", DATA],
        "plan": [MODEL, "--data", DATA, "--trials", "2", "-o", tmp_path / "p.json"],
        "campaign": [MODEL, "--data", DATA, "--trials", "2"],
        "sample-size": ["--population", "1e9", "--margin", "0.01"],
        "report": [db, "-o", tmp_path / "rep"],
        "export-results": [db, "-o", tmp_path / "t.csv"],
        "export-model": ["--model", "tests.exportable:small_cnn", "--input-shape", "1,1,8,8",
                         "-o", tmp_path / "m.onnx"],
    }[name]
    code, out, err = invoke(name, *args, "--json")
    assert code == 0, err
    json.loads(out)  # strict JSON on stdout
    assert err.strip().splitlines()[-1].startswith(f"PASSED {name}:"), err


def test_the_api_takes_a_path_or_a_model_proto() -> None:
    proto = onnx.load(MODEL)
    by_path, by_proto = discover_sites(MODEL), discover_sites(proto)
    assert by_path == by_proto and len(by_path) == 19
    assert input_names(MODEL) == input_names(proto) == ["input"]
    assert layer_order(MODEL, by_path) == layer_order(proto, by_path)
    a, b = allowed_elements(MODEL, by_path, "skip"), allowed_elements(proto, by_path, "skip")
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_data_lacking_an_input_is_refused_everywhere(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, image=np.zeros((4, 1, 8, 8), np.float32))
    out = tmp_path / "f.onnx"
    for args in (["sites", MODEL], ["run", MODEL],
                 ["inject", MODEL, "--fault", "conv1.weight[0,0,1,1]:bitflip:30", "-o", out]):
        assert_user_error(*invoke(*args, "--data", wrong), "input")
    assert not out.exists()


def test_verbose_after_the_command_gets_a_hint() -> None:
    assert_user_error(*invoke("sites", MODEL, "-v"), "-v goes before the command")
    code, _, err = invoke("-v", "sites", MODEL)
    assert code == 0 and err.strip().splitlines()[-1].startswith("PASSED sites:")


def test_a_plan_of_another_model_is_one_error_line(tmp_path: Path) -> None:
    plan = tmp_path / "p.json"
    assert invoke("plan", MODEL, "--data", DATA, "--trials", "3", "-o", plan)[0] == 0
    snn = MODEL.parent / "digits_snn.onnx"
    assert_user_error(*invoke("campaign", snn, "--data", MODEL.parent / "digits_snn_test.npz",
                              "--plan", plan), "the plan was sampled for another model")


def test_export_results_refuses_an_unknown_suffix(tmp_path: Path) -> None:
    db = tmp_path / "r.sqlite"
    assert invoke("campaign", MODEL, "--data", DATA, "--trials", "2", "-o", db)[0] == 0
    assert_user_error(*invoke("export-results", db, "-o", tmp_path / "t.xlsx"),
                      ".csv or .parquet")
    assert not (tmp_path / "t.xlsx").exists()
    code, _, err = invoke("export-results", db, "-o", tmp_path / "t.xlsx", "--format", "csv")
    assert code == 0, err
    assert (tmp_path / "t.xlsx").read_text().startswith("trial,level,rate")
