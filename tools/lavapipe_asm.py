#!/usr/bin/env python3
"""Show the machine code lavapipe (llvmpipe) compiled for the kernels a command runs.

    python3 tools/lavapipe_asm.py [--dump DIR] -- cargo bench --bench kernels -- subgroup enc

Runs the command with an empty, private Mesa shader cache, then reads every entry the
driver wrote (a zstd-compressed ELF object per compiled shader), disassembles it with
objdump and prints, per shader, the size of its code and of its hottest loop (the backward
jump whose body holds the most vector multiplies and adds), with the instruction classes
that cost on this driver:

  arith   vmulps / vaddps (lavapipe lowers fma() to a multiply and an add)
  blend   vblendvps: a loop-carried value written under the execution mask, or a branch
  perm    vpermps / vpermd: subgroupBroadcast
  gather  vpinsrd from memory: a uniform or buffer read done lane by lane
  spill   vmovaps / vmovups to or from the stack

--dump DIR also writes each object's full disassembly there. Needs zstd and objdump
(Debian: zstd, binutils). A release build of Mesa has no GALLIVM_DEBUG=asm; the cache is
the way to its code. Note that Mesa 22.3's cache key ignores LP_NATIVE_VECTOR_WIDTH, which
is why each run gets a fresh cache directory.
"""

import argparse
import collections
import os
import shutil
import re
import subprocess
import sys
import tempfile

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
INSN = re.compile(r"\s*([0-9a-f]+):\t(\S+)\s*(.*)")


def objects(cache_dir):
    """(entry name, ELF bytes) for every shader object in a Mesa cache directory."""
    for root, _, files in os.walk(cache_dir):
        for name in sorted(files):
            if name == "index":
                continue
            data = open(os.path.join(root, name), "rb").read()
            at = data.find(ZSTD_MAGIC)
            if at < 0:
                continue
            raw = subprocess.run(["zstd", "-d", "-c"], input=data[at:], capture_output=True).stdout
            elf = raw.find(b"\x7fELF")
            if elf >= 0:
                yield name, raw[elf:]


def disassemble(elf_bytes):
    with tempfile.NamedTemporaryFile(suffix=".o") as f:
        f.write(elf_bytes)
        f.flush()
        text = subprocess.run(
            ["objdump", "-d", "--no-show-raw-insn", f.name], capture_output=True, text=True, check=True
        ).stdout
    insns = []
    for line in text.splitlines():
        m = INSN.match(line)
        if m:
            insns.append((int(m.group(1), 16), m.group(2), m.group(3)))
    return text, insns


def hottest_loop(insns):
    best = None
    for addr, op, arg in insns:
        if not op.startswith("j"):
            continue
        m = re.match(r"([0-9a-f]+)", arg)
        if not m or int(m.group(1), 16) >= addr:
            continue
        start = int(m.group(1), 16)
        body = [i for i in insns if start <= i[0] <= addr]
        arith = sum(1 for i in body if i[1] in ("vmulps", "vaddps"))
        if best is None or arith > best[0] or (arith == best[0] and len(body) > len(best[1])):
            best = (arith, body)
    return best[1] if best else []


def classes(body):
    c = collections.Counter()
    for _, op, arg in body:
        c["insns"] += 1
        if op in ("vmulps", "vaddps"):
            c["arith"] += 1
        elif op == "vblendvps":
            c["blend"] += 1
        elif op in ("vpermps", "vpermd"):
            c["perm"] += 1
        elif op == "vpinsrd" and "(" in arg:
            c["gather"] += 1
        elif op in ("vmovaps", "vmovups") and ("(%rsp" in arg or "(%rbp" in arg):
            c["spill"] += 1
    return c


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dump", help="write each object's disassembly to this directory")
    ap.add_argument("command", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not cmd:
        ap.error("give the command to run after --")
    missing = [t for t in ("zstd", "objdump") if shutil.which(t) is None]
    if missing:
        sys.exit(f"needs {' and '.join(missing)} on PATH (Debian: apt-get install -y zstd binutils)")
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, MESA_SHADER_CACHE_DIR=cache)
        env.pop("MESA_SHADER_CACHE_DISABLE", None)
        run = subprocess.run(cmd, env=env)
        if run.returncode != 0:
            sys.exit(f"the command failed ({run.returncode})")
        if a.dump:
            os.makedirs(a.dump, exist_ok=True)
        cols = ["insns", "arith", "blend", "perm", "gather", "spill"]
        print(f"{'shader (cache entry)':<22} {'code':>6} | hottest loop: " + " ".join(f"{c:>6}" for c in cols))
        for name, elf in objects(cache):
            text, insns = disassemble(elf)
            if a.dump:
                open(os.path.join(a.dump, name[:16] + ".s"), "w").write(text)
            loop = classes(hottest_loop(insns))
            print(f"{name[:22]:<22} {len(insns):>6} |               " + " ".join(f"{loop[c]:>6}" for c in cols))


if __name__ == "__main__":
    main()
