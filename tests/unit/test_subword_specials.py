"""`HFTokenizer`'s BOS rule without a config, `from_tokenizer`, the end-of-turn stop ids and the chat
template helpers."""

from __future__ import annotations

import json

import pytest
import tokenizers
from tokenizers import AddedToken, decoders, models, pre_tokenizers, processors, trainers

from lime_jax.data import chat_template, subword
from lime_jax.probes import nl_tasks

SMOLLM2 = (
  "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
  "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, "
  "trained by Hugging Face<|im_end|>\n' }}"
  "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
  "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
GEMMA = (
  "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
  "{% endif %}{% for message in messages %}"
  "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
  "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
  "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}"
  "{% else %}{% set role = message['role'] %}"
  "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
  "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)
SPECIALS = ["<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>", "<start_of_turn>", "<end_of_turn>"]
TEXTS = ("How many ones are there in the following sequence? 1111\nAnswer:", "the lazy fox", "1")
CHATS = (
  [{"role": "user", "content": TEXTS[0]}],
  [
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": " 4 "},
    {"role": "user", "content": "x"},
  ],
  [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "the fox"}],
)


def _bpe(post: str | None) -> tokenizers.Tokenizer:
  """A byte-level BPE with `SPECIALS`; `post`: 'bos' (TemplateProcessing '<s> $A'), 'bos_eos',
  'bytelevel' (GPT-2's post-processor) or None."""
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  lines = ["the quick brown fox jumps over the lazy dog; how many ones are there? 1111 Answer:"] * 30
  trainer = trainers.BpeTrainer(
    vocab_size=320,
    special_tokens=[AddedToken(t, special=True) for t in SPECIALS],
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    show_progress=False,
  )
  tok.train_from_iterator(lines, trainer)
  if post == "bos":
    tok.post_processor = processors.TemplateProcessing(
      single="<s> $A", pair="<s> $A <s> $B:1", special_tokens=[("<s>", 0)]
    )
  elif post == "bos_eos":
    tok.post_processor = processors.TemplateProcessing(
      single="<s> $A </s>", pair="<s> $A </s> $B:1 </s>:1", special_tokens=[("<s>", 0), ("</s>", 1)]
    )
  elif post == "bytelevel":
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
  return tok


def _folder(tmp_path, post: str | None, config: dict | None = None, jinja: str | None = None):
  tmp_path.mkdir(parents=True, exist_ok=True)
  _bpe(post).save(str(tmp_path / "tokenizer.json"))
  base = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({**base, **(config or {})}))
  if jinja is not None:
    (tmp_path / "chat_template.jinja").write_text(jinja)
  return str(tmp_path)


def test_bos_of_a_tokenizer_without_config_is_what_its_post_processor_adds(tmp_path):
  tok = _bpe(None)
  tok.add_special_tokens([AddedToken("<|begin|>", special=True)])
  begin = tok.token_to_id("<|begin|>")
  tok.post_processor = processors.TemplateProcessing(
    single="<|begin|> $A", special_tokens=[("<|begin|>", begin)]
  )
  tok.save(str(tmp_path / "t.json"))
  loaded = subword.load_tokenizer(str(tmp_path / "t.json"))
  assert loaded.add_bos and loaded.bos_id == begin and loaded.encode_with_specials("x")[0] == begin


def test_from_tokenizer_wraps_an_in_memory_tokenizer(tmp_path):
  folder = _folder(tmp_path, "bos", jinja=SMOLLM2)
  from_file = subword.load_tokenizer(folder)
  tok = subword.HFTokenizer.from_tokenizer(
    _bpe(None),
    specials={"bos": 0, "eos": 4, "pad": 2, "unk": 1},
    add_bos=True,
    chat_template=SMOLLM2,
    source="memory.gguf",
    pause_tokens=True,
  )
  assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.sep_id, tok.path) == (0, 4, 2, -1, "memory.gguf")
  V = from_file.vocab_size
  assert tok.add_bos and tok.vocab_size == V + 3 and tok.pause_id == V + 1
  for text in TEXTS:
    assert tok.encode_with_specials(text) == from_file.encode_with_specials(text)
    assert tok.decode(tok.encode(text)) == from_file.decode(from_file.encode(text)) == text
  assert tok.apply_chat_template(list(CHATS[0])) == from_file.apply_chat_template(list(CHATS[0]))
  plain = subword.HFTokenizer.from_tokenizer(
    _bpe("bos"), specials={"eos": 1}, add_bos=False, chat_template=None, source="m"
  )
  assert not plain.add_bos and plain.encode_with_specials("fox") == plain.encode("fox")
  assert (plain.bos_id, plain.pad_id, plain.chat_template, plain.stop_ids) == (1, 1, None, (1,))
  with pytest.raises(ValueError, match="unknown special-token roles.*'cls'"):
    subword.HFTokenizer.from_tokenizer(
      _bpe(None), specials={"eos": 1, "cls": 0}, add_bos=False, chat_template=None, source="m"
    )
  with pytest.raises(ValueError, match=rf"eos id 999 is outside the vocabulary \[0, {V}\)"):
    subword.HFTokenizer.from_tokenizer(
      _bpe(None), specials={"eos": 999}, add_bos=False, chat_template=None, source="m"
    )


def test_end_of_turn_token_stops_answers(tmp_path):
  """stop_ids: EOS plus the special token the template closes an assistant message with."""
  ids = lambda tok, *names: tuple(tok.encode(n)[0] for n in names)
  smol = subword.load_tokenizer(_folder(tmp_path / "smol", None, jinja=SMOLLM2))
  assert smol.stop_ids == ids(smol, "</s>", "<|im_end|>")
  gemma = subword.load_tokenizer(_folder(tmp_path / "gemma", "bos", {"chat_template": GEMMA}))
  assert gemma.stop_ids == ids(gemma, "</s>", "<end_of_turn>")
  closes_with_eos = "{% for m in messages %}{{ m['content'] + eos_token }}{% endfor %}"
  assert subword.load_tokenizer(_folder(tmp_path / "eos", None, jinja=closes_with_eos)).stop_ids == (1,)
  plain_text = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
  assert subword.load_tokenizer(_folder(tmp_path / "txt", None, jinja=plain_text)).stop_ids == (1,)
  none = subword.load_tokenizer(_folder(tmp_path / "none", None))
  assert none.chat_template is None and none.stop_ids == (1,) and nl_tasks.stop_ids(none) == {1}
  with pytest.raises(ValueError, match="--chat_template"):
    nl_tasks.chat_prompt(none, "hi")


def test_render_helpers():
  out = chat_template.render(
    "{% for m in messages %}{{ m | tojson }}{% if loop.last %}{% break %}{% endif %}{% endfor %}"
    "{% generation %}[{{ strftime_now('%Y') | length }}]{% endgeneration %}",
    [{"role": "user", "content": "zürich", "tool_calls": None}],
  )
  assert out == '{"role": "user", "content": "zürich"}[4]'
  with pytest.raises(chat_template.ChatTemplateError, match="does not parse"):
    chat_template.render("{% for %}", [])
  with pytest.raises(chat_template.ChatTemplateError, match="access to attribute"):
    chat_template.render("{{ messages.append(1) }}", [])
