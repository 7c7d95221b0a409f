"""The typed sections of the config but `model`: data, train, eval, mesh and the top-level `seed`.

Each field is declared once here (or, for a task's section `config.data.<task>`, in the task's module),
with `option(default, doc, choices, check)` (lime_jax/runtime/options.py): `default_config()` generates
the ml_collections sections from these dataclasses and `validate()` checks each field from its
declaration; `options.from_node(TrainConfig, config.train)` gives the typed section. The model section is
lime_jax/model/model_config.py's `ModelConfig`, plus the run options `config.model` holds beside it
(`ModelRunOptions`).
"""

from __future__ import annotations

import dataclasses

from lime_jax.data import tasks
from lime_jax.data.arithmetic import ArithmeticConfig
from lime_jax.data.base import LOSS_SCOPES, SEED
from lime_jax.data.copying import CopyingConfig
from lime_jax.data.counting import CountingConfig
from lime_jax.data.lis import LisConfig
from lime_jax.data.multiplication import MultiplicationConfig
from lime_jax.runtime import options
from lime_jax.runtime.options import option


def _corpus(name: str) -> tuple[str, ...]:
  """A choice tuple of lime_jax/data/corpus.py (imported when a config is checked: it imports grain)."""
  from lime_jax.data import corpus  # pylint: disable=import-outside-toplevel

  return getattr(corpus, name)


@dataclasses.dataclass(frozen=True)
class ModelRunOptions:
  """The fields of `config.model` that are run options, not model hyperparameters (ModelConfig.from_config
  ignores them)."""

  init_from: str = option(
    "",
    "fine-tune from a checkpoint (lime_jax/train/init_from.py): 'hf:PATH' (a Hugging Face folder: "
    "config.json + safetensors, or a .gguf file) or a lime_jax workdir 'DIR' / 'DIR:STEP' (default: its "
    "latest step). The architecture fields come from the source (a field set here must agree with it); "
    "its parameters are loaded at step 0 with a fresh optimizer; embedding rows for ids the source lacks "
    "(pause tokens) are added as the mean source embedding. '' = train from scratch.",
    check=(
      options.satisfies(
        lambda spec: spec.strip() not in ("hf:", ":"),
        "use '' (from scratch), 'hf:/path/to/hf_folder' or a lime_jax workdir 'DIR[:STEP]'.",
      ),
      options.satisfies(  # the marker of a preset that only makes sense fine-tuned (init_from.REQUIRED)
        lambda spec: not spec.startswith("<required"),
        "this preset fine-tunes a pretrained model: pass --config.model.init_from=hf:/path/to/hf_folder "
        "(e.g. GPT-2 small saved with save_pretrained).",
      ),
    ),
  )


@dataclasses.dataclass(frozen=True)
class TextConfig:
  """`config.data.text`: the corpus of task 'text' (lime_jax/data/text.py, corpus.py)."""

  name: str = option("local_text", "tfds dataset name.")
  data_dir: str = option("", "tfds data_dir holding the prepared array_record files.")
  source_dir: str = option("", "folder of .txt files the local builder prepares from.")
  split: str = option("train", "the train split (tfds).")
  eval_split: str = option("validation", "the held-out split (tfds).")
  feature: str = option("text", "feature of the tfds examples (or column of the shards) holding the text.")
  validation_fraction: float = option(
    0.1,
    "local_text: share of paragraphs held out (fixed at preparation).",
    check=options.within(0.0, 1.0, open_low=True, open_high=True),
  )
  source: str = option(
    "tfds",
    "where the documents come from: 'tfds' (data.text.name / data_dir via tfds.data_source, incl. the "
    "local_text builder) or 'files' (shards of parquet / jsonl / txt, local or gs://; data/corpus.py).",
    ("tfds", "files"),
  )
  files: str = option("", "'files': comma-separated globs of the train shards, e.g. 'data/train-*.parquet'.")
  eval_files: str = option("", "'files': globs of the held-out shards ('' = none: set them for eval).")
  file_format: str = option(
    "auto", "'auto' (from the extension), 'parquet', 'jsonl' or 'txt'.", lambda: _corpus("FORMATS")
  )
  decode_errors: str = option(
    "strict",
    "bytes of a txt / jsonl shard that are not UTF-8: 'strict' (fail naming the file, line and byte), "
    "'replace' (U+FFFD) or 'ignore' (dropped).",
    lambda: _corpus("DECODE_ERRORS"),
  )


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """`config.data`: the task, the sequence layout and the input pipeline (lime_jax/data/)."""

  task: str = option(
    "arithmetic",
    "a synthetic task (lime_jax/data/tasks.py; its settings: the section of the same name) or 'text'.",
    tasks.known_tasks,
  )
  seq_len: int = option(
    64,
    "tokens per example fed to the model (inputs are seq_len, targets shifted by one). 0 (synthetic "
    "tasks): fit to the task's longest example under the configured pauses and tokenizer, when the run "
    "is built (the saved config.json holds the fitted value).",
    check=options.satisfies(
      lambda n: n == 0 or n >= 4, "must be at least 4 tokens, or 0 to fit the task's longest example."
    ),
  )
  loss_scope: str = option(
    "answer", "CE on the answer (+eos) only, or on every non-pad token ('all').", LOSS_SCOPES
  )
  num_pause: int = option(
    0, "pause tokens between question and answer (docs/methods.md §4.1).", check=options.at_least(0)
  )
  num_workers: int = option(
    0, "grain worker processes; 0 reads in the main process.", check=options.at_least(0)
  )
  prefetch: int = option(2, "batches read ahead.", check=options.at_least(0))
  arithmetic: ArithmeticConfig = option(
    ArithmeticConfig(), "task 'arithmetic' (lime_jax/data/arithmetic.py)."
  )
  multiplication: MultiplicationConfig = option(
    MultiplicationConfig(), "task 'multiplication' (lime_jax/data/multiplication.py)."
  )
  lis: LisConfig = option(LisConfig(), "task 'lis' (lime_jax/data/lis.py).")
  copying: CopyingConfig = option(CopyingConfig(), "task 'copying' (lime_jax/data/copying.py).")
  counting: CountingConfig = option(CountingConfig(), "task 'counting' (lime_jax/data/counting.py).")
  text: TextConfig = option(TextConfig(), "task 'text'.")
  tokenizer: str = option(
    "",
    "tokenizer of the text (and of any task that reads it): '' = the task's own (text: UTF-8 bytes, 272 "
    "ids); else a tokenizer.json, a folder with one (HF layout) or a SentencePiece .model "
    "(data/subword.py).",
  )


@dataclasses.dataclass(frozen=True)
class WandbConfig:
  """`config.train.wandb`: a Weights & Biases sink beside TensorBoard and JSONL (optional extra:
  pip install -e '.[wandb]')."""

  project: str = option("", "'' = off; else the wandb project the run logs to.")
  entity: str = option("", "'' = wandb's default entity.")
  name: str = option("", "'' = the workdir's name.")
  mode: str = option(
    "online",
    "'online', 'offline' (sync later with `wandb sync`) or 'disabled'.",
    ("online", "offline", "disabled"),
  )


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """`config.train`: optimizer, schedule, logging and checkpointing (lime_jax/train/)."""

  batch_size: int = option(64, "global batch, in sequences.", check=options.POSITIVE)
  num_steps: int = option(1000, "optimizer steps of the run.", check=options.POSITIVE)
  learning_rate: float = option(1e-3, "peak learning rate.", check=options.above(0, "e.g. 1e-3"))
  min_lr_ratio: float = option(
    0.1, "cosine decays to learning_rate * min_lr_ratio.", check=options.within(0.0, 1.0)
  )
  warmup_steps: int = option(100, "linear warm-up steps.", check=options.at_least(0))
  weight_decay: float = option(0.1, "AdamW decoupled weight decay.", check=options.at_least(0))
  b1: float = option(0.9, "Adam beta1.", check=options.within(0.0, 1.0, open_high=True, note="an Adam beta"))
  b2: float = option(0.95, "Adam beta2.", check=options.within(0.0, 1.0, open_high=True, note="an Adam beta"))
  eps: float = option(1e-8, "Adam epsilon.", check=options.at_least(0))
  grad_clip: float = option(
    1.0, "global-norm gradient clipping.", check=options.at_least(0, "0 disables clipping")
  )
  router_lr_multiplier: float = option(
    10.0, "LIMe router lr = multiplier * learning_rate (docs/methods.md §2.1).", check=options.above(0)
  )
  log_every: int = option(25, "steps between train metric records.", check=options.POSITIVE)
  eval_every: int = option(
    0,
    "steps between evaluations; 0: evaluate only at the end.",
    check=options.at_least(0, "0: only at the end"),
  )
  checkpoint_every: int = option(200, "steps between checkpoints.", check=options.POSITIVE)
  keep_checkpoints: int = option(3, "checkpoints kept.", check=options.POSITIVE)
  async_checkpoint: bool = option(True, "write checkpoints in the background.")
  stop_at_step: int = option(
    0,
    "> 0: checkpoint and exit after this step, schedule intact (split a run over job slots).",
    check=options.at_least(0, "0: run to train.num_steps"),
  )
  compilation_cache_dir: str = option(
    "",
    "jax's persistent compilation cache (lime_jax/runtime/caches.py): '' = $JAX_COMPILATION_CACHE_DIR if "
    "set, else <user cache dir>/jax_cache ($LIME_JAX_CACHE_DIR, $XDG_CACHE_HOME/lime_jax or "
    "~/.cache/lime_jax); 'none' = off; anything else is the directory. A repeated start then skips the "
    "XLA compiles.",
    type_text="a string: '' (the user cache dir), 'none' (off) or a directory",
  )
  wandb: WandbConfig = option(WandbConfig(), "the Weights & Biases sink.")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """`config.eval`: the held-out evaluation (lime_jax/train/loop.py `evaluate`)."""

  num_examples: int = option(512, "held-out examples (task 'text': windows).", check=options.POSITIVE)
  batch_size: int = option(128, "examples per eval batch.", check=options.POSITIVE)
  greedy: bool = option(
    False,
    "greedy decoding of the answers (lime_jax/model/decode.py): exact match, per-answer-position "
    "accuracy and the matrix entropy of the Seq-VCR layer (lime_jax/evals/greedy_answers.py); "
    "question/answer tasks only; single-process runs only (skipped when jax.process_count() > 1).",
  )


_MESH_SIZE = options.satisfies(
  lambda n: n == -1 or n > 0, "must be a positive size or -1 (fill the remaining devices)."
)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """`config.mesh`: the device mesh (lime_jax/runtime/sharding.py); at most one axis is -1."""

  data: int = option(-1, "data-parallel axis; -1 fills the remaining devices.", check=_MESH_SIZE)
  fsdp: int = option(1, "parameter-sharded data-parallel axis.", check=_MESH_SIZE)
  tensor: int = option(1, "tensor-parallel axis.", check=_MESH_SIZE)


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """The config but `model` (lime_jax/model/model_config.py `ModelConfig` + `ModelRunOptions`)."""

  seed: int = option(0, "seed of the parameter initialisation and of the task's examples.", check=SEED)
  data: DataConfig = option(DataConfig(), "the data section.")
  train: TrainConfig = option(TrainConfig(), "the train section.")
  eval: EvalConfig = option(EvalConfig(), "the eval section.")
  mesh: MeshConfig = option(MeshConfig(), "the mesh section.")
