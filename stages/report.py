"""`pvr-pipe report`: the study's tables and figures from every run's metrics.

Reads every model-quality `metrics.json` under `<runs>` (written by `pvr-pipe evaluate-model`,
found by the prediction-error curve beside it), and, where agents were fine-tuned, their learning
curves (`live/plots/metrics/eval/return.tsv` beside each `finetune.yaml`) and returns per look
(the `metrics.json` beside each evaluation's `frames/`). Writes to `<out>/`: `report.md` and `report.html` (same content), PNG figures,
`results.csv` (one row per run and variant) and `returns.csv` (one row per agent and look).
Aggregates over seeds are interquartile means with 95% percentile-bootstrap confidence intervals
(as rliable), per encoder and world model and, as the paper does, per PVR property (ViT vs CNN,
data diversity, video, language). Each section is a function returning Markdown.
"""

from __future__ import annotations

import csv
import functools
import json
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy.stats import bootstrap, trim_mean  # noqa: E402

from pipeline.config import ReportConfig  # noqa: E402
from pipeline.errors import UserError  # noqa: E402
from pipeline import __version__  # noqa: E402
from pipeline.storage.atomic_files import write_bytes_atomic  # noqa: E402
from pipeline.storage.runs import EVALUATION_FRAMES, FINETUNE_FILE, LIVE_DIR, PREDICTION_ERROR_FILE, read_yaml  # noqa: E402
from pipeline.storage.writer_lock import writer_lock  # noqa: E402

METRICS = {  # column -> (label, higher is better)
    "prediction_error": ("open-loop prediction error", False),
    "ratio_to_copy_last": ("error / copy-last baseline", False),
    "reward_mae": ("reward MAE", False),
    "reward_correlation": ("reward correlation", True),
    "reconstruction_mse": ("reconstruction MSE", False),
    "probe_r2": ("state probe R^2", True),
}
PROPERTIES = {"architecture": "architecture", "data_diversity": "training-data diversity", "video": "video data",
              "language": "language"}


@dataclass
class Online:
    """Fine-tuned agents: learning curves and returns per look."""
    curves: dict[tuple, tuple[np.ndarray, np.ndarray]]   # (env, encoder, world_model, seed) -> agent steps, eval return
    random_return: dict[tuple, float]                    # (env, encoder, world_model, seed) -> random policy's return
    rows: list[dict]                                     # one per agent x look (pvr-pipe evaluate)


@dataclass
class Study:
    rows: list[dict]                     # one per run x variant
    curves: dict[tuple, np.ndarray]      # (env, encoder, world_model, seed, variant) -> error per horizon step
    metric_names: dict[str, str]         # world model -> what its prediction error measures
    train_variant: str
    reps: int
    seed: int
    online: Online

    def encoders(self) -> list[str]:
        return sorted({r["encoder"] for r in self.rows}, key=lambda e: (e != "pixels", e))

    def world_models(self) -> list[str]:
        return sorted({r["world_model"] for r in self.rows})

    def variants(self) -> list[str]:
        return [self.train_variant] + sorted({r["variant"] for r in self.rows} - {self.train_variant})

    def select(self, **match) -> list[dict]:
        return [r for r in self.rows if all(r[k] == v for k, v in match.items())]


def load_study(runs: Path, reps: int, seed: int) -> Study:
    files = sorted(curve.with_name("metrics.json") for curve in runs.rglob(PREDICTION_ERROR_FILE))
    if not files:
        raise UserError(f"no run metrics under '{runs}'; run `pvr-pipe train` and `pvr-pipe evaluate-model` first")
    rows, curves, metric_names, train_variants = [], {}, {}, set()
    for path in files:
        metrics = json.loads(path.read_text())
        about = metrics.pop("about")
        train_variants.add(about["train_variant"])
        metric_names[about["world_model"]] = about["prediction_metric"]
        table = _read_tsv(path.with_name(PREDICTION_ERROR_FILE))
        for variant, m in metrics.items():
            key = (about["env"], about["encoder"], about["world_model"], about["seed"], variant)
            curves[key] = table[variant]
            rows.append({
                "encoder": about["encoder"], "world_model": about["world_model"], "seed": about["seed"],
                "variant": variant, "env": about["env"], "run": about["run"],
                **{p: str(about["encoder_properties"].get(p)) for p in PROPERTIES},
                "prediction_error": m["prediction_error"]["mean"],
                "ratio_to_copy_last": m["prediction_error"]["ratio_to_copy_last"],
                "reward_mae": m["reward"]["mae"], "reward_correlation": m["reward"]["correlation"],
                "reconstruction_mse": m["reconstruction_mse"], "probe_r2": m["probe"]["r2"],
            })
    if len(train_variants) > 1:
        raise UserError(f"runs under '{runs}' were trained on different looks {sorted(train_variants)}; "
                        f"report each study separately")
    return Study(rows, curves, metric_names, train_variants.pop(), reps, seed, load_online(runs))


def load_online(runs: Path) -> Online:
    curves, random_return, rows = {}, {}, []
    for info_path in sorted(runs.rglob(FINETUNE_FILE)):
        info = read_yaml(info_path)
        identity = info["identity"]
        key = (info["env"], info["encoder"], identity["world_model"], identity["seed"])
        table = info_path.parent / LIVE_DIR / "plots/metrics/eval/return.tsv"
        if table.is_file():
            curve = _read_tsv(table)
            curves[key] = (curve["step"], curve["return"])
        random_return[key] = info["random_return"]
    for frames in sorted(runs.rglob(EVALUATION_FRAMES)):
        evaluation = frames.parent / "metrics.json"
        if not evaluation.is_file():
            continue
        metrics = json.loads(evaluation.read_text())
        about, floor = metrics.pop("about"), metrics.pop("random")
        seed = about.get("agent_seed")
        if seed is None:   # an evaluation of an older pvr-pipe: inside its agent's folder
            seed = read_yaml(frames.parent.parent / FINETUNE_FILE).get("identity", {}).get("seed")
        for variant, m in metrics.items():
            rows.append({"encoder": about["encoder"], "world_model": about["world_model"], "seed": seed,
                         "variant": variant, "train_variant": about["train_variant"], "env": about["env"],
                         **{p: str(about["encoder_properties"].get(p)) for p in PROPERTIES},
                         "return": m["return_mean"], "return_std": m["return_std"], "random_return": floor["return_mean"],
                         "ood_score": m["ood_score"], "ood_score_above_random": m["ood_score_above_random"]})
    return Online(curves, random_return, rows)


def _read_tsv(path: Path) -> dict[str, np.ndarray]:
    with open(path) as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return {key: np.array([float(r[key]) for r in rows]) for key in rows[0]}


def iqm(values: np.ndarray, axis: int = -1) -> np.ndarray:
    """Interquartile mean: the mean of the middle 50% (rliable's aggregate_iqm)."""
    return trim_mean(values, proportiontocut=0.25, axis=axis)


@functools.lru_cache(maxsize=None)
def _iqm_with_ci(values: tuple[float, ...], reps: int, seed: int) -> tuple[float, float, float]:
    point = float(iqm(np.asarray(values)))
    if len(values) == 1:
        return point, point, point
    interval = bootstrap((np.asarray(values),), iqm, n_resamples=reps, confidence_level=0.95, method="percentile",
                         vectorized=True, random_state=np.random.default_rng(seed)).confidence_interval
    return point, float(interval.low), float(interval.high)


def iqm_with_ci(values: list[float], reps: int, seed: int) -> tuple[float, float, float]:
    """IQM over runs and its 95% percentile-bootstrap CI over runs (rliable's method for one task;
    scipy's vectorised bootstrap, as rliable's own is too slow for a table of cells)."""
    return _iqm_with_ci(tuple(float(v) for v in values), reps, seed)


def _format(cell: tuple[float, float, float], count: int) -> str:
    return f"{cell[0]:.3g} [{cell[1]:.3g}, {cell[2]:.3g}]" if count > 1 else f"{cell[0]:.3g}"


def _cell(study: Study, rows: list[dict], metric: str) -> str:
    values = [r[metric] for r in rows if r[metric] is not None]
    if not values:
        return "-"
    return _format(iqm_with_ci(values, study.reps, study.seed), len(values))


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _bars(ax, groups: list[str], series: dict[str, list[tuple[float, float, float]]], ylabel: str) -> None:
    """Grouped bars with CI whiskers: series name -> (iqm, low, high) per group."""
    width = 0.8 / max(len(series), 1)
    for i, (name, cells) in enumerate(series.items()):
        x = np.arange(len(groups)) + (i - (len(series) - 1) / 2) * width
        mids = np.array([c[0] for c in cells])
        err = np.array([[c[0] - c[1] for c in cells], [c[2] - c[0] for c in cells]])
        ax.bar(x, mids, width, yerr=err, capsize=3, label=name)
    ax.set_xticks(np.arange(len(groups)), groups, rotation=20, ha="right")
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)


def _aggregate(study: Study, metric: str, **match) -> tuple[float, float, float]:
    values = [r[metric] for r in study.select(**match) if r[metric] is not None]
    return iqm_with_ci(values, study.reps, study.seed) if values else (np.nan, np.nan, np.nan)


# -- sections -----------------------------------------------------------------------------------
def section_overview(study: Study, out: Path) -> str:
    seeds = sorted({r["seed"] for r in study.rows})
    envs = sorted({r["env"] for r in study.rows})
    return (f"Env: {', '.join(envs)}; trained on the `{study.train_variant}` look, scored on its held-out "
            f"episodes and on the OOD looks {', '.join(f'`{v}`' for v in study.variants()[1:]) or '(none)'}.\n"
            f"Encoders: {', '.join(study.encoders())}. World models: {', '.join(study.world_models())}. "
            f"Seeds: {seeds} ({len({r['run'] for r in study.rows})} runs).\n\n"
            f"Cells are interquartile means over seeds with 95% percentile-bootstrap confidence intervals "
            f"over runs ({study.reps} resamples, as rliable). Prediction error: "
            + "; ".join(f"{wm}: {name}" for wm, name in study.metric_names.items())
            + " per open-loop step, averaged over the horizon.")


def section_model_quality(study: Study, out: Path) -> str:
    header = ["encoder", "world model", *(METRICS[m][0] + (" (higher is better)" if METRICS[m][1] else "")
                                          for m in METRICS)]
    rows = [[e, wm, *(_cell(study, study.select(encoder=e, world_model=wm, variant=study.train_variant), m)
                      for m in METRICS)]
            for wm in study.world_models() for e in study.encoders()]
    fig, axes = plt.subplots(1, len(study.world_models()), figsize=(6 * len(study.world_models()), 4.2), squeeze=False)
    for ax, wm in zip(axes[0], study.world_models()):
        for encoder in study.encoders():
            runs = [c for (_, e, w, _, v), c in study.curves.items() if (e, w, v) == (encoder, wm, study.train_variant)]
            if not runs:
                continue
            stacked = np.stack(runs)
            horizon = np.arange(1, stacked.shape[1] + 1)
            line, = ax.plot(horizon, stacked.mean(0), label=encoder)
            ax.fill_between(horizon, stacked.min(0), stacked.max(0), color=line.get_color(), alpha=0.2)
        ax.set_title(f"{wm}: open-loop prediction error ({study.metric_names[wm]})")
        ax.set_xlabel("steps predicted from actions alone")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
    _save(fig, out / "prediction_error.png")
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for ax, metric in zip(axes, ("reward_mae", "reward_correlation")):
        _bars(ax, study.encoders(), {wm: [_aggregate(study, metric, encoder=e, world_model=wm, variant=study.train_variant)
                                          for e in study.encoders()] for wm in study.world_models()}, METRICS[metric][0])
        ax.legend()
    fig.suptitle("Reward prediction on held-out episodes")
    _save(fig, out / "reward_error.png")
    return (_table(header, rows) + "\n\n![prediction error vs horizon](prediction_error.png)\n\n"
            "Lines: mean over seeds; bands: min to max over seeds.\n\n![reward error](reward_error.png)")


def section_ood(study: Study, out: Path) -> str:
    variants = study.variants()
    if len(variants) < 2:
        return "No OOD looks were scored."
    metrics = ["prediction_error", "reward_mae", "probe_r2"]
    fig, axes = plt.subplots(len(study.world_models()), len(metrics), figsize=(5.5 * len(metrics), 4 * len(study.world_models())),
                             squeeze=False)
    for row, wm in enumerate(study.world_models()):
        for ax, metric in zip(axes[row], metrics):
            _bars(ax, study.encoders(), {v: [_aggregate(study, metric, encoder=e, world_model=wm, variant=v)
                                             for e in study.encoders()] for v in variants}, METRICS[metric][0])
            ax.set_title(wm)
            ax.legend()
    _save(fig, out / "ood.png")
    header = ["encoder", "world model", *(f"{v}: {METRICS[m][0]}" for v in variants[1:] for m in metrics[:2]),
              *(f"{v} / {variants[0]}: prediction error" for v in variants[1:])]
    rows = []
    for wm in study.world_models():
        for e in study.encoders():
            train = _aggregate(study, "prediction_error", encoder=e, world_model=wm, variant=variants[0])[0]
            cells = [_cell(study, study.select(encoder=e, world_model=wm, variant=v), m) for v in variants[1:] for m in metrics[:2]]
            ratios = [f"{_aggregate(study, 'prediction_error', encoder=e, world_model=wm, variant=v)[0] / train:.3g}"
                      for v in variants[1:]]
            rows.append([e, wm, *cells, *ratios])
    return _table(header, rows) + "\n\n![train vs OOD](ood.png)"


def section_probe(study: Study, out: Path) -> str:
    # The probe reads the stored features only, so every run of an encoder gives the same value.
    variants = study.variants()
    fig, ax = plt.subplots(figsize=(7, 4))
    _bars(ax, study.encoders(), {v: [_aggregate(study, "probe_r2", encoder=e, variant=v) for e in study.encoders()]
                                 for v in variants}, "R^2 of a linear probe of the true state")
    ax.axhline(0, color="black", lw=0.8)
    ax.legend()
    ax.set_title("What the frozen features keep of the simulator state")
    _save(fig, out / "probe_r2.png")
    rows = [[e, *(f"{_aggregate(study, 'probe_r2', encoder=e, variant=v)[0]:.3f}" for v in variants)]
            for e in study.encoders()]
    return (_table(["encoder", *(f"R^2 on {v}" for v in variants)], rows)
            + "\n\nRidge regression from the raw stored features to the state, fitted on the training "
              "episodes of the training look.\n\n![probe](probe_r2.png)")


def section_properties(study: Study, out: Path) -> str:
    metrics = ["prediction_error", "reward_mae", "probe_r2"]
    variants = study.variants()
    parts, fig_rows = [], []
    for prop, label in PROPERTIES.items():
        groups = sorted({r[prop] for r in study.rows})
        if len(groups) < 2:
            continue
        rows = [[g, wm, *(_cell(study, study.select(**{prop: g}, world_model=wm, variant=v), m)
                         for v in variants for m in metrics)]
                for wm in study.world_models() for g in groups]
        parts.append(f"**By {label}**\n\n" + _table([label, "world model", *(f"{v}: {METRICS[m][0]}" for v in variants
                                                                               for m in metrics)], rows))
        fig_rows.append((prop, label, groups))
    if not fig_rows:
        return "All encoders share the same properties; nothing to group."
    fig, axes = plt.subplots(len(fig_rows), len(variants), figsize=(6 * len(variants), 3.8 * len(fig_rows)), squeeze=False)
    for (prop, label, groups), ax_row in zip(fig_rows, axes):
        for ax, v in zip(ax_row, variants):
            _bars(ax, groups, {wm: [_aggregate(study, "prediction_error", **{prop: g}, world_model=wm, variant=v)
                                    for g in groups] for wm in study.world_models()}, "prediction error (IQM)")
            ax.set_title(f"by {label}, on {v}")
            ax.set_yscale("log")
            ax.legend()
    _save(fig, out / "properties.png")
    return ("Runs grouped by the PVR property the paper analyses (`none` architecture: learning from pixels).\n\n"
            + "\n\n".join(parts) + "\n\n![by property](properties.png)")


def _mean_with_ci(values: np.ndarray, reps: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per column of (runs, steps): the mean over runs and its 95% percentile-bootstrap CI."""
    mean = values.mean(0)
    if len(values) == 1:
        return mean, mean, mean
    draws = np.random.default_rng(seed).integers(len(values), size=(reps, len(values)))
    means = values[draws].mean(1)
    return mean, np.percentile(means, 2.5, axis=0), np.percentile(means, 97.5, axis=0)


def section_learning_curves(study: Study, out: Path) -> str:
    online = study.online
    if not online.curves:
        return "No agents were fine-tuned (`pvr-pipe finetune`)."
    world_models = sorted({key[2] for key in online.curves})
    encoders = [e for e in study.encoders() if any(key[1] == e for key in online.curves)]
    fig, axes = plt.subplots(1, len(world_models), figsize=(6 * len(world_models), 4.2), squeeze=False)
    rows = []
    for ax, wm in zip(axes[0], world_models):
        for encoder in encoders:
            runs = [online.curves[key] for key in sorted(online.curves) if key[1:3] == (encoder, wm)]
            length = min(len(steps) for steps, _ in runs)
            steps, returns = runs[0][0][:length], np.stack([r[:length] for _, r in runs])
            mean, low, high = _mean_with_ci(returns, study.reps, study.seed)
            line, = ax.plot(steps, mean, marker="o", ms=3, label=encoder)
            ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.2)
            final = iqm_with_ci(returns[:, -1].tolist(), study.reps, study.seed)
            rows.append([encoder, wm, str(len(runs)), f"{int(steps[-1])}", _format(final, len(runs))])
        floor = np.mean([v for key, v in online.random_return.items() if key[2] == wm])
        ax.axhline(floor, color="black", ls="--", lw=1, label="random policy")
        ax.set_title(f"{wm}: return while fine-tuning (training look)")
        ax.set_xlabel("agent steps online")
        ax.set_ylabel("evaluation return")
        ax.grid(alpha=0.3)
        ax.legend()
    _save(fig, out / "learning_curves.png")
    floor = np.mean(list(online.random_return.values()))
    return (_table(["encoder", "world model", "seeds", "agent steps", "final return (IQM [95% CI])"], rows)
            + f"\n\nRandom policy on the same evaluation episodes: {floor:.3g}.\n\n"
              "![learning curves](learning_curves.png)\n\nLines: mean over seeds; bands: 95% bootstrap CI of the "
              "mean; step 0 is the offline checkpoint before any online step.")


def _aggregate_rows(study: Study, rows: list[dict], metric: str) -> tuple[float, float, float]:
    values = [r[metric] for r in rows if r[metric] is not None]
    return iqm_with_ci(values, study.reps, study.seed) if values else (np.nan, np.nan, np.nan)


def section_returns(study: Study, out: Path) -> str:
    rows = study.online.rows
    if not rows:
        return "No fine-tuned agents were evaluated (`pvr-pipe evaluate`)."
    train_variant = rows[0]["train_variant"]
    variants = [train_variant] + sorted({r["variant"] for r in rows} - {train_variant})
    encoders = [e for e in study.encoders() if any(r["encoder"] == e for r in rows)]
    world_models = sorted({r["world_model"] for r in rows})

    def select(**match) -> list[dict]:
        return [r for r in rows if all(r[k] == v for k, v in match.items())]

    fig, axes = plt.subplots(1, len(world_models), figsize=(6 * len(world_models), 4.2), squeeze=False)
    for ax, wm in zip(axes[0], world_models):
        _bars(ax, encoders, {v: [_aggregate_rows(study, select(encoder=e, world_model=wm, variant=v), "return")
                                 for e in encoders] for v in variants}, "return (IQM over seeds)")
        ax.axhline(np.mean([r["random_return"] for r in select(world_model=wm)]), color="black", ls="--", lw=1,
                   label="random policy")
        ax.set_title(f"{wm}: returns per look")
        ax.legend()
    _save(fig, out / "returns_ood.png")
    header = ["encoder", "world model", *(f"return on {v}" for v in variants),
              *(f"OOD score {v} / {train_variant}" for v in variants[1:])]
    table = [[e, wm, *(_cell(study, select(encoder=e, world_model=wm, variant=v), "return") for v in variants),
              *(_cell(study, select(encoder=e, world_model=wm, variant=v), "ood_score") for v in variants[1:])]
             for wm in world_models for e in encoders]
    return (_table(header, table) + "\n\nOOD score: mean return on the look / mean return on the training look, per "
            "agent (the paper's normalised OOD performance); every look is played from the same start states.\n\n"
            "![returns per look](returns_ood.png)")


def section_returns_by_property(study: Study, out: Path) -> str:
    rows = study.online.rows
    if not rows:
        return "No fine-tuned agents were evaluated."
    train_variant = rows[0]["train_variant"]
    parts = []
    for prop, label in PROPERTIES.items():
        groups = sorted({r[prop] for r in rows})
        if len(groups) < 2:
            continue
        table = []
        for wm in sorted({r["world_model"] for r in rows}):
            for g in groups:
                train = [r for r in rows if r[prop] == g and r["world_model"] == wm and r["variant"] == train_variant]
                ood = [r for r in rows if r[prop] == g and r["world_model"] == wm and r["variant"] != train_variant]
                table.append([g, wm, _cell(study, train, "return"),
                              _cell(study, ood, "ood_score")])
        parts.append(f"**By {label}**\n\n" + _table([label, "world model", f"return on {train_variant}",
                                                      "OOD score (all OOD looks)"], table))
    return "\n\n".join(parts) if parts else "All evaluated encoders share the same properties; nothing to group."


SECTIONS = [("Study", section_overview), ("World-model quality (held-out episodes, training look)", section_model_quality),
            ("Training look vs OOD looks", section_ood), ("Linear probe of the state", section_probe),
            ("By PVR property", section_properties), ("Online fine-tuning: learning curves", section_learning_curves),
            ("Online returns in and out of distribution", section_returns),
            ("Online returns by PVR property", section_returns_by_property)]


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(cfg: ReportConfig) -> Path:
    with writer_lock(cfg.out, "report"):
        study = load_study(cfg.runs, cfg.bootstrap_reps, cfg.seed)
        cfg.out.mkdir(parents=True, exist_ok=True)
        body = [f"# pvr-pipe report\n\nGenerated by pvr-pipe {__version__} from `{cfg.runs}`."]
        for title, section in SECTIONS:
            body.append(f"## {title}\n\n{section(study, cfg.out)}")
        markdown_text = "\n\n".join(body) + "\n"
        write_bytes_atomic(cfg.out / "report.md", markdown_text.encode())
        write_bytes_atomic(cfg.out / "report.html", _html(markdown_text).encode())
        for name, rows in (("results.csv", study.rows), ("returns.csv", study.online.rows)):
            if rows:
                with open(cfg.out / name, "w", newline="") as f:
                    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
                    writer.writeheader()
                    writer.writerows(rows)
        return cfg.out


def _html(markdown_text: str) -> str:
    import markdown

    body = markdown.markdown(markdown_text, extensions=["tables"])
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;font-size:90%}td,th{border:1px solid #ccc;padding:3px 6px}"
             "img{max-width:100%}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>pvr-pipe report</title><style>{style}</style></head><body>{body}</body></html>\n"
