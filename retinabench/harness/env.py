"""Environment fingerprint: what produced a run (code, machine, libraries, GPU)."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[2]


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# Instruction-set extensions that decide which kernels, and which precisions, a runtime uses (oneDNN,
# MLAS and OpenBLAS dispatch on them; OpenVINO's bf16 is native only with AMX or AVX-512 BF16).
ISA_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni",
             "amx_bf16", "amx_int8", "amx_tile", "avx_vnni")


def cpu_isa(cpuinfo: Optional[str] = None) -> List[str]:
    """The ISA_FLAGS of the CPU, sorted, from the "flags" line of /proc/cpuinfo (or of the text given);
    [] where there is none (not Linux, not x86)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return []
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            present = set(value.split())
            return sorted(f for f in ISA_FLAGS if f in present)
    return []


def isa_summary(flags: Sequence[str]) -> str:
    """The kernel-relevant ISA in a few words: 'AVX2 AVX-512 (BF16, FP16) AMX', 'AVX2', '' for none."""
    have = set(flags)
    parts = ["AVX2"] if "avx2" in have else ["AVX"] if "avx" in have else []
    if "avx512f" in have:
        extra = [name for flag, name in (("avx512_bf16", "BF16"), ("avx512_fp16", "FP16")) if flag in have]
        parts.append("AVX-512" + (f" ({', '.join(extra)})" if extra else ""))
    if have & {"amx_tile", "amx_bf16", "amx_int8"}:
        parts.append("AMX")
    return " ".join(parts)


def gpu_info(devices: Sequence[str] = ("cuda",)) -> Dict[str, Any]:
    """The GPUs the rows use, identified by UUID and PCI bus id, not by NVML's index.

    `devices`: CUDA device strings ('cuda', 'cuda:1'); each is matched to NVML's GPUs through its UUID
    or PCI bus id (retinabench.harness.gpu_monitor.identify: NVML ignores CUDA_VISIBLE_DEVICES and may
    order GPUs otherwise). The top-level name/uuid/pci_bus_id are the first device's (the machine label);
    `devices` maps each device string to its GPU; `gpus` lists every GPU NVML sees. {} without NVML.
    """
    try:
        import pynvml
        from retinabench.harness.gpu_monitor import identify, nvml_devices
        pynvml.nvmlInit()
        info: Dict[str, Any] = {"driver": _s(pynvml.nvmlSystemGetDriverVersion()),
                                "cuda_driver_api": pynvml.nvmlSystemGetCudaDriverVersion(),
                                "count": pynvml.nvmlDeviceGetCount(), "gpus": nvml_devices(pynvml), "devices": {}}
    except Exception:
        return {}
    for device in dict.fromkeys(devices or ("cuda",)):
        try:
            entry, notes = identify(pynvml, device)
        except Exception as e:
            entry, notes = None, [f"{type(e).__name__}: {e}"]
        info["devices"][device] = dict(entry or {}, note="; ".join(notes))
    first: Dict[str, Any] = next(iter(info["devices"].values()), {})
    info.update(name=first.get("name", ""), uuid=first.get("uuid", ""), pci_bus_id=first.get("pci_bus_id", ""))
    if not info["name"] and info["gpus"]:  # not identified: say which GPUs there are, not one of them
        info["name"] = " / ".join(sorted({g["name"] for g in info["gpus"] if g.get("name")}))
    return info


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def fingerprint(gpu_devices: Sequence[str] = ("cuda",)) -> Dict[str, Any]:
    import numpy
    mem_gib = None
    try:
        mem_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    return {
        "timestamp_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        # A copied tree (the GPU machine's) names its commit through the environment: its .git, if any,
        # may be another commit's, so the variable wins where it is set.
        "git_commit": os.environ.get("RETINABENCH_GIT_COMMIT") or _git("rev-parse", "HEAD"),
        "git_dirty": False if os.environ.get("RETINABENCH_GIT_COMMIT") else
        bool(_git("status", "--porcelain", "--untracked-files=no")),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_isa": cpu_isa(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": mem_gib,
        "numpy": numpy.__version__,
        "gpu": gpu_info(gpu_devices),
    }


def machine_label(env: Dict[str, Any]) -> str:
    """One line naming the machine, for report headers; the CPU's ISA where the run recorded it."""
    gpu = env.get("gpu") or {}
    cpu = f"{env.get('cpu_model', '?')}, {env.get('usable_cpus', '?')} cores"
    isa = isa_summary(env.get("cpu_isa") or [])
    if isa:
        cpu += f", {isa}"
    return f"{gpu['name']} (driver {gpu.get('driver', '?')}); {cpu}" if gpu.get("name") else cpu
