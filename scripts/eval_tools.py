#!/usr/bin/env python3
"""Function-calling evaluation in auto mode (an evaluation, not a test): the prompt set of
tests/e2e/test_tools_structured.py (16 prompts: single and parallel calls, prompts that need
no tool, non-English), run against a server; prints per-prompt results, the right-function and
right-arguments rates, the schema-valid rate of the calls made and the correct no-call rate.

    python3 scripts/eval_tools.py --url http://127.0.0.1:8080   (needs openai, jsonschema)
"""

import argparse
import json
import sys
from pathlib import Path

import jsonschema
from openai import OpenAI

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "e2e"))
from test_tools_structured import AUTO, SCHEMAS, TOOLS  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--model", default="default")
    a = ap.parse_args()
    client = OpenAI(base_url=a.url + "/v1", api_key="unused", max_retries=0)
    right_fn = right_args = no_call_ok = expect_call = expect_none = num_calls = num_valid = 0
    for prompt, want in AUTO:
        r = client.chat.completions.create(model=a.model, messages=[{"role": "user", "content": prompt}], tools=TOOLS, temperature=0, max_tokens=200)
        msg = r.choices[0].message
        got = []
        for c in msg.tool_calls or []:
            num_calls += 1
            try:
                args = json.loads(c.function.arguments)
                jsonschema.validate(args, SCHEMAS[c.function.name])
                num_valid += 1
            except (ValueError, KeyError, jsonschema.ValidationError):
                args = c.function.arguments
            got.append((c.function.name, args))
        if want:
            expect_call += 1
            fn_ok = sorted(n for n, _ in got) == sorted(n for n, _ in want)
            args_ok = fn_ok and all(any(g[0] == n and isinstance(g[1], dict) and all(g[1].get(k) == v for k, v in args.items()) for g in got) for n, args in want)
            right_fn += fn_ok
            right_args += args_ok
            verdict = "ok" if args_ok else ("fn ok, args differ" if fn_ok else "WRONG")
        else:
            expect_none += 1
            no_call_ok += not got
            verdict = "ok" if not got else "UNWANTED CALL"
        print(f"{verdict:>18}  {prompt!r} -> {got or (msg.content or '')[:60]!r}")
    print(f"right function(s): {right_fn}/{expect_call}; right function(s) and arguments: {right_args}/{expect_call}; "
          f"schema-valid calls: {num_valid}/{num_calls}; no call when none was needed: {no_call_ok}/{expect_none}")


if __name__ == "__main__":
    main()
