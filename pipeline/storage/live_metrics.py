"""A run's live metrics (dvclive: `metrics.json` and per-metric TSVs under `plots/`), resumable."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.storage.atomic_files import write_bytes_atomic


def open_live(directory: Path, resume_from: int):
    """dvclive logger; on resume, drops rows logged after the checkpoint (they will be logged again)."""
    from dvclive import Live

    for tsv in (directory / "plots").rglob("*.tsv") if resume_from else []:
        lines = tsv.read_text().splitlines()
        step_column = lines[0].split("\t").index("step")
        kept = [lines[0]] + [line for line in lines[1:] if int(line.split("\t")[step_column]) <= resume_from]
        write_bytes_atomic(tsv, ("\n".join(kept) + "\n").encode())
    return Live(str(directory), resume=resume_from > 0, save_dvc_exp=False, dvcyaml=False, report=None)


def read_summary(directory: Path) -> dict:
    """The last values a logger in `directory` summarised (empty if it summarised none)."""
    path = directory / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else {}
