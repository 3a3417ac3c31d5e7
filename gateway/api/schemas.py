"""Request bodies of the management API that are not store entities."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from store.models import refuse_nul

MAX_PROMPT_CHARS = 1_000_000


class ChatBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    system: str | None = Field(default=None, max_length=MAX_PROMPT_CHARS)
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    session_id: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$",
        description="Continue (or start) this conversation.",
    )
    stream: bool = False

    # Refused before the upstream is called: PostgreSQL could not store the turn afterwards.
    _no_nul = model_validator(mode="before")(refuse_nul)
