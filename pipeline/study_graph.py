"""The study's DVC stage graph, run outside `dvc repro`: what is left to run, and recording what ran.

Stages come from `dvc.yaml` and `dvc.lock` through DVC's repo API. Deciding whether a stage must
run and recording a finished one happen in one process, one stage at a time, under DVC's repo
lock; only the stage commands run elsewhere. Both do what `dvc repro` does around a command:
skip a stage whose deps, params and outputs are unchanged, restore one from DVC's run cache when
it can, remove the old outputs before the command, and after it hash deps and outputs, save the
outputs to the cache and the run cache and write the stage's entry in `dvc.lock`. So the lock
ends as a serial `dvc repro` leaves it.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class StudyStage:
    name: str                   # DVC's address, e.g. train@cartpole_swingup-pixels-tdmpc-0
    cmd: str
    wdir: str
    upstream: tuple[str, ...]   # the stages whose outputs it reads
    needs_gpu: bool


def needs_gpu(cmd: str, params: dict[str, Any]) -> bool:
    """Whether a command runs on CUDA: `--device cuda...`, or `device: cuda...` in a params block it reads."""
    if re.search(r"--device[ =]cuda", cmd):
        return True
    for ref in re.findall(r"--config params\.yaml:([\w.-]+)", cmd):
        block: Any = params
        for key in ref.split("."):
            block = block.get(key, {}) if isinstance(block, dict) else {}
        if isinstance(block, dict) and str(block.get("device", "")).startswith("cuda"):
            return True
    return False


class StageGraph:
    def __init__(self, root: Path, params: dict[str, Any]):
        import networkx as nx
        from dvc.repo import Repo
        from dvc.utils.collections import ensure_list

        logging.getLogger("dvc").setLevel(logging.WARNING)   # not a line per lock update
        self.repo = Repo(str(root))
        graph = self.repo.index.graph   # an edge runs from a stage to each stage it depends on
        serial = list(reversed(list(nx.topological_sort(graph))))
        self._dvc_stages = {stage.addressing: stage for stage in serial}
        self.stages = [StudyStage(name=stage.addressing, cmd=" && ".join(ensure_list(stage.cmd)), wdir=stage.wdir,
                                  upstream=tuple(s.addressing for s in graph.successors(stage)),
                                  needs_gpu=needs_gpu(stage.cmd, params)) for stage in serial]

    def prepare(self, name: str) -> bool:
        """True if the stage must run (its old outputs are now removed); False if it is up to date
        or was restored from the run cache (and recorded)."""
        from dvc.stage.cache import RunCacheNotFoundError

        stage = self._dvc_stages[name]
        with self.repo.lock:
            if not stage.changed():
                return False
            stage.remove_outs(ignore_remove=False, force=False)
            try:
                self.repo.stage_cache.restore(stage)
            except RunCacheNotFoundError:
                stage.save_deps()
                return True
            self._record(stage)
            return False

    def record(self, name: str) -> None:
        """A stage whose command succeeded: its outputs into the cache, its entry into dvc.lock."""
        with self.repo.lock:
            self._record(self._dvc_stages[name])

    def _record(self, stage) -> None:
        stage.save(run_cache=True)
        stage.commit()
        stage.dump(update_pipeline=False)

    def close(self) -> None:
        self.repo.close()
