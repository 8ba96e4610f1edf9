"""Side by side with PyTorchFI 0.6.0: the same faults on the same network, outcomes and speed.

Method
------

1. **Network.** The CNN of ``scripts/bench_campaign.py`` (``build_model((64, 128, 256), 256)``:
   4.6M parameters, 32x32 inputs; ``--quick``: channels 4/8/8, FC 512->16->10) in ONNX, and
   :class:`TorchCNN`, the same layers in ``torch.nn`` (Conv2d 3x3 pad 1, ReLU, MaxPool2d 2,
   ..., Flatten, Linear), whose parameters are copied from the ONNX initializers. Asserted
   before anything is timed: the golden logits of onnxruntime and torch agree (``rtol =
   atol = 1e-5``; the measured maximum difference goes to the JSON) and so do their top-1.
2. **Data.** 32 inputs (8 with ``--quick``) uniform in [0, 1) from ``default_rng(1)``, as in
   bench_campaign; labels = the golden top-1 of onnxruntime (= torch's, asserted), so both
   golden accuracies are 1.0. Both tools run all inputs as one batch.
3. **Faults.** For each target, fault count K and bit mode (``all``: bits uniform in 0-31;
   ``0``: bit 0 only, as bench_campaign's ``--bits 0``), trial *t* draws its K single-bit flips
   of float32 from ``default_rng(SeedSequence([seed, target, K, bit mode], spawn_key=(t,)))``:

   * ``weights``: elements uniform over the weights of the five Conv2d/Linear layers
     (conv1-3.weight, fc1.weight, fc2.weight; not the biases, which PyTorchFI's weight
     injection cannot reach);
   * ``activations``: elements uniform over the 32 inputs x the outputs of those layers
     (the ONNX tensors conv1, conv2, conv3, fc1, logits produced by the Conv/Gemm nodes =
     PyTorchFI's neuron sites), so each fault hits one input (per-sample index, PyTorchFI's
     batch coordinate): K faults per trial in total, about K/32 per input.

   Several faults may hit the same element (bit flips compose: both tools apply all of
   them). The faults are written once (``faults.npz``) and given to both tools:

   * **ours**: converted to a :class:`~enpheeph_onnx.campaign.plan.CampaignPlan` (binary
     ``.npz``) and replayed with ``enpheeph-onnx campaign MODEL --data DATA --plan PLAN
     --batch-size 32 --db DB --no-progress --optimization all`` (``--optimization``
     of this script; defaults otherwise: suffix re-execution on);
   * **PyTorchFI**: a subprocess of this script (``pfi-worker``) builds ``fault_injection(
     net, batch_size, input_shape, layer_types=[Conv2d, Linear])`` once, then per trial
     ``declare_weight_fi(layer_num, k, dim1, dim2, dim3, function=flip)`` (PyTorchFI calls
     ``flip(weight, index)`` per fault; it XORs the bit on the int32 view of the element) or
     ``declare_neuron_fi(batch, layer_num, dim1, dim2, dim3, function=hook)`` (PyTorchFI
     checks the per-element lists and registers ``hook`` on every Conv2d/Linear; the hook
     XORs the trial's masks, duplicates folded, into the layer's output viewed as int32, one
     vectorized index operation per layer), then runs the corrupted model on the batch.
     (PyTorchFI 0.6.0 names these ``declare_weight_fi`` / ``declare_neuron_fi``.)

4. **Outcomes.** Each (trial, input) is masked (logits bit-identical to the tool's own golden
   run), tolerable SDC (differs, same top-1), critical SDC (top-1 changed) or DUE (a NaN or
   Inf in the logits), with the rules of :mod:`enpheeph_onnx.campaign.outcomes`; ours are
   read from the campaign database. Compared trial by trial (the four counts) and input by
   input; bit-identical logits across frameworks are not expected, so masked vs tolerable SDC
   may differ where a perturbation is absorbed by one framework's rounding and not the
   other's, and a NaN reaching a MaxPool window is propagated by torch but handled by
   onnxruntime's CPU MaxPool in a position-dependent way (measured on 2x2 windows: NaN
   first in ``[NaN, 1, 2, -1]`` gives 1.0, second in ``[3, NaN, 2, -1]`` NaN, third or
   fourth 3.0), so a NaN activation before a pool can be a DUE in PyTorchFI and an SDC or
   masked in ours (the ``confusion`` matrix in the JSON: rows ours, columns PyTorchFI).
5. **Timing**, from outside and the same way for both tools: the wall time of the tool's
   process for N = N1 and N = N2 trials (K < 10,000: 2 and 52, so that the difference is
   well above the +-0.2 s jitter of a process start; K < 1,000,000: 2 and 12; K =
   1,000,000: 1 and 3; quick: 1 and 3), ``per_trial = (t(N2) - t(N1)) / (N2 - N1)``
   (interpreter start, imports, model loading, the golden run and fault-file loading cancel
   out), ``trial/golden = per_trial /
   golden`` with each tool's own golden (a plain onnxruntime CPU session for ours, the
   torch module under ``no_grad`` for PyTorchFI: median of 20 runs of the batch, measured
   again right before each cell, as the load of a shared machine drifts), trials/s
   = 1 / per_trial, and ``speedup = per_trial(PyTorchFI) / per_trial(ours)`` (> 1: ours
   runs more trials per second). Where the N2 run of a tool is projected beyond
   ``--max-cell-seconds`` its N2 is reduced (the JSON says so); outcomes are compared on the
   trials both N2 runs ran. One untimed run of each tool warms the file cache first. Both
   tools use their default threading on all CPUs; on a shared 2-core machine expect +-15 %.
6. ``--out`` (JSON, default ``docs/bench_pytorchfi.json``): platform, CPU count, versions
   (torch, pytorchfi, onnxruntime, onnx, numpy, python), load averages, golden times, the
   golden agreement, and per cell both tools' times, outcome totals and the agreement; a
   Markdown table is printed.

Reproduce::

    python scripts/bench_pytorchfi.py --quick --out /tmp/bench_pytorchfi_quick.json  # < 1 min
    python scripts/bench_pytorchfi.py                          # docs/bench_pytorchfi.json
    python scripts/bench_pytorchfi.py --ks 1,1000 --bits all   # a subset
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
import zlib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_campaign import (
    build_model,
    code_under_test,
    finish,
    golden_seconds,
    run_cli,
    work_dir,
    write_json,
)

from enpheeph_onnx.campaign.config import CampaignConfig, SiteSelection
from enpheeph_onnx.campaign.plan import CampaignPlan
from enpheeph_onnx.campaign.sampling import TrialSpec
from enpheeph_onnx.faultset import FaultSet, bits_mask
from enpheeph_onnx.model import model_sha256
from enpheeph_onnx.sites import SiteKind, discover_sites
from enpheeph_onnx.store import ResultStore

TARGETS = ("weights", "activations")
WEIGHT_SITES = ("conv1.weight", "conv2.weight", "conv3.weight", "fc1.weight", "fc2.weight")
ACTIVATION_SITES = ("conv1", "conv2", "conv3", "fc1", "logits")
"""PyTorchFI's layers 0-4 (its Conv2d/Linear modules in order), by their ONNX names."""
OUTCOME_NAMES = ("masked", "tolerable_sdc", "critical_sdc", "due")


@dataclass(frozen=True)
class Sizes:
    """Sizes of one benchmark run (full or ``--quick``)."""

    channels: tuple[int, int, int]
    hidden: int
    samples: int
    ks: tuple[int, ...]
    bits: tuple[str, ...]
    n: tuple[tuple[int, int, int], ...]
    """``(smallest K, N1, N2)`` rows: a cell uses the last row whose K it reaches."""

    def ns(self, k: int) -> tuple[int, int]:
        n1, n2 = self.n[0][1:]
        for least, a, b in self.n:
            if k >= least:
                n1, n2 = a, b
        return n1, n2


FULL = Sizes(channels=(64, 128, 256), hidden=256, samples=32, ks=(1, 1000, 100000, 1000000),
             bits=("all", "0"), n=((0, 2, 52), (10000, 2, 12), (1000000, 1, 3)))
QUICK = Sizes(channels=(4, 8, 8), hidden=16, samples=8, ks=(100,), bits=("all", "0"),
              n=((0, 1, 3),))


# --------------------------------------------------------------------------- the network


class TorchCNN(nn.Module):
    """bench_campaign's CNN in torch: the modules carry the ONNX names (``conv1``, ``fc1``...)."""

    def __init__(self, channels: tuple[int, int, int], hidden: int, classes: int = 10) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.conv1 = nn.Conv2d(3, c1, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(c2, c3, 3, padding=1)
        self.relu3 = nn.ReLU()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(c3 * 8 * 8, hidden)
        self.relu_fc1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = self.relu3(self.conv3(x))
        return self.fc2(self.relu_fc1(self.fc1(self.flatten(x))))

    @classmethod
    def from_onnx(cls, model: onnx.ModelProto) -> TorchCNN:
        """The module with every parameter copied from ``model``'s initializers."""
        w = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        net = cls((w["conv1.weight"].shape[0], w["conv2.weight"].shape[0],
                   w["conv3.weight"].shape[0]), w["fc1.weight"].shape[0],
                  w["fc2.weight"].shape[0])
        net.load_state_dict({k: torch.from_numpy(np.array(v, copy=True)) for k, v in w.items()},
                            strict=True)
        return net.eval()


def torch_golden_seconds(net: nn.Module, x: np.ndarray, runs: int = 20,
                         warmups: int = 3) -> tuple[float, np.ndarray]:
    """Median wall time of ``net`` on all of ``x`` under ``no_grad``; the logits."""
    xt = torch.from_numpy(x)
    with torch.no_grad():
        out = net(xt).numpy()
        for _ in range(warmups - 1):
            net(xt)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            net(xt)
            times.append(time.perf_counter() - t0)
    return statistics.median(times), out


# --------------------------------------------------------------------------- outcomes


def classify(golden: np.ndarray, faulty: np.ndarray) -> np.ndarray:
    """Per-input outcome codes (0 masked, 1 tolerable SDC, 2 critical SDC, 3 DUE) of
    ``faulty`` logits against ``golden``: :func:`enpheeph_onnx.campaign.outcomes.classify`'s
    rules for one float output."""
    n = len(golden)
    g, f = golden.reshape(n, -1), faulty.reshape(n, -1)
    differs = (g.view(np.uint32) != f.view(np.uint32)).any(1)
    due = ~np.isfinite(f).all(1)
    code = np.where(differs, np.where(g.argmax(1) != f.argmax(1), 2, 1), 0)
    return np.where(due, 3, code).astype(np.uint8)


def counts(codes: np.ndarray) -> np.ndarray:
    """``[trials, 4]`` outcome counts of ``[trials, inputs]`` codes."""
    return np.stack([(codes == c).sum(1) for c in range(4)], 1)


# --------------------------------------------------------------------------- faults


@dataclass(frozen=True)
class Layer:
    """One PyTorchFI layer: its ONNX tensor and the shape a fault indexes (the weight's, or
    the activation's with the batch first)."""

    name: str
    shape: tuple[int, ...]


def fault_layers(model: onnx.ModelProto, target: str, samples: int) -> list[Layer]:
    """The five Conv2d/Linear layers' weights or outputs, in PyTorchFI's layer order."""
    sites = {s.name: s for s in discover_sites(model)}
    if target == "weights":
        return [Layer(n, tuple(int(d) for d in sites[n].shape)) for n in WEIGHT_SITES]
    out = []
    for n in ACTIVATION_SITES:
        s = sites[n]
        assert s.kind is SiteKind.ACTIVATION and s.op_type in ("Conv", "Gemm"), s
        out.append(Layer(n, (samples, *(int(d) for d in s.shape[1:]))))
    return out


def bit_choices(mode: str) -> np.ndarray:
    return np.arange(32) if mode == "all" else np.array([int(b) for b in mode.split("+")])


def draw_trial(layers: list[Layer], k: int, bits: np.ndarray, rng: np.random.Generator
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """K faults: ``(layer int8[K], coords int64[K, 4] (-1: no such dimension), bit
    uint8[K])``, elements uniform over all layers' elements, bits uniform over ``bits``."""
    sizes = np.array([int(np.prod(lay.shape)) for lay in layers], np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    flat = rng.integers(0, int(offsets[-1]), size=k)
    which = np.searchsorted(offsets, flat, side="right") - 1
    local = flat - offsets[which]
    bit = bits[rng.integers(0, len(bits), size=k)].astype(np.uint8)
    coords = np.full((k, 4), -1, np.int64)
    for i, lay in enumerate(layers):
        sel = np.flatnonzero(which == i)
        for d, c in enumerate(np.unravel_index(local[sel], lay.shape)):
            coords[sel, d] = c
    return which.astype(np.int8), coords, bit


def write_faults(path: Path, layers: list[Layer], target: str, k: int, mode: str,
                 trials: int, seed: int) -> None:
    """Draw ``trials`` trials of faults and save them (``faults.npz``: both tools read it)."""
    code = [seed, TARGETS.index(target), k, zlib.crc32(mode.encode())]
    parts = [draw_trial(layers, k, bit_choices(mode),
                        np.random.default_rng(np.random.SeedSequence(code, spawn_key=(t,))))
             for t in range(trials)]
    np.savez(path, layer=np.concatenate([p[0] for p in parts]),
             coords=np.concatenate([p[1] for p in parts]),
             bit=np.concatenate([p[2] for p in parts]),
             offsets=np.cumsum([0] + [k] * trials).astype(np.int64),
             names=np.array([lay.name for lay in layers]),
             shapes=np.array(json.dumps([list(lay.shape) for lay in layers])),
             target=np.array(target))


def our_plan(model_path: Path, faults: Path, trials: int, samples: int, mode: str
             ) -> CampaignPlan:
    """The first ``trials`` trials of ``faults`` as a campaign plan of bit flips."""
    z = np.load(faults)
    names = tuple(str(n) for n in z["names"])
    shapes = json.loads(str(z["shapes"]))
    target = str(z["target"])
    off = z["offsets"]
    kind = SiteKind.WEIGHT if target == "weights" else SiteKind.ACTIVATION
    cfg = CampaignConfig(selection=SiteSelection(kinds=(kind,), op_types=("Conv", "Gemm")),
                         bits=tuple(int(b) for b in bit_choices(mode)),
                         faults_per_trial=int(off[1] - off[0]), trials=trials,
                         per_sample=target == "activations", seed=0)
    specs = []
    for t in range(trials):
        rows = slice(int(off[t]), int(off[t + 1]))
        coords = z["coords"][rows]
        k = len(coords)
        fs = FaultSet(names, z["layer"][rows].astype(np.int32),
                      np.where(coords < 0, 0, coords).astype(np.int64), np.zeros(k, np.uint8),
                      bits_mask(z["bit"][rows]), np.zeros(k, np.float64))
        specs.append(TrialSpec(t, 0, None, None, fs))
    ranks = {n: len(s) for n, s in zip(names, shapes, strict=True)}
    return CampaignPlan(cfg, model_sha256(model_path), samples, tuple(specs), ranks)


# --------------------------------------------------------------------------- PyTorchFI side


def int32_masks(bit: np.ndarray) -> np.ndarray:
    """``1 << bit`` as int32 (bit 31: the sign bit, -2**31)."""
    return (np.uint32(1) << bit.astype(np.uint32)).view(np.int32)


def declare_weight_faults(fi: Any, layer: np.ndarray, coords: np.ndarray, bit: np.ndarray
                          ) -> nn.Module:
    """PyTorchFI's ``declare_weight_fi`` with a custom function that flips each fault's bit.

    PyTorchFI visits the layers in order and, within a layer, the faults in list order,
    calling ``function(layer.weight, (k, dim1, dim2, dim3))`` and storing what it returns;
    the faults are passed sorted by layer so that the masks are consumed in that order.
    """
    order = np.argsort(layer, kind="stable")
    layer, coords, bit = layer[order], coords[order], bit[order]
    masks = iter(int32_masks(bit).tolist())

    def flip(weight: torch.Tensor, index: tuple[Any, ...]) -> torch.Tensor:
        return (weight[index].view(torch.int32) ^ next(masks)).view(torch.float32)

    dims = [[None if v < 0 else v for v in col] for col in coords.T.tolist()]
    return fi.declare_weight_fi(layer_num=layer.tolist(), k=dims[0], dim1=dims[1],
                                dim2=dims[2], dim3=dims[3], function=flip)


class XorHook:
    """A PyTorchFI custom neuron function: XORs each layer's folded fault masks into its
    output (viewed as int32) in one index operation, then advances PyTorchFI's layer count."""

    def __init__(self, fi: Any, per_layer: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.fi = fi
        self.per_layer = per_layer

    def __call__(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        entry = self.per_layer.get(self.fi.get_current_layer())
        if entry is not None:
            flat = output.view(-1).view(torch.int32)
            flat[entry[0]] ^= entry[1]
        self.fi.updateLayer()


def declare_neuron_faults(fi: Any, layer: np.ndarray, coords: np.ndarray, bit: np.ndarray,
                          shapes: list[list[int]]) -> nn.Module:
    """PyTorchFI's ``declare_neuron_fi`` with the per-element lists and :class:`XorHook`."""
    masks = int32_masks(bit)
    per_layer = {}
    for i, shape in enumerate(shapes):
        sel = np.flatnonzero(layer == i)
        if not len(sel):
            continue
        lin = np.ravel_multi_index(tuple(coords[sel, :len(shape)].T), shape)
        order = np.argsort(lin, kind="stable")
        lin, m = lin[order], masks[sel][order]
        first = np.flatnonzero(np.r_[True, lin[1:] != lin[:-1]])
        per_layer[i] = (torch.from_numpy(lin[first]), torch.from_numpy(
            np.bitwise_xor.reduceat(m, first)))  # bit flips on one element compose by XOR
    dims = [[None if v < 0 else v for v in col] for col in coords.T.tolist()]
    return fi.declare_neuron_fi(batch=dims[0], layer_num=layer.tolist(), dim1=dims[1],
                                dim2=dims[2], dim3=dims[3], function=XorHook(fi, per_layer))


def pfi_worker(argv: list[str]) -> int:
    """``pfi-worker``: run the first ``--trials`` trials of a fault file with PyTorchFI."""
    ap = argparse.ArgumentParser(prog="bench_pytorchfi.py pfi-worker")
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--faults", type=Path, required=True)
    ap.add_argument("--trials", type=int, required=True)
    ap.add_argument("--result", type=Path, required=True)
    args = ap.parse_args(argv)
    from pytorchfi.core import fault_injection

    torch.set_grad_enabled(False)
    net = TorchCNN.from_onnx(onnx.load(args.model))
    x = torch.from_numpy(np.load(args.data)["input"])
    fi = fault_injection(net, batch_size=len(x), input_shape=list(x.shape[1:]),
                         layer_types=[nn.Conv2d, nn.Linear])
    golden = net(x).numpy()
    z = np.load(args.faults)
    off, target = z["offsets"], str(z["target"])
    shapes = json.loads(str(z["shapes"]))
    layer_all, coords_all, bit_all = z["layer"], z["coords"], z["bit"]
    codes = np.zeros((args.trials, len(x)), np.uint8)
    declare_s = np.zeros(args.trials)
    trial_s = np.zeros(args.trials)
    for t in range(args.trials):
        t0 = time.perf_counter()
        rows = slice(int(off[t]), int(off[t + 1]))
        layer, coords, bit = layer_all[rows], coords_all[rows], bit_all[rows]
        if target == "weights":
            corrupted = declare_weight_faults(fi, layer, coords, bit)
        else:
            corrupted = declare_neuron_faults(fi, layer, coords, bit, shapes)
        t1 = time.perf_counter()
        codes[t] = classify(golden, corrupted(x).numpy())
        trial_s[t], declare_s[t] = time.perf_counter() - t0, t1 - t0
    np.savez(args.result, outcomes=codes, declare_s=declare_s, trial_s=trial_s)
    return 0


# --------------------------------------------------------------------------- one cell


def our_outcomes(db: Path) -> tuple[np.ndarray, np.ndarray]:
    """Outcome codes ``[trials, inputs]`` and in-process trial seconds from a campaign DB."""
    with ResultStore.open(db) as store:
        codes = np.stack([c for _, c, _ in store.outcome_sets()])
        seconds = np.array([r[1] for r in store.conn.execute(
            "SELECT trial, seconds FROM trial ORDER BY trial")], np.float64)
    return codes, seconds


@dataclass
class Ctx:
    """What every cell needs."""

    args: argparse.Namespace
    sizes: Sizes
    work: Path
    model: Path
    data: Path
    prefix: list[str]
    golden: dict[str, float]
    startup: dict[str, float]
    x: np.ndarray
    net: nn.Module

    def measure_golden(self) -> dict[str, float]:
        """Both golden times now (the cell's ratios use them: the load of a shared machine
        drifts over a run)."""
        self.golden = {"ours": golden_seconds(self.model, self.x)[0],
                       "pytorchfi": torch_golden_seconds(self.net, self.x)[0]}
        return dict(self.golden)


def tool_argv(ctx: Ctx, tool: str, faults: Path, trials: int, tag: str, mode: str
              ) -> list[str]:
    """The command that runs ``trials`` trials of ``faults`` with ``tool``."""
    if tool == "ours":
        plan = ctx.work / "plans" / f"{tag}_n{trials}.npz"
        if not plan.exists():
            our_plan(ctx.model, faults, trials, ctx.sizes.samples, mode).save(plan)
        db = ctx.work / "db" / f"{tag}_n{trials}.sqlite"
        db.unlink(missing_ok=True)
        return [*ctx.prefix, "campaign", str(ctx.model), "--data", str(ctx.data), "--plan",
                str(plan), "--batch-size", str(ctx.sizes.samples), "--db", str(db),
                "--no-progress", "--optimization", ctx.args.optimization]
    result = ctx.work / "pfi" / f"{tag}_n{trials}.npz"
    return [sys.executable, str(Path(__file__).resolve()), "pfi-worker", "--model",
            str(ctx.model), "--data", str(ctx.data), "--faults", str(faults), "--trials",
            str(trials), "--result", str(result)]


def run_tool(ctx: Ctx, tool: str, faults: Path, tag: str, mode: str, n1: int, n2: int
             ) -> dict[str, Any]:
    """Time ``tool`` at N1 and N2 trials; its outcome codes of the N2 run."""
    res: dict[str, Any] = {"n1": n1}
    logs = ctx.work / "logs"
    argv1 = tool_argv(ctx, tool, faults, n1, tag, mode)
    r1 = run_cli(argv1, ctx.work, logs / f"{tool}_{tag}_n{n1}.log", ctx.args.timeout)
    res["command_n1"] = shlex.join(argv1)
    if not r1.ok():
        res["error"] = f"N={n1}: {r1.error}"
        return res
    res["t_n1_s"] = r1.seconds
    per_guess = max(r1.seconds - ctx.startup[tool], 0.0) / n1
    projected = r1.seconds + (n2 - n1) * per_guess
    res["projected_t_n2_s"] = projected
    if projected > ctx.args.max_cell_seconds and n2 > n1 + 1:
        fit = int((ctx.args.max_cell_seconds - r1.seconds) / max(per_guess, 1e-9)) + n1
        reduced = max(n1 + 1, min(n2 - 1, fit))
        res["reduced"] = (f"N2 reduced from {n2} to {reduced}: projected {projected:.0f} s > "
                          f"{ctx.args.max_cell_seconds:.0f} s")
        n2 = reduced
    res["n2"] = n2
    argv2 = tool_argv(ctx, tool, faults, n2, tag, mode)
    r2 = run_cli(argv2, ctx.work, logs / f"{tool}_{tag}_n{n2}.log", ctx.args.timeout)
    res["command_n2"] = shlex.join(argv2)
    if not r2.ok():
        res["error"] = f"N={n2}: {r2.error}"
        return res
    res["t_n2_s"] = r2.seconds
    per = (r2.seconds - r1.seconds) / (n2 - n1)
    res["per_trial_s"] = per
    res["trials_per_s"] = 1.0 / per if per > 0 else None
    res["trial_over_golden"] = per / ctx.golden[tool]
    if tool == "ours":
        codes, inproc = our_outcomes(ctx.work / "db" / f"{tag}_n{n2}.sqlite")
        res["in_process_trial_s_median"] = float(np.median(inproc)) if len(inproc) else None
    else:
        z = np.load(ctx.work / "pfi" / f"{tag}_n{n2}.npz")
        codes = z["outcomes"]
        res["in_process_trial_s_median"] = float(np.median(z["trial_s"]))
        res["in_process_declare_s_median"] = float(np.median(z["declare_s"]))
    res["codes"] = codes
    res["outcomes"] = dict(zip(OUTCOME_NAMES, counts(codes).sum(0).tolist(), strict=True))
    return res


def compare(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """Agreement of two tools' outcome codes on their common trials."""
    n = min(len(a), len(b))
    a, b = a[:n], b[:n]
    ca, cb = counts(a), counts(b)
    same = (ca == cb).all(1)
    both_finite = (a != 3) & (b != 3)
    mism = [{"trial": int(t), "ours": dict(zip(OUTCOME_NAMES, ca[t].tolist(), strict=True)),
             "pytorchfi": dict(zip(OUTCOME_NAMES, cb[t].tolist(), strict=True))}
            for t in np.flatnonzero(~same)[:10]]
    return {"trials_compared": n, "trials_same_counts": int(same.sum()),
            "inputs_compared": int(a.size), "inputs_same_outcome": int((a == b).sum()),
            "input_agreement": float((a == b).mean()) if a.size else None,
            "top1_changed_agreement": float(((a == 2) == (b == 2))[both_finite].mean())
            if both_finite.any() else None,
            "due_agreement": float(((a == 3) == (b == 3)).mean()) if a.size else None,
            "confusion": np.bincount(a.ravel().astype(np.int64) * 4 + b.ravel(),
                                     minlength=16).reshape(4, 4).tolist(),
            "mismatched_trials": mism}


def measure_cell(ctx: Ctx, target: str, k: int, mode: str) -> dict[str, Any]:
    tag = f"{target}_k{k}_bits{mode}"
    n1, n2 = ctx.sizes.ns(k)
    cell: dict[str, Any] = {"target": target, "k": k, "bits": mode,
                            "loadavg_before": list(os.getloadavg())}
    cell["golden_s"] = ctx.measure_golden()
    faults = ctx.work / "faults" / f"{tag}.npz"
    t0 = time.perf_counter()
    write_faults(faults, fault_layers(onnx.load(ctx.model), target, ctx.sizes.samples),
                 target, k, mode, n2, ctx.args.seed)
    cell["draw_s"] = time.perf_counter() - t0
    codes = {}
    for tool in ("ours", "pytorchfi"):
        r = run_tool(ctx, tool, faults, tag, mode, n1, n2)
        if "codes" in r:
            codes[tool] = r.pop("codes")
        cell[tool] = r
        print(f"  {tag} {tool}: " + (f"ERROR {r['error']}" if "error" in r else
              f"{r['per_trial_s'] * 1e3:.1f} ms/trial = {r['trial_over_golden']:.2f} x golden"
              f" (N {n1}/{r['n2']}), outcomes {r['outcomes']}"), flush=True)
    if len(codes) == 2:
        cell["agreement"] = compare(codes["ours"], codes["pytorchfi"])
        o, p = cell["ours"]["per_trial_s"], cell["pytorchfi"]["per_trial_s"]
        cell["speedup"] = p / o if o > 0 and p > 0 else None
        ag = cell["agreement"]
        print(f"  {tag}: same counts in {ag['trials_same_counts']}/{ag['trials_compared']} "
              f"trials, input agreement {ag['input_agreement']:.4f}, speedup "
              f"{fmt(cell['speedup'], '.2f')}x", flush=True)
    return cell


# --------------------------------------------------------------------------- output


def fmt(v: float | None, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def versions() -> dict[str, str | None]:
    """Versions of the interpreter and packages (module ``__version__``: onnxruntime may be
    installed as ``onnxruntime-gpu``)."""
    import importlib

    out: dict[str, str | None] = {"python": platform.python_version()}
    for mod in ("torch", "onnxruntime", "onnx", "numpy"):
        out[mod] = getattr(importlib.import_module(mod), "__version__", None)
    for pkg in ("pytorchfi", "enpheeph-onnx"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def markdown(results: dict[str, Any]) -> str:
    g = results["golden_s"]
    lines = [f"golden at the start: onnxruntime {g['ours'] * 1e3:.2f} ms, torch "
             f"{g['pytorchfi'] * 1e3:.2f} ms ({results['sizes']['samples']} inputs; each cell's "
             "ratios use the goldens measured right before it)", "",
             "| target | K | bits | ours trial/golden | ours trials/s | PyTorchFI trial/golden "
             "| PyTorchFI trials/s | speedup | in-process ms/trial ours / PyTorchFI "
             "| same counts | input agreement |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]

    def tool(c: dict[str, Any], key: str, spec: str) -> str:
        v = c.get(key)
        return format(v, spec) if v is not None else f"ERROR: {c.get('error', 'n/a')}"

    def inproc(c: dict[str, Any], name: str) -> str:
        return fmt(None if c[name].get("in_process_trial_s_median") is None
                   else c[name]["in_process_trial_s_median"] * 1e3, ".1f")

    for c in results["cells"]:
        ag = c.get("agreement")
        lines.append(
            f"| {c['target']} | {c['k']:,} | {c['bits']} | "
            f"{tool(c['ours'], 'trial_over_golden', '.2f')} | "
            f"{tool(c['ours'], 'trials_per_s', '.2f')} | "
            f"{tool(c['pytorchfi'], 'trial_over_golden', '.2f')} | "
            f"{tool(c['pytorchfi'], 'trials_per_s', '.2f')} | "
            f"{fmt(c.get('speedup'), '.2f')}x | {inproc(c, 'ours')} / {inproc(c, 'pytorchfi')} | "
            + (f"{ag['trials_same_counts']}/{ag['trials_compared']} | "
               f"{ag['input_agreement']:.4f} |" if ag else "- | - |"))
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def parse_list(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["pfi-worker"]:
        return pfi_worker(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("docs/bench_pytorchfi.json"),
                    help="JSON results file [docs/bench_pytorchfi.json]")
    ap.add_argument("--quick", action="store_true",
                    help="tiny model, 8 inputs, K = 100, bits all and 0, N 1/3 (< 1 min)")
    ap.add_argument("--ks", default=None, help="fault counts, comma-separated [1,1000,100000,"
                    "1000000; quick: 100]")
    ap.add_argument("--bits", default=None,
                    help="bit modes, comma-separated: 'all' (uniform 0-31) or a bit such as "
                         "'0' [all,0]")
    ap.add_argument("--seed", type=int, default=0, help="root seed of the faults [0]")
    ap.add_argument("--optimization", choices=("extended", "all"), default="all",
                    help="our campaigns' --optimization [all: as a default onnxruntime "
                         "session deploys the model, as torch runs it]")
    ap.add_argument("--cli", default="python -m enpheeph_onnx",
                    help="command prefix of our CLI [python -m enpheeph_onnx]")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="where models, faults, plans, DBs and logs go [a temp dir, removed]")
    ap.add_argument("--max-cell-seconds", type=float, default=300.0,
                    help="reduce the N2 of a tool whose N2 run is projected longer [300]")
    ap.add_argument("--timeout", type=float, default=3600.0,
                    help="limit per command, seconds [3600]")
    args = ap.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.ks is not None:
        sizes = Sizes(**{**sizes.__dict__, "ks": tuple(int(k) for k in parse_list(args.ks))})
    if args.bits is not None:
        modes = parse_list(args.bits)
        for m in modes:
            if m != "all" and not all(b.isdigit() and int(b) < 32 for b in m.split("+")):
                ap.error(f"--bits: {m!r} is neither 'all' nor bits 0-31 (e.g. '0' or '0+31')")
        sizes = Sizes(**{**sizes.__dict__, "bits": modes})
    with work_dir(ap, args.workdir, "bench_pytorchfi_",
                  ("db", "logs", "plans", "faults", "pfi")) as work:
        return run(args, sizes, work)


def run(args: argparse.Namespace, sizes: Sizes, work: Path) -> int:
    started = time.perf_counter()
    model = build_model(sizes.channels, sizes.hidden)
    model_path = work / "cnn.onnx"
    onnx.save(model, model_path)
    params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    x = np.random.default_rng(1).random((sizes.samples, 3, 32, 32), dtype=np.float32)
    g_ort, logits = golden_seconds(model_path, x)
    net = TorchCNN.from_onnx(model)
    g_torch, t_logits = torch_golden_seconds(net, x)
    diff = float(np.abs(logits - t_logits).max())
    np.testing.assert_allclose(t_logits, logits, rtol=1e-5, atol=1e-5,
                               err_msg="torch and onnxruntime golden logits differ")
    labels = logits.argmax(1).astype(np.int64)
    assert (t_logits.argmax(1) == labels).all(), "torch and onnxruntime golden top-1 differ"
    data_path = work / "data.npz"
    np.savez(data_path, input=x, labels=labels)
    print(f"model: {params:,} parameters; golden onnxruntime {g_ort * 1e3:.2f} ms, torch "
          f"{g_torch * 1e3:.2f} ms for {sizes.samples} inputs; max |logit difference| "
          f"{diff:.2e}", flush=True)
    prefix = shlex.split(args.cli)
    ctx = Ctx(args, sizes, work, model_path, data_path, prefix,
              {"ours": g_ort, "pytorchfi": g_torch}, {}, x, net)
    # untimed warm-up of both tools (file cache, byte-compilation); their times are the
    # start-up estimates for the N2 projection
    layers = fault_layers(model, "weights", sizes.samples)
    warm = work / "faults" / "warmup.npz"
    write_faults(warm, layers, "weights", 1, "all", 1, args.seed)
    for tool in ("ours", "pytorchfi"):
        argv = tool_argv(ctx, tool, warm, 1, "warmup", "all")
        r = run_cli(argv, work, work / "logs" / f"warmup_{tool}.log", args.timeout)
        if not r.ok():
            print(f"warm-up of {tool} failed: {r.error}", file=sys.stderr)
            return 1
        ctx.startup[tool] = r.seconds
    print(f"warm-up (1 trial): ours {ctx.startup['ours']:.2f} s, PyTorchFI "
          f"{ctx.startup['pytorchfi']:.2f} s", flush=True)

    results: dict[str, Any] = {
        "method": "per_trial = (t(N2) - t(N1)) / (N2 - N1) of whole processes (ours: CLI "
                  "campaign --plan; PyTorchFI: a worker process running its "
                  "declare_*_fi + forward per trial), trial_over_golden = per_trial / the "
                  "tool's own golden run of the batch (median of 20), speedup = "
                  "per_trial(PyTorchFI) / per_trial(ours); the same faults for both tools",
        "labels": "golden top-1 of onnxruntime (equal to torch's, asserted)",
        "faults": {"weights": list(WEIGHT_SITES), "activations": list(ACTIVATION_SITES),
                   "activation_faults": "K per trial in total, each on one uniformly drawn "
                                        "input (per-sample batch index)",
                   "bits": "all: uniform 0-31; N: bit N only", "seed": args.seed},
        "quick": args.quick,
        "optimization": args.optimization,
        "sizes": {**{k: list(v) if isinstance(v, tuple) else v
                     for k, v in sizes.__dict__.items()}},
        "parameters": params,
        "golden_s": {"ours": g_ort, "pytorchfi": g_torch},
        "golden_max_abs_logit_diff": diff,
        "golden_top1_equal": True,
        "startup_s": ctx.startup,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else None,
        "torch_threads": torch.get_num_threads(),
        "versions": versions(),
        "code_under_test": code_under_test(prefix, work),
        "loadavg_before": list(os.getloadavg()),
        "cells": [],
    }
    for target in TARGETS:
        for k in sizes.ks:
            for mode in sizes.bits:
                results["cells"].append(measure_cell(ctx, target, k, mode))
                write_json(args.out, results)
    results["golden_after_s"] = {"ours": golden_seconds(model_path, x)[0],
                                 "pytorchfi": torch_golden_seconds(net, x)[0]}
    return finish(results, args.out, started, markdown)


if __name__ == "__main__":
    sys.exit(main())
