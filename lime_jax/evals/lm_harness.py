"""lm-evaluation-harness backend `lime_jax`: any model the library loads, on the harness's tasks.

`LimeJaxLM` is an `lm_eval.api.model.LM` (through the harness's `TemplateLM`), registered as
`lime_jax`. Build it from loaded parameters (`LimeJaxLM(params, model_cfg, tokenizer)`) or from a path
(`LimeJaxLM.from_path(PATH)`, or `lm_eval.simple_evaluate(model="lime_jax", model_args="model=PATH")`
once this module is imported): a lime_jax run's workdir (its newest intact checkpoint, or `step=`), a
Hugging Face folder or a .gguf file. `python -m lime_jax.harness` is the command line.

The three request types follow the harness's `hf` backend (lm_eval/models/huggingface.py) token for
token, so that scores equal its scores on the same model:

- `loglikelihood`: `TemplateLM._encode_pair` encodes context + continuation whole and splits it after
  the context's own tokens (trailing spaces of the context move to the continuation); an empty context
  becomes the prefix token. Rows are cut to the last `max_length` + 1 tokens and scored in batches
  (evals/scoring.py): (summed log-probability, whether greedy decoding gives the continuation).
- `loglikelihood_rolling`: the document's tokens (with the specials the tokenizer adds) in the
  harness's disjoint rolling windows (`get_rolling_token_windows`, `make_disjoint_window`) of
  `max_length`, the first conditioned on the prefix token (BOS, or EOS where the tokenizer has none).
- `generate_until`: greedy decoding with the KV cache (lime_jax/model/decode.py
  `greedy_continuations`), `gen_chunk` tokens per call (the prompt and the tokens so far prefilled
  again), until every row has produced a stop
  token (EOS, the chat template's end of turn) or an `until` string, at most `max_gen_toks` tokens;
  the text is cut at the first stop token and `until` string. Sampling (`do_sample`, temperature > 0)
  is refused.

Special tokens (`tok_encode`): the tokenizer's own rule by default (BOS only where it adds one, as
`encode_with_specials`; the char / byte tokenizers of synthetic runs put BOS first), `add_bos_token`
True / False overrides it; a text that already starts with the prefix token's text gets none.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

try:
  from lm_eval import utils as lm_utils
  from lm_eval.api.model import TemplateLM
  from lm_eval.api.registry import register_model
  from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
except ModuleNotFoundError as e:  # an optional dependency
  raise ModuleNotFoundError(
    f"the lm-evaluation-harness backend needs the lm-eval package ({e}): pip install -e '.[harness]'.",
    name=e.name,
  ) from e

from lime_jax.data import target_bytes
from lime_jax.evals import loading, scoring
from lime_jax.model import ModelConfig, decode

log = logging.getLogger(__name__)

DEFAULT_MAX_LENGTH = 2048  # the hf backend's default when the model states no length


def _int_option(name: str, value: Any) -> int:
  if (
    isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).isdigit() or int(value) < 1
  ):
    raise ValueError(f"{name}={value!r} must be a positive integer.")
  return int(value)


@register_model("lime_jax")
class LimeJaxLM(TemplateLM):
  """A lime_jax model as an lm-evaluation-harness LM (see the module docstring)."""

  backend = "causal"

  def __init__(
    self,
    params: Any,
    model_cfg: ModelConfig,
    tokenizer: Any,
    *,
    batch_size: int = 16,
    max_length: int | None = None,
    add_bos_token: bool | None = None,
    prefix_token_id: int | None = None,
    max_gen_toks: int = 256,
    gen_chunk: int = 64,
    source: str = "",
  ):
    """`max_length`: tokens per scored row (default: the learned position table's size, else
    DEFAULT_MAX_LENGTH); `add_bos_token`: None follows the tokenizer; `prefix_token_id`: the token an
    empty context and a rolling document start from (default: BOS, which falls back to EOS);
    `gen_chunk`: tokens generate_until decodes per call before it checks the stop conditions."""
    super().__init__()
    if tokenizer is None:
      raise ValueError("the lime_jax harness backend needs the model's tokenizer.")
    self.tokenizer = tokenizer
    self._cfg = model_cfg
    self._params = jax.device_put(params)
    self._batch_size = _int_option("batch_size", batch_size)
    if max_length is None:
      max_length = model_cfg.max_positions if model_cfg.position == "learned" else DEFAULT_MAX_LENGTH
    self._max_length = _int_option("max_length", max_length)
    if model_cfg.position == "learned" and self._max_length > model_cfg.max_positions:
      raise ValueError(f"max_length={max_length} exceeds the model's {model_cfg.max_positions} positions.")
    if add_bos_token not in (None, True, False):
      raise ValueError(f"add_bos_token={add_bos_token!r} must be true, false or unset.")
    self.add_bos_token = add_bos_token
    self._prefix_token_id = prefix_token_id
    self._prefix_text = tokenizer.decode([self.prefix_token_id])
    self._max_gen_toks = _int_option("max_gen_toks", max_gen_toks)
    self._gen_chunk = _int_option("gen_chunk", gen_chunk)
    self._source = source
    self._score_fn = scoring.token_scorer(model_cfg)
    self._specials = target_bytes.special_ids(tokenizer)
    self._stop_ids = tuple(getattr(tokenizer, "stop_ids", ())) or (int(tokenizer.eos_id),)

  @classmethod
  def from_path(
    cls,
    model: str,
    dtype: str = "float32",
    step: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
    **options: Any,
  ) -> LimeJaxLM:
    """The model at `model` (`load`; `mesh`: its parameters sharded there by the training rules),
    activations in `dtype`; `options` as for the constructor."""
    loaded = loading.load(model, step, mesh=mesh)
    if options.get("max_length") is None:
      options["max_length"] = loaded.max_length
    cfg = loading.inference_config(loaded.cfg, dtype)
    return cls(loaded.params, cfg, loaded.tokenizer, source=str(model), **options)

  @classmethod
  def create_from_arg_obj(cls, arg_dict: dict[str, Any], additional_config: dict | None = None) -> LimeJaxLM:
    """`model=PATH[,dtype=...,step=...,batch_size=...,max_length=...,add_bos_token=...]` as a dict; the
    harness's `device` and `max_batch_size` are ignored (jax places the model)."""
    args = {**arg_dict, **{k: v for k, v in (additional_config or {}).items() if v is not None}}
    for key in ("device", "max_batch_size"):
      args.pop(key, None)
    if "model" not in args:
      raise ValueError(
        "the lime_jax backend needs model_args model=PATH (a run's workdir, HF folder or .gguf)."
      )
    return cls.from_path(**args)

  @classmethod
  def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> LimeJaxLM:
    """`model=PATH,...` (see `create_from_arg_obj`)."""
    return cls.create_from_arg_obj(lm_utils.simple_parse_args_string(arg_string), additional_config)

  # ------------------------------------------------------------------------------------ properties
  @property
  def eot_token_id(self) -> int:
    return int(self.tokenizer.eos_id)

  @property
  def prefix_token_id(self) -> int:
    return int(self._prefix_token_id if self._prefix_token_id is not None else self.tokenizer.bos_id)

  @property
  def max_length(self) -> int:
    return self._max_length

  @property
  def max_gen_toks(self) -> int:
    return self._max_gen_toks

  @property
  def batch_size(self) -> int:
    return self._batch_size

  @property
  def tokenizer_name(self) -> str:
    return str(getattr(self.tokenizer, "path", "") or self._source).replace("/", "__")

  def get_model_info(self) -> dict[str, Any]:
    return {"model_source": self._source, "model_dtype": self._cfg.compute_dtype, "backend": "lime_jax"}

  # ---------------------------------------------------------------------------------- tokenisation
  def _own_specials(self, text: str) -> list[int]:
    """`text`'s ids with the specials the tokenizer puts around a text (BOS first for the char / byte
    tokenizers, as their training prompts)."""
    if hasattr(self.tokenizer, "encode_with_specials"):
      return [int(i) for i in self.tokenizer.encode_with_specials(text)]
    return [int(self.tokenizer.bos_id)] + [int(i) for i in self.tokenizer.encode(text)]

  def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
    """Token ids of `string` as the hf backend's `tok_encode`: `add_special_tokens` (else
    `add_bos_token`, else the tokenizer's rule) says whether specials are added; none when the text
    already starts with the prefix token's text."""
    del kwargs
    prefix = self._prefix_text
    if add_special_tokens is None and prefix and string.startswith(prefix):
      add_special_tokens = False
    add = add_special_tokens if add_special_tokens is not None else self.add_bos_token
    if add is False:
      return [int(i) for i in self.tokenizer.encode(string)]
    ids = self._own_specials(string)
    bos = int(self.tokenizer.bos_id)
    if self.add_bos_token and ids[:1] != [bos]:
      ids = [bos] + ids
    return ids

  def tok_decode(self, tokens: Sequence[int]) -> str:
    """The text of `tokens` without special tokens (as the hf backend's `skip_special_tokens=True`)."""
    return self.tokenizer.decode([int(t) for t in tokens if int(t) not in self._specials])

  def apply_chat_template(
    self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True
  ) -> str:
    if not hasattr(self.tokenizer, "apply_chat_template"):
      raise ValueError(f"the tokenizer of {self._source or 'this model'} has no chat template.")
    return self.tokenizer.apply_chat_template(chat_history, add_generation_prompt=add_generation_prompt)

  # -------------------------------------------------------------------------------------- requests
  def _score(self, pairs: Sequence[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
    """(log p, greedy) of each (context ids, continuation ids), cut to the last max_length + 1 tokens."""
    rows = []
    for context, continuation in pairs:
      if not context or not continuation:
        raise ValueError("a scored request needs context and continuation tokens.")
      if len(continuation) > self.max_length:
        raise ValueError(
          f"a continuation of {len(continuation)} tokens exceeds max_length={self.max_length}."
        )
      rows.append(((context + continuation)[-(self.max_length + 1) :], len(continuation)))
    return scoring.continuation_scores(
      self._score_fn, self._params, rows, int(self.tokenizer.pad_id), self.batch_size, self.max_length
    )

  def _loglikelihood_tokens(
    self, requests: list[tuple[tuple[str, str], list[int], list[int]]], **kwargs: Any
  ) -> list[tuple[float, bool]]:
    del kwargs
    out = self._score([(context, continuation) for _, context, continuation in requests])
    for (request, _, _), answer in zip(requests, out):
      if request is not None:
        self.cache_hook.add_partial("loglikelihood", request, answer)
    return out

  def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
    del disable_tqdm
    windows, owner = [], []
    for i, (text,) in enumerate(req.args for req in requests):
      for pair in lm_utils.get_rolling_token_windows(
        token_list=self.tok_encode(text),
        prefix_token=self.prefix_token_id,
        max_seq_len=self.max_length,
        context_len=1,
      ):
        windows.append(lm_utils.make_disjoint_window(pair))
        owner.append(i)
    totals = [0.0] * len(requests)
    for i, (logp, _) in zip(owner, self._score(windows)):
      totals[i] += logp
    for req, total in zip(requests, totals):
      self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
    return totals

  def _finished(self, generated: list[int], until: Sequence[str]) -> bool:
    if any(t in self._stop_ids for t in generated):
      return True
    text = self.tok_decode(generated)
    return any(s and s in text for s in until)

  def _generate(self, prompts: Sequence[list[int]], max_new: int, until: Sequence[str]) -> list[list[int]]:
    """Greedy tokens after each prompt (`decode.greedy_continuations`, `gen_chunk` at a time, prompt +
    tokens so far prefilled again) until each row is `_finished` or has `max_new` tokens."""
    out: list[list[int]] = [[] for _ in prompts]
    active = list(range(len(prompts)))
    while active:
      n = min(self._gen_chunk, max_new - len(out[active[0]]))
      rows = [prompts[i] + out[i] for i in active]
      rows += [rows[-1]] * (self.batch_size - len(rows))  # one batch shape
      lengths_B = np.array([len(r) for r in rows], np.int32)
      width = -(-int(lengths_B.max()) // decode.PREFILL_MULTIPLE) * decode.PREFILL_MULTIPLE
      buf_BT = np.full((len(rows), width), int(self.tokenizer.pad_id), np.int32)
      for b, r in enumerate(rows):
        buf_BT[b, : len(r)] = r
      new_BN = np.asarray(decode.greedy_continuations(self._cfg, self._params, buf_BT, lengths_B, n))
      for b, i in enumerate(active):
        out[i] += [int(t) for t in new_BN[b]]
      active = [i for i in active if len(out[i]) < max_new and not self._finished(out[i], until)]
    return out

  def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
    del disable_tqdm
    results: list[str] = [""] * len(requests)
    groups: dict[str, list[int]] = {}
    for i, req in enumerate(requests):
      groups.setdefault(json.dumps(req.args[1], sort_keys=True, default=str), []).append(i)
    eos_text = self.tokenizer.decode([self.eot_token_id])
    for members in groups.values():
      kwargs = normalize_gen_kwargs(requests[members[0]].args[1], self.max_gen_toks)
      if kwargs.get("do_sample"):
        raise ValueError(
          f"the lime_jax backend decodes greedily; this task asks for sampling ({dict(kwargs)}): set "
          "do_sample=false / temperature=0 (--gen_kwargs)."
        )
      until = handle_stop_sequences(kwargs.pop("until", None), eos=eos_text or None)
      max_new = int(kwargs.pop("max_gen_toks"))
      if max_new >= self.max_length:
        raise ValueError(f"max_gen_toks={max_new} must be below max_length={self.max_length}.")
      prompts = {}
      for i in members:
        ids = self.tok_encode(requests[i].args[0])[-(self.max_length - max_new) :]
        prompts[i] = ids or [self.prefix_token_id]
      order = sorted(members, key=lambda i: -len(prompts[i]))
      for start in range(0, len(order), self.batch_size):
        chunk = order[start : start + self.batch_size]
        for i, tokens in zip(chunk, self._generate([prompts[i] for i in chunk], max_new, until)):
          stop = next((k for k, t in enumerate(tokens) if t in self._stop_ids), len(tokens))
          text = postprocess_generated_text(self.tok_decode(tokens[:stop]), until, None)
          results[i] = text
          self.cache_hook.add_partial("generate_until", requests[i].args, text)
    return results
