"""Synthetic prompts of a requested token length, made locally (nothing is fetched).

An OpenAI-compatible server takes text, while a workload states prompt lengths in tokens. Prompts
are runs of common English words, which most tokenizers (the built-in model's included) encode as
about one token each; with the server model's tokenizer the length is made exact by counting.
Each request starts at a different offset of the word list, so no two prompts share a long
prefix (a prefix cache would otherwise make TTFTs look better than the workload's).
"""

from __future__ import annotations

from collections.abc import Callable

# Short, frequent English words, each one token with a leading space in common byte-level BPE
# vocabularies (GPT-2's, Llama's) and in the built-in tiny model's 1024-token vocabulary.
_WORD_TEXT = (
    "the time book idea answer question model language program request server plan order "
    "word star sun earth town wind step about around under with what will they them their "
    "this read tell see sat came goes had must can clear first next new good simple quick "
    "soon once every half one two four eight nine and or of on in at by to for out as is "
    "it he she we you your me her an are"
)
WORDS: tuple[str, ...] = tuple(_WORD_TEXT.split())

# Counts tokens of a text the way the server does (BOS included), or None to estimate.
TokenCounter = Callable[[str], int]


class PromptFactory:
    """Builds prompts of `num_tokens` tokens, exact when a token counter is given."""

    def __init__(self, count_tokens: TokenCounter | None = None) -> None:
        self._count_tokens = count_tokens

    @property
    def is_exact(self) -> bool:
        return self._count_tokens is not None

    def make(self, num_tokens: int, offset: int = 0) -> tuple[str, int]:
        """A prompt and its token count (counted, or estimated as one token per word plus a
        BOS token). `offset` picks where in the word list the prompt starts."""
        if isinstance(num_tokens, bool) or not isinstance(num_tokens, int) or num_tokens < 1:
            raise ValueError(f"invalid parameter 'num_tokens': expected >= 1, got {num_tokens!r}")
        # Without a counter: one BOS plus one token per word; at least one word.
        num_words = max(num_tokens - 1, 1)
        text = _words(num_words, offset)
        if self._count_tokens is None:
            return text, num_words + 1
        return self._fit(num_tokens, num_words, offset)

    def _fit(self, num_tokens: int, num_words: int, offset: int) -> tuple[str, int]:
        """The most words whose counted length is at most `num_tokens` (exactly it unless a
        word adds several tokens and steps over it); one word when even that is too long."""
        assert self._count_tokens is not None
        text = _words(num_words, offset)
        count = self._count_tokens(text)
        if count == num_tokens:  # the usual case: one token per word
            return text, count
        # Counts grow with the number of words, and each word adds at least one token, so the
        # answer lies in [1, num_tokens]: bisect for the largest count that fits.
        lo, hi = 1, num_tokens
        best = _words(1, offset)
        best_count = self._count_tokens(best)
        while lo <= hi:
            mid = (lo + hi) // 2
            text = _words(mid, offset)
            count = self._count_tokens(text)
            if count <= num_tokens:
                best, best_count = text, count
                if count == num_tokens:
                    break
                lo = mid + 1
            else:
                hi = mid - 1
        return best, best_count


def tokenizer_counter(model_dir: str) -> TokenCounter:
    """A counter from a model folder's tokenizer (`hyperflexis.engine.Tokenizer`), as the
    server encodes a completion prompt: special tokens (BOS) included."""
    from hyperflexis.engine.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_dir(model_dir)
    return lambda text: len(tokenizer.encode(text))


def _words(num_words: int, offset: int) -> str:
    n = len(WORDS)
    start = (offset * 7919) % n  # a prime stride spreads consecutive requests over the list
    # Always "the" first: a word at the start of a text has no leading space, and many
    # vocabularies split space-less words into more tokens than the spaced ones.
    return " ".join(["the", *(WORDS[(start + i) % n] for i in range(num_words - 1))])
