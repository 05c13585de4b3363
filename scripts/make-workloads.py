#!/usr/bin/env python3
"""Writes the speculative-decoding workloads under tests/workloads/ (deterministic: run it
again and the files do not change). Four JSONL files, 16+ chat requests each:

- code_edit.jsonl   rewrite a given 60-150-line Python function with one change;
- extraction.jsonl  JSON extracted from a given text;
- rag.jsonl         an answer quoting a given passage;
- chat.jsonl        free chat (nothing to copy from the prompt).

Each line: {"id", "workload", "messages": [...], "max_tokens"}. scripts/bench_spec.py sends
them to slm and llama-server. Usage: scripts/make-workloads.py [--out tests/workloads]
"""

import argparse
import json
import random
from pathlib import Path

FIELDS = [
    ("host", "str", '"localhost"'), ("port", "int", "8080"), ("timeout", "float", "30.0"),
    ("retries", "int", "3"), ("user", "str", '"admin"'), ("database", "str", '"main"'),
    ("pool_size", "int", "10"), ("log_level", "str", '"info"'), ("cache_ttl", "int", "600"),
    ("max_body", "int", "1048576"), ("region", "str", '"eu-west-1"'), ("workers", "int", "4"),
    ("backoff", "float", "1.5"), ("queue", "str", '"default"'), ("batch_size", "int", "32"),
    ("threshold", "float", "0.75"), ("prefix", "str", '"/api"'), ("replicas", "int", "2"),
    ("window", "int", "60"), ("ratio", "float", "0.5"), ("bucket", "str", '"data"'),
    ("shards", "int", "8"), ("label", "str", '"prod"'), ("interval", "float", "5.0"),
]

CHANGES = [
    ("rename the parameter `cfg` to `settings` everywhere", None),
    ("replace every `errors.append(...)` with `problems.append(...)`, renaming the list `errors` to `problems`", None),
    ("change the error messages to start with \"invalid \" instead of \"bad \"", None),
    ("add a `strict: bool = False` parameter and, when it is true, raise `ValueError` at the end if there are errors", None),
    ("replace `print(` calls with `logger.warning(`", None),
    ("make the function return a tuple `(result, errors)` instead of only `result`", None),
    ("rename the function to `{name}_checked`", None),
    ("change every `isinstance(value, float)` check to also accept `int`, as `isinstance(value, (int, float))`", None),
]


def field_block(name: str, kind: str, default: str, rng: random.Random) -> list[str]:
    lo, hi = rng.randint(0, 5), rng.randint(100, 100000)
    lines = [f'    value = cfg.get("{name}", {default})']
    if kind == "int":
        lines += [
            "    if not isinstance(value, int):",
            f'        errors.append("bad {name}: expected an integer, got %r" % (value,))',
            f"    elif value < {lo} or value > {hi}:",
            f'        errors.append("bad {name}: %d is outside {lo}..{hi}" % value)',
            "    else:",
            f'        result["{name}"] = value',
        ]
    elif kind == "float":
        lines += [
            "    if not isinstance(value, float):",
            f'        errors.append("bad {name}: expected a number, got %r" % (value,))',
            "    elif value < 0:",
            f'        print("negative {name}, using the default")',
            f'        result["{name}"] = {default}',
            "    else:",
            f'        result["{name}"] = value',
        ]
    else:
        lines += [
            "    if not isinstance(value, str) or not value:",
            f'        errors.append("bad {name}: expected a non-empty string")',
            "    else:",
            f'        result["{name}"] = value.strip()',
        ]
    return lines


def code_edit(rng: random.Random, i: int) -> dict:
    name = rng.choice(["load_config", "validate_settings", "parse_options", "check_service", "read_profile",
                       "prepare_job", "build_pipeline", "normalize_request"]) + f"_{i}"
    fields = rng.sample(FIELDS, rng.randint(11, 17))
    body = [
        f"def {name}(cfg: dict) -> dict:",
        f.    """Validates the settings in `cfg` and returns the cleaned values."""',
        "    result = {}",
        "    errors = []",
    ]
    for f in fields:
        body += field_block(*f, rng)
    body += [
        "    if errors:",
        "        for e in errors:",
        '            print("config error:", e)',
        "    return result",
    ]
    code = "\n".join(body)
    change = CHANGES[i % len(CHANGES)][0].format(name=name)
    prompt = (f"Here is a Python function:\n\n```python\n{code}\n```\n\nRewrite it with one change: {change}. "
              "Keep everything else exactly as it is. Reply with the whole function in one ```python block and nothing else.")
    return {"messages": [{"role": "user", "content": prompt}], "max_tokens": 2048, "lines": len(body)}


PEOPLE = ["Alice Martin", "Bao Nguyen", "Carlos Ruiz", "Dana Okafor", "Erik Lund", "Fatima Zahra", "Giulia Rossi",
          "Hiro Tanaka", "Ines Duarte", "Jonas Weber", "Kavya Rao", "Liam O'Brien", "Mei Chen", "Nadia Petrova",
          "Omar Haddad", "Priya Shah", "Quentin Moreau", "Rosa Alvarez"]
CITIES = ["Lisbon", "Hanoi", "Austin", "Lagos", "Oslo", "Casablanca", "Turin", "Osaka", "Porto", "Leipzig",
          "Pune", "Cork", "Chengdu", "Kazan", "Beirut", "Ahmedabad", "Lyon", "Seville"]
PRODUCTS = ["standing desk", "mechanical keyboard", "espresso machine", "road bike", "air purifier",
            "noise-cancelling headphones", "e-reader", "camping tent", "drone", "sewing machine"]


def extraction(rng: random.Random, i: int) -> dict:
    kind = i % 2
    if kind == 0:
        people = rng.sample(range(len(PEOPLE)), 3)
        rows = []
        for p in people:
            rows.append({"name": PEOPLE[p], "age": rng.randint(21, 70), "city": CITIES[p],
                         "email": PEOPLE[p].split()[0].lower().replace("'", "") + "@example.com"})
        text = " ".join(
            f"{r['name']} is {r['age']} years old, lives in {r['city']} and can be reached at {r['email']}."
            for r in rows)
        ask = ("Extract every person as a JSON array of objects with the keys \"name\", \"age\", \"city\" and "
               "\"email\". Reply with the JSON only.")
    else:
        orders = []
        for _ in range(3):
            orders.append({"order_id": f"A-{rng.randint(10000, 99999)}", "product": rng.choice(PRODUCTS),
                           "quantity": rng.randint(1, 5), "unit_price": round(rng.uniform(20, 900), 2),
                           "customer": rng.choice(PEOPLE)})
        text = " ".join(
            f"Order {o['order_id']}: {o['customer']} bought {o['quantity']} x {o['product']} at "
            f"${o['unit_price']} each." for o in orders)
        ask = ("Extract the orders as a JSON array of objects with the keys \"order_id\", \"customer\", "
               "\"product\", \"quantity\" and \"unit_price\". Reply with the JSON only.")
    return {"messages": [{"role": "user", "content": f"Text:\n{text}\n\n{ask}"}], "max_tokens": 512}


TOPICS = [
    ("the Varnholt Bridge", "bridge", "crosses the river Elm", "opened in 1931", "is 412 metres long",
     "was designed by the engineer Marta Kessel", "carries two tram lines and a cycle path"),
    ("Lake Orrin", "lake", "lies 1,240 metres above sea level", "freezes every January",
     "is 38 metres deep at its deepest point", "is fed by three glacier streams", "hosts a rowing regatta each June"),
    ("the Quillon X2 router", "device", "supports Wi-Fi 6E", "was released in March 2024",
     "draws 14 watts at full load", "has four gigabit Ethernet ports", "receives security updates until 2030"),
    ("the Sabel Observatory", "observatory", "sits on Mount Tarn", "was founded in 1902",
     "houses a 1.2-metre reflecting telescope", "is open to visitors on Fridays", "discovered the comet Sabel-3"),
    ("the Korra rail line", "railway", "links Port Alden to Merrow", "was electrified in 1978",
     "runs 27 trains a day", "has a top speed of 160 km/h", "crosses eleven viaducts"),
    ("the Tessaly library", "library", "holds 2.3 million volumes", "was rebuilt after a fire in 1867",
     "lends books to 40,000 members", "has a reading room under a glass dome", "keeps a map collection from 1550"),
    ("the Mirren hydro plant", "power plant", "produces 310 megawatts", "was commissioned in 1965",
     "uses six Francis turbines", "supplies power to 250,000 homes", "is managed by the Northern Grid company"),
    ("Fennick Island", "island", "has 3,100 inhabitants", "is reached by a 40-minute ferry",
     "is known for its wild ponies", "has one school and two harbours", "was a whaling station until 1912"),
]

QUESTIONS = [
    ("When did it open or start, and how big is it?", 1, 2),
    ("Who or what is behind it, and what is special about it?", 3, 4),
    ("Where is it, and what does it carry, hold or produce?", 0, 4),
    ("Give two facts about its size and its history.", 2, 1),
]


def rag(rng: random.Random, i: int) -> dict:
    name, kind, *facts = TOPICS[i % len(TOPICS)]
    filler = [f"Local guides often mention {name} to visitors.", f"The {kind} appears in several postcards.",
              f"Maintenance work on the {kind} is planned every few years.",
              f"Records about the {kind} are kept in the regional archive."]
    sentences = [f"{name[0].upper() + name[1:]} {f}." for f in facts] + filler
    rng.shuffle(sentences)
    passage = " ".join(sentences)
    q, _, _ = QUESTIONS[i % len(QUESTIONS)]
    prompt = (f"Passage:\n{passage}\n\nQuestion about {name}: {q}\nAnswer by quoting the relevant sentences "
              "of the passage word for word, each on its own line.")
    return {"messages": [{"role": "user", "content": prompt}], "max_tokens": 256}


CHAT = [
    "What are three good habits for writing maintainable code?",
    "Explain the difference between a process and a thread.",
    "Suggest a name for a small bakery that sells sourdough bread, and say why.",
    "How does a hash map handle collisions?",
    "Write a short poem about autumn rain.",
    "What should I pack for a three-day hiking trip?",
    "Why is the sky blue? Explain it to a ten-year-old.",
    "Give me a plan to learn basic Spanish in one month.",
    "What is the difference between TCP and UDP?",
    "Tell me a short story about a robot who learns to paint.",
    "How do vaccines train the immune system?",
    "What are the pros and cons of working from home?",
    "Explain recursion with an everyday example.",
    "How can I make my laptop battery last longer?",
    "What is a good way to start a conversation at a networking event?",
    "Describe how a bill becomes a law, in general terms.",
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=Path(__file__).resolve().parent.parent / "tests/workloads", type=Path)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(18)
    sets = {
        "code_edit": [code_edit(rng, i) for i in range(16)],
        "extraction": [extraction(rng, i) for i in range(16)],
        "rag": [rag(rng, i) for i in range(16)],
        "chat": [{"messages": [{"role": "user", "content": c}], "max_tokens": 512} for c in CHAT],
    }
    for name, items in sets.items():
        with open(a.out / f"{name}.jsonl", "w") as f:
            for i, it in enumerate(items):
                lines = it.pop("lines", None)
                if lines is not None:
                    assert 60 <= lines <= 150, lines
                f.write(json.dumps({"id": f"{name}-{i:02d}", "workload": name, **it}) + "\n")
        print(f"{a.out / name}.jsonl: {len(items)} requests")


if __name__ == "__main__":
    main()
