#!/usr/bin/env python3
"""Agent-loop evaluation (an evaluation, not a test): multi-step tool tasks run the way an
agent framework runs them, through the official `openai` SDK's chat completions, against any
OpenAI-compatible server (slm, llama-server --jinja). The tasks are tests/workloads/
agent_tasks.jsonl: 24 chains of 2-3 dependent calls (the next call's arguments come from the
previous result), 4 one-call tasks and 4 that need no call, in English, Vietnamese, Russian and
Spanish. The tools are the deterministic Python functions below, all offered on every turn.

Per setting (a name and the extra request fields it sends) it reports: tasks finished with
the right final answer, tasks whose calls were exactly the expected sequence, repeated
identical calls (a call whose name and arguments equal an earlier call of the same task) and
turns used. Temperature 0, so a run is reproducible.

    python3 scripts/eval_agents.py --url http://127.0.0.1:8080 \
        --setting plain='{"repeat_call_guard": false}' --setting default='{}' --out r.json
"""

import argparse
import concurrent.futures
import json
import re
import sys
import time
import unicodedata
from pathlib import Path

from openai import OpenAI

TASKS = Path(__file__).resolve().parents[1] / "tests" / "workloads" / "agent_tasks.jsonl"


def norm(s):
    """Lower case, no diacritics (đ → d), single spaces, the part before a comma."""
    s = str(s).split(",")[0].strip().lower().replace("đ", "d")
    s = "".join(c for c in unicodedata.normalize("NFKD", s) if not unicodedata.combining(c))
    return re.sub(r"\s+", " ", s)


USERS = {"alice nguyen": "U-1042", "tran thi mai": "U-3150", "иван смирнов": "U-4211", "lucia gomez": "U-5308"}
ORDERS = {
    "U-1042": [("O-77031", "2026-11-28", "Aurora Lamp"), ("O-70212", "2026-10-02", "Zen Teapot")],
    "U-3150": [("O-55120", "2026-11-30", "Nimbus Kettle"), ("O-51874", "2026-09-14", "Costa Hat")],
    "U-4211": [("O-66342", "2026-11-25", "Polar Jacket"), ("O-60019", "2026-08-21", "Taiga Boots")],
    "U-5308": [("O-90417", "2026-11-29", "Sierra Backpack"), ("O-88230", "2026-07-03", "Orbit Headphones")],
}
TRACKING = {
    "O-77031": "TRK-88412", "O-70212": "TRK-10577", "O-55120": "TRK-20931", "O-51874": "TRK-31408",
    "O-66342": "TRK-51177", "O-60019": "TRK-42090", "O-90417": "TRK-73025", "O-88230": "TRK-64311",
}
EMPLOYEES = {
    "boris petrov": ("E-311", "Tallinn", "Logistics"), "le van hung": ("E-482", "Da Nang", "Sales"),
    "ольга кузнецова": ("E-527", "Kazan", "Finance"), "javier ruiz": ("E-664", "Valencia", "Support"),
}
CITY_ALIASES = {
    "huế": "hue", "đà nẵng": "da nang", "danang": "da nang", "phú quốc": "phu quoc", "hải phòng": "hai phong",
    "haiphong": "hai phong", "казань": "kazan", "пермь": "perm", "иркутск": "irkutsk",
    "новосибирск": "novosibirsk", "seville": "sevilla", "таллин": "tallinn", "рейкьявик": "reykjavik",
}
WEATHER = {
    "tallinn": 4, "hue": 27, "porto": 17, "reykjavik": -2, "da nang": 29, "phu quoc": 31, "hai phong": 21,
    "kazan": -6, "perm": -9, "irkutsk": -14, "novosibirsk": -11, "valencia": 19, "bilbao": 14, "sevilla": 22,
    "granada": 12,
}
FLIGHTS = {
    "VN213": "Hue", "BA117": "Porto", "VJ122": "Phu Quoc", "VN245": "Hai Phong", "SU1402": "Perm",
    "S7203": "Irkutsk", "IB3170": "Bilbao", "VY1288": "Sevilla",
}
PRICES = {
    "aurora lamp": 129, "orbit headphones": 95, "nimbus kettle": 45, "zen teapot": 38, "polar jacket": 210,
    "taiga boots": 150, "sierra backpack": 80, "costa hat": 25,
}
PER_EUR = {"EUR": 1.0, "USD": 1.08, "GBP": 0.85, "JPY": 160.0, "VND": 27000.0, "RUB": 100.0}


def city_key(city):
    c = str(city).split(",")[0].strip().lower()
    return CITY_ALIASES.get(c, norm(c))


def find_user(name):
    uid = USERS.get(norm(name))
    return {"user_id": uid, "name": name} if uid else {"error": f"no user named {name}"}


def get_orders(user_id):
    orders = ORDERS.get(str(user_id).strip().upper())
    if not orders:
        return {"error": f"no user with id {user_id}"}
    return {"user_id": user_id, "orders": [{"order_id": o, "date": d, "item": i} for o, d, i in orders]}


def get_order_tracking(order_id):
    t = TRACKING.get(str(order_id).strip().upper())
    return {"order_id": order_id, "status": "shipped", "tracking_number": t} if t else {"error": f"no order {order_id}"}


def get_employee(name):
    e = EMPLOYEES.get(norm(name))
    if not e:
        return {"error": f"no employee named {name}"}
    return {"employee_id": e[0], "name": name, "office_city": e[1], "department": e[2]}


def get_weather(city):
    k = city_key(city)
    # Unknown cities get a made-up but fixed temperature, as a real API would answer.
    t = WEATHER.get(k, sum(map(ord, k)) % 35 - 5)
    return {"city": city, "temperature_c": t, "condition": "cloudy"}


def get_flight(flight):
    f = str(flight).replace(" ", "").upper()
    d = FLIGHTS.get(f)
    return {"flight": f, "destination_city": d, "departure": "08:40"} if d else {"error": f"no flight {flight}"}


def get_product_price(product):
    p = PRICES.get(norm(product))
    return {"product": product, "price": p, "currency": "EUR"} if p else {"error": f"no product {product}"}


def convert_currency(amount, **kw):
    src, dst = str(kw.get("from", "")).upper(), str(kw.get("to", "")).upper()
    if src not in PER_EUR or dst not in PER_EUR:
        return {"error": "unknown currency"}
    v = round(float(amount) / PER_EUR[src] * PER_EUR[dst], 2)
    return {"amount": int(v) if v == int(v) else v, "currency": dst}


def tool(name, desc, props, required):
    return {"type": "function", "function": {"name": name, "description": desc, "parameters": {
        "type": "object", "properties": props, "required": required}}}


S = {"type": "string"}
TOOLS = [
    tool("find_user", "Find a customer account by the person's full name; returns its user_id", {"name": S}, ["name"]),
    tool("get_orders", "List a customer's orders (newest first) by user_id", {"user_id": S}, ["user_id"]),
    tool("get_order_tracking", "Get the shipping status and tracking number of an order by order_id",
         {"order_id": S}, ["order_id"]),
    tool("get_employee", "Look up an employee by full name: id, office city and department", {"name": S}, ["name"]),
    tool("get_weather", "Get the current weather (temperature in °C) for a city", {"city": S}, ["city"]),
    tool("get_flight", "Get a flight's destination city and departure time by flight number", {"flight": S},
         ["flight"]),
    tool("get_product_price", "Get a product's price (in EUR) by product name", {"product": S}, ["product"]),
    tool("convert_currency", "Convert an amount of money from one currency to another",
         {"amount": {"type": "number"}, "from": {"type": "string", "enum": list(PER_EUR)},
          "to": {"type": "string", "enum": list(PER_EUR)}}, ["amount", "from", "to"]),
]
FUNCTIONS = {f.__name__: f for f in [find_user, get_orders, get_order_tracking, get_employee, get_weather,
                                      get_flight, get_product_price, convert_currency]}


def run_tool(name, arguments):
    try:
        args = json.loads(arguments or "{}")
        return FUNCTIONS[name](**args) if name in FUNCTIONS else {"error": f"no tool {name}"}
    except Exception as e:  # a bad call is answered, as a framework would
        return {"error": f"bad arguments: {e}"}


def digits(s):
    """Numbers with their separators removed ("1.215.000" and "1 215 000" → "1215000")."""
    return re.sub(r"(?<=\d)[\s.,\u00a0\u202f'](?=\d)", "", s)


def answer_ok(text, want):
    """Every wanted value appears as a whole number or id ("17" is not in "BA117")."""
    t = digits(text or "").lower().replace("−", "-")
    return all(re.search(r"(?<![\w-])" + re.escape(digits(w).lower()) + r"(?![\w])", t) for w in want)


def same_arg(got, want):
    if isinstance(want, (int, float)):
        try:
            return abs(float(got) - want) < 1e-6
        except (TypeError, ValueError):
            return False
    if str(got).strip().upper() == str(want).upper():
        return True
    return city_key(got) == city_key(want) or norm(got) == norm(want)


def run_task(client, model, task, extra, max_turns, max_tokens):
    messages = [{"role": "user", "content": task["prompt"]}]
    calls, final, turns, error = [], None, 0, None
    while turns < max_turns:
        turns += 1
        try:
            r = client.chat.completions.create(model=model, messages=messages, tools=TOOLS, temperature=0,
                                               max_tokens=max_tokens, extra_body=extra or None)
        except Exception as e:
            error = str(e)[:200]
            break
        m = r.choices[0].message
        if not m.tool_calls:
            final = m.content or ""
            break
        messages.append({"role": "assistant", "content": m.content, "tool_calls": [
            {"id": c.id, "type": "function", "function": {"name": c.function.name, "arguments": c.function.arguments}}
            for c in m.tool_calls]})
        for c in m.tool_calls:
            try:
                args = json.loads(c.function.arguments or "{}")
            except ValueError:
                args = {"<unparsed>": c.function.arguments}
            calls.append([c.function.name, args])
            messages.append({"role": "tool", "tool_call_id": c.id,
                             "content": json.dumps(run_tool(c.function.name, c.function.arguments), ensure_ascii=False)})
    want = task["calls"]
    seq_ok = len(calls) == len(want) and all(
        g[0] == w[0] and all(same_arg(g[1].get(k), v) for k, v in w[1].items()) for g, w in zip(calls, want))
    seen, repeats = [], 0
    for c in calls:
        key = json.dumps(c, sort_keys=True)
        repeats += key in seen
        seen.append(key)
    finished = final is not None
    correct = finished and answer_ok(final, task["answer"]) and (task["kind"] != "none" or not calls)
    return {"id": task["id"], "kind": task["kind"], "lang": task["lang"], "finished": finished, "correct": correct,
            "sequence_ok": seq_ok, "repeats": repeats, "turns": turns, "calls": calls, "final": final,
            "error": error}


def summarize(label, results, wall):
    n = len(results)
    pct = lambda k: sum(r[k] for r in results)  # noqa: E731
    by_kind = {k: (sum(r["correct"] for r in results if r["kind"] == k), sum(r["kind"] == k for r in results))
               for k in ("chain", "one", "none")}
    line = (f"{label:<28} correct {pct('correct'):>2}/{n} ({100 * pct('correct') / n:3.0f} %)  "
            f"sequence {pct('sequence_ok'):>2}/{n}  repeated calls {pct('repeats'):>3} "
            f"(in {sum(r['repeats'] > 0 for r in results)} tasks)  turns {sum(r['turns'] for r in results) / n:.2f}  "
            + "  ".join(f"{k} {c}/{t}" for k, (c, t) in by_kind.items()) + f"  [{wall:.0f} s]")
    return line


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True)
    ap.add_argument("--model", default="default")
    ap.add_argument("--label", default="", help="prefix for each summary line (e.g. the server and model)")
    ap.add_argument("--setting", action="append", default=[],
                    help="NAME=JSON: extra request fields for one setting (repeatable; default: one with none)")
    ap.add_argument("--max-turns", type=int, default=6)
    ap.add_argument("--max-tokens", type=int, default=300)
    ap.add_argument("--jobs", type=int, default=4, help="tasks run at once")
    ap.add_argument("--only", default="", help="comma-separated task ids or languages")
    ap.add_argument("--out", help="write every task's record (calls, final answer) as JSON")
    ap.add_argument("--verbose", action="store_true")
    a = ap.parse_args()
    tasks = [json.loads(line) for line in TASKS.read_text().splitlines() if line.strip()]
    if a.only:
        keep = set(a.only.split(","))
        tasks = [t for t in tasks if t["id"] in keep or t["lang"] in keep]
    settings = [s.split("=", 1) for s in a.setting] or [["default", "{}"]]
    client = OpenAI(base_url=a.url.rstrip("/") + "/v1", api_key="unused", max_retries=0, timeout=600)
    report, lines = {}, []
    for name, extra in settings:
        t0 = time.time()
        with concurrent.futures.ThreadPoolExecutor(a.jobs) as pool:
            results = list(pool.map(lambda t: run_task(client, a.model, t, json.loads(extra), a.max_turns,
                                                       a.max_tokens), tasks))
        wall = time.time() - t0
        if a.verbose:
            for r in results:
                flag = "ok " if r["correct"] else "BAD"
                print(f"  {flag} {r['id']:<20} turns {r['turns']} repeats {r['repeats']} calls "
                      f"{[c[0] for c in r['calls']]} final {str(r['final'])[:100]!r} {r['error'] or ''}")
        line = summarize(f"{a.label}{name}", results, wall)
        print(line, flush=True)
        lines.append(line)
        report[name] = {"extra": json.loads(extra), "results": results, "wall_s": wall}
    if a.out:
        Path(a.out).write_text(json.dumps({"url": a.url, "model": a.model, "settings": report, "summary": lines},
                                          ensure_ascii=False, indent=1))


if __name__ == "__main__":
    sys.exit(main())
