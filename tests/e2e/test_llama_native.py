"""llama.cpp's clients against a real `slm serve`: an editor's `/infill` request as llama.vscode
sends it (its extra fields accepted, streamed), `/completion`, and the official OpenAI SDK
with a base URL without `/v1` (llama-server's aliases), FIM through OpenAI's `suffix`."""

import json

import httpx
from openai import OpenAI

from conftest import API_KEY, QWEN


def test_an_editor_infill_request_streams_a_completion(server):
    # The fields llama.vscode sends (llama.vscode/src/llama-server.ts), extras included.
    body = {
        "model": QWEN,
        "input_prefix": "def is_even(n):\n",
        "input_suffix": "\n\nprint(is_even(4))\n",
        "input_extra": [{"filename": "utils.py", "text": "def is_odd(n):\n    return n % 2 == 1\n"}],
        "prompt": "    return ",
        "n_predict": 16,
        "n_indent": 4,
        "top_k": 40,
        "top_p": 0.99,
        "stream": True,
        "samplers": ["top_k", "top_p", "infill"],
        "cache_prompt": True,
        "t_max_prompt_ms": 500,
        "t_max_predict_ms": 1000,
        "temperature": 0,
    }
    chunks = []
    with httpx.stream("POST", server.base + "/infill", json=body, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: "):
                chunks.append(json.loads(line[6:]))
    assert chunks[-1]["stop"] is True and all(c["stop"] is False for c in chunks[:-1])
    text = "".join(c["content"] for c in chunks)
    assert "n % 2" in text, text
    assert chunks[-1]["timings"]["predicted_n"] >= 1


def test_the_openai_sdk_without_v1_and_fim_through_suffix(server):
    client = OpenAI(base_url=server.base, api_key=API_KEY, max_retries=0)
    chat = client.chat.completions.create(model=QWEN, messages=[{"role": "user", "content": "Say hi."}], max_tokens=4)
    assert chat.choices[0].message.content
    assert any(m.id == QWEN for m in client.models.list().data)
    c = client.completions.create(
        model=QWEN, prompt="def square(x):\n    ", suffix="\n\nprint(square(3))\n", max_tokens=12, temperature=0
    )
    assert "x * x" in c.choices[0].text or "x ** 2" in c.choices[0].text, c.choices[0].text
    native = httpx.post(
        server.base + "/completion",
        json={"model": QWEN, "prompt": "def square(x):", "n_predict": 4, "temperature": 0},
        headers={"x-api-key": API_KEY},
    ).json()
    assert native["stop_type"] in ("limit", "eos") and native["tokens_predicted"] >= 1
