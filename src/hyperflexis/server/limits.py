"""How much one request may ask for, checked as early as possible (in the worker thread that
plans it, before the expensive part): samples per request, prompt length against the context,
and a text far over the context refused from a bounded prefix before it is all tokenised."""

from __future__ import annotations

from typing import Protocol

from hyperflexis.server.errors import bad_request
from hyperflexis.server.protocol import GenerationJob

# A text over this many characters per context token is checked on a prefix of that many first
# (English has about 4; a prompt that fits with more is rare and only pays one extra prefix pass).
PREFIX_CHARS_PER_TOKEN = 16
PREFIX_MARGIN = 64  # tokens a cut text may gain at its cut; far more than a cut word can
MAX_SAMPLES_PER_REQUEST = 128  # OpenAI's most `n`; here prompts x n


class Encoder(Protocol):
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...


def check_num_samples(job: GenerationJob, num_prompts: int) -> None:
    """400 for more samples (prompts x n) than one request may start: each is a request of its
    own, and a huge n would flood the dispatcher before any queue bound applies."""
    n = job.sampling.get("n", 1)
    if isinstance(n, int) and num_prompts * n > MAX_SAMPLES_PER_REQUEST:
        raise bad_request(
            f"a request may ask for at most {MAX_SAMPLES_PER_REQUEST} samples (prompts x n); "
            f"this one asks for {num_prompts} x {n}",
            "n" if n > 1 else "prompt",
        )


def check_text_length(
    tokenizer: Encoder, text: str, add_special_tokens: bool, max_context: int
) -> None:
    """400 for a text far longer than the context, from a bounded prefix of it, before the
    whole text is tokenised (megabytes take seconds). Cutting the text changes only its last
    pre-token's tokens, so the prefix has at most a few more than the whole: PREFIX_MARGIN
    more than the context proves the whole cannot fit."""
    num_chars = PREFIX_CHARS_PER_TOKEN * max_context
    if len(text) <= num_chars:
        return
    num_prefix_tokens = len(tokenizer.encode(text[:num_chars], add_special_tokens))
    if num_prefix_tokens > max_context + PREFIX_MARGIN:
        raise bad_request(
            f"This model's maximum context length is {max_context} tokens. However, your "
            f"prompt has more than {num_prefix_tokens - PREFIX_MARGIN} tokens in its first "
            f"{num_chars} characters alone. Please reduce the length of the prompt.",
            "prompt",
            "context_length_exceeded",
        )


def check_length(job: GenerationJob, num_prompt_tokens: int, param: str, max_context: int) -> int:
    """The request's max_tokens; 400 when the prompt (plus an explicit max_tokens) does not fit
    the context."""
    room = max_context - num_prompt_tokens
    if room < 1:
        raise bad_request(
            f"This model's maximum context length is {max_context} tokens. However, your "
            f"prompt has {num_prompt_tokens} tokens, which leaves no room for the completion. "
            "Please reduce the length of the prompt.",
            param,
            "context_length_exceeded",
        )
    if job.max_tokens is None:
        return room
    if job.max_tokens > room:
        raise bad_request(
            f"This model's maximum context length is {max_context} tokens. However, you "
            f"requested {num_prompt_tokens + job.max_tokens} tokens ({num_prompt_tokens} in "
            f"the prompt, {job.max_tokens} for the completion). Please reduce the length of "
            "the prompt or the completion.",
            "max_tokens",
            "context_length_exceeded",
        )
    return job.max_tokens
