"""Campaign overhead benchmark: per-trial wall time over golden inference time, on CPU.

What is measured, per model, per fault target (``weight`` / ``activation``) and per fault
count K (faults per trial):

* **golden** — median of a plain onnxruntime session
  (:func:`enpheeph_onnx.runtime.make_session` on the *unmodified* model, the same
  :func:`~enpheeph_onnx.runtime.session_options`) running the whole data set in batches of
  ``--batch-size``: once over ``--repeats`` runs per model, and once per configuration over
  golden runs interleaved with its trials (one golden run right before each trial; this
  one is the denominator of the ratios);
* **eng0** (engine golden) — median over ``--repeats`` of :meth:`FaultEngine.run` with no
  faults, interleaved with the plain golden runs: what the instrumentation alone costs
  (overridable weights, ``FeedFaults`` nodes with K = 0);
* **sample** — median time of :func:`~enpheeph_onnx.campaign.sample_trial` for one trial;
* **run** — median, over trials, of ``engine.run(data, faults, batch_size)``, in the steady
  state of a long campaign: as many other trials run first (a campaign builds a session
  for a set of hit sites when it recurs, and trials whose set is new run on the session
  instrumented everywhere; onnxruntime's first run of any session is slow);
* **total** — median of sample + run of the same trial (what a campaign spends per trial,
  outcome classification aside);
* **run/g**, **total/g** — run / golden and total / golden: the overhead ratio of the issue
  (target <= 1.10; enpheeph reports < 20 % overhead at 100k concurrent faults); **paired** —
  the median of the per-trial ratios run / (golden run just before), the figure least
  disturbed by other processes on a shared machine.

The script also checks that the engine's golden outputs are bit-identical to the plain
session's, and warns when they are not.

Models:

1. ``models/digits_cnn.onnx`` on ``models/digits_test.npz`` (360 real 8x8 digit images);
2. a model with more than 1M parameters built here with :mod:`onnx.helper` from a fixed numpy
   seed (He-normal weights), float32, opset 26, IR version 10, input ``input`` with a dynamic
   batch dimension, output ``logits``: by default the classic MNIST CNN
   (conv 1->32 3x3, ReLU, conv 32->64 3x3, ReLU, max-pool 2, FC 9216->128, ReLU, FC 128->10;
   1,199,882 parameters) on 28x28 inputs, or with ``--big-model mlp`` an MLP
   784->1024->512->10 (1,333,770 parameters); evaluated on ``--samples`` synthetic inputs
   drawn from a fixed seed (no labels are needed: only time is measured).

Fault counts: 1, 10, 100, 1000 for both targets; the big model also gets 100,000 weight faults
(the paper's headline). Faults are bit flips on any of the 32 bits, sampled exactly as a
campaign samples them (``CampaignConfig(seed=0)``, trial streams 0, 1, ...). Activation faults
carry ``*`` on the batch dimension, so each one hits that element in every input.

Each configuration runs ``--trials`` trials, but stops early (after at least 3) once it has
spent ``--budget`` seconds, so the slow configurations stay affordable; ``n`` is the number
of trials actually timed. Every session is warmed up (one golden and, for engines, one
1-fault run) before timing. Timer: :func:`time.perf_counter`. The load average before and
after is reported: on a machine shared with other work the medians move by 10-50 %.

Reproduce (about 2-3 minutes on 2 CPU cores)::

    python scripts/bench_engine.py                  # table
    python scripts/bench_engine.py --json > b.json  # machine-readable
    python scripts/bench_engine.py --trials 20 --repeats 15 --batch-size 128
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(ROOT))

from enpheeph_onnx.campaign import CampaignConfig, sample_trial, select_sites
from enpheeph_onnx.engine import FaultEngine
from enpheeph_onnx.runtime import make_session, session_options
from enpheeph_onnx.sites import FaultSite, SiteKind, discover_sites

BITS = tuple(range(32))
COUNTS = (1, 10, 100, 1000)
HEADLINE = 100_000
MIN_TRIALS = 3
TARGET_RATIO = 1.10


@dataclass
class Row:
    """One timed configuration (times in seconds)."""

    model: str
    params: int
    samples: int
    batch_size: int
    target: str
    faults: int
    trials: int
    golden_s: float
    engine_golden_s: float
    sample_s: float
    run_s: float
    total_s: float
    ratio_engine_golden: float
    ratio_run: float
    ratio_total: float
    ratio_paired: float


# --------------------------------------------------------------------------- models & data


def _he(rng: np.random.Generator, name: str, shape: tuple[int, ...], fan_in: int
        ) -> onnx.TensorProto:
    w = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
    return numpy_helper.from_array(w.astype(np.float32), name)


def build_big_model(kind: str, seed: int = 0) -> onnx.ModelProto:
    """A > 1M-parameter float32 classifier with He-normal weights from ``seed``.

    ``kind``: ``"cnn"`` (MNIST CNN, input ``batch x 1 x 28 x 28``) or ``"mlp"``
    (784->1024->512->10, input ``batch x 784``).
    """
    rng = np.random.default_rng(seed)
    mk = helper.make_node
    if kind == "cnn":
        inits = [
            _he(rng, "conv1.weight", (32, 1, 3, 3), 9), _he(rng, "conv1.bias", (32,), 9),
            _he(rng, "conv2.weight", (64, 32, 3, 3), 288), _he(rng, "conv2.bias", (64,), 288),
            _he(rng, "fc1.weight", (128, 9216), 9216), _he(rng, "fc1.bias", (128,), 9216),
            _he(rng, "fc2.weight", (10, 128), 128), _he(rng, "fc2.bias", (10,), 128),
        ]
        nodes = [
            mk("Conv", ["input", "conv1.weight", "conv1.bias"], ["/conv1/Conv_output_0"],
               name="/conv1/Conv", kernel_shape=[3, 3]),
            mk("Relu", ["/conv1/Conv_output_0"], ["/relu1/Relu_output_0"], name="/relu1/Relu"),
            mk("Conv", ["/relu1/Relu_output_0", "conv2.weight", "conv2.bias"],
               ["/conv2/Conv_output_0"], name="/conv2/Conv", kernel_shape=[3, 3]),
            mk("Relu", ["/conv2/Conv_output_0"], ["/relu2/Relu_output_0"], name="/relu2/Relu"),
            mk("MaxPool", ["/relu2/Relu_output_0"], ["/pool/MaxPool_output_0"],
               name="/pool/MaxPool", kernel_shape=[2, 2], strides=[2, 2]),
            mk("Flatten", ["/pool/MaxPool_output_0"], ["/flatten/Flatten_output_0"],
               name="/flatten/Flatten", axis=1),
            mk("Gemm", ["/flatten/Flatten_output_0", "fc1.weight", "fc1.bias"],
               ["/fc1/Gemm_output_0"], name="/fc1/Gemm", transB=1),
            mk("Relu", ["/fc1/Gemm_output_0"], ["/relu3/Relu_output_0"], name="/relu3/Relu"),
            mk("Gemm", ["/relu3/Relu_output_0", "fc2.weight", "fc2.bias"], ["logits"],
               name="/fc2/Gemm", transB=1),
        ]
        in_shape: list[str | int] = ["batch", 1, 28, 28]
    elif kind == "mlp":
        inits = [
            _he(rng, "fc1.weight", (1024, 784), 784), _he(rng, "fc1.bias", (1024,), 784),
            _he(rng, "fc2.weight", (512, 1024), 1024), _he(rng, "fc2.bias", (512,), 1024),
            _he(rng, "fc3.weight", (10, 512), 512), _he(rng, "fc3.bias", (10,), 512),
        ]
        nodes = [
            mk("Gemm", ["input", "fc1.weight", "fc1.bias"], ["/fc1/Gemm_output_0"],
               name="/fc1/Gemm", transB=1),
            mk("Relu", ["/fc1/Gemm_output_0"], ["/relu1/Relu_output_0"], name="/relu1/Relu"),
            mk("Gemm", ["/relu1/Relu_output_0", "fc2.weight", "fc2.bias"],
               ["/fc2/Gemm_output_0"], name="/fc2/Gemm", transB=1),
            mk("Relu", ["/fc2/Gemm_output_0"], ["/relu2/Relu_output_0"], name="/relu2/Relu"),
            mk("Gemm", ["/relu2/Relu_output_0", "fc3.weight", "fc3.bias"], ["logits"],
               name="/fc3/Gemm", transB=1),
        ]
        in_shape = ["batch", 784]
    else:
        raise ValueError(f"unknown model kind {kind!r}")
    graph = helper.make_graph(
        nodes, f"bench_{kind}",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 26)],
                              ir_version=10, producer_name="bench_engine")
    onnx.checker.check_model(model, full_check=True)
    return model


def synthetic_inputs(model: onnx.ModelProto, samples: int, seed: int = 1) -> np.ndarray:
    """``samples`` inputs in [0, 1) for ``model``'s ``input`` (static dims after the batch)."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    shape = (samples, *(int(d.dim_value) for d in dims[1:]))
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def n_params(model: onnx.ModelProto) -> int:
    return int(sum(np.prod(t.dims, dtype=np.int64) for t in model.graph.initializer))


# --------------------------------------------------------------------------- API shim


def _config_fields() -> set[str]:
    return {f.name for f in dataclasses.fields(CampaignConfig)}


def make_config(target: SiteKind, faults: int, batch_size: int, trials: int) -> CampaignConfig:
    """A fixed-count bit-flip config on ``target`` (old ``target=`` or new ``selection=``).

    ``trials`` + 1 trial streams: 0 ... ``trials`` - 1 are timed, stream ``trials`` is the
    warm-up.
    """
    kw: dict[str, Any] = {"bits": BITS, "faults_per_trial": faults, "seed": 0,
                          "batch_size": batch_size, "trials": trials + 1}
    if "selection" in _config_fields():
        from enpheeph_onnx.campaign import SiteSelection  # type: ignore[attr-defined]

        kw["selection"] = SiteSelection(kinds=(target,))
    else:
        kw["target"] = target
    return CampaignConfig(**kw)


def pick_sites(all_sites: list[FaultSite], cfg: CampaignConfig, target: SiteKind
               ) -> list[FaultSite]:
    """:func:`select_sites` as ``(sites, cfg)`` or as ``(sites, target, bits)``."""
    if len(inspect.signature(select_sites).parameters) >= 3:
        return select_sites(all_sites, target, BITS)  # type: ignore[call-arg]
    return select_sites(all_sites, cfg)  # type: ignore[arg-type,call-arg]


# --------------------------------------------------------------------------- timing


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def plain_run(sess: ort.InferenceSession, data: Mapping[str, np.ndarray],
              batch_size: int) -> dict[str, np.ndarray]:
    """The golden pass: the unmodified model, batch by batch, outputs concatenated."""
    names = [o.name for o in sess.get_outputs()]
    n = len(next(iter(data.values())))
    chunks: list[list[np.ndarray]] = [[] for _ in names]
    for start in range(0, n, batch_size):
        batch = {k: v[start:start + batch_size] for k, v in data.items()}
        for i, out in enumerate(sess.run(names, batch)):
            chunks[i].append(out)
    return {nm: np.concatenate(c) for nm, c in zip(names, chunks, strict=True)}


def same_bits(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> bool:
    return all(np.array_equal(a[k].view(np.uint8), b[k].view(np.uint8)) for k in a)


def bench_model(name: str, model: onnx.ModelProto, data: dict[str, np.ndarray],
                plan: Sequence[tuple[SiteKind, Sequence[int]]], args: argparse.Namespace,
                log: Callable[[str], None]) -> tuple[list[Row], dict[str, Any]]:
    """Time every (target, K) of ``plan`` on one model; rows and per-model facts.

    Golden runs are interleaved with the runs they are compared with (plain and engine
    golden in one loop; one plain golden run before every trial), so that a slow drift of
    the machine (other processes, frequency) biases numerator and denominator alike.
    """
    bs = args.batch_size
    samples = len(next(iter(data.values())))
    params = n_params(model)
    sess = make_session(model, "cpu", session_options(args.threads))
    reference = plain_run(sess, data, bs)
    all_sites = discover_sites(model)
    engines: dict[SiteKind, tuple[FaultEngine, list[FaultSite]]] = {}
    facts: dict[str, Any] = {"params": params, "samples": samples, "targets": {}}
    for target, _ in plan:
        sites = pick_sites(all_sites, make_config(target, 1, bs, args.trials), target)
        t0 = time.perf_counter()
        engine = FaultEngine(model, sites, provider="cpu", threads=args.threads)
        setup = time.perf_counter() - t0
        identical = same_bits(reference, engine.run(data, (), bs))
        engine.run(data, sample_trial(sites, make_config(target, 1, bs, args.trials),
                                          args.trials), bs)
        engines[target] = (engine, sites)
        facts["targets"][target.value] = {
            "sites": len(sites), "elements_per_sample": sum(s.static_elements for s in sites),
            "engine_setup_s": setup, "golden_bit_identical": identical,
        }
    plain_run(sess, data, bs)
    g_times: list[float] = []
    e_times: dict[SiteKind, list[float]] = {t: [] for t in engines}
    for _ in range(args.repeats):
        g_times.append(timed(lambda: plain_run(sess, data, bs)))
        for target, (engine, _s) in engines.items():
            e_times[target].append(timed(lambda e=engine: e.run(data, (), bs)))
    golden = statistics.median(g_times)
    facts["golden_s"] = golden
    log(f"{name}: {params:,} parameters, {samples} samples, batch {bs}, "
        f"golden {golden * 1e3:.2f} ms")
    for target, ts in e_times.items():
        f = facts["targets"][target.value]
        f["engine_golden_s"] = statistics.median(ts)
        log(f"  {target.value}: {f['sites']} sites, engine setup {f['engine_setup_s']:.2f} s, "
            f"engine golden {f['engine_golden_s'] * 1e3:.2f} ms "
            f"(x{f['engine_golden_s'] / golden:.3f}), bit-identical to plain: "
            f"{f['golden_bit_identical']}")

    rows: list[Row] = []
    for target, counts in plan:
        engine, sites = engines[target]
        eng_golden = facts["targets"][target.value]["engine_golden_s"]
        for k in counts:
            cfg = make_config(target, k, bs, args.trials)
            g_row: list[float] = []
            s_times: list[float] = []
            r_times: list[float] = []
            # steady state of a long campaign: run as many other trials first (trial
            # streams 10000+), so the sessions a campaign builds for recurring sets of hit
            # sites exist and have run once (onnxruntime's first run of a session is slow)
            warm_cfg = make_config(target, k, bs, 10_000 + args.trials)
            start = time.perf_counter()
            for t in range(args.trials):
                if t >= MIN_TRIALS and time.perf_counter() - start > args.budget:
                    break
                engine.run(data, sample_trial(sites, warm_cfg, 10_000 + t), bs)
            start = time.perf_counter()
            for t in range(args.trials):
                if t >= MIN_TRIALS and time.perf_counter() - start > args.budget:
                    break
                g_row.append(timed(lambda: plain_run(sess, data, bs)))
                t0 = time.perf_counter()
                faults = sample_trial(sites, cfg, t)
                t1 = time.perf_counter()
                engine.run(data, faults, bs)
                t2 = time.perf_counter()
                s_times.append(t1 - t0)
                r_times.append(t2 - t1)
            g = statistics.median(g_row)
            run = statistics.median(r_times)
            total = statistics.median(a + b for a, b in zip(s_times, r_times, strict=True))
            paired = statistics.median(r / gg for r, gg in zip(r_times, g_row, strict=True))
            row = Row(name, params, samples, bs, target.value, k, len(r_times), g, eng_golden,
                      statistics.median(s_times), run, total, eng_golden / golden, run / g,
                      total / g, paired)
            rows.append(row)
            log(f"    {target.value:<10} K={k:>6}: golden {g * 1e3:8.2f} ms  "
                f"run {run * 1e3:9.2f} ms  x{row.ratio_run:7.3f} (paired x{paired:.3f})  "
                f"total x{row.ratio_total:7.3f}"
                f"  [{len(r_times)} trials]")
    engines.clear()
    return rows, facts


# --------------------------------------------------------------------------- output


def table(rows: Sequence[Row]) -> str:
    head = (f"{'model':<8} {'target':<10} {'K':>6} {'n':>3} {'golden ms':>9} {'eng0 ms':>9} "
            f"{'sample ms':>9} {'run ms':>9} {'total ms':>9} {'eng0/g':>6} {'run/g':>7} "
            f"{'paired':>7} {'total/g':>7} ok")
    lines = [head, "-" * len(head)]
    for r in rows:
        ok = "yes" if r.ratio_run <= TARGET_RATIO else "NO"
        lines.append(
            f"{r.model:<8} {r.target:<10} {r.faults:>6} {r.trials:>3} {r.golden_s * 1e3:>9.2f} "
            f"{r.engine_golden_s * 1e3:>9.2f} {r.sample_s * 1e3:>9.2f} {r.run_s * 1e3:>9.2f} "
            f"{r.total_s * 1e3:>9.2f} {r.ratio_engine_golden:>6.3f} {r.ratio_run:>7.3f} "
            f"{r.ratio_paired:>7.3f} {r.ratio_total:>7.3f} {ok}"
        )
    return "\n".join(lines)


def environment() -> dict[str, Any]:
    return {"python": platform.python_version(), "numpy": np.__version__,
            "onnx": onnx.__version__, "onnxruntime": ort.__version__,
            "cpu_count": os.cpu_count(), "machine": platform.machine(),
            "processor": platform.processor() or platform.machine(),
            "loadavg_start": _LOAD_START, "loadavg_end": os.getloadavg()}


_LOAD_START = os.getloadavg()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--repeats", type=int, default=9,
                   help="timed golden runs per median (default 9)")
    p.add_argument("--trials", type=int, default=10,
                   help="trials per configuration, at most (default 10)")
    p.add_argument("--batch-size", type=int, default=CampaignConfig().batch_size,
                   help="samples per session.run, golden and faulty alike (default %(default)s)")
    p.add_argument("--budget", type=float, default=4.0,
                   help=f"seconds per configuration after which trials stop (at least "
                        f"{MIN_TRIALS} run; default %(default)s)")
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op threads of every session (default: onnxruntime's)")
    p.add_argument("--big-model", choices=("cnn", "mlp"), default="cnn",
                   help="the >1M-parameter model (default cnn)")
    p.add_argument("--samples", type=int, default=512,
                   help="synthetic inputs for the big model (default 512)")
    p.add_argument("--skip-digits", action="store_true", help="only the big model")
    p.add_argument("--skip-big", action="store_true", help="only the digits model")
    p.add_argument("--json", action="store_true", help="JSON on stdout instead of the table")
    a = p.parse_args(argv)
    if min(a.repeats, a.trials, a.batch_size, a.samples, a.threads or 1) < 1:
        p.error("--repeats, --trials, --batch-size, --samples and --threads must be >= 1")
    return a


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    t_start = time.perf_counter()
    if _LOAD_START[0] > 0.5:
        log(f"warning: load average {_LOAD_START[0]:.2f} before the start: other processes "
            "share the CPU, timings will be noisy (compare the paired ratios)")
    rows: list[Row] = []
    models: dict[str, Any] = {}
    if not args.skip_digits:
        model = onnx.load(str(ROOT / "models" / "digits_cnn.onnx"))
        with np.load(ROOT / "models" / "digits_test.npz") as z:
            data = {"input": z["input"]}
        plan = [(SiteKind.WEIGHT, COUNTS), (SiteKind.ACTIVATION, COUNTS)]
        r, f = bench_model("digits", model, data, plan, args, log)
        rows += r
        models["digits"] = f
    if not args.skip_big:
        name = f"{args.big_model}1M"
        model = build_big_model(args.big_model)
        data = {"input": synthetic_inputs(model, args.samples)}
        plan = [(SiteKind.WEIGHT, (*COUNTS, HEADLINE)), (SiteKind.ACTIVATION, COUNTS)]
        r, f = bench_model(name, model, data, plan, args, log)
        rows += r
        models[name] = f
    elapsed = time.perf_counter() - t_start
    if args.json:
        json.dump({"config": {k: v for k, v in vars(args).items() if k != "json"},
                   "target_ratio": TARGET_RATIO, "environment": environment(),
                   "models": models, "rows": [asdict(r) for r in rows],
                   "elapsed_s": elapsed}, sys.stdout, indent=2)
        print()
    else:
        print(table(rows))
        load = f"{_LOAD_START[0]:.2f} -> {os.getloadavg()[0]:.2f}"
        print(f"\nrun/g = median run / median interleaved golden (target <= {TARGET_RATIO}); "
              "paired = median of per-trial run/golden; eng0 = engine without faults;\n"
              f"total = sampling + run; n = trials timed. onnxruntime {ort.__version__}, "
              f"{os.cpu_count()} CPUs, load average {load}, {elapsed:.0f} s.")
        bad = [f"{m} {t}" for m, f in models.items() for t, v in f["targets"].items()
               if not v["golden_bit_identical"]]
        if bad:
            print("WARNING: engine golden outputs differ from the plain session for: "
                  + ", ".join(bad))
    return 0


if __name__ == "__main__":
    sys.exit(main())
