"""The request contract, `aruntime.request/v1`: what a request asks for."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    Field,
    field_validator,
    model_validator,
)

from aruntime.contracts.base import (
    NAME_RE,
    TRACEPARENT_RE,
    NonEmpty,
    StrictModel,
    UtcDatetime,
    check_pattern,
)

# ---- request contract -------------------------------------------------------------------------

# A release a request names: `NAME`, or `NAME@ALIAS`.
ReleaseRef = Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[^@\s]+(@[^@\s]+)?$")]


class WorkloadKind(StrEnum):
    COMPLETION = "completion"
    CHAT = "chat"
    AGENT_RUN = "agent_run"
    CONTROL_STEP = "control_step"


class Confidentiality(StrEnum):
    NONE = "none"
    ATTESTED = "attested"  # only attested workers may see the prompt
    REQUIRED = "required"  # only a hardware-attested boundary may (a software one refuses)


class ModelRef(StrictModel):
    """A model by name and, optionally, revision. Also accepted as the string `name@revision`."""

    name: NonEmpty
    revision: Annotated[str, Field(min_length=1, max_length=128)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: Any) -> Any:
        if isinstance(data, str):
            name, sep, revision = data.partition("@")
            return {"name": name, "revision": revision} if sep else {"name": name}
        return data

    @field_validator("name", "revision")
    @classmethod
    def _no_at_or_space(cls, value: str | None) -> str | None:
        if value is not None and (value != value.strip() or "@" in value or " " in value):
            raise ValueError("model name and revision may not contain '@' or spaces")
        return value

    def __str__(self) -> str:
        return f"{self.name}@{self.revision}" if self.revision else self.name


class ChatMessage(StrictModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | None = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class Inputs(StrictModel):
    """Exactly one of: prompt text, prompt token ids, chat messages."""

    prompt: str | None = None
    prompt_token_ids: list[Annotated[int, Field(ge=0)]] | None = None
    messages: list[ChatMessage] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Inputs:
        given = [f for f in ("prompt", "prompt_token_ids", "messages") if getattr(self, f)]
        if len(given) != 1:
            raise ValueError(
                "give exactly one non-empty input: prompt, prompt_token_ids or messages"
                + (f" (got {', '.join(given)})" if given else "")
            )
        return self


class Sampling(StrictModel):
    """The same bounds as the engine's SamplingParams, checked at the edge."""

    max_tokens: int = Field(16, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0, description="0 disables top-k")
    seed: int | None = None
    stop: Annotated[list[str], BeforeValidator(lambda v: [v] if isinstance(v, str) else v)] = []
    stop_token_ids: list[Annotated[int, Field(ge=0)]] = []
    n: int = Field(1, ge=1, le=128)
    logprobs: int | None = Field(None, ge=0, le=20)
    ignore_eos: bool = False
    # Added within v1, with defaults that mean "off", so records written before still validate.
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    repetition_penalty: float = Field(1.0, gt=0.0, le=2.0, description="1 disables it")
    logit_bias: dict[Annotated[str, Field(pattern=r"^[0-9]+$")],
                     Annotated[float, Field(ge=-100.0, le=100.0)]] = Field(
        default_factory=dict, description="token id (decimal text) -> bias, as OpenAI's")
    min_tokens: int = Field(0, ge=0, description="no stop before this many output tokens")

    @field_validator("stop")
    @classmethod
    def _stop_non_empty(cls, value: list[str]) -> list[str]:
        if any(not s for s in value):
            raise ValueError("stop strings must be non-empty")
        return value

    @model_validator(mode="after")
    def _min_within_max(self) -> Sampling:
        if self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens ({self.min_tokens}) exceeds max_tokens "
                             f"({self.max_tokens})")
        return self


class SLO(StrictModel):
    """Latency targets; the router and scheduler treat them as goals, not guarantees."""

    ttft_ms: float | None = Field(None, gt=0.0, description="time to first token")
    tpot_ms: float | None = Field(None, gt=0.0, description="time per output token")


class RequestContract(StrictModel):
    schema_: Literal["aruntime.request/v1"] = Field("aruntime.request/v1", alias="schema")
    id: Annotated[str, Field(min_length=1, max_length=128)]
    tenant: str = "default"
    principal: NonEmpty | None = None
    kind: WorkloadKind
    model: ModelRef
    inputs: Inputs
    sampling: Sampling = Field(default_factory=Sampling)
    slo: SLO | None = None
    deadline: UtcDatetime | None = None
    confidentiality: Confidentiality = Confidentiality.NONE
    idempotency_key: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    governance_tags: list[str] = []
    trace_context: str | None = Field(
        None,
        description="W3C traceparent header value",
        json_schema_extra={"pattern": TRACEPARENT_RE.pattern},
    )
    stream: bool = False
    # Leading prompt tokens published to the shared KV namespace on purpose (a common system
    # prompt): other tenants may reuse their blocks. Everything else stays the tenant's own.
    shared_prefix_tokens: Annotated[int, Field(ge=0)] = 0
    # A released prompt, `NAME` (the rollout's assignment, else stable) or `NAME@ALIAS`, set as
    # the system prompt before the messages; `session` keeps a conversation on one version.
    prompt: ReleaseRef | None = None
    # A released retrieval config, named the same way: the passages it finds for the last user
    # message are set before the messages.
    retrieval: ReleaseRef | None = None
    session: Annotated[str, Field(min_length=1, max_length=256)] | None = None

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if any(c.isspace() or not c.isprintable() for c in value):
            raise ValueError("id may not contain whitespace or control characters")
        return value

    @field_validator("tenant")
    @classmethod
    def _tenant(cls, value: str) -> str:
        return check_pattern(NAME_RE, value, "must be 1-64 of [A-Za-z0-9_.:-], starting alnum")

    @field_validator("governance_tags")
    @classmethod
    def _tags(cls, value: list[str]) -> list[str]:
        for tag in value:
            check_pattern(NAME_RE, tag, "each tag must be 1-64 of [A-Za-z0-9_.:-], starting alnum")
        return value

    @field_validator("trace_context")
    @classmethod
    def _traceparent(cls, value: str | None) -> str | None:
        if value is None:
            return None
        match = TRACEPARENT_RE.match(value)
        if (
            match is None
            or match[1] == "ff"
            or set(match[2]) == {"0"}
            or set(match[3]) == {"0"}
        ):
            raise ValueError(
                "trace_context must be a W3C traceparent like "
                f"'00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>'; got {value!r}"
            )
        return value

    @model_validator(mode="after")
    def _inputs_fit_kind(self) -> RequestContract:
        if self.kind is WorkloadKind.CHAT and self.inputs.messages is None:
            raise ValueError("a chat request needs inputs.messages")
        if self.kind is WorkloadKind.COMPLETION and self.inputs.messages is not None:
            raise ValueError("a completion request needs inputs.prompt or inputs.prompt_token_ids")
        return self
