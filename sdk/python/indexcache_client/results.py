"""Plain Python mirrors of the indexcache.v1 responses, so callers never handle protobuf messages."""

import dataclasses
from typing import List, Optional, Tuple

# FinishReason as the CLI's --json spells it.
_FINISH_REASONS = {0: "unspecified", 1: "stop", 2: "length", 3: "abort", 4: "error"}


@dataclasses.dataclass
class Timings:
    queue_seconds: float = 0.0  # router admission until a prefill worker started
    prefill_seconds: float = 0.0  # prefill worker compute
    handoff_seconds: float = 0.0  # KV + index-cache transfer until the decode worker admitted it
    first_token_seconds: float = 0.0  # request arrival until the first token was sent
    total_seconds: float = 0.0
    mean_inter_token_seconds: float = 0.0

    @classmethod
    def from_proto(cls, message) -> "Timings":
        return cls(**{f.name: getattr(message, f.name) for f in dataclasses.fields(cls)})


@dataclasses.dataclass
class FinalInfo:
    """What the last message of a stream carries."""

    finish_reason: str = "unspecified"  # "stop", "length", "abort" or "error"
    error: str = ""  # why, when finish_reason is "error"
    prompt_tokens: int = 0
    generated_tokens: int = 0
    timings: Timings = dataclasses.field(default_factory=Timings)
    index_pattern: str = ""  # the F/S layer pattern that served the request
    prefill_worker: str = ""
    decode_worker: str = ""

    @classmethod
    def from_proto(cls, message) -> "FinalInfo":
        return cls(
            finish_reason=_FINISH_REASONS.get(message.finish_reason, "unspecified"),
            error=message.error,
            prompt_tokens=message.prompt_tokens,
            generated_tokens=message.generated_tokens,
            timings=Timings.from_proto(message.timings),
            index_pattern=message.index_pattern,
            prefill_worker=message.prefill_worker,
            decode_worker=message.decode_worker,
        )


@dataclasses.dataclass
class TokenLogprobs:
    """One generated token's log-probability (natural log, the model's raw distribution) and its
    position's most likely tokens as (token_id, logprob) pairs, most likely first."""

    token_id: int
    logprob: float
    top_logprobs: List[Tuple[int, float]] = dataclasses.field(default_factory=list)

    @classmethod
    def from_proto(cls, message) -> "TokenLogprobs":
        return cls(message.token_id, message.logprob, [(t.token_id, t.logprob) for t in message.top_logprobs])


@dataclasses.dataclass
class Chunk:
    """One message of a Generate stream: choice `index`'s new tokens, and `final` on that choice's
    last message only (with n > 1 the choices' messages interleave)."""

    request_id: str
    token_ids: List[int]
    text: str  # text delta; empty when the model has no tokenizer
    final: Optional[FinalInfo] = None
    index: int = 0
    logprobs: List[TokenLogprobs] = dataclasses.field(default_factory=list)  # one per token id, when asked

    @classmethod
    def from_proto(cls, message) -> "Chunk":
        return cls(
            request_id=message.request_id,
            token_ids=list(message.token_ids),
            text=message.text,
            final=FinalInfo.from_proto(message.final) if message.HasField("final") else None,
            index=message.index,
            logprobs=[TokenLogprobs.from_proto(t) for t in message.logprobs],
        )


@dataclasses.dataclass
class Result:
    """A whole Generate stream, concatenated, with its final info flattened in: choice 0's, the whole
    result of the usual one-choice request; `choices` holds every choice (choice 0 included) by index."""

    request_id: str = ""
    output_ids: List[int] = dataclasses.field(default_factory=list)
    text: str = ""
    finish_reason: str = "unspecified"
    error: str = ""
    prompt_tokens: int = 0
    generated_tokens: int = 0
    timings: Timings = dataclasses.field(default_factory=Timings)
    index_pattern: str = ""
    prefill_worker: str = ""
    decode_worker: str = ""
    logprobs: Optional[List[TokenLogprobs]] = None  # one per output id, when asked
    index: int = 0
    choices: List["Result"] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-ready: the shape of `indexcache client generate --json`'s object."""
        out = {f.name: dataclasses.asdict(getattr(self, f.name)) if f.name == "timings" else getattr(self, f.name)
               for f in dataclasses.fields(self) if f.name not in ("logprobs", "index", "choices")}
        out["output_ids"] = list(self.output_ids)
        if self.logprobs is not None:
            out["logprobs"] = [{"token_id": t.token_id, "logprob": t.logprob,
                                "top_logprobs": [{"token_id": i, "logprob": p} for i, p in t.top_logprobs]}
                               for t in self.logprobs]
        if len(self.choices) > 1:
            out["choices"] = [dict(choice.to_dict(), index=choice.index) for choice in self.choices]
        return out


@dataclasses.dataclass
class ModelInfo:
    architecture: str = ""  # "GlmMoeDsaForCausalLM"
    num_layers: int = 0
    hidden_size: int = 0
    vocab_size: int = 0
    index_topk: int = 0
    index_pattern: str = ""
    num_full_layers: int = 0
    max_context: int = 0
    has_tokenizer: bool = False
    model_fingerprint: str = ""
    prefill_workers: int = 0
    decode_workers: int = 0
    length_patterns: str = ""  # adaptive pattern: "N:PATTERN,..." (prompts of >= N tokens); "" for none

    @classmethod
    def from_proto(cls, message) -> "ModelInfo":
        return cls(**{f.name: getattr(message, f.name) for f in dataclasses.fields(cls)})
