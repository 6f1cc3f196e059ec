"""The `synthgen` command: the thin entry point that parses arguments and calls the flows.

Imports here stay inside the commands that need them, for a measured reason: `synthgen --help`
takes about 0.1 s with only `synthgen.cli.cost` and `synthgen.errors` at the top, about 1.0-1.3 s
with the library (config, preflight, store, lease, summary: pydantic models, numpy, pyarrow,
fsspec) imported at the top, and importing `flows.run` (Prefect) alone takes about 4.6 s
(min of 5 runs each, `python -m synthgen.cli --help` and `python -c "import flows.run"`, on the
shared 2-core dev machine). `flows.prefect_env` also sets the Prefect/Dask environment before
prefect is first imported.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from synthgen.cli.cost import add_cost_commands
from synthgen.cli.lifecycle import (
    EXIT_BUSY,
    EXIT_INCOMPLETE,
    EXIT_INVALID,
    EXIT_OK,
    EXIT_SIGINT,
    EXIT_SIGTERM,
    EXIT_WAIT_TIMEOUT,
    Terminated,
    install_sigterm,
    start_watchdog,
)
from synthgen.errors import (
    BudgetExhausted,
    ConfigError,
    EngineError,
    HubError,
    HubTokenError,
    PreflightError,
    RunIncomplete,
    RunLockedError,
    StorageError,
    SynthgenError,
)


def cmd_run(args: argparse.Namespace) -> int:
    from synthgen.cluster.preflight import run_preflight
    from synthgen.config import load_config
    from synthgen.config.secrets import check_overrides, protect
    from synthgen.cost.summary import RunSummary
    from synthgen.io.hub import check_token_shape, token_from_env
    from synthgen.io.lease import RunLease
    from synthgen.io.store import Store

    install_sigterm()  # SIGTERM unwinds the run (servers and workers closed), exit 143
    check_overrides(args.set)  # credentials never become Prefect parameters
    cfg = load_config(args.config, args.set)  # fail on a bad config before anything starts
    protect(cfg)
    print(f"synthgen: run {cfg.run_id} ({args.config}) -> {cfg.output.uri}", flush=True)
    # model, scheduler, credentials, writable output: before the Prefect server or any GPU
    in_block = cfg.output.credentials_block is not None  # readable only once Prefect is up
    try:
        report = run_preflight(cfg, storage=not in_block)
    except StorageError as exc:  # an unusable output (no bucket, not writable): bad input
        raise PreflightError(str(exc)) from exc
    print(f"synthgen: {report.render()}", flush=True)
    hub = cfg.output.hub
    if hub is not None and hub.token_block is None:  # a block is readable once Prefect is up
        try:
            check_token_shape(token_from_env(), "HF_TOKEN (output.hub)")
        except HubTokenError as exc:
            raise PreflightError(str(exc)) from None
    start_watchdog()  # a SIGKILLed run takes its server and workers down with it
    if not in_block:
        RunLease(Store(cfg.output), cfg.run_id or "").ensure_free()  # refuse before startup
    from flows.prefect_env import prefect_api

    with prefect_api():
        from flows.run import run_checked

        result = run_checked(cfg, args.config, args.set or [])  # no second load/preflight
    print(RunSummary(**result).render_text())
    if args.summary_json:
        with open(args.summary_json, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2, default=str)
    return EXIT_OK if result["status"] == "complete" else EXIT_INCOMPLETE


def cmd_publish(args: argparse.Namespace) -> int:
    """Push OUTPUT/dataset/ to the Hub (one commit)."""
    from synthgen.config import OutputConfig, load_config
    from synthgen.config.hub import HubConfig
    from synthgen.io.hub import HubTarget, push_dataset, token_from_env
    from synthgen.io.store import Store

    output = OutputConfig(uri=args.output)
    hub = None
    if args.config:
        cfg_output = load_config(args.config, args.set).output
        output = cfg_output.model_copy(update={"uri": args.output})
        hub = cfg_output.hub
    if args.hub:
        hub = HubConfig(
            repo=args.hub,
            private=args.private,
            revision=args.revision,
            token_block=args.token_block or (hub.token_block if hub else None),
        )
    if hub is None:
        raise ConfigError("synthgen publish: name the repository with --hub ORG/NAME")
    target = HubTarget(hub.repo, private=hub.private, revision=hub.revision)
    if hub.token_block:
        from flows.prefect_env import prefect_api

        with prefect_api():
            from flows.credentials import load_secret_token

            token, source = load_secret_token(hub.token_block), hub.token_block
    else:
        token, source = token_from_env(), "HF_TOKEN"
    done = push_dataset(Store(output), target, token, token_source=source)
    print(
        f"synthgen: pushed {len(done['files'])} files ({len(done['deleted'])} removed) to "
        f"{done['repo']}@{done['revision']}: {done['commit']}"
    )
    return EXIT_OK


def add_publish_command(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    pub = sub.add_parser(
        "publish", help="push a published dataset (OUTPUT/dataset/) to the Hugging Face Hub"
    )
    pub.add_argument("output", metavar="OUTPUT", help="the run's output URI (local or s3://)")
    pub.add_argument("--hub", metavar="ORG/NAME", help="dataset repository on the Hub")
    pub.add_argument("--private", action="store_true", help="create the repository private")
    pub.add_argument("--revision", metavar="BRANCH", help="commit to this branch (default main)")
    pub.add_argument(
        "--token-block", metavar="secret/NAME", help="Prefect Secret holding the token"
    )
    pub.add_argument(
        "--config", help="a run config: its output.storage_options and output.hub are used"
    )
    pub.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE")
    pub.set_defaults(func=cmd_publish)


def cmd_serve(args: argparse.Namespace) -> int:
    from flows.prefect_env import quiet_defaults

    quiet_defaults()
    from flows.serve import serve_configs

    serve_configs(args.configs, limit=args.limit)
    return 0


def cmd_trigger(args: argparse.Namespace) -> int:
    from flows.prefect_env import quiet_defaults

    quiet_defaults()
    from flows.trigger import trigger

    result = trigger(args.name, args.set, timeout=args.timeout, poll_interval=args.poll)
    print(result.render(), flush=True)
    if not result.final:
        return EXIT_WAIT_TIMEOUT
    return EXIT_OK if result.ok else EXIT_INCOMPLETE


def add_serve_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    serve = sub.add_parser(
        "serve",
        help="register one Prefect deployment per config (cron from `schedule`) and serve them",
    )
    serve.add_argument("configs", nargs="+", metavar="CONFIG", help="run config YAML files")
    serve.add_argument(
        "--limit", type=int, default=None, help="most runs executing at once (default: no limit)"
    )
    serve.set_defaults(func=cmd_serve)
    trig = sub.add_parser(
        "trigger", help="start a served deployment's run, wait, print its final state and summary"
    )
    trig.add_argument("name", help="deployment name (the config's name), or FLOW/DEPLOYMENT")
    trig.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override a config value for this run (YAML syntax), repeatable",
    )
    trig.add_argument(
        "--timeout", type=float, default=None, help="stop waiting after this many seconds"
    )
    trig.add_argument("--poll", type=float, default=2.0, help=argparse.SUPPRESS)
    trig.set_defaults(func=cmd_trigger)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="synthgen", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run (or resume) a generation run from a YAML config")
    run.add_argument("config", help="path to a run config, e.g. configs/default.yaml")
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override a config value (YAML syntax), repeatable",
    )
    run.add_argument("--summary-json", metavar="PATH", help="also write the summary as JSON")
    run.set_defaults(func=cmd_run)
    add_cost_commands(sub)
    add_publish_command(sub)
    add_serve_commands(sub)
    return p


def exit_code(exc: SynthgenError) -> int:
    """The exit code of an expected failure (docs/cli.md#exit-codes)."""
    if isinstance(exc, RunLockedError):
        return EXIT_BUSY
    if isinstance(exc, HubTokenError):
        return EXIT_INVALID
    if isinstance(exc, RunIncomplete | BudgetExhausted | StorageError | EngineError | HubError):
        return EXIT_INCOMPLETE
    return EXIT_INVALID  # config, overrides, prompts, preflight, a missing dependency


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # bad arguments: usage + exit 2 (argparse)
    try:
        return int(args.func(args))
    except SynthgenError as exc:
        from synthgen.config.secrets import MASKER

        code = exit_code(exc)
        hint = ""
        if code == EXIT_INCOMPLETE:
            hint = "\nsynthgen: committed shards are kept; re-run the same command to resume"
        print(f"synthgen: error: {MASKER.mask(str(exc))}{hint}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        print("synthgen: interrupted; committed shards are kept, re-run to resume", file=sys.stderr)
        return EXIT_SIGINT
    except Terminated:
        print(
            "synthgen: terminated (SIGTERM); committed shards are kept, re-run to resume",
            file=sys.stderr,
        )
        return EXIT_SIGTERM
    except Exception as exc:
        from synthgen.config.secrets import MASKER
        from synthgen.io.store import is_transient

        if not is_transient(exc):
            raise
        # a storage/network error that escaped the retry helper (already retried by botocore)
        print(
            f"synthgen: error: storage unreachable: {type(exc).__name__}: "
            f"{MASKER.mask(str(exc))}\n"
            "synthgen: committed shards are kept; re-run the same command to resume",
            file=sys.stderr,
        )
        return EXIT_INCOMPLETE


if __name__ == "__main__":
    sys.exit(main())
