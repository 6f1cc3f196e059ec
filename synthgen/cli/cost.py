"""`synthgen report` and `synthgen estimate`: the cost subcommands of the CLI.

The cost modules are imported inside the commands, not at module top: `synthgen.cli` loads
this module for every command (`add_cost_commands`), and importing `synthgen.cost.report`
and `synthgen.cost.estimate` takes about 1.1-1.3 s here (pyarrow, fsspec, pydantic config;
`python -X importtime -c "import synthgen.cost.report, synthgen.cost.estimate"`) against
0.01-0.08 s for this module.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def cmd_report(args: argparse.Namespace) -> int:
    from synthgen.cost.report import write_report

    options: dict[str, Any] = {}
    if args.config:
        from synthgen.config import load_config

        options = dict(load_config(args.config, args.set).output.storage_options)
    try:
        files = write_report(
            args.run_uri, out=args.out, storage_options=options, max_shard_rows=args.shards
        )
    except FileNotFoundError as exc:
        print(f"synthgen: error: {exc}", file=sys.stderr)
        return 2
    print(files.text)
    print(f"\nchart: {files.png_path}" + (f"\nmarkdown: {files.md_path}" if files.md_path else ""))
    return 0


def cmd_estimate(args: argparse.Namespace) -> int:
    from synthgen.config import load_config
    from synthgen.cost.estimate import estimate

    cfg = load_config(args.config, args.set)
    text, _ = estimate(
        cfg, sample=args.sample, calibrate_here=not args.no_calibrate, workers=args.workers
    )
    print(text)
    return 0


def add_cost_commands(sub: Any) -> None:
    """Register `report` and `estimate` on the CLI's subparsers."""
    rep = sub.add_parser(
        "report", help="cost report of a run: totals, per device type and shard, PNG chart"
    )
    rep.add_argument("run_uri", help="OUTPUT/runs/RUN_ID, local or s3://")
    rep.add_argument("--out", help="write the PNG here (local path) instead of next to the run")
    rep.add_argument("--shards", type=int, default=50, help="per-shard rows to print (default 50)")
    rep.add_argument(
        "--config", help="a run config whose output.storage_options are used to read the run"
    )
    rep.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE")
    rep.set_defaults(func=cmd_report)

    est = sub.add_parser(
        "estimate", help="projected tokens, time and cost of a run per device type"
    )
    est.add_argument("config", help="path to a run config")
    est.add_argument("--sample", type=int, default=8, help="prompts in the calibration run")
    est.add_argument(
        "--workers", type=int, default=1, help="workers per device type, for wall time"
    )
    est.add_argument(
        "--no-calibrate",
        action="store_true",
        help="do not run the engine here; use earlier ledgers and cost.throughput_hints only",
    )
    est.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE")
    est.set_defaults(func=cmd_estimate)
