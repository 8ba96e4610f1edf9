"""The model corpus (:mod:`tests.corpus`, 33 models) through the whole check matrix (issue 9).

For every model:

* **sites**: weights and activations are listed; every main-graph tensor of a dtype faults
  can hit is a site (shapes ONNX cannot infer measured on the data); bodies' weights and
  activations are sites under path names;
* **empty plan**: ``inject`` with no fault gives a model whose outputs are bit-identical to
  the source model's, under onnxruntime's default session options and under the project's;
* **weight fault**: ``inject`` equals the source model with the weight's bits changed in
  numpy (the reference edits the source's own initializer, ``Constant`` node or body
  initializer), bit for bit;
* **activation fault**: ``inject`` equals the two-pass numpy reference: run the source with
  the tensor exposed, flip the bit in numpy, feed the tensor back in place of its producer's
  output, bit for bit;
* **campaign**: a short campaign on weights and one on activations; every stored trial's
  outcomes equal those of ``inject`` + a plain run of the same stored faults, judged against
  the unmodified model's golden run.

The references use onnx and onnxruntime only, never the package's rewriting code.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from enpheeph_onnx import SiteKind, discover_sites, inject
from enpheeph_onnx.campaign import CampaignConfig, Dataset, run_campaign
from enpheeph_onnx.campaign.config import SiteSelection
from enpheeph_onnx.campaign.outcomes import classify
from enpheeph_onnx.engine import FaultEngine
from enpheeph_onnx.faults import Fault, FaultModel
from enpheeph_onnx.model import load_model
from enpheeph_onnx.runtime import Optimization, session_options
from enpheeph_onnx.sites import with_measured_shapes
from enpheeph_onnx.store import ResultStore

from .corpus import CORPUS, CorpusModel

NAMES = sorted(CORPUS)

BIT = {"float32": 30, "float64": 62, "float16": 14, "int8": 6, "uint8": 6, "int32": 30}
"""The bit each check flips: the exponent's MSB of floats (a large change), bit 6 of
integers."""


@functools.cache
def built(name: str) -> CorpusModel:
    return CORPUS[name]()


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("corpus")


def saved(name: str, where: Path) -> Path:
    """The model as a file (with external data where the corpus says so)."""
    path = where / f"{name}.onnx"
    if not path.exists():
        cm = built(name)
        m = copy.deepcopy(cm.model)
        if cm.external_data:
            onnx.save_model(m, str(path), save_as_external_data=True,
                            all_tensors_to_one_file=True, location=f"{name}.data",
                            size_threshold=0)
        else:
            onnx.save_model(m, str(path))
    return path


def fixed_batch(model: onnx.ModelProto) -> bool:
    """Whether a data input has a fixed leading dimension of 1."""
    inits = {t.name for t in model.graph.initializer}
    for i in model.graph.input:
        dims = i.type.tensor_type.shape.dim
        if i.name not in inits and dims and dims[0].HasField("dim_value") \
                and dims[0].dim_value == 1:
            return True
    return False


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray], default: bool = False,
        one_by_one: bool = False, optimization: Optimization = Optimization.EXTENDED
        ) -> dict[str, np.ndarray]:
    """Outputs of a plain onnxruntime CPU session (default or the project's session
    options at ``optimization``); ``one_by_one``: sample by sample, concatenated (fixed
    batch of 1)."""
    opts = ort.SessionOptions() if default else session_options(optimization=optimization)
    sess = ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    wanted = {i.name for i in sess.get_inputs()}
    if not one_by_one:
        return dict(zip(names, sess.run(names, {k: v for k, v in feeds.items()
                                                  if k in wanted}), strict=True))
    n = max(len(v) for v in feeds.values() if v.ndim)
    parts = [sess.run(names, {k: (v[i:i + 1] if v.ndim else v) for k, v in feeds.items()
                              if k in wanted}) for i in range(n)]
    return {nm: np.concatenate([p[j] for p in parts]) for j, nm in enumerate(names)}


def assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray], what: str) -> None:
    assert a.keys() == b.keys(), what
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, f"{what}: {k}"
        assert a[k].tobytes() == b[k].tobytes(), (
            f"{what}: output {k!r} differs by up to "
            f"{np.max(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)))}")


def _first(cm: CorpusModel) -> dict[str, np.ndarray]:
    """The first batch, as a campaign measures shapes on it: the whole feeds, one sample
    for a model with a fixed batch of 1."""
    if not fixed_batch(cm.model):
        return cm.feeds
    return {k: (v[:1] if v.ndim else v) for k, v in cm.feeds.items()}


def source_run(name: str, default: bool = False) -> dict[str, np.ndarray]:
    cm = built(name)
    return run(cm.model, cm.feeds, default, fixed_batch(cm.model))


# -- sites ----------------------------------------------------------------------------------


def _exposed_dtypes(model: onnx.ModelProto, feeds: dict[str, np.ndarray],
                    one_by_one: bool) -> dict[str, np.dtype]:
    """dtype of every main-graph node output, measured by onnxruntime (all exposed)."""
    m = copy.deepcopy(model)
    have = {o.name for o in m.graph.output}
    for n in m.graph.node:
        for o in n.output:
            if o and o not in have and n.op_type != "Constant":
                m.graph.output.append(helper.ValueInfoProto(name=o))
                have.add(o)
    out = run(m, feeds, one_by_one=one_by_one)
    return {k: v.dtype for k, v in out.items() if isinstance(v, np.ndarray)}


@pytest.mark.parametrize("name", NAMES)
def test_sites(name: str, store_dir: Path) -> None:
    cm = built(name)
    model = load_model(saved(name, store_dir))
    first = _first(cm)
    sites = discover_sites(model, first)
    names = [s.name for s in sites]
    assert len(names) == len(set(names))
    kinds = {s.kind for s in sites}
    assert SiteKind.WEIGHT in kinds and SiteKind.ACTIVATION in kinds
    # no tensor is silently dropped: every main-graph node output of a dtype faults can hit
    hit = {"float32", "float16", "float64", "int8", "uint8", "int16", "uint16", "int32",
           "uint32"}
    measured = _exposed_dtypes(cm.model, first, False)
    missing = {t for t, dt in measured.items() if dt.name in hit} - set(names)
    assert not missing, f"tensors that are no sites: {sorted(missing)}"
    if "subgraph" in cm.tags:
        body = [s for s in sites if "/" in s.name and (s.source == "body_output"
                                                       or s.kind is SiteKind.WEIGHT)]
        assert any(s.kind is SiteKind.WEIGHT for s in body), "no body weight listed"
        assert any(s.kind is SiteKind.ACTIVATION for s in body), "no body activation listed"


# -- empty plan -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("default", [False, True], ids=["project-options", "default-options"])
def test_empty_plan_is_bit_identical(name: str, default: bool, store_dir: Path) -> None:
    cm = built(name)
    empty = inject(saved(name, store_dir), []).model
    assert_same(run(empty, cm.feeds, default, fixed_batch(cm.model)),
                source_run(name, default), "empty plan")


# -- weight fault: numpy reference ----------------------------------------------------------


def _weight_holder(model: onnx.ModelProto, site: str) -> onnx.TensorProto:
    """The source model's own TensorProto of weight ``site``: a main-graph initializer, a
    ``Constant`` node's value, or (``node/attr/name``) a body's initializer or Constant."""
    g = model.graph
    for t in g.initializer:
        if t.name == site:
            return t
    for n in g.node:
        if n.op_type == "Constant" and n.output[0] == site:
            return next(a.t for a in n.attribute if a.name == "value")
    node, attr, local = site.split("/", 2)
    for i, n in enumerate(g.node):
        if (n.name or f"{n.op_type}_{i}") != node:
            continue
        body = next(a.g for a in n.attribute if a.name == attr)
        for t in body.initializer:
            if t.name == local:
                return t
        for x in body.node:
            if x.op_type == "Constant" and x.output[0] == local:
                return next(a.t for a in x.attribute if a.name == "value")
    raise AssertionError(f"weight {site!r} not found in the source model")


def _flipped(a: np.ndarray, flat: int | np.ndarray, bit: int) -> np.ndarray:
    out = a.copy()
    u = out.reshape(-1).view({1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[
        a.dtype.itemsize])
    u[flat] ^= u.dtype.type(1 << bit)
    return out


def _weight_cases(name: str, store_dir: Path) -> list[str]:
    """The largest weight of the main graph and the largest of a body, where there is one
    (scalars, e.g. zero points, are skipped)."""
    model = load_model(saved(name, store_dir))
    weights = [s for s in discover_sites(model) if s.kind is SiteKind.WEIGHT
               and (s.elements or 0) >= 8 and s.dtype in BIT]
    main = [s for s in weights if s.name.count("/") < 2 or s.source == "constant"]
    body = [s for s in weights if s not in main]
    out = []
    for group in (main, body):
        if group:
            out.append(max(group, key=lambda s: (s.elements, s.name)).name)
    return out


@pytest.mark.parametrize("name", NAMES)
def test_weight_fault_equals_the_numpy_reference(name: str, store_dir: Path) -> None:
    cm = built(name)
    cases = _weight_cases(name, store_dir)
    assert cases
    golden = source_run(name)
    changed = False
    for site in cases:
        w = numpy_helper.to_array(_weight_holder(cm.model, site))
        bit = BIT[w.dtype.name]
        # the largest elements whose bit is 0: flipping one makes the weight large (floats:
        # the exponent's MSB set multiplies it by 2**128), so the fault reaches the outputs
        # unless a ReLU cuts it off for every input: up to 3 of them
        u = w.reshape(-1).view({1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[
            w.dtype.itemsize])
        clear = (u >> u.dtype.type(bit)) & u.dtype.type(1) == 0
        size = np.where(clear, np.abs(w.astype(np.float64)).reshape(-1), -1.0)
        for flat in np.argsort(-size, kind="stable")[:3].tolist():
            ref = copy.deepcopy(cm.model)
            holder = _weight_holder(ref, site)
            holder.CopyFrom(numpy_helper.from_array(_flipped(w, flat, bit), holder.name))
            idx = tuple(int(i) for i in np.unravel_index(flat, w.shape))
            faulty = inject(saved(name, store_dir), [Fault(site, idx, FaultModel.BIT_FLIP,
                                                           (bit,))]).model
            want = run(ref, cm.feeds, one_by_one=fixed_batch(cm.model))
            assert_same(run(faulty, cm.feeds, one_by_one=fixed_batch(cm.model)), want,
                        f"weight {site}{list(idx)}")
            changed |= any(want[k].tobytes() != golden[k].tobytes() for k in want)
    assert changed, "no weight fault reached the outputs: the check could not fail"


# -- activation fault: two-pass numpy reference ---------------------------------------------


def _activation_case(name: str, store_dir: Path) -> tuple[str, tuple[int, ...], int] | None:
    """A main-graph activation in the middle of the graph (batched, of a dtype with a
    reference bit, not a graph output) and a fault on its first sample."""
    cm = built(name)
    model = load_model(saved(name, store_dir))
    first = _first(cm)
    outputs = {o.name for o in model.graph.output}
    fixed = fixed_batch(cm.model)
    acts = [s for s in discover_sites(model, first)
            if s.kind is SiteKind.ACTIVATION and s.source == "node_output" and s.dtype in BIT
            and s.name not in outputs and s.shape
            and (fixed or not isinstance(s.shape[0], int))]
    if not acts:
        return None
    s = acts[len(acts) // 2]
    shape = [d if isinstance(d, int) else 1 for d in s.shape]
    idx = (0, *(int(d) // 2 for d in shape[1:]))
    return s.name, idx, BIT[s.dtype]


def _fed_back(model: onnx.ModelProto, tensor: str, elem_type: int) -> onnx.ModelProto:
    """``model`` with ``tensor`` a graph input: its producer writes ``tensor__golden``."""
    m = copy.deepcopy(model)
    for n in m.graph.node:
        for k, o in enumerate(n.output):
            if o == tensor:
                n.output[k] = f"{tensor}__golden"
    m.graph.input.append(helper.make_tensor_value_info(tensor, elem_type, None))
    kept = [v for v in m.graph.value_info if v.name != tensor]
    del m.graph.value_info[:]
    m.graph.value_info.extend(kept)
    return m


@pytest.mark.parametrize("name", NAMES)
def test_activation_fault_equals_the_two_pass_reference(name: str, store_dir: Path) -> None:
    cm = built(name)
    case = _activation_case(name, store_dir)
    if case is None:
        pytest.skip("no batched main-graph activation")
    tensor, idx, bit = case
    one = fixed_batch(cm.model)
    exposed = copy.deepcopy(cm.model)
    exposed.graph.output.append(helper.ValueInfoProto(name=tensor))
    value = run(exposed, cm.feeds, one_by_one=one)[tensor]
    bad = value.copy()
    # a model with a fixed batch of 1 runs sample by sample: index 0 is every sample
    rows = slice(None) if one else idx[0]
    where = (rows, *idx[1:])
    bad[where] = _flipped(value[where].reshape(-1), np.arange(bad[where].size), bit).reshape(
        bad[where].shape)
    ref = _fed_back(cm.model, tensor, helper.np_dtype_to_tensor_dtype(value.dtype))
    want = run(ref, {**cm.feeds, tensor: bad}, one_by_one=one)
    faulty = inject(saved(name, store_dir), [Fault(tensor, idx, FaultModel.BIT_FLIP, (bit,))],
                    sample=_first(cm)).model
    got = run(faulty, cm.feeds, one_by_one=one)
    assert_same(got, want, f"activation {tensor}{list(idx)} bit {bit}")


# -- campaigns: trials equal inject + run ---------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kind", [SiteKind.WEIGHT, SiteKind.ACTIVATION])
def test_campaign_trials_equal_inject_and_run(name: str, kind: SiteKind,
                                              store_dir: Path) -> None:
    """Every stored trial: the engine's outputs for its faults equal inject + run bit for
    bit, and the stored outcomes are those of inject + run judged against the golden run
    with the same fusion boundaries (the unmodified model's, wherever fault nodes leave
    onnxruntime's fusions alone)."""
    cm = built(name)
    path = saved(name, store_dir)
    db = store_dir / f"{name}-{kind.value}.db"
    db.unlink(missing_ok=True)
    one = fixed_batch(cm.model)
    batch = 1 if one else len(next(v for v in cm.feeds.values() if v.ndim))
    cfg = CampaignConfig(selection=SiteSelection(kinds=(kind,)), faults_per_trial=2,
                         trials=4, seed=3, batch_size=batch)
    run_campaign(path, Dataset(cm.feeds), cfg, db, progress=False)
    first = _first(cm)
    proto = with_measured_shapes(load_model(path), first)  # as the campaign: one batch
    engine = FaultEngine(proto, [s for s in discover_sites(proto) if s.kind is kind])
    golden = source_run(name)
    output = next(iter(golden))
    seen = 0
    with ResultStore.open(db) as store:
        assert store.meta()["golden_deviation"] == 0.0 or kind is SiteKind.WEIGHT
        for trial, codes, _ in store.outcome_sets():
            faults = store.faults(trial)
            assert faults is not None and len(faults) == 2
            out = run(inject(path, faults, sample=first).model, cm.feeds, one_by_one=one)
            assert_same(engine.run(cm.feeds, faults, batch), out, f"trial {trial}")
            ref = engine.reference(cm.feeds, faults, batch)
            assert codes.tolist() == classify(ref, out, output).tolist(), f"trial {trial}"
            if not engine.exact_sessions:  # fault nodes leave onnxruntime's fusions alone
                assert_same(ref, golden, "the golden run")
            seen += 1
    assert seen == 4


@pytest.mark.parametrize("name", NAMES)
def test_weight_campaigns_at_optimization_all(name: str, store_dir: Path) -> None:
    """At ``--optimization all`` every model's weight campaign runs: weights onnxruntime
    holds as stored are faulted in place in its optimized graph (equal to inject + run up
    to pre-packing, a few ulp), every other weight (folded, int8, float16, in a body) by a
    session per trial with its faults written in, equal to inject + run bit for bit."""
    cm = built(name)
    path = saved(name, store_dir)
    one = fixed_batch(cm.model)
    batch = 1 if one else len(next(v for v in cm.feeds.values() if v.ndim))
    cfg = CampaignConfig(faults_per_trial=2, trials=3, seed=5, batch_size=batch,
                         optimization=Optimization.ALL)
    db = store_dir / f"{name}-all.db"
    db.unlink(missing_ok=True)
    run_campaign(path, Dataset(cm.feeds), cfg, db, progress=False)
    proto = load_model(path)
    engine = FaultEngine(proto, [s for s in discover_sites(proto) if s.kind is SiteKind.WEIGHT],
                         optimization=Optimization.ALL)
    with ResultStore.open(db) as store:
        for trial, fs in store.fault_sets():
            want = run(inject(path, fs).model, cm.feeds, one_by_one=one,
                       optimization=Optimization.ALL)
            got = engine.run(cm.feeds, fs, batch)
            if fs.hit_sites() & engine.folded_weights:
                assert_same(got, want, f"baked trial {trial}")
            else:
                for k in want:
                    assert np.allclose(got[k], want[k], rtol=1e-4, atol=1e-5,
                                       equal_nan=True), f"held trial {trial}: {k}"
