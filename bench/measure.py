"""Wall time, peak memory and profiles of one callable, the same way for every benchmark variant.

Peak memory is what the run adds on top of what the process already held:
- CPU: resident set size. Freed heap is first handed back to the OS (``malloc_trim``) so memory that an
  earlier variant freed but glibc kept does not hide this run's growth. The kernel's own high-water mark
  (VmHWM, reset through ``/proc/self/clear_refs``) gives the exact peak; where that reset is not allowed,
  a background thread polls the RSS with psutil every few milliseconds instead. Both are read, and the
  larger is kept (the high-water mark can never be below a polled value).
- CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus what was allocated
  before the run (the resident weights), i.e. the sampling's own working memory.

RSS moves by tens of MiB from run to run with the state of glibc's heap, which is as much as the 5 % a
memory target allows. On CPU, ``tensor_peak`` therefore also gives the exact peak of live tensor memory,
from the allocation events torch.profiler records (the CPU counterpart of ``max_memory_allocated``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import re
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psutil
import torch

MIB = 1024 * 1024


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


_LIBC = _libc()


def release_freed_memory() -> None:
    """Collect garbage and return glibc's free heap pages to the OS, so the next RSS baseline is honest."""
    gc.collect()
    if _LIBC is not None and hasattr(_LIBC, "malloc_trim"):
        _LIBC.malloc_trim(0)


def _read_hwm() -> int | None:
    """VmHWM (peak RSS) of this process in bytes, or None where /proc is not available."""
    try:
        with open("/proc/self/status") as status:
            match = re.search(r"VmHWM:\s+(\d+) kB", status.read())
    except OSError:
        return None
    return int(match.group(1)) * 1024 if match else None


def _reset_hwm() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not permitted."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Context manager measuring the peak memory a block adds (bytes, in ``self.peak``)."""

    def __init__(self, cuda: bool, interval_s: float = 0.005) -> None:
        self.cuda = cuda
        self.interval_s = interval_s
        self.peak = 0
        self.method = ""
        self._base = 0
        self._polled = 0
        self._hwm_reset = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._process = psutil.Process()

    def __enter__(self) -> PeakMemory:
        release_freed_memory()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
            self.method = "torch.cuda.max_memory_allocated - allocated before"
            return self
        self._hwm_reset = _reset_hwm()
        self._base = self._process.memory_info().rss
        self._polled = self._base
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll, name="rss-poll", daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._polled = max(self._polled, self._process.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self._base
            return
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        self._polled = max(self._polled, self._process.memory_info().rss)
        hwm = _read_hwm() if self._hwm_reset else None
        if hwm is not None:
            self.method = f"RSS high-water mark (VmHWM) - RSS before; psutil polled every {self.interval_s * 1e3:g} ms"
            self.peak = max(hwm, self._polled) - self._base
        else:
            self.method = f"RSS polled with psutil every {self.interval_s * 1e3:g} ms - RSS before"
            self.peak = self._polled - self._base


@dataclass
class Measurement:
    """Timed runs of one variant: wall seconds and peak added memory (bytes) per run."""

    times: list[float] = field(default_factory=list)
    peaks: list[int] = field(default_factory=list)
    others_cpu: list[float] = field(default_factory=list)
    """Per run, the share of the machine's CPU time that other processes used (contention check)."""
    cpu_s: list[float] = field(default_factory=list)
    """Per run, this process's CPU time (user + system, all threads)."""
    memory_method: str = ""

    @property
    def median_s(self) -> float:
        return statistics.median(self.times)

    @property
    def spread(self) -> float:
        """(max - min) / median of the run times: how much to trust a ratio's last digit."""
        return (max(self.times) - min(self.times)) / self.median_s if len(self.times) > 1 else 0.0

    @property
    def peak(self) -> float:
        """The median peak over the runs (bytes): the largest would mostly report the allocator's noise."""
        return statistics.median(self.peaks)


class CpuShare:
    """How much of the machine's CPU time other processes took while a block ran.

    Wall times only compare when nothing else competes for the cores; this makes contention visible in
    the results instead of silently inflating one variant's time.
    """

    def __init__(self) -> None:
        self._process = psutil.Process()
        self.others = 0.0
        self.own = 0.0

    @staticmethod
    def _busy() -> tuple[float, float]:
        times = psutil.cpu_times()
        idle = times.idle + getattr(times, "iowait", 0.0)
        return sum(times) - idle, sum(times)

    def _own(self) -> float:
        times = self._process.cpu_times()
        return times.user + times.system

    def __enter__(self) -> CpuShare:
        self._start = (*self._busy(), self._own())
        return self

    def __exit__(self, *exc: object) -> None:
        busy, total, own = (*self._busy(), self._own())
        elapsed_total = total - self._start[1]
        self.own = own - self._start[2]
        if elapsed_total > 0:
            self.others = max(0.0, (busy - self._start[0]) - (own - self._start[2])) / elapsed_total


def measure_once(run: Callable[[], object], cuda: bool, into: Measurement) -> object:
    """Run once, adding its wall time, peak memory and CPU contention to ``into``; returns ``run()``."""
    with PeakMemory(cuda) as memory, CpuShare() as share:
        start = time.perf_counter()
        result = run()
        if cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
    into.times.append(elapsed)
    into.peaks.append(memory.peak)
    into.others_cpu.append(share.others)
    into.cpu_s.append(share.own)
    into.memory_method = memory.method
    return result


def tensor_peak(run: Callable[[], object]) -> tuple[object, int | None]:
    """Run once under torch.profiler(profile_memory) and return (result, peak bytes of live CPU tensors
    above the start), or None for the peak where this torch does not expose the allocation events."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        result = run()
    try:
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
        changes = sorted((e.start_ns(), e.nbytes()) for e in events if str(e.device_type()).endswith("CPU"))
    except AttributeError:
        return result, None
    live = peak = 0
    for _, nbytes in changes:
        live += nbytes
        peak = max(peak, live)
    return result, peak


def profile_ops(run: Callable[[], object], cuda: bool) -> dict[str, float]:
    """Self time per operator (seconds) of one run under torch.profiler: CPU time, or device time on CUDA."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if cuda:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        run()
        if cuda:
            torch.cuda.synchronize()
    ops: dict[str, float] = {}
    for event in prof.key_averages():
        microseconds = event.self_device_time_total if cuda else event.self_cpu_time_total
        ops[event.key] = ops.get(event.key, 0.0) + microseconds / 1e6
    return ops
