"""Outcome of each (trial, input) pair against the golden run, and top-1 correctness."""

from __future__ import annotations

import enum
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import EnpheephError

log = logging.getLogger(__name__)


class Outcome(enum.IntEnum):
    """The outcome of one input of one trial (first match wins: DUE, masked, critical SDC,
    tolerable SDC). DUE here means a NaN or Inf in an output, or a faulty run that
    onnxruntime aborts (say, an index computed from a corrupted tensor out of range): a
    proxy for an error the hardware or runtime would detect. How many NaNs survive depends
    on the runtime's kernels (onnxruntime's CPU MaxPool drops a NaN depending on its
    position in the window, measured)."""

    MASKED = 0
    TOLERABLE_SDC = 1
    CRITICAL_SDC = 2
    DUE = 3

    @property
    def key(self) -> str:
        """The JSON / database name: ``masked``, ``tolerable_sdc``, ``critical_sdc``, ``due``."""
        return self.name.lower()


OUTCOMES: tuple[str, ...] = tuple(o.key for o in Outcome)


class PolicyKind(enum.Enum):
    """How an output that differs from the golden run is judged (tolerable or critical)."""

    TOP1 = "top1"
    TOPK = "topk"
    TOPK_SET = "topk-set"
    TOLERANCE = "tolerance"
    METRIC = "metric"


@dataclass(frozen=True)
class Tolerance:
    """An output's tolerance: within ``|faulty - golden| <= atol + rtol * |golden|`` at
    every element (``numpy.isclose`` semantics; ``atol`` alone is a max-abs threshold) and,
    with ``l2``, within ``||faulty - golden||_2 <= l2 * ||golden||_2`` over the input's
    elements (a relative L2 threshold), a difference is tolerable. ``atol`` and ``rtol``
    both ``None``: no element-wise bound (``l2`` alone). ``output`` ``*`` applies to every
    output without a tolerance of its own."""

    output: str
    atol: float | None = 0.0
    rtol: float | None = 0.0
    l2: float | None = None

    @classmethod
    def parse(cls, text: str) -> Tolerance:
        """``NAME:atol=1e-3,rtol=1e-2`` and/or ``NAME:l2=0.01`` (any bound may be left out,
        not all; ``*`` for all outputs).

        Raises:
            EnpheephError: malformed text, an unknown bound, a negative or non-finite one.
        """
        name, sep, rest = text.rpartition(":")
        if not sep or not name.strip():
            raise EnpheephError(f"--sdc-tolerance {text!r}: write NAME:atol=A,rtol=R "
                                "(NAME an output, or * for all)")
        bounds: dict[str, float] = {}
        for part in rest.split(","):
            key, eq, value = part.partition("=")
            key = key.strip()
            if key not in ("atol", "rtol", "l2") or not eq or key in bounds:
                raise EnpheephError(f"--sdc-tolerance {text!r}: {part.strip()!r} is not "
                                    "atol=NUMBER, rtol=NUMBER or l2=NUMBER (each at most "
                                    "once)")
            try:
                bounds[key] = float(value)
            except ValueError:
                raise EnpheephError(f"--sdc-tolerance {text!r}: {value.strip()!r} is not a "
                                    "number") from None
            if not np.isfinite(bounds[key]) or bounds[key] < 0:
                raise EnpheephError(f"--sdc-tolerance {text!r}: {key} must be a finite "
                                    "number >= 0")
        if "atol" not in bounds and "rtol" not in bounds and "l2" in bounds:
            return cls(name.strip(), None, None, bounds["l2"])
        return cls(name.strip(), bounds.get("atol", 0.0), bounds.get("rtol", 0.0),
                   bounds.get("l2"))

    @property
    def elementwise(self) -> bool:
        return self.atol is not None or self.rtol is not None

    def __str__(self) -> str:
        parts = ([f"atol={self.atol or 0.0:g}", f"rtol={self.rtol or 0.0:g}"]
                 if self.elementwise else [])
        if self.l2 is not None:
            parts.append(f"l2={self.l2:g}")
        return f"{self.output}:{','.join(parts)}"


@dataclass(frozen=True)
class OutcomePolicy:
    """When a differing output is a critical SDC (the rest are tolerable; a NaN/Inf output
    is a DUE, bit-identical outputs are masked, whatever the policy).

    * ``top1`` (default): the classifier output's top-1 class changes;
    * ``topk``: the golden top-1 class is not among the faulty run's top ``k``;
    * ``tolerance``: some output leaves its :class:`Tolerance` (outputs with none, and no
      ``*`` tolerance, are not judged: their differences are tolerable). No labels needed;
    * ``topk-set``: the set of the top ``k`` classes changes (order inside it ignored);
    * ``metric``: a user function ``metric`` (``package.module:function``, see
      :func:`call_metric`) says which inputs are critical, and may score every input.

    Raises:
        EnpheephError: a ``k`` below 1, tolerances or a metric with another kind, or a
            ``tolerance``/``metric`` policy without them.
    """

    kind: PolicyKind = PolicyKind.TOP1
    k: int = 5
    tolerances: tuple[Tolerance, ...] = ()
    metric: str | None = None

    def __post_init__(self) -> None:
        if self.kind is PolicyKind.METRIC and not self.metric:
            raise EnpheephError("--outcome metric needs --metric package.module:function")
        if self.kind is not PolicyKind.METRIC and self.metric:
            raise EnpheephError(f"--metric applies to --outcome metric, not {self.kind.value}")
        if self.kind in (PolicyKind.TOPK, PolicyKind.TOPK_SET) and self.k < 1:
            raise EnpheephError(f"--topk {self.k}: give k >= 1")
        if self.kind is PolicyKind.TOLERANCE and not self.tolerances:
            raise EnpheephError("--outcome tolerance needs --sdc-tolerance NAME:atol=..,rtol=.. "
                                "(NAME an output, or * for all)")
        if self.kind is not PolicyKind.TOLERANCE and self.tolerances:
            raise EnpheephError("--sdc-tolerance applies to --outcome tolerance only")

    def check_outputs(self, names: list[str]) -> None:
        """Raises EnpheephError for a tolerance naming no output of the model."""
        for t in self.tolerances:
            if t.output != "*" and t.output not in names:
                raise EnpheephError(f"--sdc-tolerance {t}: the model has no output "
                                    f"{t.output!r} (it has {', '.join(names)})")

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "k": self.k,
                "tolerances": [[t.output, t.atol, t.rtol, t.l2] for t in self.tolerances],
                "metric": self.metric}

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> OutcomePolicy:
        if not d:
            return cls()
        return cls(PolicyKind(d["kind"]), int(d.get("k", 5)),
                   tuple(Tolerance(str(t[0]), *(None if v is None else float(v)
                                                for v in (*t[1:], None)[:3]))
                         for t in d.get("tolerances", [])), d.get("metric"))

    def __str__(self) -> str:
        if self.kind is PolicyKind.TOPK:
            return f"top-{self.k}"
        if self.kind is PolicyKind.TOPK_SET:
            return f"top-{self.k} set"
        if self.kind is PolicyKind.TOLERANCE:
            return "tolerance " + " ".join(str(t) for t in self.tolerances)
        if self.kind is PolicyKind.METRIC:
            return f"metric {self.metric}"
        return "top-1"

    def load(self) -> Callable[..., Any] | None:
        """The user metric function (imported once per process), or None.

        Raises:
            EnpheephError: the module cannot be imported, or has no such callable.
        """
        return None if self.metric is None else load_metric(self.metric)


@functools.lru_cache(maxsize=8)
def load_metric(spec: str) -> Callable[..., Any]:
    """Import the user metric ``package.module:function`` (the current folder is
    importable).

    Raises:
        EnpheephError: a malformed spec, an import error, a missing or uncallable name.
    """
    from ..plugins import load_callable

    return load_callable(spec, "--metric")  # type: ignore[no-any-return]


def call_metric(fn: Callable[..., Any], spec: str, golden: dict[str, np.ndarray],
                faulty: dict[str, np.ndarray], labels: np.ndarray | None
                ) -> tuple[np.ndarray, np.ndarray | None]:
    """Call a user metric on one batch and check what it returns.

    The metric is called as ``fn(golden, faulty, labels)``: ``golden`` and ``faulty`` map
    every output name to its array for the batch's ``N`` inputs (batch along axis 0),
    ``labels`` is the batch's ``labels`` array of the data, or ``None`` when the data has
    none. It returns ``critical``, ``bool [N]`` (True: the faulty output of that input is
    a critical SDC), or ``(critical, scores)`` with ``scores`` a real number per input
    (``[N]``; higher is better, e.g. IoU or per-sample accuracy) that the campaign stores
    and summarises in place of accuracy.

    Returns:
        ``(critical bool [N], scores float64 [N] or None)``.

    Raises:
        EnpheephError: the metric raises, or returns something else (one line naming what
            it returned and what is expected).
    """
    n = len(next(iter(golden.values())))
    try:
        res = fn(golden, faulty, labels)
    except Exception as e:  # user code: any error becomes a one-line message
        raise EnpheephError(f"--metric {spec} raised {type(e).__name__}: {e}") from None
    scores = None
    if isinstance(res, tuple):
        if len(res) != 2:
            raise EnpheephError(f"--metric {spec} returned a tuple of {len(res)}: return "
                                "critical (bool [N]) or (critical, scores [N])")
        res, scores = res
    expect = f"bool array of shape [{n}] (one flag per input of the batch)"
    flags = np.asarray(res)
    if flags.dtype != np.bool_ or flags.shape != (n,):
        raise EnpheephError(f"--metric {spec} returned critical flags of dtype "
                            f"{flags.dtype} and shape {list(flags.shape)}: return a {expect}")
    if scores is not None:
        s = np.asarray(scores)
        if s.shape != (n,) or not (np.issubdtype(s.dtype, np.floating)
                                   or np.issubdtype(s.dtype, np.integer)):
            raise EnpheephError(f"--metric {spec} returned scores of dtype {s.dtype} and "
                                f"shape {list(s.shape)}: return real numbers of shape [{n}]")
        scores = s.astype(np.float64)
    return flags, scores


@dataclass(frozen=True)
class Judgement:
    """What an outcome policy says of a batch of inputs.

    Attributes:
        codes: ``uint8 [N]`` :class:`Outcome` codes.
        scores: ``float64 [N]`` per-input scores of a user metric that returns them (a
            DUE input whose score is not finite scores 0, as accuracy counts a DUE as
            wrong), else ``None``.
    """

    codes: np.ndarray
    scores: np.ndarray | None = None


def _critical(golden: dict[str, np.ndarray], faulty: dict[str, np.ndarray], output: str,
              policy: OutcomePolicy, n: int) -> np.ndarray:
    if policy.kind is PolicyKind.TOLERANCE:
        by_name = {t.output: t for t in policy.tolerances}
        out = np.zeros(n, dtype=bool)
        for name, g in golden.items():
            t = by_name.get(name, by_name.get("*"))
            f = faulty[name]
            if t is None:
                continue
            if g.shape != f.shape:
                out |= True
                continue
            g64 = g.reshape(n, -1).astype(np.float64)
            f64 = f.reshape(n, -1).astype(np.float64)
            with np.errstate(invalid="ignore", over="ignore"):
                if t.elementwise:
                    out |= ~np.isclose(f64, g64, rtol=t.rtol or 0.0, atol=t.atol or 0.0,
                                       equal_nan=True).all(1)
                if t.l2 is not None:
                    err = np.linalg.norm(f64 - g64, axis=1)
                    out |= ~(err <= t.l2 * np.linalg.norm(g64, axis=1))
        return out
    g = golden[output].reshape(n, -1)
    f = faulty[output].reshape(n, -1)
    g_top = np.argmax(g, axis=1)
    if policy.kind is PolicyKind.TOPK:
        k = min(policy.k, f.shape[1])
        top = np.argpartition(-f.astype(np.float64), k - 1, axis=1)[:, :k]
        return ~(top == g_top[:, None]).any(1)
    if policy.kind is PolicyKind.TOPK_SET:
        k = min(policy.k, f.shape[1])

        def top_set(a: np.ndarray) -> np.ndarray:
            return np.sort(np.argsort(-a.astype(np.float64), axis=1, kind="stable")[:, :k], 1)

        return (top_set(g) != top_set(f)).any(1)
    return np.argmax(f, axis=1) != g_top


def classify(golden: dict[str, np.ndarray], faulty: dict[str, np.ndarray], output: str,
             policy: OutcomePolicy | None = None, labels: np.ndarray | None = None,
             batch_size: int | None = None) -> np.ndarray:
    """Per-sample :class:`Outcome` codes, ``uint8 [N]`` (:func:`judge` without scores)."""
    return judge(golden, faulty, output, policy, labels, batch_size).codes


def _metric_critical(policy: OutcomePolicy, golden: dict[str, np.ndarray],
                     faulty: dict[str, np.ndarray], labels: np.ndarray | None, n: int,
                     batch_size: int | None) -> tuple[np.ndarray, np.ndarray | None]:
    fn, spec = policy.load(), str(policy.metric)
    assert fn is not None
    step = max(batch_size or n, 1)
    flags, scores = [], []
    for lo in range(0, n, step):
        rows = slice(lo, min(lo + step, n))
        f, s = call_metric(fn, spec, {k: v[rows] for k, v in golden.items()},
                           {k: v[rows] for k, v in faulty.items()},
                           None if labels is None else labels[rows])
        flags.append(f)
        scores.append(s)
    if any(s is None for s in scores) and not all(s is None for s in scores):
        raise EnpheephError(f"--metric {spec} returned scores for some batches only: return "
                            "them always or never")
    return (np.concatenate(flags) if flags else np.zeros(0, bool),
            None if not scores or scores[0] is None else np.concatenate(scores))


def judge(golden: dict[str, np.ndarray], faulty: dict[str, np.ndarray], output: str,
          policy: OutcomePolicy | None = None, labels: np.ndarray | None = None,
          batch_size: int | None = None) -> Judgement:
    """Judge a faulty run against the golden run: per-sample outcome codes, and the user
    metric's scores.

    Args:
        golden, faulty: outputs keyed by name, batch along axis 0 (``N`` inputs).
        output: the classifier output (top-1 / top-k over its flattened non-batch axes).
        policy: when a differing output is critical (:class:`OutcomePolicy`; default
            top-1).
        labels: the inputs' labels, passed to a user metric (``None`` without labels).
        batch_size: a user metric is called on batches of this many inputs (default:
            all at once).

    Raises:
        EnpheephError: a user metric fails or returns the wrong thing
            (:func:`call_metric`), or gives a non-finite score to an input that is no DUE.
    """
    policy = policy or OutcomePolicy()
    n = len(golden[output])
    differs = np.zeros(n, dtype=bool)
    due = np.zeros(n, dtype=bool)
    for name, g in golden.items():
        f = faulty[name]
        if g.dtype != f.dtype or g.shape != f.shape:
            differs |= True
        else:
            differs |= (g.reshape(n, -1).view(np.uint8) != f.reshape(n, -1).view(np.uint8)
                        ).any(1)
        if np.issubdtype(f.dtype, np.floating):
            due |= ~np.isfinite(f.reshape(n, -1)).all(1)
    scores = None
    if policy.kind is PolicyKind.METRIC:
        critical, scores = _metric_critical(policy, golden, faulty, labels, n, batch_size)
    else:
        critical = _critical(golden, faulty, output, policy, n)
    code = np.where(differs, np.where(critical, Outcome.CRITICAL_SDC,
                                      Outcome.TOLERABLE_SDC), Outcome.MASKED)
    codes = np.where(due, Outcome.DUE, code).astype(np.uint8)
    if scores is not None:
        bad = ~np.isfinite(scores)
        if (bad & ~due).any():
            i = int(np.flatnonzero(bad & ~due)[0])
            raise EnpheephError(f"--metric {policy.metric} scored input {i} {scores[i]} (its "
                                "output is finite): return a finite score for every input")
        scores = np.where(bad, 0.0, scores)
    return Judgement(codes, scores)


def correct(logits: np.ndarray, labels: np.ndarray, outcomes: np.ndarray | None = None
            ) -> np.ndarray:
    """``bool [N]``: top-1 of ``logits`` equals the label, and the output is no DUE (an
    ``argmax`` over a NaN row returns an arbitrary class; a detected error is never a
    correct answer)."""
    n = len(logits)
    flat = logits.reshape(n, -1)
    ok = np.argmax(flat, axis=1) == labels
    if np.issubdtype(flat.dtype, np.floating):
        ok &= np.isfinite(flat).all(1)
    if outcomes is not None:
        ok &= outcomes != Outcome.DUE
    return ok


__all__ = ["OUTCOMES", "Judgement", "Outcome", "OutcomePolicy", "PolicyKind", "Tolerance",
           "call_metric", "classify", "correct", "judge", "load_metric"]
