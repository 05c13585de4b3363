"""LoRA adapters through a real `slm serve --lora` and the official openai SDK: the start-up
adapter is listed with its parent, picked by `model` and by llama.cpp's `lora` field with
the same tokens, loaded and unloaded at run time with vLLM's routes; a bad adapter stops the
server at start with an error naming the problem."""

import os
import subprocess
from pathlib import Path

import httpx
import pytest

from conftest import API_KEY, BIN, GEMMA, MODELS, QWEN, ROOT, Server

ADAPTER = MODELS / "qwen2.5-coder-0.5b-lora-test.gguf"
VENV_PY = Path(os.environ.get("SLM_HOME", Path.home() / ".cache" / "slm")) / ".convert-venv" / "bin" / "python"


def make_lora(base, out, seed):
    subprocess.run([str(VENV_PY), str(ROOT / "scripts" / "make-lora.py"), str(base), str(out), "--seed", str(seed)],
                   check=True, capture_output=True)


@pytest.fixture(scope="module")
def lora_server():
    s = Server(["--model", str(MODELS / f"{QWEN}.gguf"), "--lora", f"test={ADAPTER}"])
    yield s
    s.stop()


def complete(base, model, extra=None):
    body = {"model": model, "prompt": "def quicksort(xs):", "max_tokens": 24, "temperature": 0, **(extra or {})}
    r = httpx.post(base + "/v1/completions", json=body, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120)
    return r


def test_adapter_is_listed_and_selected_by_model_or_lora_field(lora_server):
    from openai import OpenAI

    client = OpenAI(base_url=lora_server.base + "/v1", api_key=API_KEY, max_retries=0)
    models = {m.id: m for m in client.models.list().data}
    assert models["test"].model_extra["parent"] == QWEN
    base = client.completions.create(model=QWEN, prompt="def quicksort(xs):", max_tokens=24, temperature=0)
    by_name = client.completions.create(model="test", prompt="def quicksort(xs):", max_tokens=24, temperature=0)
    by_field = client.completions.create(model=QWEN, prompt="def quicksort(xs):", max_tokens=24, temperature=0,
                                         extra_body={"lora": [{"name": "test", "scale": 1.0}]})
    by_id = client.completions.create(model=f"{QWEN}:test", prompt="def quicksort(xs):", max_tokens=24,
                                      temperature=0)
    assert by_name.choices[0].text == by_field.choices[0].text == by_id.choices[0].text
    assert by_name.choices[0].text != base.choices[0].text, "the adapter changes the answer"
    assert by_name.model == "test"
    chat = client.chat.completions.create(model="test", messages=[{"role": "user", "content": "Say hi"}], max_tokens=8)
    assert chat.model == "test" and chat.choices[0].message.content
    m = lora_server.metrics()
    assert m[f'slm_lora_requests_total{{model_name="{QWEN}",lora_name="test"}}'] >= 4


def test_run_time_load_and_unload(lora_server, tmp_path):
    extra = tmp_path / "extra.gguf"
    make_lora(MODELS / f"{QWEN}.gguf", extra, seed=7)
    h = {"Authorization": f"Bearer {API_KEY}"}
    r = httpx.post(lora_server.base + "/v1/load_lora_adapter", json={"lora_name": "extra", "lora_path": str(extra)},
                   headers=h, timeout=60)
    assert r.status_code == 200, r.text
    assert complete(lora_server.base, "extra").status_code == 200
    ids = [a["name"] for a in httpx.get(lora_server.base + "/lora-adapters", headers=h).json()]
    assert ids == ["test", "extra"]
    r = httpx.post(lora_server.base + "/v1/unload_lora_adapter", json={"lora_name": "extra"}, headers=h, timeout=60)
    assert r.status_code == 200, r.text
    r = complete(lora_server.base, "extra")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found", r.text
    # Without a key: refused before anything happens.
    r = httpx.post(lora_server.base + "/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": str(extra)})
    assert r.status_code == 401


def test_a_bad_start_up_adapter_stops_the_server(tmp_path):
    wrong = tmp_path / "gemma-lora.gguf"
    make_lora(MODELS / f"{GEMMA}.gguf", wrong, seed=1)
    for arg, expect in [(f"g={wrong}", "architecture `gemma3`"), (f"m={tmp_path / 'missing.gguf'}", "no adapter file")]:
        p = subprocess.run([str(BIN), "serve", "--port", "0", "--model", str(MODELS / f"{QWEN}.gguf"), "--lora", arg],
                           capture_output=True, text=True, timeout=120)
        assert p.returncode != 0
        assert expect in p.stdout + p.stderr, p.stdout + p.stderr
    p = subprocess.run([str(BIN), "serve", "--lora", "no-equals-sign"], capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "NAME=PATH" in p.stderr, p.stderr
