"""Validated configs for each stage, and how they are assembled.

Precedence: the schema's defaults, then YAML files or sections of them in the order given
(`--config configs/envs/dmc_pvr.yaml --config params.yaml:collect`: later ones win, so named
blocks compose), then command-line flags. An unknown key or a bad value is a `UserError` that
names the key and where it came from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Sequence, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, ValidationError

from pipeline.errors import UserError


class StrictConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CollectConfig(StrictConfig):
    """`pvr-pipe collect`: roll out a behaviour policy and store the episodes as shards."""

    env: str = "dmc/cartpole-swingup"
    variant: str = "train"
    variant_seed: int = Field(0, ge=0, description="fixes the variant's look")
    episodes: int = Field(10, gt=0)
    seed: int = Field(0, ge=0, description="master seed; per-episode seeds derive from it")
    out: Path | None = None
    episodes_per_shard: int = Field(10, gt=0)
    frame_size: int = Field(64, ge=16, le=1024)
    image_format: Literal["png", "jpeg"] = "png"
    jpeg_quality: int = Field(95, ge=90, le=100)
    max_steps: int | None = Field(None, gt=0, description="cap on agent steps per episode")
    action_repeat: int | None = Field(None, gt=0, description="default: the env's own")
    camera: NonNegativeInt | str | None = Field(None, description="camera id or name; default: the env's own")
    fast_render: bool = False
    policy: str = "random"
    workers: int = Field(1, gt=0, description="env processes; does not change the bytes written")

    def dataset_fingerprint(self) -> dict[str, Any]:
        """What determines the bytes of the dataset (not where it goes or how many processes)."""
        return self.model_dump(mode="json", exclude={"out", "workers"})


Config = TypeVar("Config", bound=StrictConfig)


def load_config(schema: type[Config], config_refs: Sequence[str], overrides: dict[str, Any]) -> Config:
    """Defaults < each of `config_refs` (`file.yaml` or `file.yaml:section.sub`) < `overrides`."""
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for ref in config_refs:
        section = read_config_section(ref)
        values.update(section)
        origin.update(dict.fromkeys(section, ref))
    given = {k: v for k, v in overrides.items() if v is not None}
    values.update(given)
    origin.update(dict.fromkeys(given, "command line"))
    try:
        return schema(**values)
    except ValidationError as error:
        first_key = str(error.errors()[0]["loc"][0])
        raise UserError(describe_validation_error(error, origin.get(first_key, "defaults"), schema)) from None


def read_config_section(config_ref: str) -> dict[str, Any]:
    path_text, _, section = config_ref.partition(":")
    path = Path(path_text)
    if not path.is_file():
        raise UserError(f"config file '{path}' not found; pass an existing YAML file to --config")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise UserError(f"config file '{path}' is not valid YAML: {str(error).splitlines()[0]}") from None
    for key in filter(None, section.split(".")):
        if not isinstance(data, dict) or key not in data:
            have = ", ".join(data) if isinstance(data, dict) else "none"
            raise UserError(f"section '{section}' not found in '{path}' (top-level keys: {have})")
        data = data[key]
    if not isinstance(data, dict):
        raise UserError(f"'{config_ref}' is not a mapping of options")
    return data


def describe_validation_error(error: ValidationError, where: str, schema: type[BaseModel]) -> str:
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"])
    if first["type"] == "extra_forbidden":
        return (f"unknown config key '{key}' (from {where}); valid keys: "
                f"{', '.join(schema.model_fields)}")
    return f"invalid value for '{key}' (from {where}): {first['msg']} (got {first.get('input')!r})"


class EncodeConfig(StrictConfig):
    """`pvr-pipe encode`: embed every frame of a trajectory dataset with one frozen PVR."""

    model: str = "dinov2"
    dataset: str | None = Field(None, description="trajectory dataset: path or fsspec URL")
    out: str | None = Field(None, description="default: data/embeddings/<dataset>/<model>.zarr")
    weights: Path | None = Field(None, description="checkpoint file; default: weights dir / hub cache")
    download: bool = Field(False, description="allow fetching timm weights from the Hugging Face hub")
    device: str = "cpu"
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    dtype: Literal["float16", "float32"] = "float16"
    batch_size: int = Field(64, gt=0)
    compile: bool = False
    chunk_frames: int | None = Field(None, gt=0, description="default: frames per trajectory shard")
    workers: int | None = Field(None, gt=0, description="local Dask cluster with this many processes")
    scheduler: str | None = Field(None, description="address of an existing Dask scheduler")
    threads: int | None = Field(None, gt=0, description="torch threads per process")
    loaders: int | None = Field(None, ge=0, description="processes that read and decode shards for each encoding "
                                                        "process; 0: one thread; default: 0 on the CPU, up to 8 on a GPU")


class TrainConfig(StrictConfig):
    """`pvr-pipe train`: fit a world model offline on a store's cached embeddings."""

    store: str | None = Field(None, description="embedding store made by `pvr-pipe encode`")
    world_model: Literal["dreamer", "tdmpc"] = "dreamer"
    preset: Literal["xs", "s", "m", "l"] = "s"
    settings: dict[str, Any] = Field(default_factory=dict, description="world-model settings over the preset")
    seed: NonNegativeInt | list[NonNegativeInt] = Field(0, description="one seed, or several trained as one "
                                                                       "batched model (tdmpc)")
    out: Path | None = Field(None, description="default: runs/<dataset>/<encoder>/<world_model>/seed<k>; with "
                                               "several seeds a path with {seed} in it")
    updates: int = Field(2000, gt=0)
    validation_fraction: float = Field(0.2, gt=0, lt=1, description="share of episodes held out")
    log_every: int = Field(50, gt=0)
    checkpoint_every: int = Field(500, gt=0)
    device: str = "cpu"
    threads: int | None = Field(None, gt=0, description="torch threads")
    compile: bool | Literal["auto"] = Field("auto", description="torch.compile the update (tdmpc: and its "
                                                      "planning; dreamer: its RSSM steps); auto: tdmpc on "
                                                      "runs of 10,000 updates or more")

    @property
    def seeds(self) -> list[int]:
        return [self.seed] if isinstance(self.seed, int) else list(self.seed)


class EvaluateModelConfig(StrictConfig):
    """`pvr-pipe evaluate-model`: model-quality metrics of a trained world model."""

    run: Path | None = Field(None, description="run directory made by `pvr-pipe train`")
    stores: list[str] = Field(default_factory=list, description="further stores to score, e.g. OOD variants")
    out: Path | None = Field(None, description="directory; default: <run>/quality")
    horizon: int | None = Field(None, gt=0, description="open-loop steps; default 500 dreamer, 33 tdmpc")
    context: int = Field(5, gt=0, description="frames observed before predicting open loop")
    device: str = "cpu"


class FinetuneConfig(StrictConfig):
    """`pvr-pipe finetune`: learn online in the env, from an offline run (or from nothing)."""

    run: Path | None = Field(None, description="offline run made by `pvr-pipe train` to start from")
    store: str | None = Field(None, description="without --run: the store that fixes encoder, env and offline data")
    world_model: Literal["dreamer", "tdmpc"] = Field("dreamer", description="without --run: which agent")
    preset: Literal["xs", "s", "m", "l"] = Field("s", description="without --run: its size")
    settings: dict[str, Any] = Field(default_factory=dict, description="settings over the preset (with --run: over "
                                                                       "the run's, except those that shape weights)")
    seed: NonNegativeInt | list[NonNegativeInt] = Field(0, description="one seed, or several (tdmpc: learning as "
                                                                       "one batched model)")
    out: Path | None = Field(None, description="default: <run>/finetune, or .../seed<k>/scratch without --run; "
                                               "{seed} in it (and in --run) stands for each seed")
    env_steps: int = Field(5000, gt=0, description="agent steps in the env, in total")
    num_envs: int = Field(1, gt=0, description="envs stepped in parallel, one episode each per round")
    train_ratio: float | None = Field(None, ge=0, description="gradient updates per agent step; default: "
                                                              "dreamer 0.5 (DreamerV3's 512 at batch 16 x 64), tdmpc 1")
    offline_fraction: float = Field(0.5, ge=0, le=1, description="share of each batch from the offline store")
    seed_steps: int | None = Field(None, ge=0, description="agent steps of random actions before the agent acts "
                                                           "(and learns); default: tdmpc from nothing max(1000, 5 x "
                                                           "episode length) as TD-MPC2, otherwise 0")
    max_steps: int | None = Field(None, gt=0, description="cap on agent steps per episode; default: the dataset's")
    eval_every: int = Field(1000, gt=0, description="agent steps between evaluations (at episode ends)")
    eval_episodes: int = Field(2, gt=0, description="episodes per evaluation, on the training look")
    checkpoint_every: int = Field(1, gt=0, description="rounds of episodes between checkpoints")
    weights: Path | None = Field(None, description="the encoder's weights file, if not where encode found it")
    device: str = "cpu"
    threads: int | None = Field(None, gt=0, description="torch threads")
    compile: bool | Literal["auto"] = Field("auto", description="torch.compile the update (tdmpc: and its "
                                                      "planning; dreamer: its RSSM steps); auto: tdmpc on "
                                                      "runs of 10,000 updates or more")

    @property
    def seeds(self) -> list[int]:
        return [self.seed] if isinstance(self.seed, int) else list(self.seed)


class EvaluateConfig(StrictConfig):
    """`pvr-pipe evaluate`: returns of an agent on the training look and on OOD looks."""

    run: Path | None = Field(None, description="fine-tuned agent (`pvr-pipe finetune`) or offline tdmpc run")
    variants: list[str] = Field(default_factory=list, description="looks to play; default: train + every OOD look")
    episodes: int = Field(5, gt=0, description="episodes per look")
    seed: int = Field(0, ge=0, description="seed of the evaluation episodes")
    num_envs: int = Field(1, gt=0)
    max_steps: int | None = Field(None, gt=0, description="cap on agent steps per episode; default: the dataset's")
    context: int = Field(5, gt=0, description="dreamer: frames observed before open-loop prediction")
    horizon: int | None = Field(None, gt=0, description="open-loop steps; default 500 dreamer, 33 tdmpc")
    out: Path | None = Field(None, description="default: <run>/evaluation")
    weights: Path | None = Field(None, description="the encoder's weights file, if not where encode found it")
    device: str = "cpu"
    threads: int | None = Field(None, gt=0, description="torch threads")


class ReportConfig(StrictConfig):
    """`pvr-pipe report`: tables and figures over every run's model-quality metrics."""

    runs: Path = Field(Path("runs"), description="directory searched for <run>/quality/metrics.json")
    out: Path = Path("reports")
    bootstrap_reps: int = Field(2000, gt=0, description="bootstrap resamples for the confidence intervals")
    seed: int = Field(0, ge=0, description="seed of the bootstrap")
