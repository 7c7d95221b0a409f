"""`HFTokenizer`'s special-token rules and chat templates against transformers' tokenizers, on small
tokenizers built here."""

from __future__ import annotations

import pytest

from lime_jax.data import chat_template, subword
from lime_jax.probes import common
from tests.unit.test_subword_specials import CHATS, GEMMA, SMOLLM2, TEXTS, _folder

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize(
  "post, adds_bos", [("bos", True), ("bos_eos", True), (None, False), ("bytelevel", False)]
)
def test_encode_with_specials_matches_transformers(tmp_path, post, adds_bos):
  folder = _folder(tmp_path, post)
  tok = subword.load_tokenizer(folder)
  auto = transformers.AutoTokenizer.from_pretrained(folder)
  fast = transformers.PreTrainedTokenizerFast(
    tokenizer_file=f"{folder}/tokenizer.json", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
  )
  assert tok.add_bos is adds_bos and (tok.bos_id, tok.eos_id) == (0, 1)
  for text in TEXTS:
    ids = tok.encode_with_specials(text)
    assert ids == auto(text).input_ids == fast(text).input_ids, text
    assert ids[: int(adds_bos)] == [tok.bos_id] * int(adds_bos) and tok.encode(text) == fast.encode(
      text, add_special_tokens=False
    )
  assert common.encode_prompt(tok, TEXTS[0], 320) == auto(TEXTS[0]).input_ids


def test_add_bos_token_of_the_config_wins_over_the_post_processor(tmp_path):
  """tokenizer_config.json's add_bos_token / add_eos_token, when present, decide (transformers 4's Llama /
  Gemma classes and llama.cpp's converter rebuild the post-processor from them)."""
  on = subword.load_tokenizer(_folder(tmp_path / "on", None, {"add_bos_token": True}))
  assert on.add_bos and on.encode_with_specials("the fox") == [on.bos_id, *on.encode("the fox")]
  off = subword.load_tokenizer(_folder(tmp_path / "off", "bos_eos", {"add_bos_token": False}))
  assert not off.add_bos and off.encode_with_specials("the fox") == [*off.encode("the fox"), off.eos_id]
  eos = subword.load_tokenizer(_folder(tmp_path / "eos", "bos", {"add_eos_token": True}))
  assert eos.encode_with_specials("fox") == [eos.bos_id, *eos.encode("fox"), eos.eos_id]
  with pytest.raises(ValueError, match="add_bos_token='yes'.*true or false"):
    subword.load_tokenizer(_folder(tmp_path / "bad", None, {"add_bos_token": "yes"}))


@pytest.mark.parametrize("template, where", [(SMOLLM2, "jinja"), (GEMMA, "config")])
def test_chat_template_renders_and_tokenises_like_transformers(tmp_path, template, where):
  """The rendered text equals transformers' apply_chat_template(tokenize=False); its ids (encode, no
  specials added: the text holds them) equal apply_chat_template(tokenize=True), with one BOS."""
  if where == "jinja":
    folder = _folder(tmp_path, "bos", jinja=template)
  else:
    folder = _folder(tmp_path, "bos", {"chat_template": template})
  tok = subword.load_tokenizer(folder)
  ref = transformers.AutoTokenizer.from_pretrained(folder)
  assert tok.chat_template == template
  for messages in CHATS if template == SMOLLM2 else CHATS[:2]:
    for gen in (True, False):
      text = tok.apply_chat_template(messages, add_generation_prompt=gen)
      assert text == ref.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
      want = ref.apply_chat_template(messages, tokenize=True, add_generation_prompt=gen, return_dict=True)
      ids = common.encode_prompt(tok, text, 320, specials=False)
      assert ids == list(want["input_ids"])
  if template == GEMMA:
    assert text.startswith("<s><start_of_turn>user\n") and ids.count(tok.bos_id) == 1
    with pytest.raises(chat_template.ChatTemplateError, match="System role not supported"):
      tok.apply_chat_template(CHATS[2])
    assert isinstance(chat_template.ChatTemplateError("x"), ValueError)
