"""Connect to the Ray cluster a command should use, or start a local one."""

from __future__ import annotations

import logging
import os
from typing import Optional

log = logging.getLogger(__name__)


def ensure_ray(address: Optional[str] = None, num_cpus: Optional[int] = None) -> None:
    """Join `address` (or RAY_ADDRESS); without either, start a local Ray instance. No-op if Ray is up.

    The dashboard stays enabled: Ray Tune needs its state API to free the resources of stopped Train runs."""
    import ray

    from mtl import runtime_defaults

    runtime_defaults()  # inherited by the Ray processes this starts
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        ray.init(address=address, log_to_driver=True)
        log.info("joined Ray cluster at %s", address)
    else:
        ray.init(num_cpus=num_cpus, log_to_driver=True)
        log.info("started a local Ray instance")


def trainings_that_fit(workers: int, cpus_per_worker: int, use_gpu: bool, resources: dict) -> int:
    """How many Ray Train runs of `workers` ranks fit at once in `resources` (ray.cluster_resources()): by CPUs,
    and with use_gpu by GPUs too (one per rank); at least 1."""
    fits = int(resources.get("CPU", 1)) // (max(1, workers) * cpus_per_worker)
    if use_gpu:
        fits = min(fits, int(resources.get("GPU", 0)) // max(1, workers))
    return max(1, fits)
