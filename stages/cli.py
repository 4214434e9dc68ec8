"""The `pvr-pipe` command: one verb per stage, plus `envs` and `info`.

Every stage option can also come from a YAML file or a section of one (`--config
params.yaml:collect`); flags given on the command line win. Bad input ends with one line on
stderr and exit code 2.
"""

from __future__ import annotations

import errno
import json
import logging
import signal
import sys
from pathlib import Path

import click
import yaml
from rich.console import Console
from rich.table import Table

from pipeline.config import (CollectConfig, EncodeConfig, EvaluateConfig, EvaluateModelConfig, FinetuneConfig,
                             ReportConfig, TrainConfig, load_config)
from pipeline.errors import UserError
from pipeline.storage.disk_space import no_space_error
from world_models.errors import WorldModelError

CONFIG_HELP = ("YAML file, or FILE:SECTION (e.g. params.yaml:collect), giving options; repeat to "
               "compose (later ones win); flags win over all.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pvr-pipe")
def cli() -> None:
    """Pre-trained visual representations for model-based RL: collect, encode, train, report."""


@cli.command()
@click.option("--config", "config_refs", metavar="FILE[:SECTION]", multiple=True, help=CONFIG_HELP)
@click.option("--env", help="Env id, e.g. dmc/cartpole-swingup (see `pvr-pipe envs`).")
@click.option("--variant", help="Visual variant: train or an OOD variant of the env.")
@click.option("--variant-seed", type=int, help="Seed that fixes the variant's look.")
@click.option("--episodes", type=int, help="Number of episodes.")
@click.option("--seed", type=int, help="Master seed; per-episode seeds derive from it.")
@click.option("--out", type=click.Path(path_type=Path), help="Dataset directory to write.")
@click.option("--episodes-per-shard", type=int, help="Episodes per WebDataset shard.")
@click.option("--frame-size", type=int, help="Square frame size in pixels (64, 224, ...).")
@click.option("--image-format", type=click.Choice(["png", "jpeg"]), help="How frames are stored.")
@click.option("--jpeg-quality", type=int, help="JPEG quality, 90-100.")
@click.option("--max-steps", type=int, help="Cap on agent steps per episode.")
@click.option("--action-repeat", type=int, help="Override the env's action repeat.")
@click.option("--camera", callback=lambda _ctx, _param, value: int(value) if value and value.isdigit() else value,
              help="Override the env's camera: an id (DMC) or a name (ManiSkill: hand_camera, base_camera).")
@click.option("--fast-render/--no-fast-render", default=None,
              help="DMC: no shadows/reflections (faster, different images).")
@click.option("--policy", help="Behaviour policy: random, or package.module:factory.")
@click.option("--workers", type=int, help="Env processes in parallel.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def collect(config_refs: tuple[str, ...], quiet: bool, **options) -> None:
    """Roll out a policy and store episodes as WebDataset shards."""
    from stages import collect as collect_stage

    cfg = load_config(CollectConfig, config_refs, options)
    manifest = collect_stage.run(cfg, show_progress=not quiet)
    click.echo(f"{cfg.out}: {manifest.episodes} episodes, {manifest.steps} steps, "
               f"{len(manifest.shards)} shards")


@cli.command()
@click.option("--config", "config_refs", metavar="FILE[:SECTION]", multiple=True, help=CONFIG_HELP)
@click.option("--model", help="PVR name (see `pvr-pipe models`).")
@click.option("--dataset", help="Trajectory dataset directory (or fsspec URL).")
@click.option("--out", help="Zarr store to write; default data/embeddings/<dataset>/<model>.zarr.")
@click.option("--weights", type=click.Path(path_type=Path), help="Checkpoint file for the model.")
@click.option("--download/--no-download", default=None, help="Allow fetching timm weights from the hub.")
@click.option("--device", help="cpu, cuda or cuda:N.")
@click.option("--precision", type=click.Choice(["auto", "bf16", "fp32"]), help="bf16 autocast or fp32.")
@click.option("--dtype", type=click.Choice(["float16", "float32"]), help="Stored embedding dtype.")
@click.option("--batch-size", type=int, help="Frames per forward pass.")
@click.option("--compile/--no-compile", default=None, help="torch.compile the model.")
@click.option("--chunk-frames", type=int, help="Frames per Zarr chunk (and work unit).")
@click.option("--workers", type=int, help="Start a local Dask cluster with N worker processes.")
@click.option("--scheduler", help="Use an existing Dask scheduler, e.g. tcp://host:8786.")
@click.option("--threads", type=int, help="torch threads per process.")
@click.option("--loaders", type=int, help="Processes reading and decoding shards (default: 0 on the CPU, up to 8 on a GPU).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def encode(config_refs: tuple[str, ...], quiet: bool, **options) -> None:
    """Embed every frame of a trajectory dataset with a frozen PVR into a Zarr store."""
    from stages import encode as encode_stage

    cfg = load_config(EncodeConfig, config_refs, options)
    click.echo(encode_stage.run(cfg, show_progress=not quiet))


def parse_settings(pairs: tuple[str, ...]) -> dict | None:
    """`--set lr=1e-3 --set embed_head=mlp` -> {"lr": 0.001, "embed_head": "mlp"} (values read as YAML)."""
    settings = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--set expects KEY=VALUE, got '{pair}'")
        settings[key.strip()] = yaml.safe_load(value)
    return settings or None


def load_config_with_settings(config_class, config_refs: tuple[str, ...], options: dict, pairs: tuple[str, ...]):
    """The stage's config with `--set KEY=VALUE` pairs merged over the settings its config files give."""
    given = parse_settings(pairs)
    cfg = load_config(config_class, config_refs, options)
    return cfg.model_copy(update={"settings": {**cfg.settings, **given}}) if given else cfg


@cli.command()
@click.option("--config", "config_refs", metavar="FILE[:SECTION]", multiple=True, help=CONFIG_HELP)
@click.option("--store", help="Embedding store (Zarr) made by `pvr-pipe encode`.")
@click.option("--world-model", help="dreamer or tdmpc.")
@click.option("--preset", help="Size: xs (tests), s, m, l.")
@click.option("--set", "settings", metavar="KEY=VALUE", multiple=True,
              help="World-model setting over the preset, e.g. --set lr=1e-4 --set embed_head=mlp.")
@click.option("--seed", "seeds", type=int, multiple=True,
              help="Seed of weights and batch sampling; repeat it to train several seeds as one batched model (tdmpc).")
@click.option("--out", type=click.Path(path_type=Path), help="Run directory; with several seeds a path with {seed}.")
@click.option("--updates", type=int, help="Gradient updates in total.")
@click.option("--validation-fraction", type=float, help="Share of episodes held out for evaluate-model.")
@click.option("--log-every", type=int, help="Updates per logged row.")
@click.option("--checkpoint-every", type=int, help="Updates between checkpoints.")
@click.option("--device", help="cpu, cuda or cuda:N.")
@click.option("--threads", type=int, help="torch threads.")
@click.option("--compile/--no-compile", "compile_", default=None,
              help="torch.compile the update (tdmpc: and planning; dreamer: its RSSM steps); default: tdmpc runs of 10,000+ updates.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train(config_refs: tuple[str, ...], settings: tuple[str, ...], seeds: tuple[int, ...], quiet: bool,
          compile_: bool | None, **options) -> None:
    """Train a world model offline on cached embeddings; resumes from its last checkpoint."""
    from stages import train as train_stage

    seed = (seeds[0] if len(seeds) == 1 else list(seeds)) if seeds else None
    cfg = load_config_with_settings(TrainConfig, config_refs, options | {"compile": compile_, "seed": seed}, settings)
    for out in train_stage.run(cfg, show_progress=not quiet):
        click.echo(out)


@cli.command("evaluate-model")
@click.option("--config", "config_refs", metavar="FILE[:SECTION]", multiple=True, help=CONFIG_HELP)
@click.option("--run", type=click.Path(path_type=Path), help="Run directory made by `pvr-pipe train`.")
@click.option("--store", "stores", multiple=True,
              help="Also score every episode of this store (an OOD look, same encoder), or of every store in "
                   "this directory but the run's own; repeatable.")
@click.option("--out", type=click.Path(path_type=Path), help="Directory to write; default <run>/quality.")
@click.option("--horizon", type=int, help="Open-loop prediction steps (default 500 dreamer, 33 tdmpc).")
@click.option("--context", type=int, help="Frames observed before open-loop prediction.")
@click.option("--device", help="cpu, cuda or cuda:N.")
def evaluate_model(config_refs: tuple[str, ...], stores: tuple[str, ...], **options) -> None:
    """How well a world model predicts: open-loop latent error, reward error, reconstruction, probe R^2."""
    from stages import evaluate_model as evaluate_model_stage

    cfg = load_config(EvaluateModelConfig, config_refs, options | {"stores": list(stores) or None})
    click.echo(evaluate_model_stage.run(cfg))


@cli.command()
@click.option("--config", "config_refs", metavar="FILE[:SECTION]", multiple=True, help=CONFIG_HELP)
@click.option("--run", type=click.Path(path_type=Path), help="Offline run (`pvr-pipe train`) to start from.")
@click.option("--store", help="Without --run: the store that fixes encoder, env and offline data (from scratch).")
@click.option("--world-model", help="Without --run: dreamer or tdmpc.")
@click.option("--preset", help="Without --run: size xs, s, m, l.")
@click.option("--set", "settings", metavar="KEY=VALUE", multiple=True,
              help="Setting over the preset (with --run: over the run's, if it does not shape the weights).")
@click.option("--seed", "seeds", type=int, multiple=True,
              help="Seed of the agent, its episodes and batches; repeat it for several (tdmpc: one batched model).")
@click.option("--out", type=click.Path(path_type=Path),
              help="Directory; default <run>/finetune. {seed} in it, and in --run, stands for each seed.")
@click.option("--env-steps", type=int, help="Agent steps in the env, in total.")
@click.option("--num-envs", type=int, help="Envs stepped in parallel (one process each).")
@click.option("--train-ratio", type=float, help="Gradient updates per agent step (default: dreamer 0.5, tdmpc 1).")
@click.option("--offline-fraction", type=float, help="Share of each batch from the offline store (0: online only).")
@click.option("--seed-steps", type=int, help="Random-action steps before the agent acts and learns (default: tdmpc "
              "from nothing max(1000, 5 x episode length), as TD-MPC2; otherwise 0).")
@click.option("--max-steps", type=int, help="Cap on agent steps per episode (default: the dataset's).")
@click.option("--eval-every", type=int, help="Agent steps between evaluations.")
@click.option("--eval-episodes", type=int, help="Episodes per evaluation.")
@click.option("--checkpoint-every", type=int, help="Rounds of episodes between checkpoints.")
@click.option("--weights", type=click.Path(path_type=Path), help="The encoder's weights file.")
@click.option("--device", help="cpu, cuda or cuda:N.")
@click.option("--threads", type=int, help="torch threads.")
@click.option("--compile/--no-compile", "compile_", default=None,
              help="torch.compile the update (tdmpc: and planning; dreamer: its RSSM steps); default: tdmpc runs of 10,000+ updates.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def finetune(config_refs: tuple[str, ...], settings: tuple[str, ...], seeds: tuple[int, ...], quiet: bool,
             compile_: bool | None, **options) -> None:
    """Learn online with the frozen PVR in the loop, from an offline run or from nothing; resumable."""
    from stages import finetune as finetune_stage

    seed = (seeds[0] if len(seeds) == 1 else list(seeds)) if seeds else None
    cfg = load_config_with_settings(FinetuneConfig, config_refs, options | {"compile": compile_, "seed": seed},
                                    settings)
    for out in finetune_stage.run(cfg, show_progress=not quiet):
        click.echo(out)


@cli.command()
@click.option("--config", "config_refs", metavar="FILE[:SECTION]", multiple=True, help=CONFIG_HELP)
@click.option("--run", type=click.Path(path_type=Path), help="Fine-tuned agent directory (or an offline tdmpc run).")
@click.option("--variant", "variants", multiple=True, help="Look to play (repeatable); default: train + every OOD look.")
@click.option("--episodes", type=int, help="Episodes per look.")
@click.option("--seed", type=int, help="Seed of the evaluation episodes.")
@click.option("--num-envs", type=int, help="Envs stepped in parallel.")
@click.option("--max-steps", type=int, help="Cap on agent steps per episode (default: the dataset's).")
@click.option("--context", type=int, help="dreamer: frames observed before open-loop prediction.")
@click.option("--horizon", type=int, help="Open-loop prediction steps.")
@click.option("--out", type=click.Path(path_type=Path), help="Directory; default <run>/evaluation.")
@click.option("--weights", type=click.Path(path_type=Path), help="The encoder's weights file.")
@click.option("--device", help="cpu, cuda or cuda:N.")
@click.option("--threads", type=int, help="torch threads.")
def evaluate(config_refs: tuple[str, ...], variants: tuple[str, ...], **options) -> None:
    """Returns on the training look and OOD looks, normalised OOD score, model errors on the played episodes."""
    from stages import evaluate as evaluate_stage

    cfg = load_config(EvaluateConfig, config_refs, options | {"variants": list(variants) or None})
    click.echo(evaluate_stage.run(cfg))


@cli.command()
@click.option("--config", "config_refs", metavar="FILE[:SECTION]", multiple=True, help=CONFIG_HELP)
@click.option("--runs", type=click.Path(path_type=Path), help="Directory holding the runs (default runs/).")
@click.option("--out", type=click.Path(path_type=Path), help="Report directory (default reports/).")
@click.option("--bootstrap-reps", type=int, help="Bootstrap resamples for confidence intervals.")
@click.option("--seed", type=int, help="Seed of the bootstrap.")
def report(config_refs: tuple[str, ...], **options) -> None:
    """Markdown + HTML report with PNG figures over all runs (IQM and bootstrap CIs over seeds)."""
    from stages import report as report_stage

    cfg = load_config(ReportConfig, config_refs, options)
    click.echo(report_stage.run(cfg) / "report.md")


@cli.command()
@click.argument("study_file", type=click.Path(path_type=Path))
@click.option("--set", "settings", metavar="KEY=VALUE", multiple=True,
              help="Change a value of the study first, e.g. --set 'study.envs=[pickcube]' (dotted key, YAML value).")
@click.option("--run/--no-run", "run_pipeline", default=True, help="Run its stages after checking (default).")
@click.option("--workers", type=click.IntRange(min=1), help="Stages at once on a local Dask cluster (default: CPUs).")
@click.option("--scheduler", metavar="ADDRESS", help="Run on this Dask scheduler instead, e.g. tcp://host:8786.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def study(study_file: Path, settings: tuple[str, ...], run_pipeline: bool, workers: int | None,
          scheduler: str | None, quiet: bool) -> None:
    """Check a study file (envs, encoders and weights, world models, options), make it params.yaml, run it."""
    from stages import study as study_stage

    if workers and scheduler:
        raise UserError("--workers and --scheduler exclude each other: the scheduler's cluster has its own workers")
    study_stage.run(study_file, run_pipeline=run_pipeline, settings=list(settings), workers=workers,
                    scheduler=scheduler, show_progress=not quiet)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def models(as_json: bool) -> None:
    """List the PVRs with the properties the paper analyses."""
    from pipeline.encoders import encoder_names, get_spec

    specs = [get_spec(name) for name in encoder_names()]
    if as_json:
        click.echo(json.dumps({s.name: {**s.properties(), "weights": s.weights} for s in specs}, indent=2))
        return
    table = Table("model", "arch", "timm architecture", "dim", "weights", "training data (diversity)",
                  "objective", "video", "language", box=None)
    for s in specs:
        table.add_row(s.name, s.arch_type, s.architecture or "-", str(s.embed_dim or "env state"), s.weights,
                      f"{s.training_data} ({s.data_diversity})", s.objective, "yes" if s.video else "no",
                      "yes" if s.language else "no")
    Console(width=250).print(table)


@cli.command()
@click.option("--grid", type=click.Path(path_type=Path), help="Write a PNG of each look of the --env ids instead.")
@click.option("--env", "env_ids", multiple=True, help="With --grid: env id (repeatable), one row each.")
@click.option("--frame-size", type=int, default=96, show_default=True, help="With --grid: pixels per frame.")
@click.option("--seed", "seeds", type=int, multiple=True,
              help="With --grid: episode seed of the frames (default 0), once for all or once per --env.")
def envs(grid: Path | None, env_ids: tuple[str, ...], frame_size: int, seeds: tuple[int, ...]) -> None:
    """List env ids and their visual variants (or draw them: --grid PNG --env ID ...)."""
    from pipeline.envs import env_ids as all_env_ids
    from pipeline.envs import get_entry
    from pipeline.envs.variants import DESCRIPTIONS

    if grid is not None:
        from pipeline.envs.look_grid import write_look_grid

        if not env_ids:
            raise UserError("--grid needs at least one --env ID (see `pvr-pipe envs`)")
        if len(seeds) not in (0, 1, len(env_ids)):
            raise UserError(f"give --seed once, or once per --env ({len(env_ids)}), not {len(seeds)} times")
        per_env = list(seeds) if len(seeds) == len(env_ids) else [seeds[0] if seeds else 0] * len(env_ids)
        click.echo(write_look_grid(list(env_ids), per_env, grid, frame_size))
        return
    table = Table("env", "variants", "description", box=None)
    for env_id in all_env_ids():
        entry = get_entry(env_id)
        table.add_row(env_id, ", ".join(entry.variants), entry.description)
    console = Console(width=200)
    console.print(table)
    console.print("\nvariants: " + "; ".join(f"{k}: {v}" for k, v in DESCRIPTIONS.items()))


@cli.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--verify", is_flag=True, help="Also check every shard's (or store array's) sha256.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def info(path: Path, verify: bool, as_json: bool) -> None:
    """Summarise a trajectory dataset or an embedding store: contents and provenance."""
    from pipeline.storage.embedding_store import describe_store, verify_store
    from pipeline.storage.manifest import read_manifest
    from pipeline.storage.trajectory_reader import summarize, verify_dataset

    if not path.exists():
        raise UserError(f"'{path}' does not exist")
    if (path / "zarr.json").is_file():
        if verify:
            verify_store(str(path))
        summary = describe_store(str(path)) | ({"verified": "all array hashes match"} if verify else {})
    else:
        manifest = read_manifest(path)
        if verify:
            verify_dataset(path, manifest)
        summary = summarize(manifest) | ({"verified": "all shard hashes match"} if verify else {})
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    table = Table(show_header=False, box=None)
    for key, value in summary.items():
        table.add_row(key, str(value))
    Console(width=200).print(table)


def main(argv: list[str] | None = None) -> None:
    """Entry point: runs the command; bad input is one line on stderr and exit code 2."""
    interrupts: list[int] = []

    def on_interrupt(signum, frame):
        # Python raises this wherever the main thread is; where that is a finalizer or an
        # after-fork hook the exception is swallowed, so the interrupt is also remembered.
        interrupts.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_interrupt)
    # torch.compile's first use warns "No CUDA runtime is found, using CUDA_HOME=..." on every
    # machine without a GPU whose torch is a CUDA build: noise, not something a user can act on.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    try:
        result = cli.main(args=argv, prog_name="pvr-pipe", standalone_mode=False)
        if interrupts:
            raise KeyboardInterrupt
    except (UserError, WorldModelError) as error:
        _fail("pvr-pipe", str(error))
    except click.ClickException as error:
        ctx = getattr(error, "ctx", None)
        command = ctx.command_path if ctx else "pvr-pipe"
        _fail(command, f"{error.format_message()} (see '{command} --help')")
    except (KeyboardInterrupt, click.exceptions.Abort):
        click.echo("pvr-pipe: interrupted; rerun the same command to resume", err=True)
        sys.exit(130)
    except OSError as error:
        if error.filename is None:   # not about a path the user chose: a bug, keep its traceback
            raise
        _fail("pvr-pipe", _describe_os_error(error))
    sys.exit(result if isinstance(result, int) else 0)


def _describe_os_error(error: OSError) -> str:
    """A failed read or write of a path, in words: which path, why, what to do."""
    if error.errno == errno.ENOSPC:
        return str(no_space_error(error.filename))
    return f"cannot use '{error.filename}' ({error.strerror}); choose another path or fix its permissions"


def _fail(command: str, message: str) -> None:
    click.echo(f"{command}: error: {' '.join(message.split())}", err=True)
    sys.exit(2)


if __name__ == "__main__":
    main()
