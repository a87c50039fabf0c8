"""Where the runs of a sweep execute: a local pool, or a Dask cluster — and what each run may use.

A sweep submits one task per combination to a ``concurrent.futures.Executor`` and collects the results
as they finish; which executor decides where the notebooks run:

- ``local_executor(k)``: a pool of ``k`` threads in this process, each driving one notebook's kernel
  (a kernel is its own process, so threads are enough);
- ``dask_executor("tcp://host:8786")``: the executor of a ``dask.distributed.Client`` connected to a
  running scheduler (``dask scheduler`` + ``dask worker``, or ``dask_jobqueue.SLURMCluster``), so the
  same sweep spreads over every worker machine. The workers must share the sweep folder's filesystem.

Each run gets its share of the machine it lands on (``run_environment``): its own GPU(s) through
``CUDA_VISIBLE_DEVICES`` when ``gpus_per_run`` is set (``DeviceSlots``: a process-wide pool of device
groups, so runs at once = devices // gpus_per_run), and on the CPU ``cores // runs at once`` threads
(``OMP_NUM_THREADS``), because two tiny-model runs with every core each are slower than one after the
other (measured: ``python -m benchmarks sweep``).
"""

from __future__ import annotations

import os
import queue
import re
import threading
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import contextmanager

import torch

__all__ = ["SCHEDULER_HELP", "DeviceSlots", "check_gpus_per_run", "check_gpus_per_run_value", "cpu_threads", "cuda_device_count",
           "dask_client", "local_executor", "run_environment", "runs_at_once", "worker_concurrency"]

SCHEDULER_HELP = ("start one with `dask scheduler` (it prints its address, tcp://HOST:8786) and a worker on each "
                  "machine with `dask worker tcp://HOST:8786`; the workers must see --runs-root at the same path")
_ADDRESS = re.compile(r"^(tcp|tls|inproc|ucx)://\S+$")


def cuda_device_count() -> int:
    """CUDA devices this process can use (0 without CUDA)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_gpus_per_run_value(gpus_per_run: int | None) -> None:
    """Refuse a ``gpus_per_run`` that is not None or a whole number >= 1 (ValueError)."""
    if gpus_per_run is not None and (isinstance(gpus_per_run, bool) or not isinstance(gpus_per_run, int)
                                     or gpus_per_run < 1):
        raise ValueError(f"gpus_per_run={gpus_per_run!r} must be a whole number >= 1 (or None on CPU machines)")


def check_gpus_per_run(gpus_per_run: int | None, devices: int | None = None, where: str = "this machine") -> None:
    """Refuse a ``gpus_per_run`` that ``where`` (with ``devices`` CUDA devices) cannot give (ValueError)."""
    check_gpus_per_run_value(gpus_per_run)
    if gpus_per_run is None:
        return
    devices = cuda_device_count() if devices is None else devices
    if devices == 0:
        raise ValueError(f"--gpus-per-run {gpus_per_run}: {where} has no CUDA device; leave the option out (on the "
                         f"CPU each of the runs at once gets its share of the cores)")
    if devices < gpus_per_run:
        raise ValueError(f"--gpus-per-run {gpus_per_run}: {where} has only {devices} CUDA device(s); ask for at "
                         f"most {devices}")


def runs_at_once(parallel: int | None, gpus_per_run: int | None, devices: int | None = None) -> int:
    """How many runs a local sweep starts at once: ``parallel``, at most devices // gpus_per_run on GPUs
    (that many by default); 1 on the CPU unless ``parallel`` says more."""
    if gpus_per_run is None:
        return parallel or 1
    fit = (cuda_device_count() if devices is None else devices) // gpus_per_run
    return min(parallel, fit) if parallel else fit


def cpu_threads(concurrent: int, cores: int | None = None) -> int:
    """Threads for each of ``concurrent`` runs sharing ``cores`` (default: this machine's)."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, concurrent))


class DeviceSlots:
    """The CUDA devices of this process in groups of ``gpus_per_run``; a run holds one group while it runs.

    One pool per process and group size (``DeviceSlots.of(k)``): the threads of a local sweep, or of a
    Dask worker, share it, so two runs at once never see the same device."""

    _pools: dict[int, DeviceSlots] = {}
    _lock = threading.Lock()

    def __init__(self, gpus_per_run: int, devices: list[str]):
        groups = [devices[i:i + gpus_per_run] for i in range(0, len(devices) - gpus_per_run + 1, gpus_per_run)]
        if not groups:
            raise ValueError(f"gpus_per_run={gpus_per_run} but this process sees {len(devices)} CUDA device(s)")
        self.free: queue.Queue[str] = queue.Queue()
        for group in groups:
            self.free.put(",".join(group))

    @classmethod
    def of(cls, gpus_per_run: int) -> DeviceSlots:
        with cls._lock:
            if gpus_per_run not in cls._pools:
                visible = os.environ.get("CUDA_VISIBLE_DEVICES")
                devices = ([d.strip() for d in visible.split(",") if d.strip()] if visible
                           else [str(i) for i in range(cuda_device_count())])
                cls._pools[gpus_per_run] = cls(gpus_per_run, devices)
            return cls._pools[gpus_per_run]

    @contextmanager
    def hold(self):
        """A device group (``"0,1"``) for the block; waits for one when all are in use."""
        group = self.free.get()
        try:
            yield group
        finally:
            self.free.put(group)


def worker_concurrency() -> int | None:
    """Tasks that can run at once on this Dask worker's machine (the threads of every worker on its
    host, so two one-thread workers on one machine share its cores), or None outside a Dask worker."""
    try:
        from distributed import get_client, get_worker
    except ImportError:
        return None
    try:
        worker = get_worker()
    except ValueError:  # not in a worker
        return None
    host = worker.address.rsplit(":", 1)[0]
    try:
        workers = get_client().scheduler_info(n_workers=-1)["workers"]
    except Exception:  # the scheduler is unreachable for a moment: this worker's own threads
        return worker.state.nthreads
    return sum(w["nthreads"] for address, w in workers.items() if address.rsplit(":", 1)[0] == host) or None


@contextmanager
def run_environment(gpus_per_run: int | None, concurrent: int | None):
    """The environment variables of one run's kernel: its device group, and its share of the cores.

    ``concurrent``: runs at once on this machine (None: in a Dask worker, the threads of the workers on
    its host; elsewhere 1)."""
    concurrent = concurrent or worker_concurrency() or 1
    threads = str(cpu_threads(concurrent))
    env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}  # torch reads them when it starts
    if gpus_per_run is None:
        yield env
        return
    with DeviceSlots.of(gpus_per_run).hold() as group:
        yield {**env, "CUDA_VISIBLE_DEVICES": group}


def local_executor(runs: int) -> Executor:
    """A pool that runs ``runs`` notebooks at once in this process (one thread drives each kernel)."""
    return ThreadPoolExecutor(max_workers=runs, thread_name_prefix="lmkit-sweep")


def dask_client(address: str, timeout: float = 5.0):
    """A ``dask.distributed.Client`` of the scheduler at ``address`` with at least one worker; ValueError
    naming the address and how to start a scheduler when none answers within ``timeout`` seconds."""
    if not isinstance(address, str) or not _ADDRESS.match(address):
        raise ValueError(f"--scheduler {address!r} is not a Dask scheduler address; it looks like "
                         f"tcp://HOST:8786 ({SCHEDULER_HELP})")
    try:
        from distributed import Client
    except ImportError:
        raise ImportError("sweeps on a Dask cluster need dask.distributed: pip install 'dask[distributed]'") from None
    try:
        client = Client(address, timeout=f"{timeout}s")
    except (OSError, TimeoutError) as e:
        raise ValueError(f"no Dask scheduler answered at {address} within {timeout:g} s ({e}); "
                         f"{SCHEDULER_HELP}") from None
    try:
        client.wait_for_workers(1, timeout=timeout)
    except (OSError, TimeoutError):
        client.close()
        raise ValueError(f"the Dask scheduler at {address} has no worker (waited {timeout:g} s); start one with "
                         f"`dask worker {address}`") from None
    return client
