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
