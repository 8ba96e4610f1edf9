"""Loading, checking, converting and saving ONNX models.

onnxruntime 1.31 accepts IR version <= 13 and default-domain (``ai.onnx``) opset <= 26;
``BitCast``, used by activation faults, needs opset 26 (ONNX operator spec, BitCast-26).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from .errors import EnpheephError

log = logging.getLogger(__name__)

TARGET_OPSET = 26
"""Default-domain opset of rewritten graphs (``BitCast`` exists from opset 26)."""
MIN_IR_VERSION = 10
MAX_IR_VERSION = 13
"""onnxruntime 1.31 rejects IR versions above 13."""

ModelSource = str | os.PathLike[str] | onnx.ModelProto


def load_model(src: ModelSource) -> onnx.ModelProto:
    """Load and check a model from a path (external data included) or pass a proto through.

    Raises:
        EnpheephError: the file is missing, truncated, not ONNX, or fails ``onnx.checker``.
    """
    if isinstance(src, onnx.ModelProto):
        model = src
        where = "the model"
    else:
        path = Path(src)
        where = str(path)
        if not path.is_file():
            raise EnpheephError(f"model file not found: {path}")
        try:
            model = onnx.load(str(path), load_external_data=True)
        except onnx.checker.ValidationError as e:  # external data outside the model's folder
            first = str(e).strip().splitlines()[0] if str(e).strip() else "invalid"
            raise EnpheephError(
                f"{path}: external data refused ({first}); keep external data files as "
                "plain files in the model's folder") from None
        except (DecodeError, RuntimeError, ValueError, OSError) as e:
            raise EnpheephError(
                f"{path} is not a readable ONNX model ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else 'decode error'}); "
                "is the file truncated or of another format?"
            ) from None
    if not model.HasField("graph") or not model.graph.node:
        raise EnpheephError(f"{where} is not an ONNX model: it holds no graph nodes")
    model = name_body_tensors(hoist_subgraph_weights(
        drop_stale_value_info(merge_opset_imports(model, where), where)))
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EnpheephError(f"{where} fails the ONNX checker: {first}") from None
    return model


def as_model(src: ModelSource) -> onnx.ModelProto:
    """``src`` itself when it is a ``ModelProto``, else :func:`load_model` of the path: what
    every public function taking a model accepts.

    Raises:
        EnpheephError: as :func:`load_model`, for a path.
    """
    return src if isinstance(src, onnx.ModelProto) else load_model(src)


def merge_opset_imports(model: onnx.ModelProto, where: str = "the model") -> onnx.ModelProto:
    """``model`` with each operator domain imported once (``""`` and ``"ai.onnx"`` are the
    same domain; some converters, e.g. skl2onnx, import it twice at the same version): a
    copy when imports had to be merged, else ``model`` itself.

    Raises:
        EnpheephError: a domain imported at two different versions (which one the graph
            means is not defined: ONNX IR spec, "Operator Sets").
    """
    seen: dict[str, tuple[str, int]] = {}  # domain -> (name to write, version)
    for op in model.opset_import:
        d = "" if op.domain == "ai.onnx" else op.domain
        if d in seen and seen[d][1] != op.version:
            raise EnpheephError(
                f"{where} imports operator domain {d or 'ai.onnx'!r} twice, at versions "
                f"{seen[d][1]} and {op.version}; keep one import (re-export or edit "
                "opset_import)")
        seen.setdefault(d, (d, int(op.version)))  # the default domain spelled ""
    if len(seen) == len(model.opset_import) and not any(
            op.domain == "ai.onnx" for op in model.opset_import):
        return model
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.opset_import[:]
    m.opset_import.extend(onnx.helper.make_opsetid(name, v) for name, v in seen.values())

    def respell(nodes: Iterable[onnx.NodeProto]) -> None:  # nodes follow the import's name
        for n in nodes:
            if n.domain == "ai.onnx":
                n.domain = ""
            for a in n.attribute:
                for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else
                          a.graphs if a.type == onnx.AttributeProto.GRAPHS else []):
                    respell(g.node)

    respell(m.graph.node)
    for f in m.functions:
        respell(f.node)
    log.info("%s: opset imports merged to one per domain", where)
    return m


def _dims(vi: onnx.ValueInfoProto) -> tuple[int, list[int | None] | None]:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return t.elem_type, None
    return t.elem_type, [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]


def _conflict(declared: onnx.ValueInfoProto, inferred: onnx.ValueInfoProto) -> bool:
    (te, ds), (ti, di) = _dims(declared), _dims(inferred)
    if te and ti and te != ti:
        return True
    if ds is None or di is None:
        return False
    return len(ds) != len(di) or any(a is not None and b is not None and a != b
                                     for a, b in zip(ds, di, strict=True))


def drop_stale_value_info(model: onnx.ModelProto, where: str = "the model") -> onnx.ModelProto:
    """``model`` without the declared ``value_info`` entries (types/shapes of intermediate
    tensors) that contradict ONNX shape inference from the graph itself; onnxruntime
    tolerates such entries, but shape inference after an opset conversion or a rewrite
    fails on them. A copy when something was dropped, else ``model`` itself."""
    g = model.graph
    if not g.value_info:
        return model
    bare = onnx.ModelProto()
    bare.CopyFrom(model)
    del bare.graph.value_info[:]
    try:
        inferred = onnx.shape_inference.infer_shapes(bare)
    except Exception:  # inference itself fails: nothing to compare with
        return model
    known = {v.name: v for v in [*inferred.graph.value_info, *inferred.graph.output]}
    stale = [v.name for v in g.value_info if v.name in known and _conflict(v, known[v.name])]
    if not stale:
        return model
    log.warning("%s declares a shape or type for %d tensor(s) that its graph does not "
                "compute (e.g. %r); those declarations are ignored", where, len(stale),
                stale[0])
    m = onnx.ModelProto()
    m.CopyFrom(model)
    keep = [v for v in m.graph.value_info if v.name not in set(stale)]
    del m.graph.value_info[:]
    m.graph.value_info.extend(keep)
    return m


def has_subgraphs(graph: onnx.GraphProto) -> bool:
    """Whether a node of ``graph`` has an ``If``/``Loop``/``Scan`` body (a graph attribute):
    such a body may read any outer tensor, so the graph cannot be cut into segments."""
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
               for n in graph.node for a in n.attribute)


def node_bodies(node: onnx.NodeProto) -> list[tuple[str, onnx.GraphProto]]:
    """``(attribute label, body)`` of every ``If``/``Loop``/``Scan`` body of ``node`` (a
    GRAPHS attribute's k-th graph is labelled ``<name><k>``), the labels of the path names
    body tensors get."""
    out = []
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            out.append((a.name, a.g))
        elif a.type == onnx.AttributeProto.GRAPHS:
            out.extend((f"{a.name}{i}", g) for i, g in enumerate(a.graphs))
    return out


def _rename_node_reads(graph: onnx.GraphProto, renamed: Mapping[str, str]) -> None:
    """Reads of ``renamed`` tensors by ``graph``'s nodes and nested bodies point to the new
    names; a nested body defining such a name itself shadows it."""
    for n in graph.node:
        for k, name in enumerate(n.input):
            if name in renamed:
                n.input[k] = renamed[name]
        for _, body in node_bodies(n):
            rename_outer_reads(body, renamed)


def _rename_reads(graph: onnx.GraphProto, renamed: Mapping[str, str]) -> None:
    """:func:`_rename_node_reads`, and a graph output that passes a renamed tensor through
    keeps its name (an ``Identity`` from the new one)."""
    _rename_node_reads(graph, renamed)
    for o in graph.output:
        if o.name in renamed:  # a body output passing the renamed tensor through
            graph.node.append(onnx.helper.make_node("Identity", [renamed[o.name]], [o.name]))


def rename_outer_reads(body: onnx.GraphProto, renamed: Mapping[str, str]) -> None:
    """Point the reads of outer-scope tensors ``renamed`` (old name -> new) inside ``body``
    and its nested bodies to their new names, in place; a name the body defines itself
    (input, initializer, node output) shadows the outer one (ONNX IR spec, "Names
    Within a Graph": nested scopes)."""
    own = ({i.name for i in body.input} | {t.name for t in body.initializer}
           | {o for m in body.node for o in m.output})
    live = {k: v for k, v in renamed.items() if k not in own}
    if live:
        _rename_reads(body, live)


def hoist_subgraph_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with the weights of its ``If``/``Loop``/``Scan`` bodies (initializers and
    ``Constant`` nodes there, at any depth) moved to the main graph under path names,
    ``<node>/<attribute>/<name>`` (e.g. ``If_0/then_branch/W``); the bodies read them from
    the outer scope, which computes the same (ONNX IR spec: a body may read any tensor of
    an enclosing scope). So they are fault sites like any weight: listed, injected, fed
    in campaigns. ``model`` itself when no body holds a weight.
    """
    def has_weights(g: onnx.GraphProto) -> bool:
        return any(bool(b.initializer) or any(x.op_type == "Constant" for x in b.node)
                   or has_weights(b) for n in g.node for _, b in node_bodies(n))

    if not has_weights(model.graph):
        return model
    m = onnx.ModelProto()
    m.CopyFrom(model)
    taken = ({t.name for t in m.graph.initializer} | {i.name for i in m.graph.input}
             | {o for n in m.graph.node for o in n.output})
    hoisted: list[onnx.TensorProto] = []

    def unique(name: str) -> str:
        out, k = name, 1
        while out in taken:
            out, k = f"{name}_{k}", k + 1
        taken.add(out)
        return out

    def visit(g: onnx.GraphProto, prefix: str, outer: set[str]) -> None:
        scope = outer | {t.name for t in g.initializer} | {v.name for v in g.input} | {
            o for n in g.node for o in n.output}
        for i, n in enumerate(g.node):
            label = n.name or f"{n.op_type}_{i}"
            for attr, body in node_bodies(n):
                path = f"{prefix}{label}/{attr}/"
                renamed: dict[str, str] = {}
                formal = {v.name for v in body.input}  # positional: they stay
                # a body initializer named like a tensor of an enclosing scope shadows it
                # inside the body (ONNX IR spec, nested scopes; onnxruntime 1.31 reads the
                # body's, measured at every optimization level): it moves out under its
                # path name like any other, and the body reads that
                stay = [t for t in body.initializer if t.name in formal]
                for t in body.initializer:
                    if t.name in formal:
                        continue
                    new = unique(path + t.name)
                    renamed[t.name] = new
                    c = onnx.TensorProto()
                    c.CopyFrom(t)
                    c.name = new
                    hoisted.append(c)
                keep = []
                for x in body.node:
                    value = next((a.t for a in x.attribute if a.name == "value"), None)
                    if x.op_type == "Constant" and x.domain in ("", "ai.onnx") and value:
                        new = unique(path + x.output[0])
                        renamed[x.output[0]] = new
                        c = onnx.TensorProto()
                        c.CopyFrom(value)
                        c.name = new
                        hoisted.append(c)
                    else:
                        keep.append(x)
                del body.initializer[:]
                body.initializer.extend(stay)
                del body.node[:]
                body.node.extend(keep)
                if renamed:
                    _rename_reads(body, renamed)
                visit(body, path, scope)

    visit(m.graph, "", set())
    m.graph.initializer.extend(hoisted)
    log.info("%d weight(s) of If/Loop/Scan bodies moved to the main graph (e.g. %r)",
             len(hoisted), hoisted[0].name if hoisted else "")
    return m


def name_body_tensors(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every tensor computed inside an ``If``/``Loop``/``Scan`` body (at any
    depth) renamed to its path name, ``<node>/<attribute>/<name>`` (e.g.
    ``gate/then_branch/t``), the names :func:`hoist_subgraph_weights` gives body weights:
    unique across the model, so a body activation is a fault site addressed by its tensor
    name. Body outputs are positional (ONNX IR spec, "Graphs": an ``If``/``Loop``/``Scan``
    binds them by position), reads inside the body and its nested bodies follow the new
    names, so the model computes what it computed. Idempotent; ``model`` itself when it
    has no body.
    """
    if not has_subgraphs(model.graph):
        return model
    m = onnx.ModelProto()
    m.CopyFrom(model)
    taken: set[str] = set()

    def collect(g: onnx.GraphProto) -> None:
        taken.update(t.name for t in g.initializer)
        taken.update(v.name for v in g.input)
        for n in g.node:
            taken.update(n.output)
            for _, b in node_bodies(n):
                collect(b)

    collect(m.graph)

    def visit(g: onnx.GraphProto, prefix: str) -> None:
        for i, n in enumerate(g.node):
            label = n.name or f"{n.op_type}_{i}"
            for attr, body in node_bodies(n):
                path = f"{prefix}{label}/{attr}/"
                renamed: dict[str, str] = {}
                formal = {v.name for v in body.input} | {t.name for t in body.initializer}
                for x in body.node:
                    for k, o in enumerate(x.output):
                        if not o or o.startswith(path) or o in formal:
                            continue
                        new, j = path + o, 1
                        while new in taken:
                            new, j = f"{path}{o}_{j}", j + 1
                        taken.add(new)
                        renamed[o] = new
                        x.output[k] = new
                if renamed:
                    _rename_node_reads(body, renamed)
                    for v in [*body.output, *body.value_info]:  # outputs are positional
                        if v.name in renamed:
                            v.name = renamed[v.name]
                visit(body, path)

    visit(m.graph, "")
    return m


def model_sha256(src: ModelSource) -> str:
    """SHA-256 hex digest of the model file's bytes (or of the serialized proto)."""
    if isinstance(src, onnx.ModelProto):
        data = src.SerializeToString(deterministic=True)
    else:
        data = Path(src).read_bytes()
    return hashlib.sha256(data).hexdigest()


def default_opset(model: onnx.ModelProto) -> int:
    """The model's default-domain (``ai.onnx``) opset version."""
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx"):
            return int(op.version)
    return 1


def clamp_ir_version(model: onnx.ModelProto, source_ir: int | None = None) -> None:
    """Set the IR version into onnxruntime's accepted range 10..13, in place.

    ``source_ir``: the IR version the model was written with (default: its current one).
    Below IR 4 every initializer is also listed in ``graph.input`` and runtimes treat it as
    a constant; from IR 4 on a listed initializer is an overridable input (ONNX IR spec,
    "Graphs": initializers), which onnxruntime stops constant-folding and fusing. So on the
    way up from below 4 those listings are dropped, and the model computes as before.
    """
    old = int(model.ir_version if source_ir is None else source_ir)
    model.ir_version = min(max(int(model.ir_version), MIN_IR_VERSION), MAX_IR_VERSION)
    if old < 4 <= model.ir_version:
        inits = {t.name for t in model.graph.initializer}
        keep = [i for i in model.graph.input if i.name not in inits]
        if len(keep) != len(model.graph.input):
            del model.graph.input[:]
            model.graph.input.extend(keep)


def ensure_opset(model: onnx.ModelProto, opset: int = TARGET_OPSET) -> onnx.ModelProto:
    """Return ``model`` at default-domain ``opset`` (converted with ``onnx.version_converter``
    when lower; unchanged when equal).

    Raises:
        EnpheephError: the model's opset is higher than ``opset`` or conversion fails.
    """
    model = merge_opset_imports(model)
    current = default_opset(model)
    if current == opset:
        return model
    if current > opset:
        raise EnpheephError(
            f"model uses ai.onnx opset {current}; onnxruntime 1.31 runs at most {opset}: "
            "re-export it at a lower opset"
        )
    log.info("converting model from opset %d to %d", current, opset)
    source_ir = int(model.ir_version)
    try:
        converted = onnx.version_converter.convert_version(model, opset)
    except Exception as e:  # the converter raises bare RuntimeErrors of many kinds
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EnpheephError(
            f"cannot convert the model from opset {current} to {opset} for BitCast: {first}; "
            f"re-export it at opset {opset}"
        ) from None
    clamp_ir_version(converted, source_ir)
    return converted


def require_folder(folder: Path, what: str) -> None:
    """Refuse a destination folder that is missing, a file, or not writable.

    Raises:
        EnpheephError: naming ``what`` (e.g. ``"output folder"``) and the fix.
    """
    if folder.is_dir():
        if not os.access(folder, os.W_OK | os.X_OK):
            raise EnpheephError(f"{what} {folder} is not writable: choose another path")
        return
    if folder.exists():
        raise EnpheephError(f"{what} {folder} is a file, not a folder: choose another path")
    raise EnpheephError(f"{what} {folder} does not exist: create it first")


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; on success rename it onto ``dest``.

    On any exception the temporary file is removed and ``dest`` is left as it was, so an
    interrupted or failed write never leaves a partial output file.

    Raises:
        EnpheephError: the destination folder is missing, a file or not writable.
    """
    dest = Path(dest)
    require_folder(dest.parent, "output folder")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    except OSError as e:
        raise EnpheephError(f"cannot write in {dest.parent}: {e.strerror or e}") from None
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual file mode
    try:
        yield Path(tmp)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def set_metadata(model: onnx.ModelProto, entries: Mapping[str, str]) -> None:
    """Set ``metadata_props`` keys in place (replacing existing values of those keys)."""
    keep = [p for p in model.metadata_props if p.key not in entries]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for k, v in entries.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))


def save_model(model: onnx.ModelProto, dest: str | os.PathLike[str]) -> None:
    """Write ``model`` atomically as a single file (no external data)."""
    with atomic_path(dest) as tmp:
        onnx.save_model(model, str(tmp))
