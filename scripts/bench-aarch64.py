#!/usr/bin/env python3
"""slm's aarch64 kernels against llama.cpp's, both built for aarch64 and run under qemu-user
on the same GGUF with the same thread count: an emulated proxy, not a real-hardware figure.

Reports, per emulated CPU, prefill and decode tok/s (slm bench vs llama-bench) and, with
--count, guest instructions per prefill token and per decode token, from qemu's TCG plugin
(scripts/qemu/insn-count.c): each is the difference between two runs that differ only in the
number of prompt (or generated) tokens, divided by that difference, so model loading, warm-up
and start-up cancel out.

Needs the aarch64 builds:
    cargo build --release --target aarch64-unknown-linux-gnu -p slm-server   (see scripts/test-aarch64.sh for the env)
    scripts/build-llama-cpp-aarch64.sh
Usage:
    scripts/bench-aarch64.py [--model GGUF] [--cpus cortex-a76,max] [--count] [--pp 64] [--tg 16]
Not part of .ci/run (minutes per run: everything is emulated).
"""
import argparse
import functools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

print = functools.partial(print, flush=True)  # progress shows through a pipe
ROOT = Path(__file__).resolve().parent.parent
SYSROOT = "/usr/aarch64-linux-gnu"
# The best slm level each emulated CPU has (the portable level runs beside it).
BEST = {"max": "i8mm", "cortex-a76": "dotprod", "neoverse-n1": "dotprod", "cortex-a72": "neon", "cortex-a53": "neon"}


def qemu(cpu, argv, env=None, plugin=None):
    cmd = ["qemu-aarch64", "-L", SYSROOT, "-cpu", cpu]
    if plugin:
        cmd += ["-plugin", str(plugin), "-d", "plugin"]
    r = subprocess.run(cmd + argv, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if r.returncode != 0:
        sys.exit(f"failed ({r.returncode}): {' '.join(cmd + argv)}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    count = None
    if plugin:
        m = re.search(r"guest instructions: (\d+)", r.stdout + r.stderr)
        count = int(m.group(1)) if m else None
    return r.stdout, count


def slm_run(a, cpu, level, pp, tg, plugin=None):
    out, count = qemu(
        cpu,
        [str(a.slm), "bench", "--model", a.model, "--concurrency", "1", "--prompt-tokens", str(pp), "--gen-tokens", str(tg)],
        env={"SLM_KERNEL": level, "SLM_THREADS": str(a.threads)},
        plugin=plugin,
    )
    prefill = float(re.search(r"prefill: ([\d.]+) tok/s", out).group(1))
    row = re.search(r"^\s+1\s+plain\s+([\d.]+)\s+([\d.]+)", out, re.M)
    level_seen = re.search(r"kernel level (\w+)", out).group(1)
    return prefill, float(row.group(2)), level_seen, count


def llama_run(a, cpu, pp, tg, plugin=None):
    argv = [str(a.llama_bench), "-m", a.model, "-t", str(a.threads), "-r", "1", "--no-warmup", "-o", "jsonl"]
    argv += ["-p", str(pp), "-n", str(tg)]
    out, count = qemu(cpu, argv, plugin=plugin)
    rates = {}
    for line in out.splitlines():
        if line.startswith("{"):
            r = json.loads(line)
            rates["pp" if r["n_prompt"] > 0 else "tg"] = r["avg_ts"]
    return rates.get("pp"), rates.get("tg"), count


def per_token(c1, c2, n1, n2, runs=1):
    return (c2 - c1) / ((n2 - n1) * runs)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    home = Path(os.environ.get("SLM_HOME", Path.home() / ".cache/slm"))
    p.add_argument("--model", default=str(home / "models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"))
    p.add_argument("--slm", type=Path, default=ROOT / "target/aarch64-unknown-linux-gnu/release/slm")
    p.add_argument(
        "--llama-bench", type=Path, default=Path("/work/llama/build-aarch64-armv8.2-a-dotprod/bin/llama-bench")
    )
    p.add_argument("--cpus", default="cortex-a76")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--pp", type=int, default=64)
    p.add_argument("--tg", type=int, default=16)
    p.add_argument("--count", action="store_true", help="also count guest instructions per token (slower)")
    p.add_argument("--no-portable", action="store_true", help="skip slm's portable level (slow emulated)")
    p.add_argument("--count-portable", action="store_true", help="with --count, count slm's portable level too (slow)")
    a = p.parse_args()
    plugin = None
    if a.count:
        plugin = ROOT / "target/qemu-insn-count.so"
        subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", str(plugin), str(ROOT / "scripts/qemu/insn-count.c")], check=True)
    print(f"emulated (qemu-user {subprocess.run(['qemu-aarch64', '--version'], capture_output=True, text=True).stdout.split()[2]}),"
          f" host: {host_cpu()}; model {Path(a.model).name}; {a.threads} threads; pp{a.pp} tg{a.tg}; llama-bench {a.llama_bench}")
    for cpu in a.cpus.split(","):
        print(f"\n== -cpu {cpu}")
        rows = []
        for level in [BEST.get(cpu, "dotprod")] + ([] if a.no_portable else ["scalar"]):
            pre, dec, seen, _ = slm_run(a, cpu, level, a.pp, a.tg)
            rows.append((f"slm {seen}", pre, dec))
        lpp, ltg, _ = llama_run(a, cpu, a.pp, a.tg)
        rows.append(("llama.cpp", lpp, ltg))
        print(f"{'engine':<22}{'prefill tok/s':>15}{'decode tok/s':>14}{'prefill ×llama':>16}{'decode ×llama':>15}")
        for name, pre, dec in rows:
            print(f"{name:<22}{pre:>15.2f}{dec:>14.2f}{pre / lpp:>16.2f}{dec / ltg:>15.2f}")
        if a.count:
            print("guest instructions per token (difference of two runs):")
            pp2, tg2 = 2 * a.pp, 2 * a.tg
            counts = []
            # The portable level runs ~30× slower emulated than the NEON one: counted on request.
            for level in [BEST.get(cpu, "dotprod")] + (["scalar"] if a.count_portable else []):
                c = {k: slm_run(a, cpu, level, pp, tg, plugin)[3] for k, (pp, tg) in
                     {"base": (a.pp, a.tg), "pp": (pp2, a.tg), "tg": (a.pp, tg2)}.items()}
                # slm bench prefills its prompt three times (warm-up, prefill, decode run) and
                # decodes 2 + 1 + tg tokens.
                counts.append((f"slm {level}", per_token(c["base"], c["pp"], a.pp, pp2, 3), per_token(c["base"], c["tg"], a.tg, tg2)))
            lc = {k: llama_run(a, cpu, pp, tg, plugin)[2] for k, (pp, tg) in
                  {"p1": (a.pp, 0), "p2": (pp2, 0), "t1": (0, a.tg), "t2": (0, tg2)}.items()}
            counts.append(("llama.cpp", per_token(lc["p1"], lc["p2"], a.pp, pp2), per_token(lc["t1"], lc["t2"], a.tg, tg2)))
            lp, lt = counts[-1][1], counts[-1][2]
            print(f"{'engine':<22}{'per prefill token':>18}{'per decode token':>18}{'prefill ×llama':>16}{'decode ×llama':>15}")
            for name, cp, cd in counts:
                print(f"{name:<22}{cp / 1e6:>16.1f} M{cd / 1e6:>16.1f} M{cp / lp:>16.2f}{cd / lt:>15.2f}")


def host_cpu():
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "?"


if __name__ == "__main__":
    main()
