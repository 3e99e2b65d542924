"""How a row's variant is shown: a Caffe row whose model upsampled bilinearly says so, whatever its name."""
from __future__ import annotations

from retinabench.records import RowId
from retinabench.report.run_data import RunData
from retinabench.store import RowResult


def upsample_of(run: RunData, row: RowResult) -> str:
    """How a row's Caffe model upsamples: recorded by the backend, else the config's option."""
    settings = row.result.settings
    if settings is not None and settings.upsample:
        return str(settings.upsample)
    for b in run.config.get("backends") or []:
        if b.get("name") == row.id.backend and b.get("variant", "default") == row.id.variant:
            return str((b.get("options") or {}).get("upsample", ""))
    return ""


def hidden_bilinear(run: RunData, rid: RowId) -> bool:
    """A Caffe row that used bilinear upsampling without its variant name saying so."""
    row = run.row(rid)
    return row is not None and "bilinear" not in rid.variant and upsample_of(run, row) == "bilinear"


def variant_cell(run: RunData, rid: RowId) -> str:
    return f"{rid.variant} (upsample: bilinear)" if hidden_bilinear(run, rid) else rid.variant
