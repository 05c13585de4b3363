"""Serving on demand from a models directory (no model named at start): `/v1/models` lists
every installed model with its status, a request loads its model, `keep_alive` unloads an idle
one (from the config and per request), a memory budget that fits one model evicts the idle one
and waits for a busy one's request to finish, and `/models/load|unload` answer to admin keys
only."""

import json
import os
import threading
import time

import httpx
import pytest

from conftest import BIN, MODELS, Server

SMOL = "smollm2:135m"
GEMMA = "gemma3:270m"
USER, ADMIN = "user-key", "admin-key"


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    root = tmp_path_factory.mktemp("on-demand")
    models = root / "models"
    models.mkdir()
    for f in ["smollm2-135m-instruct-q4_1.gguf", "gemma-3-270m-q4_k_m.gguf"]:
        try:
            os.link(MODELS / f, models / f)
        except OSError:
            os.symlink(MODELS / f, models / f)
    # GGUF 241 MiB / 94 MiB + 1024 MiB of KV cache each: 1,400 MiB fits one, not both.
    (root / "slm.toml").write_text(
        f'api_keys = ["{USER}"]\nadmin_api_keys = ["{ADMIN}"]\nkeep_alive = "3s"\nmemory_budget_mb = 1400\n'
        f'responses_db = ":memory:"\n'
    )
    return root


@pytest.fixture(scope="module")
def srv(home):
    old = {k: os.environ.get(k) for k in ["SLM_HOME", "HF_HOME", "HF_HUB_CACHE"]}
    os.environ.update(SLM_HOME=str(home), HF_HOME=str(home / "hf"))
    os.environ.pop("HF_HUB_CACHE", None)
    try:
        s = Server(["--config", str(home / "slm.toml")], api_key=None)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    yield s
    s.stop()


def call(srv, method, path, body=None, key=USER, timeout=120):
    h = {"Authorization": f"Bearer {key}"} if key else {}
    r = httpx.request(method, srv.base + path, json=body, headers=h, timeout=timeout)
    return r.status_code, r.json() if r.headers.get("content-type", "").startswith("application/json") else r.text


def statuses(srv):
    st, v = call(srv, "GET", "/v1/models")
    assert st == 200, v
    return {m["id"]: m["status"] for m in v["data"]}


def chat(srv, model, **extra):
    body = {"model": model, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8, **extra}
    return call(srv, "POST", "/v1/chat/completions", body)


def wait_for(pred, timeout=20):
    t = time.time()
    while time.time() - t < timeout:
        if pred():
            return True
        time.sleep(0.2)
    return False


def metric(srv, name):
    _, text = call(srv, "GET", "/metrics")
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_models_are_listed_unloaded_and_load_on_request(srv):
    assert statuses(srv) == {GEMMA: "unloaded", SMOL: "unloaded"}
    st, v = chat(srv, SMOL)
    assert st == 200, v
    assert v["model"] == SMOL and v["choices"][0]["message"]["content"]
    assert statuses(srv)[SMOL] == "loaded"
    # The file stem names it too.
    st, v = chat(srv, "smollm2-135m-instruct-q4_1")
    assert st == 200, v
    st, v = chat(srv, "llama3:70b")
    assert st == 404 and v["error"]["code"] == "model_not_found", v
    assert metric(srv, "slm_models_loaded") == 1


def test_idle_models_unload_after_keep_alive(srv):
    assert chat(srv, SMOL)[0] == 200
    assert wait_for(lambda: statuses(srv)[SMOL] == "unloaded"), statuses(srv)
    assert metric(srv, 'slm_model_unloads_total{reason="idle"}') >= 1
    # A request's own keep_alive: 0 unloads as soon as it is done; -1 keeps it.
    assert chat(srv, SMOL, keep_alive=0)[0] == 200
    assert wait_for(lambda: statuses(srv)[SMOL] == "unloaded", timeout=3)
    assert chat(srv, SMOL, keep_alive=-1)[0] == 200
    time.sleep(4)
    assert statuses(srv)[SMOL] == "loaded"
    st, v = chat(srv, SMOL, keep_alive="soon")
    assert st == 400 and v["error"]["param"] == "keep_alive", v


def test_the_budget_evicts_idle_models_and_waits_for_busy_ones(srv):
    assert chat(srv, SMOL, keep_alive=-1)[0] == 200
    # An idle model makes room at once.
    st, v = chat(srv, GEMMA)
    assert st == 200, v
    assert statuses(srv) == {GEMMA: "loaded", SMOL: "unloaded"}
    assert metric(srv, 'slm_model_unloads_total{reason="evicted"}') >= 1
    # A busy one is not evicted: the other model's request waits until it finishes.
    done = {}

    def long_stream():
        body = {"model": GEMMA, "messages": [{"role": "user", "content": "Count to one hundred."}],
                "max_tokens": 120, "stream": True, "keep_alive": -1}
        with httpx.stream("POST", srv.base + "/v1/chat/completions", json=body,
                          headers={"Authorization": f"Bearer {USER}"}, timeout=120) as r:
            n = 0
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    n += 1
                    done.setdefault("first", time.time())
            done["end"], done["chunks"] = time.time(), n

    t = threading.Thread(target=long_stream)
    t.start()
    assert wait_for(lambda: "first" in done)
    st, v = chat(srv, SMOL)
    finished = time.time()
    t.join()
    assert st == 200, v
    assert done["chunks"] > 1
    assert finished >= done["end"], "the busy model was unloaded under its request"
    assert statuses(srv) == {GEMMA: "unloaded", SMOL: "loaded"}


def test_load_and_unload_endpoints_need_an_admin_key(srv):
    assert call(srv, "POST", "/models/load", {"model": GEMMA}, key=None)[0] == 401
    st, v = call(srv, "POST", "/models/load", {"model": GEMMA}, key=USER)
    assert st == 403 and v["error"]["code"] == "permission_denied", v
    st, v = call(srv, "POST", "/models/unload", {"model": SMOL}, key=ADMIN)
    assert st == 200 and v["status"] == "unloaded" and v["was_loaded"] is True, v
    st, v = call(srv, "POST", "/models/load", {"model": GEMMA}, key=ADMIN)
    assert st == 200 and v["status"] == "loaded", v
    assert statuses(srv)[GEMMA] == "loaded"
    st, v = call(srv, "POST", "/models/load", {"model": "nope"}, key=ADMIN)
    assert st == 404, v
    st, v = call(srv, "POST", "/models/load", {}, key=ADMIN)
    assert st == 400, v
    assert metric(srv, 'slm_model_unloads_total{reason="request"}') >= 1
    assert metric(srv, "slm_model_loads_total") >= 3
