"""What the benchmark scripts share: the CPU they ran on (every figure names it) and waiting
for a server they started to become healthy."""

import time
import urllib.request


def cpu_label():
    """`MODEL (LEVEL)`: the CPU's name and the widest kernel level its flags allow."""
    text = open("/proc/cpuinfo").read()
    name = next((l.split(":", 1)[1].strip() for l in text.splitlines() if l.startswith("model name")), "?")
    flags = next((l for l in text.splitlines() if l.startswith("flags")), "").split()
    level = "AVX-512 VNNI" if "avx512_vnni" in flags else "AVX2" if "avx2" in flags else "baseline"
    return f"{name} ({level})"


def wait_healthy(base, proc, timeout=120):
    """Until `base/health` answers 200; exits if the server process `proc` died first."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"server exited ({proc.returncode}): {proc.args}")
        try:
            with urllib.request.urlopen(base + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except Exception:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{base} not healthy in {timeout} s")
