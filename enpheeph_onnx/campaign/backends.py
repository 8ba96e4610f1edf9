"""Where a campaign's trials run: in the driver process, in local worker processes, or on
Ray actors.

Every backend runs the same :meth:`enpheeph_onnx.campaign.runner._Run.trial` on the same
:class:`~enpheeph_onnx.campaign.sampling.TrialSpec`: a trial's faults come from its own
``SeedSequence(seed, spawn_key=(trial,))``, so which worker runs it, and in which order,
changes nothing in its result. A worker builds its own engine and golden run from the model,
the data and the configuration (the golden outputs' SHA-256 is checked equal to the
driver's before it runs a trial: a worker whose onnxruntime computes other bits is
refused), runs the trials it is handed and sends back their
:class:`~enpheeph_onnx.store.TrialRecord`\\ s; the driver is the only writer of the SQLite
store. A worker that dies (killed, out of memory, a crashed node) is replaced and the
trials it held are handed out again, so no trial is lost or run twice.

* ``serial``: the driver runs every trial (the default).
* ``local``: ``workers`` processes on this machine (``python -m
  enpheeph_onnx.campaign.worker``), each with ``cores // workers`` onnxruntime threads, fed
  small chunks of trials over its stdin/stdout pipes.
* ``ray``: ``workers`` Ray actors (one engine each; one GPU each with ``--provider cuda``),
  on the cluster at ``address`` (``None``: a local Ray started for the campaign, or the one
  this process is already connected to).
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import logging
import os
import signal
import socket
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import EnpheephError

if TYPE_CHECKING:
    from ..store import TrialRecord
    from .runner import _Run

log = logging.getLogger(__name__)


class BackendKind(enum.Enum):
    SERIAL = "serial"
    LOCAL = "local"
    RAY = "ray"


@dataclass(frozen=True)
class Backend:
    """How a campaign's trials are spread.

    Attributes:
        kind: serial, local processes or Ray actors.
        workers: worker processes / actors (``None``: the machine's cores for ``local``,
            the cluster's CPUs for ``ray``; 1 for ``serial``).
        address: the Ray cluster (``ray start --head`` prints it; ``"auto"`` finds a running
            one); ``None`` starts a local one.
        max_restarts: how many dead workers are replaced before the campaign gives up.
    """

    kind: BackendKind = BackendKind.SERIAL
    workers: int | None = None
    address: str | None = None
    max_restarts: int = 8

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise EnpheephError(f"--workers {self.workers}: give at least 1 worker")
        if self.address is not None and self.kind is not BackendKind.RAY:
            raise EnpheephError("--address names a Ray cluster: use it with --backend ray")

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "workers": self.workers, "address": self.address}


CHUNK = 4
"""Trials handed to a worker at a time (two chunks in flight per worker hide the round
trip; a dead worker's chunks are handed out again)."""


def golden_digest(outputs: dict[str, Any]) -> str:
    """SHA-256 over the golden outputs (sorted by name: dtype, shape, bytes)."""
    h = hashlib.sha256()
    for name in sorted(outputs):
        a = outputs[name]
        h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class Payload:
    """What a worker needs to build its own ``_Run``: the model (a path, or a
    ``ModelProto`` serialized), the data, the configuration, the replayed plan, its
    onnxruntime threads, and the driver's golden digest to check its own against."""

    model: str | bytes
    data: Any
    config: Any
    plan: Any
    threads: int | None
    digest: str


class _Worker:
    """A worker's state: its own ``_Run`` with engine and golden run (no store)."""

    def __init__(self, payload: Payload) -> None:
        import onnx

        from .runner import _Run

        model: Any = payload.model
        if isinstance(model, bytes):
            model = onnx.load_model_from_string(model)
        from ..runtime import cpu_fallback

        self.fallback = bool(getattr(payload.config, "allow_cpu_fallback", False))
        self.run = _Run(model, payload.data, payload.config, None, False, payload.plan)
        self.run.threads = payload.threads
        with cpu_fallback(self.fallback):
            self.run.golden(deviation=False)
        digest = golden_digest(self.run.golden_out)
        if digest != payload.digest:
            raise EnpheephError(
                "a worker's golden run differs from the driver's (onnxruntime computes other "
                "bits there: another version, provider or CPU?); use --backend serial or "
                "make the workers alike")
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.providers = list(self.run.providers)

    def trials(self, numbers: Sequence[int]) -> list[TrialRecord]:
        from ..runtime import cpu_fallback

        with cpu_fallback(self.fallback):
            return [self.run.trial(self.run.source.spec(t)) for t in numbers]


def serve(read: Any, write: Any) -> None:
    """A local worker's loop (``python -m enpheeph_onnx.campaign.worker``): receive the
    :class:`Payload`, build, say ready, run chunks of trials until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver handles Ctrl-C
    try:
        worker = _Worker(read.recv())
        write.send(("ready", worker.name, worker.providers))
        while True:
            numbers = read.recv()
            if numbers is None:
                return
            write.send(("done", numbers, worker.trials(numbers)))
    except EnpheephError as e:
        write.send(("error", str(e)))
    except (EOFError, BrokenPipeError, KeyboardInterrupt):
        return
    except Exception as e:  # a bug: say what it was, the driver stops
        write.send(("error", f"worker failed: {type(e).__name__}: {e}"))


def _payload(run: _Run, threads: int | None) -> Payload:
    import onnx

    model = run.model
    src: str | bytes = (model.SerializeToString() if isinstance(model, onnx.ModelProto)
                        else str(model))
    return Payload(src, run.data, run.config, run.plan, threads,
                   golden_digest(run.golden_out))


Record = tuple["TrialRecord", str]
"""A finished trial and the name of the worker that ran it."""


def run_trials(run: _Run, todo: Sequence[int], backend: Backend,
               on_worker: Callable[[str, list[str]], None] | None = None,
               stats: dict[str, int] | None = None) -> Iterator[Record]:
    """The records of the trials ``todo``, as they finish (in any order with workers).

    ``on_worker(name, providers)`` is called as each worker comes up (provenance);
    ``stats`` receives ``workers`` and ``restarts`` (dead workers replaced).

    Raises:
        EnpheephError: a worker's error (the campaign stops), workers that keep dying, or
            Ray missing / unreachable.
    """
    if backend.kind is BackendKind.SERIAL or not todo:
        if stats is not None:
            stats["workers"], stats["restarts"] = 1, 0
        for t in todo:
            yield run.trial(run.source.spec(t)), "driver"
        return
    if backend.kind is BackendKind.LOCAL:
        yield from _run_local(run, todo, backend, on_worker, stats)
    else:
        from .ray_backend import run_ray

        yield from run_ray(run, todo, backend, on_worker, stats)


def _run_local(run: _Run, todo: Sequence[int], backend: Backend,
               on_worker: Callable[[str, list[str]], None] | None,
               stats: dict[str, int] | None) -> Iterator[Record]:
    """Workers are plain subprocesses (``python -m enpheeph_onnx.campaign.worker``) talking
    over their stdin/stdout pipes, not ``multiprocessing`` children: a spawned child
    re-imports the caller's ``__main__``, which breaks scripts without a
    ``if __name__ == "__main__"`` guard."""
    import subprocess
    import sys
    from multiprocessing.connection import Connection, wait

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)
    n = min(backend.workers or cores, len(todo))
    threads = max(1, cores // n)
    payload = _payload(run, threads)
    queue: deque[list[int]] = deque(list(todo[i:i + CHUNK]) for i in range(0, len(todo), CHUNK))
    slots: dict[int, dict[str, Any]] = {}  # slot -> process, pipes, in-flight chunks, name
    deaths = 0

    def start(slot: int) -> None:
        p = subprocess.Popen([sys.executable, "-m", "enpheeph_onnx.campaign.worker"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert p.stdin is not None and p.stdout is not None
        send = Connection(os.dup(p.stdin.fileno()), readable=False)
        recv = Connection(os.dup(p.stdout.fileno()), writable=False)
        p.stdin.close()
        p.stdout.close()
        slots[slot] = {"proc": p, "send": send, "recv": recv, "chunks": [], "name": None}
        with contextlib.suppress(BrokenPipeError, OSError):  # died at once: seen below
            send.send(payload)

    def feed(slot: int) -> None:
        s = slots[slot]
        while s["name"] is not None and queue and len(s["chunks"]) < 2:
            chunk = queue.popleft()
            s["chunks"].append(chunk)
            try:
                s["send"].send(chunk)
            except (BrokenPipeError, OSError):
                return  # dead: its chunks go back when its pipe closes

    def stop_all() -> None:
        for s in slots.values():
            with contextlib.suppress(BrokenPipeError, OSError):
                s["send"].send(None)
        for s in slots.values():
            try:
                s["proc"].wait(timeout=5)
            except subprocess.TimeoutExpired:
                s["proc"].kill()
                s["proc"].wait()
            s["send"].close()
            s["recv"].close()

    for slot in range(n):
        start(slot)
    log.info("local backend: %d worker processes, %d onnxruntime thread(s) each", n, threads)
    remaining = len(todo)
    try:
        while remaining:
            ready = wait([s["recv"] for s in slots.values()])
            for slot, s in list(slots.items()):
                if s["recv"] not in ready:
                    continue
                try:
                    msg = s["recv"].recv()
                except (EOFError, OSError):  # the worker died
                    s["proc"].wait()
                    lost = sum(len(c) for c in s["chunks"])
                    deaths += 1
                    log.warning("worker %s died (exit code %s); its %d trial(s) are handed "
                                "out again", s["name"] or slot, s["proc"].returncode, lost)
                    queue.extendleft(reversed(s["chunks"]))
                    s["send"].close()
                    s["recv"].close()
                    del slots[slot]
                    if deaths > backend.max_restarts:
                        raise EnpheephError(
                            f"{deaths} workers died; the campaign stops (finished trials "
                            "are kept: continue with --resume)") from None
                    start(slot)
                    continue
                if msg[0] == "ready":
                    s["name"] = msg[1]
                    if on_worker is not None:
                        on_worker(msg[1], list(msg[2]))
                elif msg[0] == "error":
                    raise EnpheephError(msg[1])
                else:
                    _, numbers, records = msg
                    s["chunks"].remove(numbers)
                    for rec in records:
                        remaining -= 1
                        yield rec, s["name"]
                feed(slot)
    finally:
        if stats is not None:
            stats["workers"], stats["restarts"] = n, deaths
        stop_all()


__all__ = ["Backend", "BackendKind", "Payload", "golden_digest", "run_trials", "serve"]
