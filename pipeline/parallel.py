"""Running work units in parallel: a prefetching loader thread, a pool of loader processes, and
Dask clusters.

No flag: units run in-process. `workers=N`: a local Dask cluster of N processes. `scheduler=
ADDRESS`: an existing Dask cluster (dask-jobqueue, Kubernetes, `dask scheduler` by hand).
"""

from __future__ import annotations

import collections
import contextlib
import multiprocessing
import queue
import threading
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

from pipeline.errors import UserError

Item = TypeVar("Item")
Result = TypeVar("Result")
_DONE = object()


def prefetch(items: Iterable[Item], depth: int = 2) -> Iterator[Item]:
    """Produce `items` in a background thread, up to `depth` ahead of the consumer.

    Decoding (PIL) and tensor ops release the GIL, so loading overlaps with the model's forward.
    An exception in the producer is raised in the consumer.
    """
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                buffer.put(item)
        except BaseException as error:  # handed to the consumer, which re-raises it
            buffer.put(error)
            return
        buffer.put(_DONE)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while (item := buffer.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        with contextlib.suppress(queue.Empty):
            buffer.get_nowait()


def map_in_processes(function: Callable[[Item], Result], items: Iterable[Item], processes: int) -> Iterator[Result]:
    """`function` over `items` in `processes` spawned processes, results in the order of `items`,
    at most 2 per process computed but not yet consumed, so memory stays bounded.

    Spawned, not forked: the caller may hold CUDA and threads, which a forked child must not inherit.
    `function` and the items must pickle.
    """
    ahead = 2 * processes
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending: collections.deque = collections.deque()
        for item in items:
            pending.append(pool.submit(function, item))
            if len(pending) >= ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


@contextlib.contextmanager
def dask_client(workers: int | None, scheduler: str | None, threads_per_worker: int = 1):
    """A Dask client for a local cluster of `workers` processes or an existing `scheduler`."""
    import dask
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout="10s")
        except OSError as error:
            raise UserError(f"cannot reach Dask scheduler '{scheduler}' ({error}); "
                            "check the address (tcp://host:8786) and that the scheduler runs") from None
        with client:
            yield client
        return
    # Dask's default worker environment sets MALLOC_TRIM_THRESHOLD_=65536, which makes glibc unmap
    # and re-fault every large tensor buffer: ~10% slower model forwards. Workers set torch threads.
    with dask.config.set({"distributed.nanny.pre-spawn-environ": {}}), \
            LocalCluster(n_workers=workers, threads_per_worker=threads_per_worker, processes=True,
                         dashboard_address=None) as cluster, Client(cluster) as client:
        yield client
