"""TD-MPC2 as its reference has it: latents that stay apart, targets without dropout, random shifts,
the termination head, the seeding schedule and the discount from the env's time limit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import collect_toy
from pipeline.config import EncodeConfig, TrainConfig
from pipeline.storage.checkpoint import load_checkpoint, restore_model
from pipeline.storage.embedding_store import read_store
from pipeline.task_settings import default_seed_steps, episode_length, task_settings, updates_owed
from stages import encode, train
from world_models.registry import COMPILE_FROM_UPDATES, compiles, make_agent, make_world_model, world_model_config
from world_models.replay import Replay
from world_models.tdmpc import random_shift
from world_models.tdmpc_agent import estimate_value


def tdmpc(feature="embedding", shape=(6,), action_dim=2, **settings):
    cfg = world_model_config("tdmpc", "xs", settings)
    return make_world_model("tdmpc", cfg, feature, shape, action_dim)


@pytest.fixture(scope="module")
def toy_pixel_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("tdmpc")
    collect_toy(root / "toy", episodes=6, max_steps=40)
    return encode.run(EncodeConfig(model="pixels", dataset=str(root / "toy"), out=str(root / "pixels.zarr")),
                      show_progress=False)


def frame_latents(model, store):
    arrays, starts, _ = read_store(store)
    stacked = Replay(arrays, starts, "pixels").gather(torch.arange(0, len(arrays["reward"]), 2), 1, 3)["obs"][:, 0]
    with torch.no_grad():
        return model.eval().encode(stacked.unsqueeze(0))[0]


def test_a_short_training_run_keeps_the_latents_of_different_frames_apart(toy_pixel_store, tmp_path):
    """Before the fix every frame's latent went to one saturated one-hot per SimNorm group
    (spread over frames 1e-20, all pairwise distances 0) within a few hundred updates."""
    run_dir = train.run(TrainConfig(store=toy_pixel_store, world_model="tdmpc", preset="xs", updates=100,
                                    log_every=50, checkpoint_every=1000, out=tmp_path / "run"), show_progress=False)[0]
    trained = restore_model(load_checkpoint(run_dir / "checkpoint.safetensors"))
    initial = make_world_model("tdmpc", trained.cfg, "pixels", (3, 64, 64), 2)
    spread, spread_at_start = (frame_latents(m, toy_pixel_store).std(0).mean() for m in (trained, initial))
    latents = frame_latents(trained, toy_pixel_store)
    assert spread > 0.5 * spread_at_start, (float(spread), float(spread_at_start))
    assert torch.pdist(latents).median() > 1e-3
    assert latents.reshape(len(latents), -1, 8).max(-1).values.mean() < 0.9     # no saturated one-hots
    logged = (run_dir / "live/plots/metrics/train/latent_std.tsv").read_text().splitlines()[1:]
    assert len(logged) == 2 and all(float(row.split("\t")[1]) > 0.5 * float(spread_at_start) for row in logged)


def test_simnorm_sees_layer_normalised_logits_so_large_weights_cannot_saturate_its_groups():
    """The collapse's cause: Linear -> SimNorm let the logits grow until every group was a one-hot.
    With TD-MPC2's Linear -> LayerNorm -> SimNorm, scaling the last Linear changes nothing."""
    torch.manual_seed(0)
    model = tdmpc().eval()
    obs, action = torch.randn(1, 32, 3, 6), torch.rand(1, 32, 2) * 2 - 1
    with torch.no_grad():
        before = model.encode(obs), model.next(model.encode(obs), action)
        for net in (model.encoder, model.dynamics):
            net.linears[-1].weight.mul_(1000.0)
        after = model.encode(obs), model.next(model.encode(obs), action)
    for z_before, z_after in zip(before, after):
        torch.testing.assert_close(z_after, z_before, atol=0.02, rtol=0)   # LayerNorm eps aside
        assert z_after.reshape(32, -1, 8).max(-1).values.mean() < 0.9    # groups stay soft


@pytest.mark.slow
def test_compiled_update_and_planning_compute_what_the_eager_ones_do():
    """`--compile`: the same losses, weights and plans as eager (every random number is drawn
    eagerly from the seed's own generator and handed to the compiled graph). Plans compare by
    their refitted mean: which elite is drawn as the action is discontinuous in rounding."""
    agents = []
    for compiled in (False, True):
        torch.manual_seed(0)
        agent = make_agent(tdmpc(feature="embedding", shape=(5,), action_dim=1))
        if compiled:
            agent.compile()
        agents.append((agent, agent.make_optimizers()))
    data = torch.Generator().manual_seed(1)
    batch = {"obs": torch.randn(64, 4, 3, 5, generator=data), "action": torch.rand(64, 4, 1, generator=data) * 2 - 1,
             "reward": torch.rand(64, 4, generator=data), "is_terminal": torch.zeros(64, 4, dtype=torch.bool)}
    seen = []
    for agent, optimizers in agents:
        torch.manual_seed(2)
        metrics = [agent.train_step(batch, optimizers) for _ in range(3)]
        state = agent.initial_state(2)
        _, planned = agent.act(batch["obs"][:2, 0, 0], state, torch.ones(2, dtype=torch.bool), explore=True)
        seen.append((metrics, planned["mean"], agent.state_dict()))
    (eager_metrics, eager_plan, eager_state), (metrics, plan, state) = seen
    for eager_row, row in zip(eager_metrics, metrics):
        assert row == pytest.approx(eager_row, rel=1e-4, abs=1e-6)
    torch.testing.assert_close(plan, eager_plan, atol=1e-4, rtol=0)
    for name, value in eager_state.items():
        if name.endswith("_extra_state"):
            assert all(torch.equal(a, b) for a, b in zip(state[name]["noise"], value["noise"]))
        else:
            torch.testing.assert_close(state[name], value, atol=1e-5, rtol=1e-4, msg=name)


def test_compile_auto_compiles_long_tdmpc_runs_only_and_a_given_setting_wins():
    assert TrainConfig().compile == "auto"
    assert compiles("tdmpc", "auto", COMPILE_FROM_UPDATES) and compiles("tdmpc", "auto", 100_000)
    assert not compiles("tdmpc", "auto", COMPILE_FROM_UPDATES - 1)
    assert not compiles("dreamer", "auto", 100_000)            # dreamer compiles only when asked
    assert compiles("dreamer", True, 10)
    assert compiles("tdmpc", True, 10) and not compiles("tdmpc", False, 100_000)
    assert TrainConfig(compile=True).compile is True and TrainConfig(compile=False).compile is False
    with pytest.raises(ValueError):
        TrainConfig(compile="sometimes")


def test_dropout_masks_the_online_q_ensemble_in_training_and_never_the_targets():
    model = tdmpc(dropout=0.5).train()
    batch = model.single_seed({"obs": torch.randn(8, 4, 3, 6), "action": torch.rand(8, 4, 2) * 2 - 1,
                               "reward": torch.rand(8, 4), "is_terminal": torch.zeros(8, 4, dtype=torch.bool)})
    noise = model.update_noise(batch)
    mask = noise["q_dropout"]
    assert mask.shape == (1, model.cfg.num_q, 8, model.cfg.horizon, model.cfg.mlp_dim)
    assert set(mask.unique().tolist()) == {0.0, 2.0} and 0.3 < (mask == 0).float().mean() < 0.7
    assert "q_dropout" not in model.eval().update_noise(batch)
    with torch.no_grad():
        for p in model.q.parameters():
            p.normal_()
        model.target_q.load_state_dict(model.q.state_dict())
    z, action = torch.randn(1, 8, model.latent_dim), torch.rand(1, 8, 2)
    pair = torch.tensor([[0, 1]])
    dropped = model.q_value(z, action, pair, dropout_mask=mask[:, :, :, 0])
    torch.testing.assert_close(model.q_value(z, action, pair, target=True), model.q_value(z, action, pair))
    assert not torch.allclose(dropped, model.q_value(z, action, pair))


def test_random_shift_moves_whole_images_by_at_most_pad_pixels():
    torch.manual_seed(0)
    images = torch.rand(64, 3, 16, 16)
    shifted = random_shift(images, 3, torch.randint(0, 7, (64, 2)))
    padded = torch.nn.functional.pad(images, (3, 3, 3, 3), mode="replicate")
    offsets = set()
    for i in range(len(images)):
        matches = [(dy, dx) for dy in range(7) for dx in range(7)
                   if torch.equal(shifted[i], padded[i, :, dy:dy + 16, dx:dx + 16])]
        assert matches, i
        offsets.add(matches[0])
    assert len(offsets) > 10                     # each image draws its own shift
    torch.testing.assert_close(random_shift(images, 0, torch.zeros(64, 2, dtype=torch.long)), images)


def test_episodic_envs_get_a_termination_head_and_planning_stops_at_predicted_terminals():
    model = tdmpc(episodic=True)
    batch = {"obs": torch.randn(8, 4, 3, 6), "action": torch.rand(8, 4, 2) * 2 - 1, "reward": torch.rand(8, 4),
             "is_terminal": torch.zeros(8, 4, dtype=torch.bool)}
    batch["is_terminal"][:, -1] = True
    batch = model.single_seed(batch)
    _, parts, latents = model.losses(batch, model.update_noise(batch))
    assert "termination" in parts and latents.shape == (1, 8, 4, model.latent_dim)   # all H+1 latents
    final_noise, pair = torch.zeros(1, 4, 2), torch.tensor([[0, 1]])
    with torch.no_grad():
        model.reward_head.linears[-1].bias.copy_(torch.arange(101.0) * 0.5)       # a large reward everywhere
        z, actions = torch.full((1, 4, model.latent_dim), 1 / 8), torch.zeros(1, 4, 3, 2)
        model.termination_head.linears[-1].bias.fill_(-20.0)
        alive = estimate_value(model, z, actions, final_noise, pair)
        model.termination_head.linears[-1].bias.fill_(20.0)                       # every next state is terminal
        ended = estimate_value(model, z, actions, final_noise, pair)
    reward = model.predicted_reward(z, actions[:, :, 0])
    torch.testing.assert_close(ended, reward)                                    # only the first reward counts
    assert (alive > 2 * ended).all()
    assert tdmpc().termination_head is None


def test_seeding_schedule_as_td_mpc2():
    assert default_seed_steps("tdmpc", True, 500) == 2500 and default_seed_steps("tdmpc", True, 100) == 1000
    assert default_seed_steps("tdmpc", False, 500) == 0 and default_seed_steps("dreamer", True, 500) == 0
    owed = [updates_owed(step - 1, step, 2500, 1.0) for step in range(1, 2600)]
    assert sum(owed[:2500]) == 0 and owed[2500] == 2501 and set(owed[2501:]) == {1.0}
    assert updates_owed(0, 10, 0, 0.5) == 5.0
    assert updates_owed(2000, 3000, 2500, 1.0) == 3000     # a parallel step over the end of seeding


def test_discount_and_episodes_from_the_envs_time_limit_not_the_stored_lengths():
    starts = np.array([0, 101, 152])               # episodes of 100, 50 and 30 steps (some ended early)
    terminal = np.zeros(183, bool)
    terminal[[150, 182]] = True
    attrs = {"time_limit": 500, "episodic": True, "collect_config": {"max_steps": None}}
    assert episode_length(attrs, starts, 183) == 500
    assert task_settings("tdmpc", attrs, starts, terminal) == {"discount": 0.99, "episodic": True}
    assert episode_length(attrs | {"collect_config": {"max_steps": 50}}, starts, 183) == 50
    assert episode_length(attrs, starts, 183, max_steps=200) == 200
    older = {"collect_config": {}}                # no time limit recorded: the longest stored episode
    assert episode_length(older, starts, 183) == 100
    assert task_settings("tdmpc", older, starts, terminal)["episodic"] is True
    assert task_settings("dreamer", attrs, starts, terminal) == {}


def test_large_action_spaces_plan_with_two_more_iterations(monkeypatch):
    import world_models.tdmpc_agent as agent

    calls = []
    real = agent.estimate_value
    monkeypatch.setattr(agent, "estimate_value", lambda *a: calls.append(1) or real(*a))
    for action_dim, iterations in ((2, 4), (21, 6)):
        calls.clear()
        model = tdmpc(action_dim=action_dim)
        agent.plan(model, torch.full((1, 1, model.latent_dim), 1 / 8), torch.zeros(1, 1, 3, action_dim),
                   agent.plan_noise(model, 1, "cpu"), explore=False)
        assert len(calls) == iterations
