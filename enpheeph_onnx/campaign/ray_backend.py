"""Campaign trials on Ray actors (``campaign --backend ray``); see
:mod:`enpheeph_onnx.campaign.backends` for what every backend guarantees.

Each actor holds one :class:`~enpheeph_onnx.campaign.backends._Worker` (its own engine and
golden run: one CPU, and one GPU with ``--provider cuda``), is handed chunks of trial
numbers, and returns their records to the driver, which alone writes the store. An actor
that dies (``ray.kill``, a lost node) is replaced and its chunks are handed out again.
Actors are named ``enpheeph-<campaign>-<slot>-<incarnation>`` (``ray list actors`` shows
them). Without ``--address`` a local Ray is started for the campaign and stopped after it;
a process already connected to Ray (``ray.init`` before :func:`run_campaign`) keeps its
connection.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import EnpheephError
from .backends import CHUNK, Backend, Payload, Record, _payload, _Worker

if TYPE_CHECKING:
    from .runner import _Run

log = logging.getLogger(__name__)


class _Actor:
    """The Ray actor class body (wrapped with ``ray.remote`` at run time, so that importing
    this module does not import Ray)."""

    def __init__(self, payload: Payload) -> None:
        self.error: str | None = None
        try:
            self.worker: _Worker | None = _Worker(payload)
        except EnpheephError as e:
            self.worker, self.error = None, str(e)

    def info(self) -> tuple[str, Any, Any]:
        if self.worker is None:
            return "error", self.error, None
        import ray

        name = f"ray:{ray.util.get_node_ip_address()}:{os.getpid()}"
        return "ready", name, self.worker.providers

    def trials(self, numbers: Sequence[int]) -> list[Any]:
        assert self.worker is not None
        return self.worker.trials(numbers)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise EnpheephError("--backend ray needs Ray: pip install 'enpheeph-onnx[ray]'"
                            ) from None
    return ray


def run_ray(run: _Run, todo: Sequence[int], backend: Backend,
            on_worker: Callable[[str, list[str]], None] | None,
            stats: dict[str, int] | None = None) -> Iterator[Record]:
    """The records of the trials ``todo`` from Ray actors, as they finish.

    Raises:
        EnpheephError: Ray missing or its cluster unreachable, a worker's error, actors
            that keep dying.
    """
    ray = _import_ray()
    from ray.exceptions import RayActorError, RayTaskError

    started = False
    if not ray.is_initialized():
        try:
            ray.init(address=backend.address, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
        except Exception as e:  # ConnectionError, a bad address, a cluster that refuses
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            where = backend.address or "a new local instance"
            raise EnpheephError(f"cannot start or join Ray at {where}: {first}") from None
        started = True
    from ..runtime import GPU_PROVIDERS

    gpus = 1 if run.config.provider in GPU_PROVIDERS else 0
    cpus = int(ray.cluster_resources().get("CPU", 1))
    n = min(backend.workers or max(1, cpus), len(todo))
    actor_cls = ray.remote(num_cpus=1, num_gpus=gpus)(_Actor)
    ref = ray.put(_payload(run, 1))
    tag = uuid.uuid4().hex[:8]
    actors: dict[int, Any] = {}
    names: dict[int, str] = {}
    born: dict[int, int] = {}
    queue: deque[list[int]] = deque(list(todo[i:i + CHUNK]) for i in range(0, len(todo), CHUNK))
    inflight: dict[Any, tuple[int, list[int] | None]] = {}  # future -> (slot, chunk | None)
    deaths = 0

    def start(slot: int) -> None:
        born[slot] = born.get(slot, -1) + 1
        a = actor_cls.options(name=f"enpheeph-{tag}-{slot}-{born[slot]}").remote(ref)
        actors[slot] = a
        inflight[a.info.remote()] = (slot, None)

    def feed(slot: int) -> None:
        busy = sum(1 for s, c in inflight.values() if s == slot and c is not None)
        while queue and busy < 2 and slot in names:
            chunk = queue.popleft()
            inflight[actors[slot].trials.remote(chunk)] = (slot, chunk)
            busy += 1

    for slot in range(n):
        start(slot)
    log.info("ray backend: %d actors (%d CPUs in the cluster)", n, cpus)
    remaining = len(todo)
    try:
        while remaining:
            done, _ = ray.wait(list(inflight), num_returns=1)
            fut = done[0]
            slot, chunk = inflight.pop(fut)
            try:
                result = ray.get(fut)
            except RayActorError:
                lost = [c for f, (s, c) in list(inflight.items()) if s == slot]
                for f in [f for f, (s, _) in inflight.items() if s == slot]:
                    del inflight[f]
                back = [c for c in [chunk, *lost] if c is not None]
                deaths += 1
                log.warning("Ray actor %s died; its %d trial(s) are handed out again",
                            names.get(slot, slot), sum(len(c) for c in back))
                queue.extendleft(reversed(back))
                names.pop(slot, None)
                if deaths > backend.max_restarts:
                    raise EnpheephError(
                        f"{deaths} Ray actors died; the campaign stops (finished trials are "
                        "kept: continue with --resume)") from None
                start(slot)
                continue
            except RayTaskError as e:
                cause = e.cause if isinstance(getattr(e, "cause", None), Exception) else e
                raise EnpheephError(f"a Ray worker failed: {cause}") from None
            if chunk is None:  # info()
                status, name, providers = result
                if status == "error":
                    raise EnpheephError(str(name))
                names[slot] = name
                if on_worker is not None:
                    on_worker(name, list(providers))
            else:
                for rec in result:
                    remaining -= 1
                    yield rec, names.get(slot, f"ray:{slot}")
            feed(slot)
    finally:
        if stats is not None:
            stats["workers"], stats["restarts"] = n, deaths
        for a in actors.values():
            with contextlib.suppress(Exception):  # already dead
                ray.kill(a)
        if started:
            ray.shutdown()


__all__ = ["run_ray"]
