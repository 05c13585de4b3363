"""llama.cpp's clients against a real `slm serve`: an editor's `/infill` request as llama.vscode
sends it (its extra fields accepted, streamed), `/completion`, and the official OpenAI SDK
with a base URL without `/v1` (llama-server's aliases), FIM through OpenAI's `suffix`."""

import json

import httpx
import pytest
from openai import OpenAI

from conftest import API_KEY, MODELS, QWEN, Server


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


def test_several_host_addresses_aliases_tags_and_title_case_headers(tmp_path):
    """`--host 127.0.0.1,::1` (llama.cpp's form) serves on both; a model's `aliases` and
    `tags` are listed and answer; header names come in title case, as llama-server's."""
    import socket

    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    cfg = tmp_path / "slm.toml"
    cfg.write_text(f'[[models]]\npath = "{MODELS / (QWEN + ".gguf")}"\nalias = "code"\n'
                   'aliases = ["fim", "tiny"]\ntags = ["chat", "fim", "small"]\n')
    s = Server(["--config", str(cfg), "--host", "127.0.0.1,::1"], api_key=None)
    try:
        port = s.base.rsplit(":", 1)[1]
        for host in ["127.0.0.1", "[::1]"]:
            r = httpx.post(f"http://{host}:{port}/completion", json={"model": "tiny", "prompt": "a", "n_predict": 2})
            assert r.status_code == 200, r.text
        m = httpx.get(s.base + "/v1/models").json()["data"][0]
        assert (m["id"], m["aliases"], m["tags"]) == ("code", ["code", "fim", "tiny"], ["chat", "fim", "small"])
        with socket.create_connection(("127.0.0.1", int(port))) as c:
            c.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            head = c.recv(4096).split(b"\r\n\r\n")[0]
        assert b"\r\nContent-Type: application/json" in head, head
    finally:
        s.stop()
