"""PyTorch -> ONNX export at opset 26 / IR <= 13, checked against torch before writing.

The TorchScript exporter (``torch.onnx.export(..., dynamo=False)``) is used: it is the one
that exports torch.ao quantized modules, and it names node outputs after module paths
(``/conv1/Conv_output_0``), which keeps fault sites readable. Its opset (18) is raised to
26 with ``onnx.version_converter``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx

from ..errors import EnpheephError
from ..model import TARGET_OPSET, clamp_ir_version, ensure_opset, save_model, set_metadata
from ..runtime import make_session

log = logging.getLogger(__name__)

TORCH_EXPORT_OPSET = 18

Postprocess = Callable[[onnx.ModelProto], tuple[onnx.ModelProto, dict[str, dict[str, Any]]]]
"""Rewrites the raw export and returns it with per-tensor annotations."""


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise EnpheephError(
            "exporting needs PyTorch: pip install torch==2.13.0 && pip install "
            "'enpheeph-onnx[torch]'"
        ) from None
    return torch


def load_factory(spec: str) -> Callable[..., Any]:
    """Import ``package.module:factory`` (the current folder is importable) and return the
    callable.

    Raises:
        EnpheephError: malformed spec, module not importable, attribute missing or not
            callable.
    """
    from ..plugins import load_callable

    return load_callable(spec, "--model")  # type: ignore[no-any-return]


def load_weights(module: Any, path: str | os.PathLike[str]) -> None:
    """``module.load_state_dict(torch.load(path, weights_only=True))``, strictly.

    Raises:
        EnpheephError: unreadable file or weights that do not match the module.
    """
    torch = _torch()
    try:
        state = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise EnpheephError(f"weights file not found: {path}") from None
    except Exception as e:
        raise EnpheephError(f"cannot load weights {path}: {type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''}") from None
    if isinstance(state, Mapping) and "state_dict" in state:
        state = state["state_dict"]
    try:
        module.load_state_dict(state, strict=True)
    except Exception as e:
        first = str(e).strip().splitlines()
        raise EnpheephError(f"weights {path} do not match the model: "
                            f"{' '.join(x.strip() for x in first[:2])}") from None


def fold_pruning(module: Any) -> dict[str, dict[str, Any]]:
    """Fold ``torch.nn.utils.prune`` masks into the weights (``prune.remove``), in place.

    Returns ``{parameter name: {"method": ..., "amount": ..., "sparsity": ...}}`` for every
    pruned parameter (the name as the ONNX initializer will carry it, e.g.
    ``conv1.weight``); ``method`` is the pruning class (``L1Unstructured``,
    ``LnStructured``, ``RandomUnstructured``, ``PruningContainer`` for iterated pruning).
    """
    _torch()  # a clear error when torch is missing
    from torch.nn.utils import prune

    found: dict[str, dict[str, Any]] = {}
    for mod_name, mod in module.named_modules():
        for hook in list(mod._forward_pre_hooks.values()):
            if not isinstance(hook, prune.BasePruningMethod):
                continue
            pname = hook._tensor_name
            mask = getattr(mod, pname + "_mask")
            full = f"{mod_name}.{pname}" if mod_name else pname
            found[full] = {"method": type(hook).__name__,
                           "amount": getattr(hook, "amount", None),
                           "sparsity": float(1.0 - mask.float().mean().item())}
            prune.remove(mod, pname)
    return found


@contextlib.contextmanager
def _quiet() -> Any:
    """Silence what the TorchScript exporter prints (also at the C level, e.g. the whole
    Torch IR graph on failure): our own one-line error says what went wrong."""
    import sys
    import tempfile

    saved = []
    with tempfile.TemporaryFile() as sink, contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        for fd in (1, 2):
            try:
                saved.append((fd, os.dup(fd)))
            except OSError:
                continue
        for s in (sys.__stdout__, sys.__stderr__):
            if s is not None:
                s.flush()
        try:
            for fd, _ in saved:
                os.dup2(sink.fileno(), fd)
            yield
        finally:
            for fd, copy in saved:
                os.dup2(copy, fd)
                os.close(copy)


class ExportMismatchError(EnpheephError):
    """onnxruntime's outputs differ from torch's for the exported model."""


def _split_initializer_identities(g: onnx.GraphProto) -> None:
    """Undo the TorchScript exporter's deduplication of equal-valued parameters
    (``Identity(init) -> name``): each becomes an initializer of its own (same value), so a
    weight fault hits one parameter only, as memory does."""
    inits = {t.name: t for t in g.initializer}
    outputs = {o.name for o in g.output}
    keep = []
    for n in g.node:
        if (n.op_type == "Identity" and len(n.input) == 1 and n.input[0] in inits
                and n.output[0] not in inits and n.output[0] not in outputs):
            t = onnx.TensorProto()
            t.CopyFrom(inits[n.input[0]])
            t.name = n.output[0]
            g.initializer.append(t)
            inits[t.name] = t
        else:
            keep.append(n)
    del g.node[:]
    g.node.extend(keep)


def _strip_unused_opsets(model: onnx.ModelProto) -> None:
    used = {n.domain or "" for n in model.graph.node}
    for f in model.functions:
        used |= {n.domain or "" for n in f.node}
        used.add(f.domain)
    keep = [o for o in model.opset_import if (o.domain or "") in used or o.domain in ("",)]
    del model.opset_import[:]
    model.opset_import.extend(keep)



def _to_numpy(t: Any) -> np.ndarray:
    return t.detach().cpu().numpy()


def export_model(
    module: Any,
    example_inputs: Sequence[Any],
    out: str | os.PathLike[str] | None = None,
    *,
    input_names: Sequence[str] = ("input",),
    output_names: Sequence[str] = ("logits",),
    dynamic_batch: bool = True,
    check_inputs: Sequence[Sequence[Any]] = (),
    atol: float = 1e-5,
    exact: bool = False,
    postprocess: Postprocess | None = None,
    metadata: Mapping[str, str] | None = None,
) -> onnx.ModelProto:
    """Export a torch module to ONNX (opset 26, IR <= 13) and check it against torch.

    Args:
        module: a ``torch.nn.Module`` (put in eval mode here).
        example_inputs: the tensors of one forward call (batch along dim 0).
        out: path to write atomically, or ``None``.
        input_names, output_names: ONNX names of the inputs and outputs.
        dynamic_batch: make dim 0 of every input and output the symbolic ``batch``.
        check_inputs: more input tuples to compare torch and onnxruntime on.
        atol: largest allowed absolute difference between torch and onnxruntime outputs.
        exact: outputs must be equal (e.g. spike counts); ``atol`` is then ignored.
        postprocess: rewrites the raw export and returns per-tensor annotations, stored
            as ``enpheeph.annotations`` metadata (read by :func:`~enpheeph_onnx.discover_sites`).

    ``module`` is put in eval mode, and the masks of pruned modules
    (``torch.nn.utils.prune``, unstructured or structured) are folded into their weights
    in place (``prune.remove``: the forward is unchanged); the pruned parameters are
    recorded as ``enpheeph.pruned`` metadata (method, amount, sparsity).
        metadata: extra ``metadata_props``.

    Returns:
        The exported, checked ``ModelProto``.

    Raises:
        EnpheephError: torch cannot export the module, the opset conversion fails, or
            onnxruntime's outputs differ from torch's.
    """
    torch = _torch()
    module.eval()
    pruned = fold_pruning(module)
    example = tuple(example_inputs)
    dyn = None
    if dynamic_batch:
        dyn = {name: {0: "batch"} for name in [*input_names, *output_names]}
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings(), _quiet():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, example, buf, dynamo=False,
                              opset_version=TORCH_EXPORT_OPSET,
                              input_names=list(input_names), output_names=list(output_names),
                              dynamic_axes=dyn, do_constant_folding=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EnpheephError(f"torch cannot export this model: {first}") from None
    model = onnx.load_from_string(buf.getvalue())
    notes: dict[str, dict[str, Any]] = {}
    if postprocess is not None:
        model, notes = postprocess(model)
    _split_initializer_identities(model.graph)
    if any(o.domain in ("", "ai.onnx") and o.version < TARGET_OPSET for o in model.opset_import):
        model = ensure_opset(model)
    clamp_ir_version(model)
    _strip_unused_opsets(model)
    meta = {"enpheeph.exporter": "enpheeph_onnx.export", **(metadata or {})}
    if pruned:
        meta["enpheeph.pruned"] = json.dumps(pruned, sort_keys=True)
    if notes:
        meta["enpheeph.annotations"] = json.dumps({"tensors": notes}, sort_keys=True)
    set_metadata(model, meta)
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:
        raise EnpheephError(f"the exported model fails the ONNX checker: "
                            f"{str(e).strip().splitlines()[0]}") from None
    check_against_torch(module, model, [example, *[tuple(c) for c in check_inputs]],
                        input_names, output_names, atol, exact)
    if out is not None:
        save_model(model, out)
    return model


def check_against_torch(module: Any, model: onnx.ModelProto, inputs: Sequence[Sequence[Any]],
                        input_names: Sequence[str], output_names: Sequence[str], atol: float,
                        exact: bool) -> float:
    """Largest |torch - onnxruntime| over ``inputs``.

    Raises:
        EnpheephError: it exceeds ``atol`` (or is non-zero with ``exact``).
    """
    torch = _torch()
    sess = make_session(model)
    worst = 0.0
    for args in inputs:
        with torch.no_grad():
            ref = module(*args)
        refs = ref if isinstance(ref, tuple | list) else (ref,)
        feeds = {n: _to_numpy(a) for n, a in zip(input_names, args, strict=True)}
        got = sess.run(list(output_names), feeds)
        for name, r, g in zip(output_names, refs, got, strict=True):
            r = _to_numpy(r)
            if r.shape != g.shape:
                raise EnpheephError(f"exported output {name!r} has shape {g.shape}, torch "
                                    f"{r.shape}")
            diff = float(np.max(np.abs(r.astype(np.float64) - g.astype(np.float64)))
                         ) if r.size else 0.0
            worst = max(worst, diff)
            if (exact and diff != 0) or diff > atol:
                raise ExportMismatchError(
                    f"onnxruntime and torch disagree on output {name!r} (max abs diff "
                    f"{diff:.3g} > {0 if exact else atol:g}); the model did not export faithfully"
                )
    log.info("export checked against torch: max abs diff %.3g", worst)
    return worst
