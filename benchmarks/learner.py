"""Where the learner's time goes: one update and one planning (acting) call per world model x
preset x input, eager and compiled, against a bare matmul measured in the same run.

For each combination: the median wall time of `train_step` on a batch of the preset's shape and
of `act` for one env (tdmpc: MPPI planning; dreamer: a filtering step and the actor), their
FLOPs (`torch.utils.flop_counter`: matmuls and convolutions, backward included), the achieved
FLOP/s and its ratio to a bare fp32 1024x1024 matmul on the same threads (`matmul_ratio`).
`compiled` runs the same calls after `agent.compile()` (tdmpc: losses and planning; dreamer:
its RSSM steps, see world_models/dreamer.py), with the first call's time, compilation included,
as `compile_s`.
Inputs: `state` (cartpole's 5-d state), `embedding` (a 384-d PVR embedding; tdmpc stacks 3),
`pixels` (64x64 RGB). Random weights and batches: speed does not depend on their values.

`--seeds 1 4 16` (tdmpc) also times one update and one planning call of a model that holds K
seeds (world_models/layers.py: a copy of every weight per seed, one batched kernel for all), each
seed on its own batch and planning for its own env, eager and compiled as `--modes` says:
`seeds_K_update_ms`, `seeds_K_plan_ms`, and the aggregate speed-up over one seed,
`seeds_K_speedup` = K x (one-seed time) / (K-seed time), for updates and for planning.
Prints one JSON document; `--out` also writes it.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from world_models.registry import compile_mode, make_agent, make_world_model, world_model_config
from world_models.tdmpc_agent import plan, plan_noise

INPUTS = {"state": ("state", (5,)), "embedding": ("embedding", (384,)), "pixels": ("pixels", (3, 64, 64))}
ACTION_DIM = 1


def bare_matmul_flops(device: str, seconds: float = 1.0) -> float:
    a, b = torch.randn(1024, 1024, device=device), torch.randn(1024, 1024, device=device)
    for _ in range(3):
        a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    synchronize(device)
    return 2 * 1024 ** 3 * count / (time.perf_counter() - start)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def random_batch(cfg, feature: str, shape: tuple[int, ...], device: str) -> dict[str, torch.Tensor]:
    """A replay batch of the preset's shape (obs stacked for tdmpc, sequences for dreamer)."""
    size, length, stack = cfg.batch_size, cfg.sequence_length, cfg.frame_stack
    obs_shape = (size, length, stack, *shape) if stack > 1 else (size, length, *shape)
    obs = (torch.randint(0, 256, obs_shape, dtype=torch.uint8) if feature == "pixels" else torch.randn(obs_shape))
    action = torch.rand(size, length, ACTION_DIM) * 2 - 1
    is_first = torch.zeros(size, length, dtype=torch.bool)
    is_first[:, 0] = True
    batch = {"obs": obs, "action": action, "reward": torch.rand(size, length), "is_first": is_first,
             "is_terminal": torch.zeros(size, length, dtype=torch.bool),
             "prev_action": torch.cat([torch.zeros(size, 1, ACTION_DIM), action[:, :-1]], 1)}
    return {key: value.to(device) for key, value in batch.items()}


def timed(call, device: str, repeats: int) -> float:
    """Median seconds of `call` over `repeats`, after two warm-up calls."""
    for _ in range(2):
        call()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        call()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def flops_of(call) -> int:
    with FlopCounterMode(display=False) as counter:
        call()
    return counter.get_total_flops()


def setup(name: str, preset: str, input_name: str, device: str):
    """A freshly initialised agent, its optimisers, a batch and the calls to time."""
    feature, shape = INPUTS[input_name]
    cfg = world_model_config(name, preset, {"warmup": 0} if name == "dreamer" else {})
    torch.manual_seed(0)
    agent = make_agent(make_world_model(name, cfg, feature, shape, ACTION_DIM)).to(device).train()
    optimizers = agent.make_optimizers()
    batch = random_batch(cfg, feature, shape, device)
    obs = batch["obs"][:1, 0, 0] if cfg.frame_stack > 1 else batch["obs"][:1, 0]
    state, first = agent.initial_state(1), torch.ones(1, dtype=torch.bool, device=device)
    return agent, (lambda: agent.train_step(batch, optimizers)), (lambda: agent.act(obs, state, first, True))


def measure(name: str, preset: str, input_name: str, modes: list[str], device: str, repeats: int,
            matmul: float) -> list[dict]:
    """One row per mode; FLOPs are counted on the eager calls (the compiled ones do the same work,
    and the FLOP counter cannot see inside a compiled graph)."""
    _, update, act = setup(name, preset, input_name, device)
    flops = {"update": flops_of(update), "plan": flops_of(act)}
    rows = []
    for mode in modes:
        row = {"world_model": name, "preset": preset, "input": input_name, "compiled": mode == "compiled"}
        agent, update, act = setup(name, preset, input_name, device)
        if mode == "compiled":
            agent.compile(compile_mode(device))
            start = time.perf_counter()
            update()
            act()
            synchronize(device)
            row["compile_s"] = time.perf_counter() - start
        for key, call in (("update", update), ("plan", act)):
            seconds = timed(call, device, repeats)
            row |= {f"{key}_ms": seconds * 1e3, f"{key}_gflop": flops[key] / 1e9,
                    f"{key}_gflop_per_s": flops[key] / seconds / 1e9, f"{key}_matmul_ratio": flops[key] / seconds / matmul}
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)   # progress
    return rows


def measure_seeds(preset: str, input_name: str, mode: str, seed_counts: list[int], device: str,
                  repeats: int) -> dict:
    """tdmpc with K seeds in one model: update and planning times per K, and the aggregate speed-up."""
    feature, shape = INPUTS[input_name]
    cfg = world_model_config("tdmpc", preset, {})
    row = {"world_model": "tdmpc", "preset": preset, "input": input_name, "compiled": mode == "compiled"}
    for count in seed_counts:
        model = make_world_model("tdmpc", cfg, feature, shape, ACTION_DIM, seeds=tuple(range(count))).to(device).train()
        optimizers = model.make_optimizers()
        batches = [random_batch(cfg, feature, shape, device) for _ in range(count)]
        batch = {key: torch.stack([b[key] for b in batches]) for key in ("obs", "action", "reward", "is_terminal")}
        obs = batch["obs"][:, :1, 0]
        previous = torch.zeros(count, 1, cfg.horizon, ACTION_DIM, device=device)
        planner = plan
        if mode == "compiled":
            model.compile(compile_mode(device))
            planner = torch.compile(plan, mode=compile_mode(device), fullgraph=True)

        def act():
            with torch.no_grad():
                z = model.encode(obs)
                return planner(model, z, previous, plan_noise(model, 1, device), True)

        def update():
            return model.update(batch, optimizers)

        start = time.perf_counter()
        update()
        model.eval()
        act()
        model.train()
        synchronize(device)
        row[f"seeds_{count}_first_call_s"] = time.perf_counter() - start
        row[f"seeds_{count}_update_ms"] = timed(update, device, repeats) * 1e3
        model.eval()
        row[f"seeds_{count}_plan_ms"] = timed(act, device, repeats) * 1e3
        print(json.dumps(row), file=sys.stderr, flush=True)   # progress
    one = min(seed_counts)
    for count in seed_counts:
        if count != one:
            row[f"seeds_{count}_speedup"] = {
                part: count / one * row[f"seeds_{one}_{part}_ms"] / row[f"seeds_{count}_{part}_ms"]
                for part in ("update", "plan")}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world-models", nargs="+", default=["dreamer", "tdmpc"])
    parser.add_argument("--presets", nargs="+", default=["xs", "s", "m"])
    parser.add_argument("--inputs", nargs="+", default=list(INPUTS), choices=list(INPUTS))
    parser.add_argument("--modes", nargs="+", default=["eager", "compiled"], choices=["eager", "compiled"])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--seeds", nargs="*", type=int, default=[], metavar="K",
                        help="also time tdmpc models of K seeds, e.g. --seeds 1 4 16")
    parser.add_argument("--only-seeds", action="store_true", help="time the seed counts only")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    matmul = bare_matmul_flops(args.device)
    rows = []
    for name in args.world_models:
        for preset in args.presets:
            for input_name in args.inputs:
                if not args.only_seeds:
                    rows += measure(name, preset, input_name, args.modes, args.device, args.repeats, matmul)
    seed_rows = [measure_seeds(preset, input_name, mode, sorted(set(args.seeds)), args.device, args.repeats)
                 for preset in args.presets for input_name in args.inputs for mode in args.modes
                 if "tdmpc" in args.world_models and len(set(args.seeds)) > 1]
    speedups = {}
    for row in rows:
        if row["compiled"] and "skipped" not in row:
            eager = next(r for r in rows if not r["compiled"] and
                         (r["world_model"], r["preset"], r["input"]) == (row["world_model"], row["preset"], row["input"]))
            key = f"{row['world_model']}_{row['preset']}_{row['input']}"
            speedups[key] = {"update": eager["update_ms"] / row["update_ms"], "plan": eager["plan_ms"] / row["plan_ms"]}
    report = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "torch": torch.__version__, "threads": args.threads, "device": args.device,
                          **({"gpu": torch.cuda.get_device_name(args.device)} if args.device.startswith("cuda") else {})},
              "bare_matmul_gflop_per_s": matmul / 1e9, "compiled_speedup": speedups, "results": rows,
              "seeds": seed_rows}
    text = json.dumps(report, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
