"""Which Dask cluster a run uses: a LocalCluster sized from config, or an existing scheduler."""

from __future__ import annotations

from typing import Any

from synthgen.config import ClusterConfig


def task_runner_kwargs(cfg: ClusterConfig) -> dict[str, Any]:
    """Keyword arguments for `prefect_dask.DaskTaskRunner`."""
    if cfg.address:
        return {"address": cfg.address}
    return {
        "cluster_class": "synthgen.cluster.local_cluster",
        "cluster_kwargs": {
            "n_workers": cfg.n_workers,
            "threads_per_worker": cfg.threads_per_worker,
            "processes": True,
            "memory_limit": cfg.memory_limit,
            "dashboard_address": "127.0.0.1:0",
        },
    }


def local_cluster(**kwargs: Any) -> Any:
    """A LocalCluster whose scheduler keeps no extra tasks queued on busy workers
    (`worker-saturation: 1.0`), so the last shards go to whichever worker frees up first."""
    import dask
    from distributed import LocalCluster

    with dask.config.set({"distributed.scheduler.worker-saturation": 1.0}):
        return LocalCluster(**kwargs)
