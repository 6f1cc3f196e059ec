"""Thresholds from honest runs: the loosest honest value minus a safety margin."""

from __future__ import annotations

from dataclasses import dataclass

from synthgen.verify.verdict import Aggregate


@dataclass
class Calibration:
    shards: int
    min_z_seen: float | None
    min_topk_seen: float
    suggested_min_z: float | None
    suggested_min_topk_fraction: float
    min_record_z_seen: float | None = None
    suggested_min_record_z: float | None = None


def calibrate(
    honest: list[Aggregate], z_margin: float = 1.5, topk_margin: float = 0.1
) -> Calibration:
    """Suggest `verify.min_z` / `verify.min_topk_fraction` below every honest shard seen.

    The z threshold is also never above -4 (a standard normal falls below -4 with
    probability 3e-5), so a small calibration set cannot make it trigger-happy.
    """
    if not honest:
        raise ValueError("calibrate: no honest shard aggregates given")
    zs = [a.z for a in honest if a.z is not None]
    min_z = min(zs) if zs else None
    min_topk = min(a.topk_fraction for a in honest)
    rzs = [z for a in honest for z in (a.record_z or [])]
    min_rz = min(rzs) if rzs else None
    return Calibration(
        min_record_z_seen=min_rz,
        suggested_min_record_z=min(-4.0, min_rz - z_margin) if min_rz is not None else None,
        shards=len(honest),
        min_z_seen=min_z,
        min_topk_seen=min_topk,
        suggested_min_z=min(-4.0, min_z - z_margin) if min_z is not None else None,
        suggested_min_topk_fraction=max(0.0, round(min_topk - topk_margin, 2)),
    )
