"""A little LAN inside this machine, and hosts that fail on it (issue 20; a script you run and
report, not a CI step: it needs root, takes about three minutes and shares two cores among
three servers).

Three network namespaces (slm-h1..3, 10.0.0.11-13) joined by veth pairs to a bridge
(10.0.0.1), one `slm serve` in each on :8080, and nginx (Debian's package) in the root
namespace with config/nginx/slm.conf, unchanged but for its listen ports and an
`X-Upstream` response header naming the host. Then:

1. Faults, under 8 concurrent streaming clients for about a minute: SIGKILL host 1, restart
   it, SIGTERM (drain) host 2. Asserts: no request fails before its first byte (nginx retried
   it elsewhere); a request on the killed host fails cleanly (a closed stream, never a hang
   past the client's timeout); every stream in flight on the drained host finishes; the
   restarted host takes traffic again once ready.
2. Prefix-cache affinity: the same multi-turn chats through `hash $http_x_session_id
   consistent` and through round-robin; prefix-cache hit tokens of each (a separate
   `cache_salt` per run, so the second run finds nothing the first one cached).
3. Aggregate tok/s of three hosts against one (one thread each: a check that nothing
   serialises, not scaling, on two cores).

Run: sudo python3 tests/scale/netns_faults.py [--seconds 60] (uses target/release/slm and the
default model in $SLM_HOME/models; prints the figures and exits non-zero on a failed check).
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / "target" / "release" / "slm"
MODEL = "qwen2.5-coder-0.5b-instruct-q4_k_m"
HOSTS = {1: "10.0.0.11", 2: "10.0.0.12", 3: "10.0.0.13"}
PORTS = {"least_conn": 18290, "affinity": 18291, "round_robin": 18292}


def sh(*cmd, check=True):
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


class Lan:
    """The bridge, the namespaces, a server per namespace, nginx; all removed on close."""

    def __init__(self, work):
        self.work = work
        self.procs = {}
        sh("ip", "link", "add", "slmbr0", "type", "bridge")
        sh("ip", "addr", "add", "10.0.0.1/24", "dev", "slmbr0")
        sh("ip", "link", "set", "slmbr0", "up")
        for i, addr in HOSTS.items():
            ns = f"slm-h{i}"
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "add", f"slmv{i}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("ip", "link", "set", f"slmv{i}", "master", "slmbr0", "up")
            sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        (work / "slm.toml").write_text('responses_db = ":memory:"\nshutdown_timeout_s = 30\n')
        self.nginx_conf = work / "nginx.conf"
        self.nginx_conf.write_text(nginx_config(work))
        sh("nginx", "-t", "-c", str(self.nginx_conf))
        sh("nginx", "-c", str(self.nginx_conf))

    def start(self, i):
        log = open(self.work / f"h{i}.log", "a")
        env = {**os.environ, "SLM_THREADS": "1"}
        cmd = ["ip", "netns", "exec", f"slm-h{i}", str(BIN), "serve", "--host", "0.0.0.0", "--port", "8080",
               "--config", str(self.work / "slm.toml"), "--model", MODEL]
        # `ip netns exec` execs the command: this pid is slm's own.
        self.procs[i] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, i, within_s=90):
        deadline = time.time() + within_s
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://{HOSTS[i]}:8080/health/ready", timeout=1) as r:
                    if r.status == 200:
                        return time.time()
            except Exception:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"host {i} not ready in {within_s} s")

    def signal(self, i, sig):
        self.procs[i].send_signal(sig)

    def close(self):
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
        sh("nginx", "-c", str(self.nginx_conf), "-s", "stop", check=False)
        for i in HOSTS:
            sh("ip", "netns", "del", f"slm-h{i}", check=False)
        sh("ip", "link", "del", "slmbr0", check=False)


def nginx_config(work):
    """config/nginx/slm.conf with its three listeners: least_conn (as shipped), the
    consistent-hash upstream, and a plain round-robin copy of the first upstream."""
    conf = (ROOT / "config" / "nginx" / "slm.conf").read_text()
    server = conf[conf.index("server {"):]
    assert "listen 8080;" in server and "proxy_pass http://slm;" in server
    upstream = conf[conf.index("upstream slm {"):]
    upstream = upstream[: upstream.index("}") + 1]
    assert "least_conn;" in upstream
    rr = upstream.replace("upstream slm {", "upstream slm_rr {").replace("    least_conn;\n", "")
    tagged = server.replace("proxy_pass http://slm;", "proxy_pass http://slm;\n        add_header X-Upstream $upstream_addr always;")
    servers = [
        tagged.replace("listen 8080;", f"listen 127.0.0.1:{PORTS['least_conn']};"),
        tagged.replace("listen 8080;", f"listen 127.0.0.1:{PORTS['affinity']};").replace("http://slm;", "http://slm_affinity;"),
        tagged.replace("listen 8080;", f"listen 127.0.0.1:{PORTS['round_robin']};").replace("http://slm;", "http://slm_rr;"),
    ]
    head = conf[: conf.index("server {")]
    return (
        f"worker_processes 1;\npid {work}/nginx.pid;\nerror_log {work}/nginx-error.log;\nevents {{}}\n"
        f"http {{\naccess_log {work}/nginx-access.log;\n{head}\n{rr}\n" + "\n".join(servers) + "\n}\n"
    )


def host_of(resp):
    """The host that answered: the last of nginx's `$upstream_addr` list (earlier ones failed)."""
    addrs = resp.headers.get("x-upstream", "")
    last = addrs.replace(" : ", ",").split(",")[-1].strip()
    return next((i for i, a in HOSTS.items() if last.startswith(a)), None)


def stream_once(client, url, prompt, max_tokens):
    rec = {"start": time.time(), "host": None, "status": None, "first_byte": None, "done": False, "error": None}
    body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens, "stream": True}
    try:
        with client.stream("POST", url, json=body) as r:
            rec["status"], rec["host"] = r.status_code, host_of(r)
            if r.status_code != 200:
                r.read()
                return rec
            for line in r.iter_lines():
                if rec["first_byte"] is None:
                    rec["first_byte"] = time.time()
                if line == "data: [DONE]":
                    rec["done"] = True
    except httpx.TimeoutException as e:
        rec["error"] = f"timeout: {type(e).__name__}"
    except httpx.HTTPError as e:
        rec["error"] = f"{type(e).__name__}: {e}"
    finally:
        rec["end"] = time.time()
    return rec


PROMPTS = [
    "Write a Python function that reverses a linked list.",
    "Explain what a mutex is in two sentences.",
    "Write a SQL query that counts orders per customer.",
    "List four HTTP status codes and what they mean.",
    "Write a bash loop that prints the numbers 1 to 5.",
    "What does the `git rebase` command do?",
    "Write a JavaScript function that debounces another function.",
    "Describe a binary search in three steps.",
]


def fault_phase(lan, seconds):
    url = f"http://127.0.0.1:{PORTS['least_conn']}/v1/chat/completions"
    records, stop = [], threading.Event()
    lock = threading.Lock()

    def client_loop(k):
        with httpx.Client(timeout=httpx.Timeout(30.0, connect=5.0)) as c:
            n = 0
            while not stop.is_set():
                rec = stream_once(c, url, PROMPTS[(k + n) % len(PROMPTS)], 48)
                n += 1
                with lock:
                    records.append(rec)

    t0 = time.time()
    events = {}
    threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    at = lambda f: t0 + f * seconds  # noqa: E731
    time.sleep(max(0, at(0.2) - time.time()))
    lan.signal(1, signal.SIGKILL)
    events["kill_h1"] = time.time()
    time.sleep(max(0, at(0.4) - time.time()))
    lan.procs[1].wait()
    lan.start(1)
    events["restart_h1"] = time.time()
    events["ready_h1"] = lan.wait_ready(1)
    time.sleep(max(0, at(0.7) - time.time()))
    lan.signal(2, signal.SIGTERM)
    events["term_h2"] = time.time()
    time.sleep(max(0, at(1.0) - time.time()))
    stop.set()
    for t in threads:
        t.join()
    events["end"] = time.time()
    lan.procs[2].wait(timeout=60)
    return records, events


def classify(r):
    if r["status"] != 200 or (r["first_byte"] is None and not r["done"]):
        return "failed_before_first_byte"
    if r["error"] and r["error"].startswith("timeout"):
        return "hung"
    return "succeeded" if r["done"] else "failed_mid_stream"


def report_faults(records, ev):
    phases = [("steady", 0, ev["kill_h1"]), ("h1 killed", ev["kill_h1"], ev["restart_h1"]),
              ("h1 restarting", ev["restart_h1"], ev["term_h2"]), ("h2 draining", ev["term_h2"], ev["end"])]
    kinds = ["succeeded", "failed_before_first_byte", "failed_mid_stream", "hung"]
    print(f"{'phase':<14} {'sent':>5} " + " ".join(f"{k:>24}" for k in kinds) + "   served by h1/h2/h3")
    for name, a, b in phases:
        rs = [r for r in records if a <= r["start"] < b]
        counts = [sum(classify(r) == k for r in rs) for k in kinds]
        by_host = [sum(r["host"] == i for r in rs) for i in HOSTS]
        print(f"{name:<14} {len(rs):>5} " + " ".join(f"{c:>24}" for c in counts) + "   " + "/".join(map(str, by_host)))
    failures = []
    bad_start = [r for r in records if classify(r) == "failed_before_first_byte"]
    if bad_start:
        failures.append(f"{len(bad_start)} requests failed before their first byte: {bad_start[:3]}")
    hung = [r for r in records if classify(r) == "hung"]
    if hung:
        failures.append(f"{len(hung)} requests hung past the client timeout")
    mid = [r for r in records if classify(r) == "failed_mid_stream"]
    stray = [r for r in mid if not (r["host"] == 1 and r["start"] < ev["kill_h1"] <= r["end"])]
    if stray:
        failures.append(f"{len(stray)} streams broke that were not on the killed host at the kill: {stray[:3]}")
    on_h2 = [r for r in records if r["host"] == 2 and r["start"] < ev["term_h2"] <= r["end"]]
    if not on_h2 or not all(r["done"] for r in on_h2):
        failures.append(f"streams in flight on the drained host: {len(on_h2)}, finished: {sum(r['done'] for r in on_h2)}")
    back = [r for r in records if r["host"] == 1 and r["start"] > ev["ready_h1"]]
    if not back:
        failures.append("the restarted host took no traffic")
    print(f"h1 killed mid-stream: {len(mid)} streams closed cleanly; h1 back: ready "
          f"{ev['ready_h1'] - ev['restart_h1']:.1f} s after restart, then served {len(back)} requests; "
          f"h2 drained with {len(on_h2)} streams in flight, {sum(r['done'] for r in on_h2)} finished")
    return failures


def metric_sum(name):
    total = 0.0
    for addr in HOSTS.values():
        with urllib.request.urlopen(f"http://{addr}:8080/metrics", timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(name + "{") or line.startswith(name + " "):
                    total += float(line.rsplit(" ", 1)[1])
    return total


DOCS = [
    "The warehouse service stores parcels in numbered bays. Each bay has a capacity, a temperature class (ambient, chilled, frozen) and a list of parcel ids. Parcels arrive with a weight, a destination postcode and a deadline.",
    "Our payments API accepts a POST to /charges with an amount in cents, a currency code and a customer id. It answers with a charge id and a status of pending, succeeded or failed. Refunds go to /refunds with the charge id.",
    "The garden planner tracks beds, each with a soil type, a sun exposure in hours and the plants in it. Each plant has a spacing in centimetres, a sowing month and a harvest month.",
    "The library system records books by ISBN, with a title, authors, a shelf code and copies. A loan links a copy to a member for 21 days; a member may hold at most five loans and two reservations.",
    "A build pipeline runs stages in order: fetch, compile, test, package, publish. Each stage has a timeout, a retry count and the artifacts it produces; a failed stage stops the pipeline unless marked optional.",
    "The clinic schedule has doctors with specialities and working hours, rooms with equipment, and appointments of 15, 30 or 60 minutes that need a doctor, a room and a patient record.",
]
QUESTIONS = ["Summarise this in one sentence.", "Name one data structure to model it.", "What could go wrong?", "Give one test case."]


def affinity_phase(port, salt):
    """Six conversations of four turns each, one thread per conversation; returns
    (prefix-cache hit tokens, prompt tokens) over all hosts."""
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    hits0, prompt0 = metric_sum("slm_prefix_cache_hit_tokens_total"), metric_sum("slm_prompt_tokens_total")

    def conversation(k):
        history = []
        with httpx.Client(timeout=120) as c:
            for turn, q in enumerate(QUESTIONS):
                # The document (long, so its cached prefix matters) comes with the first question.
                history.append({"role": "user", "content": ((DOCS[k] + " ") * 6 + "\n\n" if turn == 0 else "") + q})
                body = {"model": MODEL, "messages": history, "max_tokens": 24, "temperature": 0, "cache_salt": salt}
                r = c.post(url, json=body, headers={"X-Session-Id": f"{salt}-{k}"})
                r.raise_for_status()
                history.append({"role": "assistant", "content": r.json()["choices"][0]["message"]["content"]})

    threads = [threading.Thread(target=conversation, args=(k,)) for k in range(len(DOCS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return metric_sum("slm_prefix_cache_hit_tokens_total") - hits0, metric_sum("slm_prompt_tokens_total") - prompt0


def throughput(url, n=6, max_tokens=64):
    """Aggregate completion tok/s of n concurrent requests."""
    out = []

    def one(k):
        body = {"model": MODEL, "messages": [{"role": "user", "content": PROMPTS[k % len(PROMPTS)]}],
                "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0}
        r = httpx.post(url, json=body, timeout=300)
        r.raise_for_status()
        out.append(r.json()["usage"]["completion_tokens"])

    t = time.time()
    threads = [threading.Thread(target=one, args=(k,)) for k in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return sum(out) / (time.time() - t)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (ip netns)")
    if not shutil.which("nginx"):
        sh("apt-get", "install", "-y", "-q", "nginx-light")
    work = Path(tempfile.mkdtemp(prefix="slm-netns-"))
    lan = Lan(work)
    failures = []
    try:
        for i in HOSTS:
            lan.start(i)
        for i in HOSTS:
            lan.wait_ready(i)
        print(f"CPU: {cpu_name()}; 3 hosts, SLM_THREADS=1 each, 8 streaming clients for {args.seconds:.0f} s")
        records, ev = fault_phase(lan, args.seconds)
        failures += report_faults(records, ev)

        lan.start(2)
        lan.wait_ready(2)
        rr = affinity_phase(PORTS["round_robin"], "run-rr")
        aff = affinity_phase(PORTS["affinity"], "run-affinity")
        print(f"prefix-cache hit tokens, 6 chats x 4 turns: round-robin {rr[0]:.0f} of {rr[1]:.0f} prompt tokens "
              f"({rr[0] / rr[1]:.0%}), consistent hash on X-Session-Id {aff[0]:.0f} of {aff[1]:.0f} ({aff[0] / aff[1]:.0%})")
        if not aff[0] > rr[0]:
            failures.append("affinity did not raise the prefix-cache hits")

        three = throughput(f"http://127.0.0.1:{PORTS['round_robin']}/v1/chat/completions")
        one = throughput(f"http://{HOSTS[1]}:8080/v1/chat/completions")
        print(f"aggregate tok/s, 6 concurrent requests x 64 tokens: 3 hosts {three:.1f}, 1 host {one:.1f} ({three / one:.2f}x; 2 cores)")
        # One host batches all 6 requests in one step, which costs little more than one row on
        # two shared cores, so three hosts land near 1x (0.97x measured on a Xeon). Requests
        # serialised by the proxy would run one at a time: far below that.
        if three < 0.8 * one:
            failures.append("three hosts were much slower than one: something serialises")
    finally:
        lan.close()
    for f in failures:
        print("FAIL:", f)
    if failures:
        print(f"logs kept in {work}")
        sys.exit(1)
    shutil.rmtree(work, ignore_errors=True)
    print("all checks passed")


def cpu_name():
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            flags = open("/proc/cpuinfo").read()
            level = "AVX-512 VNNI" if "avx512_vnni" in flags else "AVX2" if "avx2" in flags else "baseline"
            return f"{line.split(':', 1)[1].strip()} ({level})"
    return "unknown"


if __name__ == "__main__":
    main()
