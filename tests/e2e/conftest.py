"""Starts real `slm serve` processes for the end-to-end tests (official openai SDK, curl)."""

import os
import re
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / "target" / "release" / "slm"
MODELS = Path(os.environ.get("SLM_HOME", Path.home() / ".cache" / "slm")) / "models"
QWEN = "qwen2.5-coder-0.5b-instruct-q4_k_m"
GEMMA = "gemma-3-270m-q4_k_m"
MINILM = "all-minilm-l6-v2-f16"
API_KEY = "e2e-test-key"


class Server:
    def __init__(self, args, api_key=API_KEY):
        cmd = [str(BIN), "serve", "--port", "0", *args]
        if api_key:
            cmd += ["--api-key", api_key]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.api_key = api_key
        self.base = None
        deadline = time.time() + 60
        for line in self.proc.stdout:
            m = re.search(r"listening on (http://\S+)", line)
            if m:
                self.base = m.group(1)
                break
            if time.time() > deadline:
                break
        assert self.base, "server did not start"
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(self.base + "/health") as r:
                    if r.status == 200:
                        return
            except Exception:
                pass
            time.sleep(0.2)
        raise AssertionError("server not healthy in 60 s")

    def metrics(self):
        req = urllib.request.Request(self.base + "/metrics", headers={"Authorization": f"Bearer {self.api_key}"})
        with urllib.request.urlopen(req) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="session")
def server():
    """Both real generation models (requests must name one) and the embedding model."""
    s = Server(["--model", str(MODELS / f"{QWEN}.gguf"), "--model", GEMMA, "--model", MINILM])
    yield s
    s.stop()


@pytest.fixture(scope="session")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server.base + "/v1", api_key=API_KEY, max_retries=0)
