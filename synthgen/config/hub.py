"""Pushing the published dataset to the Hugging Face Hub (`output.hub`)."""

from __future__ import annotations

from pydantic import Field

from synthgen.config.base import Section as _Section

REPO_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$"
TOKEN_BLOCK_PATTERN = r"^secret/[a-z0-9][a-z0-9-]*$"


class HubConfig(_Section):
    """Where `OUTPUT/dataset/` is pushed at the end of a complete run (one commit)."""

    repo: str = Field(
        pattern=REPO_PATTERN, description="Dataset repository on the Hub, `ORG/NAME`."
    )
    private: bool = Field(False, description="Create the repository private (if it is new).")
    revision: str | None = Field(
        None, description="Branch to commit to (created from main if missing); unset = main."
    )
    token_block: str | None = Field(
        None,
        pattern=TOKEN_BLOCK_PATTERN,
        description="Prefect Secret block holding the Hub token ('secret/NAME'); unset = "
        "the HF_TOKEN environment variable. The token is never a parameter, and is masked in "
        "every log.",
    )
