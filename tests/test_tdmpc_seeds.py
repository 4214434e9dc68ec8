"""Several seeds in one tdmpc model: each learns and plans bit for bit as it does alone."""

from __future__ import annotations

import pytest
import torch

from world_models.registry import make_world_model, world_model_config
from world_models.tdmpc_agent import plan, plan_noise


def seed_batch(seed: int, feature: str, size: int = 64, length: int = 4) -> dict[str, torch.Tensor]:
    """A batch that belongs to one seed (its own generator), as its replay would sample it."""
    g = torch.Generator().manual_seed(100 + seed)
    if feature == "pixels":
        obs = torch.randint(0, 256, (size, length, 3, 3, 64, 64), generator=g, dtype=torch.uint8)
    else:
        obs = torch.randn(size, length, 3, 5, generator=g)
    return {"obs": obs, "action": torch.rand(size, length, 2, generator=g) * 2 - 1,
            "reward": torch.rand(size, length, generator=g),
            "is_terminal": torch.rand(size, length, generator=g) < 0.1}


def train_and_plan(seeds: tuple[int, ...], feature: str, **settings):
    cfg = world_model_config("tdmpc", "xs", {"batch_size": 64, "num_samples": 64, "num_elites": 8,
                                             "num_pi_trajs": 4, **settings})
    shape = (3, 64, 64) if feature == "pixels" else (5,)
    model = make_world_model("tdmpc", cfg, feature, shape, 2, seeds=seeds).train()
    optimizers = model.make_optimizers()
    metrics = []
    for _ in range(3):
        batches = [seed_batch(seed, feature) for seed in seeds]
        stacked = {key: torch.stack([batch[key] for batch in batches]) for key in batches[0]}
        metrics.append(model.update(stacked, optimizers))
    model.eval()
    obs = torch.stack([seed_batch(seed, feature)["obs"][:2, 0] for seed in seeds])
    z = model.encode(obs)
    previous = torch.zeros(len(seeds), 2, cfg.horizon, 2)
    actions, means = plan(model, z, previous, plan_noise(model, 2, "cpu"), explore=True)
    return model, metrics, actions, means


@pytest.mark.parametrize("feature,settings", [("embedding", {}), ("pixels", {}), ("embedding", {"episodic": True})])
def test_a_seed_trained_beside_others_matches_the_seed_trained_alone(feature, settings):
    together, metrics, actions, means = train_and_plan((4, 7, 9), feature, **settings)
    alone, metrics_alone, actions_alone, means_alone = train_and_plan((7,), feature, **settings)
    for step, step_alone in zip(metrics, metrics_alone):
        assert step[1] == step_alone[0]
        assert step[0] != step[1]                   # the other seeds are different models
    torch.testing.assert_close(actions[1:2], actions_alone, rtol=0, atol=0)
    torch.testing.assert_close(means[1:2], means_alone, rtol=0, atol=0)
    state, state_alone = together.state_dict(), alone.state_dict()
    for name, value in state_alone.items():
        if name == "_extra_state":
            assert torch.equal(state[name]["noise"][1], value["noise"][0])
        elif name == "bins":
            assert torch.equal(state[name], value)
        else:
            assert torch.equal(state[name][1:2], value), name


def test_each_seed_is_initialised_from_its_own_seed():
    cfg = world_model_config("tdmpc", "xs", {})
    first = make_world_model("tdmpc", cfg, "embedding", (5,), 1, seeds=(0, 1))
    again = make_world_model("tdmpc", cfg, "embedding", (5,), 1, seeds=(1,))
    weight = first.encoder.linears[0].weight
    assert not torch.equal(weight[0], weight[1])
    assert torch.equal(weight[1:], again.encoder.linears[0].weight)


def test_one_seed_interfaces_refuse_a_model_of_several_seeds():
    from world_models.errors import WorldModelError

    cfg = world_model_config("tdmpc", "xs", {})
    model = make_world_model("tdmpc", cfg, "embedding", (5,), 1, seeds=(0, 1))
    with pytest.raises(WorldModelError, match="holds 2 seeds"):
        model.train_step(seed_batch(0, "embedding"), model.make_optimizers())
    with pytest.raises(WorldModelError, match="one seed per model"):
        make_world_model("dreamer", world_model_config("dreamer", "xs", {}), "embedding", (5,), 1, seeds=(0, 1))


def test_planning_inside_a_forked_stream_leaves_the_training_stream_where_it_was():
    from world_models.registry import make_agent

    cfg = world_model_config("tdmpc", "xs", {})
    agents = [make_agent(make_world_model("tdmpc", cfg, "embedding", (5,), 1, seeds=(3,))).eval() for _ in range(2)]
    obs, first = torch.randn(2, 5), torch.ones(2, dtype=torch.bool)
    with agents[0].forked_noise((11,)):
        evaluated, _ = agents[0].act(obs, agents[0].initial_state(2), first, explore=False)
    with agents[1].forked_noise((11,)):
        again, _ = agents[1].act(obs, agents[1].initial_state(2), first, explore=False)
    torch.testing.assert_close(evaluated, again, rtol=0, atol=0)     # the forked stream is the seed's alone
    after = agents[0].act(obs, agents[0].initial_state(2), first, explore=True)[0]
    never_forked = make_agent(make_world_model("tdmpc", cfg, "embedding", (5,), 1, seeds=(3,))).eval()
    torch.testing.assert_close(never_forked.act(obs, never_forked.initial_state(2), first, explore=True)[0], after,
                               rtol=0, atol=0)
