"""Shared benchmark helpers: round-robin timing and peak memory of one step.

``time_round_robin`` times several step functions one repetition of each in turn, so drift of the
machine affects them alike, and returns the median per step. The order is reshuffled every repetition
(seeded): a step that leaves the allocator or caches in a bad state (a large transient freed back to the
system) would otherwise always slow the same successor. ``peak_transient_bytes`` is the largest
amount of memory allocated during one call of a step, above what was allocated before it (CPU: the
running total of the profiler's raw allocation/free events; CUDA: ``max_memory_allocated``).
"""

from __future__ import annotations

import random
import statistics
import time

import torch


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_round_robin(
    steps: dict, repeats: int, device, warmup: int = 2, on_step=None, samples: dict | None = None, seed: int = 0
) -> dict[str, float]:
    """Median milliseconds per step. ``on_step(name, label, ms)``, if given, is called after every step
    (``label``: ``"warm-up i"`` or ``"repeat i"``), outside the timed region: progress for long runs.
    ``samples``, if given, receives every timed repetition per step (milliseconds, in run order)."""

    def timed(step) -> float:
        sync(device)
        start = time.perf_counter()
        step()
        sync(device)
        return (time.perf_counter() - start) * 1e3

    for name, step in steps.items():  # warm-up: caches, allocator, lazy init
        for i in range(warmup):
            ms = timed(step)
            if on_step is not None:
                on_step(name, f"warm-up {i + 1}", ms)
    times = {name: [] for name in steps}
    order = list(steps)
    rng = random.Random(seed)
    for i in range(repeats):
        rng.shuffle(order)
        for name in order:
            step = steps[name]
            times[name].append(timed(step))
            if on_step is not None:
                on_step(name, f"repeat {i + 1}", times[name][-1])
    if samples is not None:
        samples.update(times)
    return {name: statistics.median(values) for name, values in times.items()}


def peak_transient_bytes(step, device) -> int:
    if device.type == "cuda":
        sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    return _peak_of_allocations(_cpu_allocation_events(prof))


_CPU_DEVICE_TYPES = ("CPU", "MKLDNN", "IDEEP")


def _cpu_allocation_events(prof) -> list[tuple[int, int]]:
    """``(start_ns, bytes)`` of every CPU allocation (+) and free (-) recorded during the profile.

    Read from the raw kineto events, not from ``prof.events()``: the latter folds every allocation made
    inside an op into that op's ``cpu_memory_usage`` and lists as ``[memory]`` events only the few made
    outside any op, so a peak computed from those misses nearly all of a step's memory (a step allocating
    three 4 MB tensors read as 8 bytes). Parsing ``prof.events()`` also takes seconds for a UNet step.
    """
    events = []
    for e in prof.profiler.kineto_results.events():
        if e.name() == "[memory]" and str(e.device_type()).split(".")[-1] in _CPU_DEVICE_TYPES:
            events.append((e.start_ns(), e.nbytes()))
    events.sort(key=lambda item: item[0])  # stable: ties keep the recorded order
    return events


def _peak_of_allocations(events) -> int:
    """Largest running total of ``(time, bytes)`` allocation events, above the level at the start (>= 0)."""
    current = peak = 0
    for _, nbytes in events:
        current += nbytes
        peak = max(peak, current)
    return peak
