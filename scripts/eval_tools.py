#!/usr/bin/env python3
"""Function-calling evaluation in auto mode (an evaluation, not a test): for each prompt, the
expected calls (function name and arguments) or none; prints per-prompt results and the rates.

    python3 scripts/eval_tools.py --url http://127.0.0.1:8080
"""

import argparse
import json

from openai import OpenAI

TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Get the current weather for a city", "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["city"]}}},
    {"type": "function", "function": {"name": "convert_currency", "description": "Convert an amount of money between currencies", "parameters": {"type": "object", "properties": {"amount": {"type": "number"}, "from": {"type": "string"}, "to": {"type": "string"}}, "required": ["amount", "from", "to"]}}},
    {"type": "function", "function": {"name": "set_timer", "description": "Start a countdown timer", "parameters": {"type": "object", "properties": {"minutes": {"type": "integer", "minimum": 1, "maximum": 600}}, "required": ["minutes"]}}},
    {"type": "function", "function": {"name": "send_email", "description": "Send an email", "parameters": {"type": "object", "properties": {"to": {"type": "string"}, "subject": {"type": "string"}, "urgent": {"type": "boolean"}}, "required": ["to", "subject"]}}},
]

# (prompt, expected calls as (name, required argument subset)); [] means no call expected.
CASES = [
    ("What is the weather in Hanoi?", [("get_weather", {"city": "Hanoi"})]),
    ("Is it raining in London right now?", [("get_weather", {"city": "London"})]),
    ("Thời tiết ở Đà Nẵng hôm nay thế nào?", [("get_weather", {})]),
    ("Quel temps fait-il à Paris ?", [("get_weather", {"city": "Paris"})]),
    ("Give me the temperature in Tokyo in fahrenheit.", [("get_weather", {"city": "Tokyo", "unit": "fahrenheit"})]),
    ("Convert 100 USD to EUR.", [("convert_currency", {"amount": 100, "from": "USD", "to": "EUR"})]),
    ("How many yen is 50 euros?", [("convert_currency", {"amount": 50})]),
    ("Set a timer for 15 minutes.", [("set_timer", {"minutes": 15})]),
    ("Remind me in 5 minutes by starting a timer.", [("set_timer", {"minutes": 5})]),
    ("Email bob@example.com with subject 'Lunch' and mark it urgent.", [("send_email", {"to": "bob@example.com", "subject": "Lunch", "urgent": True})]),
    ("What's the weather in Berlin and in Madrid?", [("get_weather", {"city": "Berlin"}), ("get_weather", {"city": "Madrid"})]),
    ("Convert 10 USD to EUR and tell me the weather in Rome.", [("convert_currency", {"amount": 10}), ("get_weather", {"city": "Rome"})]),
    ("Write a haiku about the sea.", []),
    ("What is 2 + 2?", []),
    ("Explain what a prime number is in one sentence.", []),
    ("Translate 'good morning' into Spanish.", []),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--model", default="default")
    a = ap.parse_args()
    client = OpenAI(base_url=a.url + "/v1", api_key="unused", max_retries=0)
    right_fn = right_args = no_call_ok = expect_call = expect_none = 0
    for prompt, want in CASES:
        r = client.chat.completions.create(model=a.model, messages=[{"role": "user", "content": prompt}], tools=TOOLS, temperature=0, max_tokens=200)
        msg = r.choices[0].message
        got = [(c.function.name, json.loads(c.function.arguments)) for c in (msg.tool_calls or [])]
        if want:
            expect_call += 1
            fn_ok = sorted(n for n, _ in got) == sorted(n for n, _ in want)
            args_ok = fn_ok and all(any(g[0] == n and all(g[1].get(k) == v for k, v in args.items()) for g in got) for n, args in want)
            right_fn += fn_ok
            right_args += args_ok
            verdict = "ok" if args_ok else ("fn ok, args differ" if fn_ok else "WRONG")
        else:
            expect_none += 1
            no_call_ok += not got
            verdict = "ok" if not got else "UNWANTED CALL"
        print(f"{verdict:>18}  {prompt!r} -> {got or (msg.content or '')[:60]!r}")
    print(f"right function(s): {right_fn}/{expect_call}; right function(s) and arguments: {right_args}/{expect_call}; no call when none was needed: {no_call_ok}/{expect_none}")


if __name__ == "__main__":
    main()
