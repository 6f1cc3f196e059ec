"""One root exception; each subclass also inherits the matching builtin."""

from __future__ import annotations


class SynthgenError(Exception):
    """Root of every error synthgen raises on purpose."""


class ConfigError(SynthgenError, ValueError):
    """A run config is invalid: the message names the file and the key."""


class PromptError(SynthgenError, ValueError):
    """A prompt source is unusable: the message names the file and line or prompt id."""


class StorageError(SynthgenError, OSError):
    """Object storage failed after retries; the original error is the __cause__."""


class EngineError(SynthgenError, RuntimeError):
    """An inference engine could not be built or failed on a shard."""


class MissingDependencyError(SynthgenError, ImportError):
    """An optional dependency is missing; the message holds the pip command."""


class PreflightError(SynthgenError, RuntimeError):
    """A check before any GPU time failed (model path, scheduler, ...); names the config key."""


class RunLockedError(SynthgenError, RuntimeError):
    """Another live run holds the lease on this output prefix and run id."""


class BudgetExhausted(SynthgenError, RuntimeError):
    """The budget cap stopped the run before every shard was done."""


class RunIncomplete(SynthgenError, RuntimeError):
    """A run ended with shards not committed or not published (committed shards are kept:
    re-running the same command generates only the missing ones). CLI exit code 3."""


class HubError(SynthgenError, RuntimeError):
    """Pushing the dataset to the Hugging Face Hub failed or cannot start (token, repo)."""


class HubTokenError(HubError, ValueError):
    """The Hub token is missing, malformed or refused: invalid input (CLI exit code 2)."""


class PublishRefused(SynthgenError, RuntimeError):
    """Publishing would replace a dataset another run published to the same output (or
    replace data with zero rows); the message names both run ids and the flag that allows it."""
