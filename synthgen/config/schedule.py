"""When `synthgen serve` runs a config (`schedule`): cron, time zone, deployment name.

Cron expressions are checked with `cronsim` (no prefect import in the library); the macros
prefect accepts (`@daily`, ...) are checked as the 5-field expressions they stand for."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError
from pydantic import Field, field_validator

from synthgen.config.base import Section as _Section
from synthgen.config.overrides import parse_override

CRON_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


CRON_FIELDS = ("minute", "hour", "day-of-month", "month", "day-of-week")


def cron_problem(expr: str) -> str | None:
    """Why a standard 5-field cron expression (or macro) is invalid, or None."""
    fields = CRON_MACROS.get(expr.lower(), expr).split()
    if len(fields) != len(CRON_FIELDS):
        return f"needs 5 fields ({' '.join(CRON_FIELDS)}), got {len(fields)}"
    try:
        CronSim(" ".join(fields), datetime(2000, 1, 1))
    except CronSimError as exc:
        for name, text in zip(CRON_FIELDS, fields, strict=True):
            if str(exc) == f"Bad {name}":
                return f"{name} field {text!r} is invalid"
        return str(exc)
    return None


class ScheduleConfig(_Section):
    """When `synthgen serve` runs this config, as a Prefect deployment."""

    cron: str | None = Field(
        None,
        description="Cron expression (5 fields, e.g. '0 3 * * *'); unset = no schedule, "
        "the deployment runs only when triggered.",
    )
    timezone: str = Field("UTC", description="IANA time zone the cron is read in.")
    deployment: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="Deployment name; unset = the config's `name`.",
    )
    active: bool = Field(True, description="False: register the schedule paused.")
    overrides: list[str] = Field(
        default_factory=list,
        description="Default `key.path=value` overrides for scheduled runs (editable per run).",
    )
    tags: list[str] = Field(default_factory=list, description="Prefect tags of the deployment.")

    @field_validator("cron")
    @classmethod
    def _check_cron(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = " ".join(value.split())
        problem = cron_problem(value)
        if problem:
            raise ValueError(f"cron {value!r}: {problem}")
        return value

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, value: str) -> str:

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r} (use an IANA name like Europe/Berlin)"
            ) from None
        return value

    @field_validator("overrides")
    @classmethod
    def _check_overrides(cls, value: list[str]) -> list[str]:
        for item in value:
            parse_override(item)
        return value
