"""Chat templates of instruction-tuned tokenizers, rendered with jinja2 as Hugging Face tokenizers do.

A chat template (`chat_template` in tokenizer_config.json, a `chat_template.jinja` file, or a GGUF
file's `tokenizer.chat_template`) is a jinja2 program over `messages` (a list of {'role', 'content'}),
`add_generation_prompt` and the special-token strings (`bos_token`, `eos_token`, ...). `render` runs it
in jinja2's immutable sandbox with `trim_blocks` / `lstrip_blocks` on, the `loopcontrols` extension,
`{% generation %}` blocks rendered as their body, and the helpers templates call: `raise_exception(msg)`
(raises `ChatTemplateError`), `strftime_now(fmt)` and a `tojson` filter that keeps non-ASCII text.

`end_of_turn(template, ...)` finds the text a template writes right after an assistant message's
content (e.g. `<|im_end|>`, `<end_of_turn>`, `<|eot_id|>`): the tokenizer decides which of its tokens
that is (`subword.HFTokenizer.stop_ids`).
"""

from __future__ import annotations

import datetime
import functools
import json
from collections.abc import Mapping, Sequence
from typing import Any

_REPLY = "LIMEJAXREPLY"  # assistant content whose closing text `end_of_turn` reads.


class ChatTemplateError(ValueError):
  """The template refused the conversation (`raise_exception`) or could not be rendered."""


def _raise_exception(message: str) -> None:
  raise ChatTemplateError(message)


def _strftime_now(fmt: str) -> str:
  return datetime.datetime.now().strftime(fmt)


def _tojson(
  value: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None, sort_keys=False
):
  return json.dumps(
    value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
  )


@functools.lru_cache(maxsize=16)
def _compiled(template: str):
  """The template compiled in a fresh sandboxed environment (cached per template text)."""
  import jinja2  # pylint: disable=import-outside-toplevel
  from jinja2 import ext, nodes  # pylint: disable=import-outside-toplevel
  from jinja2.sandbox import ImmutableSandboxedEnvironment  # pylint: disable=import-outside-toplevel

  class _Generation(ext.Extension):
    """`{% generation %}...{% endgeneration %}` (marks the assistant's tokens for training masks):
    rendered as its body."""

    tags = {"generation"}

    def parse(self, parser):
      lineno = next(parser.stream).lineno
      body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
      return nodes.Scope(body, lineno=lineno)

  env = ImmutableSandboxedEnvironment(
    trim_blocks=True, lstrip_blocks=True, extensions=[_Generation, ext.loopcontrols]
  )
  env.filters["tojson"] = _tojson
  env.globals["raise_exception"] = _raise_exception
  env.globals["strftime_now"] = _strftime_now
  try:
    return env.from_string(template)
  except jinja2.TemplateSyntaxError as e:
    raise ChatTemplateError(f"the chat template does not parse (line {e.lineno}: {e.message}).") from e


def render(
  template: str,
  messages: Sequence[Mapping[str, Any]],
  add_generation_prompt: bool = True,
  **variables: Any,
) -> str:
  """The template's text for `messages`; `variables` (bos_token, eos_token, ...) are visible to it.
  Raises ChatTemplateError when the template refuses the conversation."""
  import jinja2  # pylint: disable=import-outside-toplevel

  msgs = [{k: v for k, v in dict(m).items() if v is not None} for m in messages]
  try:
    return _compiled(template).render(messages=msgs, add_generation_prompt=add_generation_prompt, **variables)
  except ChatTemplateError:
    raise
  except jinja2.TemplateError as e:
    raise ChatTemplateError(f"the chat template failed: {e}") from e


def end_of_turn(template: str, **variables: Any) -> str | None:
  """The text the template writes right after an assistant message's content (before any whitespace-only
  tail, e.g. '<|im_end|>' of '<|im_end|>\\n'), or None when it writes nothing there or refuses the
  probe conversation (one user message, one assistant reply)."""
  conversation = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _REPLY}]
  try:
    text = render(template, conversation, add_generation_prompt=False, **variables)
  except ChatTemplateError:
    return None
  at = text.rfind(_REPLY)
  tail = text[at + len(_REPLY) :] if at >= 0 else ""
  return tail.strip() or None
