"""Run a command as on an x86-64 CPU with AVX2 but without AVX-512 or VNNI, at native speed (issue 44).

Linux's CPUID faulting (arch_prctl ARCH_SET_CPUID; the `cpuid_fault` flag) makes each cpuid instruction of the
process trap; a preloaded library answers with the real values less the AVX-512, VNNI and AMX bits (and the
AVX-512 state in XCR0's report). Libraries that choose kernels by cpuid (ONNX Runtime's MLAS, oneDNN in torch,
numpy) then take their AVX2 paths, which run on this CPU's real AVX2 units: the same instructions, with the
same int16 saturation, as on an AVX2-only CPU. /proc/cpuinfo is edited to match in a private mount namespace, so
crossmodal/encoders/int8.py reads the same CPU. Needs root (the mount), gcc and a CPU with CPUID faulting.

Speed under it is this CPU's microarchitecture running AVX2 code, not an AVX2 CPU's: the ratios (int8 / fp32)
say which kernels run, not what an older CPU reaches. qemu-user (bench_int8.py --emulate) is the other way in.

    python benchmarks/as_avx2.py python -m pytest -n 0 -p no:faulthandler tests/test_onnx_encoder.py
    python benchmarks/as_avx2.py python benchmarks/bench_ingest.py --precisions fp32,int8

(pytest's faulthandler takes over SIGSEGV, which the cpuid answers arrive by: turn it off.)
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# cpuid leaf 7 / subleaf 0 and 1, and leaf 0xd's XCR0 mask: the bits an AVX2-only CPU (Haswell to Zen 3) lacks.
PRELOAD_SOURCE = r"""
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

static int cpuid_allowed(int on) { return syscall(SYS_arch_prctl, ARCH_SET_CPUID, on); }

static void answer_cpuid(int sig, siginfo_t *info, void *context) {
    greg_t *r = ((ucontext_t *)context)->uc_mcontext.gregs;
    const uint8_t *ip = (const uint8_t *)r[REG_RIP];
    if (ip[0] != 0x0f || ip[1] != 0xa2) { signal(SIGSEGV, SIG_DFL); return; }  /* a real fault: crash as usual */
    uint32_t leaf = r[REG_RAX], sub = r[REG_RCX], a, b, c, d;
    cpuid_allowed(1);
    __asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(leaf), "c"(sub));
    cpuid_allowed(0);
    if (leaf == 7 && sub == 0) {
        b &= ~((1u << 16) | (1u << 17) | (1u << 21) | (1u << 26) | (1u << 27) | (1u << 28) | (1u << 30) | (1u << 31));
        c &= ~((1u << 1) | (1u << 6) | (1u << 11) | (1u << 12) | (1u << 14));
        d &= ~((1u << 2) | (1u << 3) | (1u << 8) | (1u << 22) | (1u << 23) | (1u << 24) | (1u << 25));
    }
    if (leaf == 7 && sub == 1) a &= ~((1u << 4) | (1u << 5) | (1u << 23));
    if (leaf == 0xd && sub == 0) a &= ~(0xe0u | (3u << 17));
    r[REG_RAX] = a; r[REG_RBX] = b; r[REG_RCX] = c; r[REG_RDX] = d;
    r[REG_RIP] += 2;
}

__attribute__((constructor)) static void hide_avx512(void) {
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_sigaction = answer_cpuid;
    action.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigaction(SIGSEGV, &action, 0);
    cpuid_allowed(0);
}
"""
# /proc/cpuinfo flags an AVX2-only CPU does not have.
NEWER_FLAGS = re.compile(r"^(avx512.*|avx_vnni.*|amx.*|avx_ifma|avx_ne_convert)$")
MODEL_NAME = "as an AVX2 CPU without AVX-512 or VNNI (benchmarks/as_avx2.py)"


def edited_cpuinfo(path: Path, model: str = MODEL_NAME) -> Path:
    lines = []
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            line = f"{key}: " + " ".join(f for f in value.split() if not NEWER_FLAGS.match(f))
        elif key.strip() == "model name":
            line = f"{key}: {value.strip()}, {model}"
        lines.append(line)
    path.write_text("\n".join(lines) + "\n")
    return path


def command_as_avx2(command: list[str], work: Path) -> list[str]:
    """``command`` wrapped to run as on an AVX2-only CPU (the library and cpuinfo written into ``work``)."""
    if "cpuid_fault" not in Path("/proc/cpuinfo").read_text():
        raise SystemExit("this CPU (or its hypervisor) offers no CPUID faulting; use qemu-user instead")
    if not shutil.which("gcc") or not shutil.which("unshare"):
        raise SystemExit("needs gcc and unshare")
    (work / "as_avx2.c").write_text(PRELOAD_SOURCE)
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", str(work / "as_avx2.so"), str(work / "as_avx2.c")],
                   check=True)
    cpuinfo = edited_cpuinfo(work / "cpuinfo")
    script = 'mount --bind "$1" /proc/cpuinfo && export LD_PRELOAD="$2" && shift 2 && exec "$@"'
    return ["unshare", "-m", "sh", "-c", script, "sh", str(cpuinfo), str(work / "as_avx2.so"), *command]


def main() -> int:
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    with tempfile.TemporaryDirectory() as tmp:
        return subprocess.run(command_as_avx2(sys.argv[1:], Path(tmp)), env=os.environ).returncode


if __name__ == "__main__":
    sys.exit(main())
