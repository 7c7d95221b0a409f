"""Document masking of packed text (`model.document_mask`): per-document positions from the packer, and
the config check. (Attention inside each document: tests/integration/test_document_mask.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from lime_jax import config as config_lib
from lime_jax.data import text
from lime_jax.data.tokenizer import ByteTokenizer
from tests.unit.test_corpus import SEQ_LEN, _config, _stream


def test_packer_positions_restart_after_every_eos(tmp_path):
  c, shards = _config(tmp_path, "jsonl")
  c.model.document_mask = True
  config_lib.validate(c)
  train = {p: docs for p, docs in shards.items() if "/train-" in p}
  import grain  # pylint: disable=import-outside-toplevel

  order = list(grain.MapDataset.source(sorted(train)).shuffle(seed=int(c.seed)))
  stream = _stream([d for p in order for d in train[p]])
  it = iter(text.packed_stream(c, "train"))
  for i in range(6):
    window = stream[i * SEQ_LEN : i * SEQ_LEN + SEQ_LEN]
    want = np.zeros(SEQ_LEN, np.int32)  # 0 at the window start and after every EOS, else +1
    for j in range(1, SEQ_LEN):
      want[j] = 0 if window[j - 1] == ByteTokenizer.eos_id else want[j - 1] + 1
    np.testing.assert_array_equal(next(it)["positions"], want)


def test_document_mask_needs_packed_text():
  c = config_lib.default_config()
  c.model.document_mask = True
  with pytest.raises(ValueError, match="model.document_mask"):
    config_lib.validate(c)
