"""Environment fingerprint: what produced a run (code, machine, libraries, GPU)."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict

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


def gpu_info() -> Dict[str, Any]:
    try:
        import pynvml
        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        name = pynvml.nvmlDeviceGetName(h)
        return {"name": name.decode() if isinstance(name, bytes) else name,
                "driver": _s(pynvml.nvmlSystemGetDriverVersion()),
                "cuda_driver_api": pynvml.nvmlSystemGetCudaDriverVersion(),
                "count": pynvml.nvmlDeviceGetCount()}
    except Exception:
        return {}


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def fingerprint() -> Dict[str, Any]:
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
        "gpu": gpu_info(),
    }


def machine_label(env: Dict[str, Any]) -> str:
    """One line naming the machine, for report headers."""
    gpu = env.get("gpu") or {}
    cpu = f"{env.get('cpu_model', '?')}, {env.get('usable_cpus', '?')} cores"
    return f"{gpu['name']} (driver {gpu.get('driver', '?')}); {cpu}" if gpu.get("name") else cpu
