"""One served model as the API sees it: its tokenizer, its context length and its chat template."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from aegaeon.models.config import load_arch_config

log = logging.getLogger(__name__)

DEFAULT_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}\n{% endfor %}<|assistant|>\n"
)


class TemplateRejected(Exception):
    """The chat template failed on these messages (the request's fault or the template's): a 400."""


class ServedModel:
    def __init__(self, name: str, path: Path):
        from jinja2 import TemplateSyntaxError
        from jinja2.sandbox import ImmutableSandboxedEnvironment
        from tokenizers import Tokenizer

        self.name = name
        self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        arch = load_arch_config(path)
        self.max_position, self.vocab_size = arch.max_position, arch.vocab_size
        tokenizer_config = path / "tokenizer_config.json"
        extra = json.loads(tokenizer_config.read_text()) if tokenizer_config.is_file() else {}
        # The sandbox has no loader: a template that uses {% include %} fails at render time, as a 400.
        env = ImmutableSandboxedEnvironment()
        env.globals["raise_exception"] = (
            _raise_template_error  # what Hugging Face chat templates call
        )
        self.special_tokens = {
            k: v for k, v in extra.items() if k in ("bos_token", "eos_token") and isinstance(v, str)
        }
        source = extra.get("chat_template")
        if isinstance(source, list):  # the named-templates form: take the default one
            source = next((t.get("template") for t in source if t.get("name") == "default"), None)
        try:
            self.chat_template = env.from_string(source or DEFAULT_CHAT_TEMPLATE)
        except TemplateSyntaxError as err:
            log.warning(
                "model %s: its chat template does not parse (%s, line %s); using the default template",
                name,
                err.message,
                err.lineno,
            )
            self.chat_template = env.from_string(DEFAULT_CHAT_TEMPLATE)

    def render_chat(self, messages: list[dict]) -> str:
        """The prompt for `messages`; TemplateRejected when the template raises anything at all (its own
        `raise_exception`, a division by zero, an include, a sandbox violation)."""
        try:
            return self.chat_template.render(
                messages=messages, add_generation_prompt=True, **self.special_tokens
            )
        except (
            Exception
        ) as err:  # a template is user-supplied code: no error of its own may be a 500
            raise TemplateRejected(
                f"the chat template of {self.name} rejected the messages: "
                f"{type(err).__name__}: {err}"
            ) from None

    def encode(self, text: str) -> list[int]:
        # encode_batch_fast, not encode: only the batch calls release the GIL while they work, so a huge prompt
        # tokenised on a worker thread does not stall the event loop; `_fast` skips the offsets, which a 10 MB
        # prompt paid for with 0.45 GB and half its time (measured: `aegaeon bench stall`)
        special = not self._template_adds_bos(text)
        return self.tokenizer.encode_batch_fast([text], add_special_tokens=special)[0].ids

    def _template_adds_bos(self, text: str) -> bool:
        bos = self.special_tokens.get("bos_token")
        return bool(bos) and text.startswith(bos)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    def token_text(self, token_id: int, context: list[int] | tuple[int, ...] = ()) -> str:
        """One token's text as it reads after `context` (the tokens before it), special tokens included:
        what logprobs name a token by. With context, a word-start marker reads as the space it is."""
        window = list(context)[-4:]
        if not window:
            return self.tokenizer.decode([token_id], skip_special_tokens=False)
        before = self.tokenizer.decode(window, skip_special_tokens=False)
        after = self.tokenizer.decode(window + [token_id], skip_special_tokens=False)
        if after.startswith(before):
            return after[len(before) :]
        return self.tokenizer.decode([token_id], skip_special_tokens=False)


def _raise_template_error(message: str) -> None:
    from jinja2 import TemplateError

    raise TemplateError(message)
