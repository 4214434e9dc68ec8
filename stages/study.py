"""`pvr-pipe study FILE`: check a whole study up front, make it the pipeline's params, run it.

A study file has the shape of `params.yaml` (blocks `study`, `envs`, `collect`, `encode`,
`train`, `world_models`, `finetune`, `evaluate`, `evaluate_model`, `report`). `--set
study.envs=[a,b]` changes a value of it first (dotted keys, YAML values, as `dvc exp run -S`):
a study whose suites have different looks names all their tasks and runs one suite at a time.
Before anything runs, every env and variant, every encoder and the availability of its
weights, every world model, preset and setting, and every stage's options are checked, so a
study of many GPU hours does not fail on its last stage. The study then replaces
`params.yaml` (comments kept when nothing is set; `git checkout params.yaml` returns to the
default study) and its DVC stages run as Dask tasks: on a local cluster of `--workers` processes,
or on the cluster whose scheduler is at `--scheduler` (`pipeline.study_executor`). `dvc.lock`
ends as a serial `dvc repro` would leave it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pipeline.config import (CollectConfig, EncodeConfig, EvaluateConfig, EvaluateModelConfig, FinetuneConfig,
                             ReportConfig, TrainConfig)
from pipeline.errors import UserError
from pipeline.storage.atomic_files import write_bytes_atomic
from pipeline.study_executor import StudyOutcome, open_client, run_study
from pipeline.study_graph import StageGraph

BLOCKS = ("study", "envs", "collect", "encode", "encoder_options", "train", "world_models", "finetune", "evaluate",
          "evaluate_model", "report")
STUDY_KEYS = ("envs", "train_variant", "variants", "encoders", "world_models", "seeds")


def check_study(data: dict[str, Any], source: str) -> dict[str, int]:
    """Raises a UserError naming the first problem; returns how many stages the study expands to."""
    from pipeline.encoders import get_spec
    from pipeline.encoders.weights import find_weights
    from pipeline.envs import check_variant
    from world_models.registry import world_model_config

    def fail(where: str, message: str) -> None:
        raise UserError(f"study '{source}', {where}: {message}")

    missing_blocks = [b for b in BLOCKS if not isinstance(data.get(b), dict)]
    if missing_blocks:
        fail("top level", f"missing blocks {missing_blocks} (a study has the shape of params.yaml)")
    study = data["study"]
    missing_keys = [k for k in STUDY_KEYS if k not in study]
    if missing_keys:
        fail("study", f"missing keys {missing_keys}")
    if study["train_variant"] not in study["variants"]:
        fail("study.train_variant", f"'{study['train_variant']}' is not one of study.variants")
    for name in study["envs"]:
        if name not in data["envs"]:
            fail("study.envs", f"'{name}' has no block under envs")
        try:
            collect = CollectConfig(**{**data["collect"], **data["envs"][name]})
            for variant in study["variants"]:
                check_variant(collect.env, variant)
        except (UserError, ValueError) as error:
            fail(f"envs.{name}", " ".join(str(error).split()))
    missing_weights = []
    for encoder in study["encoders"]:
        if encoder not in data["encoder_options"]:
            fail("study.encoders", f"'{encoder}' has no block under encoder_options (use {{}} for none)")
        try:
            EncodeConfig(**{**data["encode"], **data["encoder_options"][encoder], "model": encoder})
            spec = get_spec(encoder)
        except (UserError, ValueError) as error:
            fail("study.encoders", " ".join(str(error).split()))
        if spec.weights in ("none", "random-init"):
            continue
        try:
            if find_weights(spec) is None and not data["encode"].get("download", False):
                missing_weights.append(encoder)
        except UserError:
            missing_weights.append(encoder)
    if missing_weights:
        fail("study.encoders", f"no local weights for {', '.join(missing_weights)}: put them into the weights "
                               f"directory (see `pvr-pipe models` and README 'Weights'), or set encode.download: true")
    for world_model in study["world_models"]:
        block = data["world_models"].get(world_model)
        if block is None:
            fail("study.world_models", f"'{world_model}' has no block under world_models")
        try:
            train = TrainConfig(**{**data["train"], **block, "world_model": world_model})
            world_model_config(world_model, train.preset, train.settings)
        except (UserError, ValueError) as error:
            fail(f"world_models.{world_model}", " ".join(str(error).split()))
    for block, schema in (("finetune", FinetuneConfig), ("evaluate", EvaluateConfig),
                          ("evaluate_model", EvaluateModelConfig), ("report", ReportConfig)):
        try:
            schema(**data[block])
        except ValueError as error:
            fail(block, " ".join(str(error).split()))
    for variant in data["evaluate"].get("variants", []):
        if variant not in study["variants"]:
            fail("evaluate.variants", f"'{variant}' is not one of study.variants")
    branches = len(study["envs"]) * len(study["encoders"]) * len(study["world_models"])
    runs = branches * len(study["seeds"])
    return {"collect": len(study["envs"]) * len(study["variants"]),
            "encode": len(study["envs"]) * len(study["variants"]) * len(study["encoders"]),
            "train": branches, "evaluate-model": runs, "finetune": branches, "evaluate": runs, "report": 1}


def apply_settings(data: dict[str, Any], settings: list[str], source: str) -> dict[str, Any]:
    """`study.envs=[a, b]` -> data["study"]["envs"] = ["a", "b"]: dotted keys of existing blocks."""
    for setting in settings:
        key, sep, text = setting.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise UserError(f"--set expects KEY=VALUE with a dotted key, e.g. study.seeds=[0,1]; got '{setting}'")
        node = data
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise UserError(f"study '{source}' has no block '{part}' for --set {key}")
            node = node[part]
        if parts[-1] not in node and parts[-2:-1] != ["settings"]:
            raise UserError(f"study '{source}' has no key '{key}' to --set; its keys there: {', '.join(node)}")
        value, old = yaml.safe_load(text), node.get(parts[-1])
        if isinstance(old, list) and isinstance(value, list):
            old[:] = value     # in place: YAML aliases of it (evaluate.variants: *looks) follow
        else:
            node[parts[-1]] = value
    return data


def run(path: Path, params: Path = Path("params.yaml"), run_pipeline: bool = True,
        settings: list[str] | None = None, workers: int | None = None, scheduler: str | None = None,
        show_progress: bool = True) -> dict[str, int]:
    if not path.is_file():
        raise UserError(f"study file '{path}' not found; see configs/studies/")
    text = path.read_text()
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        raise UserError(f"study file '{path}' is not valid YAML: {str(error).splitlines()[0]}") from None
    if settings:
        data = apply_settings(data, settings, str(path))
        text = f"# {path} with {' '.join(settings)} (pvr-pipe study)\n" + yaml.safe_dump(data, sort_keys=False)
    stages = check_study(data, str(path))
    if path.resolve() != params.resolve() or settings:
        write_bytes_atomic(params, text.encode())
    print(f"{path}: {sum(stages.values())} stages ({', '.join(f'{n} {k}' for k, n in stages.items())}) "
          f"-> {params}", file=sys.stderr)
    if run_pipeline:
        run_stages(params.parent, data, workers, scheduler, show_progress)
    return stages


def run_stages(root: Path, params: dict[str, Any], workers: int | None, scheduler: str | None,
               show_progress: bool) -> StudyOutcome:
    """The study's stages on Dask (see `pipeline.study_executor`); a UserError naming any that failed."""
    graph = StageGraph(root, params)
    client = open_client(workers, scheduler)
    columns = (TextColumn("study"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[counts]}"),
               TimeElapsedColumn())
    try:
        with Progress(*columns, disable=not show_progress) as progress:
            bar = progress.add_task("study", total=len(graph.stages), counts="")

            def show(counts: dict[str, int]) -> None:
                progress.update(bar, completed=counts["done"], counts=", ".join(f"{n} {k}" for k, n in counts.items()))

            outcome = run_study(graph, client, root, show)
    finally:
        client.close()
        graph.close()
    print(f"study: {len(outcome.ran)} stages ran, {len(outcome.up_to_date)} up to date, "
          f"{len(outcome.failed)} failed, {len(outcome.not_run)} not run", file=sys.stderr)
    if outcome.failed:
        name, log = next(iter(outcome.failed.items()))
        command = next(stage.cmd for stage in graph.stages if stage.name == name)
        others = f" and {len(outcome.failed) - 1} more" if len(outcome.failed) > 1 else ""
        raise UserError(f"stage {name}{others} failed: `{command}` (log: {log}); {len(outcome.not_run)} stages "
                        "below it did not run; fix it and rerun the same command (finished stages are kept)")
    return outcome
