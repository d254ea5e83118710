"""``[teacher]``: the settings every teacher kind shares; each kind's section adds its own keys."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from nightlora.config_section import Section

Focus = Literal["negatives", "agentic", "all"]


class TeacherSettings(Section):
    # Off by default: distillation sends conversations to another model, and costs money.
    enabled: bool = False
    # negatives: the contexts whose reply got a thumbs-down (the teacher writes the reply that should
    # have been given); agentic: contexts ranked by action words; all: every context, rated first.
    focus: Focus = "negatives"
    count: int = Field(20, ge=0)               # prompts per night (answered from the cache or asked)
    max_requests: int = Field(50, ge=0)        # requests sent per night, retries included
    max_tokens: int | None = Field(200_000, ge=0)  # tokens per night, where the API reports usage
    reply_max_tokens: int = Field(1024, ge=1)  # longest reply asked for (HTTP teachers)
    timeout_s: float = Field(60.0, gt=0)       # per request; a teacher that times out is dropped for the night
    concurrency: int = Field(1, ge=1, le=16)   # requests in flight at once
    pause_s: float = Field(0.0, ge=0)          # pause after each request
    retries: int = Field(3, ge=0)              # more tries on 429 and 5xx, with exponential back-off
    backoff_s: float = Field(2.0, ge=0)        # first back-off; doubles each try (a Retry-After header wins)
    # Prompts used only when the real ones run out: unset = the built-in ones (teachers/synthetic.py), [] = none.
    synthetic: list[str] | None = None
    # Identifiers and secrets are replaced by placeholders before anything is sent.  A teacher on this
    # machine (base_url on 127.0.0.0/8, ::1 or localhost) may see the text as it is, only when this is true.
    loopback_unredacted: bool = False
    # Phone numbers written without a country code are read as numbers of these regions (ISO 3166 codes).
    phone_regions: list[str] = Field(default_factory=lambda: ["US", "GB", "DE", "FR", "RU"])
