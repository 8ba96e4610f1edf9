"""onnxruntime sessions: provider selection and verification, feeds, batched runs.

``onnxruntime-gpu`` installs on machines without CUDA and then silently runs on the CPU;
:func:`make_session` checks ``session.get_providers()`` and refuses such a fallback.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import onnxruntime as ort

from .errors import EnpheephError, RunFailure

log = logging.getLogger(__name__)

Provider = Literal["cpu", "cuda", "tensorrt"]


class Optimization(StrEnum):
    """How far onnxruntime optimizes the graphs of a run.

    ``EXTENDED`` (default): fusions, no layout transforms, no weight pre-packing; the same
    computation whether a weight is a constant or fed (weight campaigns feed perturbed
    weights), so campaign trials, the unmodified model and ``inject``-ed models agree bit
    for bit. ``ALL``: also NCHWc layouts and pre-packed weights, as a default onnxruntime
    session deploys the model (about 1.6x faster on convolutional networks on x86 CPUs);
    those apply only to constant weights, so it serves activation and input faults, and
    trials agree with ``run --optimization all`` of ``inject``-ed models.
    """

    EXTENDED = "extended"
    ALL = "all"
PROVIDERS: dict[str, list[str]] = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    # TensorRT runs the subgraphs it supports, CUDA the rest (onnxruntime's usual chain)
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
GPU_PROVIDERS = {"cuda", "tensorrt"}
"""Providers that run on the GPU (CUDA libraries preloaded, one GPU per Ray actor)."""


def session_options(threads: int | None = None,
                    optimization: Optimization = Optimization.EXTENDED) -> ort.SessionOptions:
    """The session options of every run, golden and faulty alike (``optimization``: see
    :class:`Optimization`; the text below is the default, ``EXTENDED``).

    Two settings keep every session computing in the same order whether a weight is a
    constant or an overridable input (a campaign feeds perturbed weights as inputs):

    * graph optimizations stop at ``ORT_ENABLE_EXTENDED``: the layout level (NCHWc
      re-packing) applies only to constant weights;
    * ``session.disable_prepacking = 1``: onnxruntime otherwise pre-packs constant
      Gemm/MatMul weights, which changes the summation order for inner dimensions >= 256
      (differences up to ~1e-5 measured);
    * ``session.disable_quant_qdq = 1``: QDQ (int8) models are computed as the ONNX spec
      defines them rather than by fused integer kernels, which need constant
      quantization parameters and saturate on CPUs without VNNI.

    With them the campaign golden run, the unmodified model and an ``inject``-ed model
    are bit-identical, which the tests of this package assert.
    """
    so = ort.SessionOptions()
    if Optimization(optimization) is Optimization.ALL:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    else:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.add_session_config_entry("session.disable_prepacking", "1")
    # A campaign holds many sessions run one after another: threads that spin-wait after a
    # run take the cores from the next session (measured: 12 chained segment sessions
    # 124 ms spinning, 14 ms not, on 2 cores).
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # QDQ models run as the ONNX spec defines them (DequantizeLinear -> float op ->
    # QuantizeLinear), not as fused integer kernels: fusion needs constant scales and zero
    # points (campaign sessions make them overridable), and on CPUs without VNNI the fused
    # uint8 x int8 kernels saturate 16-bit sums, so a faulted weight would give results
    # that depend on the machine.
    so.add_session_config_entry("session.disable_quant_qdq", "1")
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    return so


def option_entries(so: ort.SessionOptions) -> list[tuple[str, str]]:
    """The settings of ``so`` that :func:`session_options` makes, as text (provenance)."""
    out = [("graph_optimization_level", str(so.graph_optimization_level).split(".")[-1])]
    for key in ("session.disable_prepacking", "session.disable_quant_qdq",
                "session.intra_op.allow_spinning"):
        try:
            out.append((key, so.get_session_config_entry(key)))
        except Exception:  # onnxruntime raises when the entry is not set
            continue
    return out


_CPU_FALLBACK: contextvars.ContextVar[set[str] | None] = contextvars.ContextVar(
    "cpu_fallback", default=None)  # allowed: the providers already warned about


@contextlib.contextmanager
def cpu_fallback(allowed: bool) -> Iterator[None]:
    """Within it, :func:`make_session` lets a GPU provider (``cuda``, ``tensorrt``) fall back
    to the CPU with a warning (once per provider) instead of refusing
    (``--allow-cpu-fallback``)."""
    token = _CPU_FALLBACK.set(set() if allowed else None)
    try:
        yield
    finally:
        _CPU_FALLBACK.reset(token)


_PRELOADED = False


def _preload_cuda() -> None:
    """Load the CUDA and cuDNN libraries of the ``nvidia-*`` wheels that
    ``pip install 'enpheeph-onnx[cuda]'`` brings (``onnxruntime.preload_dlls``, onnxruntime
    >= 1.21), so that no system CUDA install is needed; once per process."""
    global _PRELOADED
    if not _PRELOADED and hasattr(ort, "preload_dlls"):
        _PRELOADED = True
        import io

        printed = io.StringIO()
        try:
            with contextlib.redirect_stdout(printed):  # it prints what it cannot load
                ort.preload_dlls()
            if printed.getvalue().strip():
                log.debug("onnxruntime.preload_dlls: %s", printed.getvalue().strip())
        except Exception as e:  # a system CUDA may still serve: the session check decides
            log.info("onnxruntime.preload_dlls failed: %s", e)


def _warn_fallback(provider: str, why: str) -> None:
    warned = _CPU_FALLBACK.get()
    if warned is not None and provider not in warned:
        warned.add(provider)
        log.warning("--provider %s runs on the CPU (%s; --allow-cpu-fallback)", provider, why)


def make_session(
    model: onnx.ModelProto | bytes | str | os.PathLike[str],
    provider: Provider = "cpu",
    options: ort.SessionOptions | None = None,
) -> ort.InferenceSession:
    """An inference session on ``provider``, verified to really run there.

    Raises:
        EnpheephError: unknown provider, or CUDA requested but unavailable (onnxruntime
            fell back to CPU), or the model cannot be loaded by onnxruntime.
    """
    if provider not in PROVIDERS:
        raise EnpheephError(f"unknown provider {provider!r}: use cpu, cuda or tensorrt")
    first = PROVIDERS[provider][0]
    warned = _CPU_FALLBACK.get()
    fallback = warned is not None
    if provider != "cpu" and first not in ort.get_available_providers() and fallback:
        _warn_fallback(provider, "this onnxruntime has no " + first)
        provider, first = "cpu", "CPUExecutionProvider"
    if provider != "cpu" and first not in ort.get_available_providers():
        raise EnpheephError(
            f"{provider} requested but this onnxruntime has no {first} "
            f"(available: {', '.join(ort.get_available_providers())}); install "
            "onnxruntime-gpu (pip install 'enpheeph-onnx[cuda]'"
            + (", and TensorRT" if provider == "tensorrt" else "") + ") or use --provider cpu"
        )
    data: bytes | str
    if isinstance(model, onnx.ModelProto):
        data = model.SerializeToString()
    elif isinstance(model, bytes):
        data = model
    else:
        data = str(Path(model))
    if provider in GPU_PROVIDERS:
        # onnxruntime logs its own multi-line CUDA loading errors; we report one line below.
        ort.set_default_logger_severity(4)
        _preload_cuda()
    import io

    printed = io.StringIO()
    try:
        # onnxruntime prints a failing GPU provider's multi-line "EP Error" to stdout, which
        # carries results (--json); it goes to the debug log, the check below says it in one
        # line
        with contextlib.redirect_stdout(printed):
            sess = ort.InferenceSession(
                data, sess_options=options or session_options(), providers=PROVIDERS[provider]
            )
    except Exception as e:  # onnxruntime raises its own exception types
        first = str(e).strip().splitlines()[0]
        raise EnpheephError(f"onnxruntime cannot load the model: {first}") from None
    if printed.getvalue().strip():
        log.debug("onnxruntime printed: %s", printed.getvalue().strip())
    used = sess.get_providers()
    if provider != "cpu" and used[0] != first and fallback:
        _warn_fallback(provider, f"onnxruntime fell back to {used[0]}")
    elif provider != "cpu" and used[0] != first:
        raise EnpheephError(
            f"{provider} requested but onnxruntime fell back to {used[0]} (no usable GPU, "
            "driver, CUDA or TensorRT libraries); fix the install, use --provider cpu, or "
            "accept it with --allow-cpu-fallback"
        )
    log.debug("session providers: %s", used)
    return sess


def load_npz(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` file.

    Raises:
        EnpheephError: missing or unreadable file.
    """
    p = Path(path)
    if not p.is_file():
        raise EnpheephError(f"data file not found: {p}")
    try:
        with np.load(p, allow_pickle=False) as z:
            out = {}
            for k in z.files:
                try:
                    out[k] = z[k]
                except ValueError as e:
                    if "pickle" in str(e).lower():
                        raise EnpheephError(
                            f"{p}: array {k!r} holds Python objects (a pickle), which are "
                            "never loaded (they can run code); save numeric arrays") from None
                    raise
            return out
    except EnpheephError:
        raise
    except Exception as e:
        raise EnpheephError(f"{p} is not a readable .npz file ({type(e).__name__})") from None


def fixed_batch(sess: Any) -> int | None:
    """The batch size a model takes when every batched input (rank >= 1) of ``sess``
    declares the same fixed leading dimension (``None``: a dynamic batch)."""
    firsts = {i.shape[0] for i in sess.get_inputs() if len(i.shape)}
    if len(firsts) == 1:
        (b,) = firsts
        return b if isinstance(b, int) and b > 0 else None
    return None


def check_feeds(sess: ort.InferenceSession, arrays: Mapping[str, np.ndarray],
                where: str = "the data") -> dict[str, np.ndarray]:
    """The feeds for ``sess`` taken from ``arrays`` (extra keys ignored), dtypes checked.

    A model with a fixed batch (:func:`fixed_batch`) takes any multiple of it along axis 0:
    it is then run in batches of exactly that size.

    Raises:
        EnpheephError: an input is missing, or has the wrong dtype or rank, or a sample
            count that the model's fixed batch does not divide.
    """
    fixed = fixed_batch(sess)
    feeds = {}
    for inp in sess.get_inputs():
        if inp.name not in arrays:
            raise EnpheephError(
                f"{where} lacks the model input {inp.name!r} (it has {sorted(arrays)}); "
                "save one array per model input, keyed by the input name"
            )
        a = arrays[inp.name]
        want = _ORT_DTYPES.get(inp.type)
        if want is not None and a.dtype != want:
            raise EnpheephError(
                f"{where}: input {inp.name!r} is {a.dtype.name} but the model expects "
                f"{np.dtype(want).name}; convert it (e.g. arr.astype('{np.dtype(want).name}'))"
            )
        if len(inp.shape) != a.ndim:
            raise EnpheephError(
                f"{where}: input {inp.name!r} has rank {a.ndim} but the model expects "
                f"rank {len(inp.shape)} {inp.shape}"
            )
        bad = [(i, n, want_n) for i, (n, want_n) in enumerate(zip(a.shape, inp.shape,
                                                                  strict=True))
               if isinstance(want_n, int) and n != want_n
               and not (i == 0 and fixed is not None and n % fixed == 0)]
        if bad:
            i, n, want_n = bad[0]
            if i == 0 and fixed is not None:
                raise EnpheephError(
                    f"{where}: input {inp.name!r} has {n} samples but the model takes "
                    f"batches of exactly {fixed}: give a multiple of {fixed} samples")
            raise EnpheephError(
                f"{where}: input {inp.name!r} has shape {list(a.shape)} but the model expects "
                f"{inp.shape} (dimension {i} is {n}, not {want_n})"
            )
        if a.ndim and a.shape[0] == 0:
            raise EnpheephError(f"{where}: input {inp.name!r} holds no samples")
        feeds[inp.name] = a
    return feeds


BIND_ON = {"CUDAExecutionProvider", "TensorrtExecutionProvider"}
"""Sessions whose first provider is one of these run through IO binding
(:func:`run_bound`); tests add ``CPUExecutionProvider`` to check the bound path on CPU."""

_DEVICE_COPIES: OrderedDict[tuple[Any, ...], tuple[np.ndarray, Any]] = OrderedDict()
_DEVICE_COPY_LIMIT = 64


def _device_value(arr: np.ndarray, device: str) -> Any:
    """A device ``OrtValue`` of ``arr``; read-only arrays (the campaign's data batches) are
    copied to the device once and reused (keyed by memory, shape and dtype; a few kept),
    writable ones (weights changed in place per trial) every time."""
    if arr.flags.writeable or device == "cpu":
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(arr), device, 0)
    key = (device, arr.__array_interface__["data"][0], arr.shape, arr.strides, arr.dtype.str)
    hit = _DEVICE_COPIES.get(key)
    if hit is None:
        hit = (arr, ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(arr), device, 0))
        _DEVICE_COPIES[key] = hit
        while len(_DEVICE_COPIES) > _DEVICE_COPY_LIMIT:
            _DEVICE_COPIES.popitem(last=False)
    _DEVICE_COPIES.move_to_end(key)
    return hit[1]


def run_bound(sess: ort.InferenceSession, names: list[str] | None,
              feeds: Mapping[str, Any]) -> list[Any]:
    r"""``sess.run`` through IO binding: inputs as device ``OrtValue``\ s (read-only data
    copied to the device once, :func:`_device_value`), outputs left on the device by
    onnxruntime and copied to the host once per run (``copy_outputs_to_cpu``)."""
    device = "cpu" if sess.get_providers()[0] == "CPUExecutionProvider" else "cuda"
    b = sess.io_binding()
    for name, value in feeds.items():
        arr = np.asarray(value)
        b.bind_ortvalue_input(name, _device_value(arr, device))
    wanted = names or [o.name for o in sess.get_outputs()]
    for name in wanted:
        b.bind_output(name, device)
    sess.run_with_iobinding(b)
    return list(b.copy_outputs_to_cpu())


def run_session(sess: ort.InferenceSession, names: list[str] | None,
                feeds: Mapping[str, Any]) -> list[Any]:
    """``sess.run`` (through IO binding on CUDA, :func:`run_bound`) with onnxruntime's
    failures (e.g. a shape the model cannot take) turned into a one-line
    :class:`EnpheephError`."""
    try:
        if sess.get_providers()[0] in BIND_ON:
            return run_bound(sess, names, feeds)
        return sess.run(names, feeds)  # type: ignore[no-any-return]
    except (ort.capi.onnxruntime_pybind11_state.InvalidArgument,
            ort.capi.onnxruntime_pybind11_state.Fail,
            ort.capi.onnxruntime_pybind11_state.RuntimeException) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RunFailure(f"onnxruntime cannot run the model on this data: {first}"
                         ) from None


_ORT_DTYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(int16)": np.int16,
    "tensor(uint16)": np.uint16, "tensor(int32)": np.int32, "tensor(uint32)": np.uint32,
    "tensor(int64)": np.int64, "tensor(uint64)": np.uint64, "tensor(bool)": np.bool_,
}


def sample_count(data: Mapping[str, Any]) -> int:
    """Samples in ``data``: the length of its first array with a batch axis (an input of
    rank 0, e.g. a sample rate, is not batched; data of scalars only is one sample)."""
    for v in data.values():
        if np.ndim(v):
            return len(v)
    return 1


def batch_of(data: Mapping[str, Any], start: int, step: int) -> dict[str, Any]:
    """Samples ``start:start + step`` of every array of ``data`` (rank-0 arrays whole: they
    go with every batch)."""
    return {k: v[start:start + step] if np.ndim(v) else v for k, v in data.items()}


def run_batched(sess: ort.InferenceSession, feeds: Mapping[str, np.ndarray],
                batch_size: int | None = None,
                extra: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Run ``sess`` over ``feeds`` in batches along axis 0; outputs concatenated.

    ``extra`` feeds (e.g. fault inputs) are passed unchanged with every batch.
    """
    names = [o.name for o in sess.get_outputs()]
    n = sample_count(feeds)
    step = batch_size or n
    chunks: list[list[np.ndarray]] = [[] for _ in names]
    for start in range(0, n, step):
        batch = batch_of(feeds, start, step)
        if extra:
            batch.update(extra)
        for i, out in enumerate(run_session(sess, names, batch)):
            chunks[i].append(out)
    sizes = [min(step, n - start) for start in range(0, n, step)]
    return {name: join_batches(name, c, sizes) for name, c in zip(names, chunks, strict=True)}


def join_batches(name: str, chunks: list[np.ndarray], sizes: list[int]) -> np.ndarray:
    """Join one output's per-batch results: concatenated along axis 0 when it follows the
    batch (first dim = batch size), else the (identical) per-batch value.

    Raises:
        EnpheephError: a non-batched output that differs between batches.
    """
    if len(chunks) == 1:
        return chunks[0]
    if all(c.ndim and len(c) == k for c, k in zip(chunks, sizes, strict=True)):
        return np.concatenate(chunks)
    if all(c.shape == chunks[0].shape and c.tobytes() == chunks[0].tobytes() for c in chunks):
        return chunks[0]
    raise EnpheephError(
        f"output {name!r} does not follow the batch and differs between batches; "
        f"use a --batch-size of at least {sum(sizes)}"
    )
