"""Tokenizer: Hugging Face `tokenizers` plus the parts of `tokenizer_config.json` that serving
needs (special tokens, BOS handling, the jinja2 chat template, rendered as transformers does).
`IncrementalDetokenizer` turns a stream of token ids into text deltas."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from jinja2 import TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer as HFTokenizer

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"


class Tokenizer:
    """Text <-> token ids for one model, and its chat template."""

    def __init__(
        self,
        backend: HFTokenizer,
        *,
        bos_token: str | None = None,
        eos_token: str | None = None,
        add_bos_token: bool | None = None,
        chat_template: str | None = None,
        extra_eos_token_ids: frozenset[int] = frozenset(),
    ) -> None:
        self._backend = backend
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.bos_token_id = backend.token_to_id(bos_token) if bos_token else None
        self.eos_token_id = backend.token_to_id(eos_token) if eos_token else None
        # None: the tokenizer.json post-processor alone decides about BOS.
        self.add_bos_token = add_bos_token
        self.chat_template = chat_template
        eos = {self.eos_token_id} if self.eos_token_id is not None else set()
        self._eos_token_ids = frozenset(eos | set(extra_eos_token_ids))
        self._template: Any = None  # compiled lazily: most callers never chat

    @classmethod
    def from_dir(cls, path: str | Path) -> Tokenizer:
        """Read `tokenizer.json` and `tokenizer_config.json` (plus, when present,
        `chat_template.jinja` and `generation_config.json`'s EOS ids) from a model folder."""
        folder = Path(path)
        tokenizer_path = folder / TOKENIZER_FILE
        if not tokenizer_path.is_file():
            raise FileNotFoundError(f"model folder {folder} has no {TOKENIZER_FILE}")
        config_path = folder / TOKENIZER_CONFIG_FILE
        if not config_path.is_file():
            raise FileNotFoundError(f"model folder {folder} has no {TOKENIZER_CONFIG_FILE}")
        try:
            backend = HFTokenizer.from_file(str(tokenizer_path))
        except Exception as exc:  # the Rust side raises a bare Exception
            raise ValueError(f"cannot read {tokenizer_path}: {exc}") from exc
        config = _read_json(config_path)
        add_bos = config.get("add_bos_token")
        return cls(
            backend,
            bos_token=_token_text(config.get("bos_token")),
            eos_token=_token_text(config.get("eos_token")),
            add_bos_token=add_bos if isinstance(add_bos, bool) else None,
            chat_template=_chat_template(folder, config),
            extra_eos_token_ids=_generation_eos(folder),
        )

    @property
    def eos_token_ids(self) -> frozenset[int]:
        return self._eos_token_ids

    @property
    def vocab_size(self) -> int:
        return int(self._backend.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        if add_special_tokens and self.add_bos_token is False:
            add_special_tokens = False  # the config overrides a post-processor that adds BOS
        # encode_batch releases the GIL (encode does not): a long prompt tokenised in the
        # server's worker thread then leaves its event loop free.
        (encoding,) = self._backend.encode_batch([text], add_special_tokens=add_special_tokens)
        ids: list[int] = encoding.ids
        if (
            add_special_tokens
            and self.add_bos_token
            and self.bos_token_id is not None
            and (not ids or ids[0] != self.bos_token_id)
        ):
            ids = [self.bos_token_id, *ids]
        return ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return str(self._backend.decode(ids, skip_special_tokens=skip_special_tokens))

    def apply_chat_template(
        self,
        messages: list[dict[str, str]],
        add_generation_prompt: bool = True,
        *,
        chat_template: str | None = None,
        **kwargs: Any,
    ) -> str:
        """Render the conversation with the model's jinja2 chat template, or `chat_template`
        when given (the text usually starts with the BOS token already; encode it with
        `encode_chat`)."""
        try:
            template = self._compiled(chat_template)
            return str(
                template.render(
                    {
                        **kwargs,  # extra variables never replace the conversation's own
                        "messages": messages,
                        "add_generation_prompt": add_generation_prompt,
                        "bos_token": self.bos_token or "",
                        "eos_token": self.eos_token or "",
                    }
                )
            )
        except TemplateError as exc:
            raise ValueError(f"chat template failed: {exc}") from exc

    def _compiled(self, chat_template: str | None) -> Any:
        if chat_template is not None:  # a request's own template: compiled for it alone
            return _jinja_env().from_string(chat_template)
        if self.chat_template is None:
            raise ValueError("this tokenizer has no chat_template; use a plain prompt")
        if self._template is None:
            self._template = _jinja_env().from_string(self.chat_template)
        return self._template

    def encode_chat(
        self,
        messages: list[dict[str, str]],
        add_generation_prompt: bool = True,
        *,
        chat_template: str | None = None,
        add_special_tokens: bool = False,
        **kwargs: Any,
    ) -> list[int]:
        """Token ids of the rendered conversation; the template places special tokens itself,
        so by default none are added on top (no doubled BOS)."""
        text = self.apply_chat_template(
            messages, add_generation_prompt, chat_template=chat_template, **kwargs
        )
        return self.encode(text, add_special_tokens=add_special_tokens)


class IncrementalDetokenizer:
    """Feed token ids one at a time; get back the text each adds.

    Decoding each token alone breaks byte-level BPE (a multi-byte character split across tokens
    decodes to U+FFFD) and sentencepiece spacing (a leading space depends on the previous token).
    So it decodes a short window of recent tokens and emits the text beyond what the window's
    older part already produced, holding back text that still ends in U+FFFD.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        prompt_ids: list[int] | None = None,
        skip_special_tokens: bool = True,
    ) -> None:
        self._tokenizer = tokenizer
        self._skip_special_tokens = skip_special_tokens
        self._ids: list[int] = list(prompt_ids or [])
        # The prompt's last tokens give the first output token its spacing context.
        self._prefix_offset = max(len(self._ids) - 5, 0)
        self._read_offset = len(self._ids)
        self._num_prompt_ids = len(self._ids)
        self.text = ""  # all text emitted so far

    @property
    def output_ids(self) -> list[int]:
        return self._ids[self._num_prompt_ids :]

    def add_token(self, token_id: int) -> str:
        """Append one token; return the new text (possibly empty while a character is split)."""
        self._ids.append(token_id)
        decode = self._tokenizer.decode
        prefix = decode(
            self._ids[self._prefix_offset : self._read_offset], self._skip_special_tokens
        )
        full = decode(self._ids[self._prefix_offset :], self._skip_special_tokens)
        if len(full) <= len(prefix) or full.endswith("\ufffd"):
            return ""
        delta = full[len(prefix) :]
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        self.text += delta
        return delta

    def add_tokens(self, token_ids: list[int]) -> str:
        return "".join(self.add_token(t) for t in token_ids)

    def flush(self) -> str:
        """At the end of a stream, emit held-back text (an incomplete character shows as U+FFFD)."""
        prefix = self._tokenizer.decode(
            self._ids[self._prefix_offset : self._read_offset], self._skip_special_tokens
        )
        full = self._tokenizer.decode(self._ids[self._prefix_offset :], self._skip_special_tokens)
        self._prefix_offset = self._read_offset = len(self._ids)
        delta = full[len(prefix) :] if len(full) > len(prefix) else ""
        self.text += delta
        return delta


def _read_json(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return raw


def _token_text(value: Any) -> str | None:
    """Special tokens are stored as a string or as an AddedToken dict with `content`."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _chat_template(folder: Path, config: dict[str, Any]) -> str | None:
    template = config.get("chat_template")
    if template is None and (folder / "chat_template.jinja").is_file():
        template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    if template is None and (folder / "chat_template.json").is_file():
        template = _read_json(folder / "chat_template.json").get("chat_template")
    if isinstance(template, list):  # named templates: the "default" one serves plain chat
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) else None


def _generation_eos(folder: Path) -> frozenset[int]:
    path = folder / "generation_config.json"
    if not path.is_file():
        return frozenset()
    value = _read_json(path).get("eos_token_id")
    if isinstance(value, int):
        return frozenset({value})
    if isinstance(value, list):
        return frozenset(v for v in value if isinstance(v, int))
    return frozenset()


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


def _tojson(value: Any, indent: int | None = None) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _jinja_env() -> ImmutableSandboxedEnvironment:
    # The same environment transformers uses, so templates written for it render identically.
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env
