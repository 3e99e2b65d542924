"""Environment fingerprint: what produced a run (code, machine, libraries, GPU)."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Sequence

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
        # A copied tree without .git (the GPU machine) names its commit through the environment.
        "git_commit": _git("rev-parse", "HEAD") or os.environ.get("RETINABENCH_GIT_COMMIT", ""),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": mem_gib,
        "numpy": numpy.__version__,
        "gpu": gpu_info(gpu_devices),
    }


def machine_label(env: Dict[str, Any]) -> str:
    """One line naming the machine, for report headers."""
    gpu = env.get("gpu") or {}
    cpu = f"{env.get('cpu_model', '?')}, {env.get('usable_cpus', '?')} cores"
    return f"{gpu['name']} (driver {gpu.get('driver', '?')}); {cpu}" if gpu.get("name") else cpu
