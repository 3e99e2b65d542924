"""Which processes are this one, and which processes NVML lists on a device: shared by the footprint
meter (a process's own GPU memory) and the GPU monitor (other processes on the row's device).
Standard library only (the Caffe worker's Python 3.9 imports it too)."""
from __future__ import annotations

import os
from typing import Any, List, Optional

STATUS = "/proc/self/status"


def own_pids(status_text: Optional[str] = None) -> List[int]:
    """This process's pid, and its pids in every pid namespace /proc shows (the NSpid line)."""
    pids = [os.getpid()]
    if status_text is None:
        try:
            with open(STATUS) as f:
                status_text = f.read()
        except OSError:
            status_text = ""
    for line in status_text.splitlines():
        if line.startswith("NSpid:"):
            pids += [int(p) for p in line.split()[1:] if p.isdigit() and int(p) not in pids]
    return pids



def compute_processes(nv: Any, handle: Any) -> List[Any]:
    """NVML's compute processes on a device: the v3 query where pynvml has it, else the plain one."""
    v3 = getattr(nv, "nvmlDeviceGetComputeRunningProcesses_v3", None)
    if v3 is not None:
        try:
            return list(v3(handle))
        except Exception:  # an older driver without the v3 symbol: the versioned-by-default call
            pass
    return list(nv.nvmlDeviceGetComputeRunningProcesses(handle))
