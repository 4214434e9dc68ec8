"""DreamerV3's pieces against the reference's definitions: block GRU, LaProp, imagination weights,
the actor's gradient, zero-initialised predictions, and resumable agent updates."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from world_models.dreamer import BlockLinear
from world_models.dreamer_agent import imagination_weights, lambda_returns
from world_models.optimizers import LaProp
from world_models.registry import make_agent, make_world_model, world_model_config


def make(actor_grad="reinforce", discrete=False, **settings):
    cfg = world_model_config("dreamer", "xs", {"sequence_length": 8, "batch_size": 4, "actor_grad": actor_grad,
                                               **settings})
    return make_agent(make_world_model("dreamer", cfg, "embedding", (6,), 2, discrete))


def batch_for(agent, seed=0):
    generator = torch.Generator().manual_seed(seed)
    cfg = agent.cfg
    shape = (cfg.batch_size, cfg.sequence_length)
    if agent.discrete:
        action = F.one_hot(torch.randint(2, shape, generator=generator), 2).float()
    else:
        action = torch.rand(*shape, 2, generator=generator) * 2 - 1
    terminal = torch.zeros(shape, dtype=torch.bool)
    terminal[0, -1] = True
    return {"obs": torch.randn(*shape, 6, generator=generator), "action": action, "prev_action": action,
            "reward": torch.randn(shape, generator=generator), "is_first": torch.zeros(shape, dtype=torch.bool),
            "is_terminal": terminal}


def test_block_linear_is_a_block_diagonal_linear_map():
    torch.manual_seed(0)
    layer = BlockLinear(3, 4, 2)
    x = torch.randn(5, 12)
    dense = torch.block_diag(*layer.weight)                  # (12, 6)
    torch.testing.assert_close(layer(x.unflatten(-1, (3, 4))).flatten(-2), x @ dense + layer.bias.flatten())


def test_block_linear_with_a_shared_input_equals_it_on_the_concatenation():
    torch.manual_seed(0)
    layer = BlockLinear(3, 2 + 5, 4)
    own, shared = torch.randn(6, 3, 2), torch.randn(6, 5)
    joined = torch.cat([own, shared.unsqueeze(-2).expand(6, 3, 5)], -1)
    torch.testing.assert_close(layer.with_shared(own, shared), layer(joined).flatten(-2))


def test_block_gru_keeps_the_state_by_default_and_bounds_actions():
    torch.manual_seed(0)
    rssm = make().world_model.rssm
    deter, stoch = torch.randn(3, rssm.cfg.deter), torch.rand(3, rssm.feat_dim - rssm.cfg.deter)
    with torch.no_grad():
        rssm.gru_gates.weight.zero_()
        rssm.gru_gates.bias.zero_()
    # All gates at 0: no candidate, and the update gate's bias -1 keeps sigmoid(1) of the old state.
    torch.testing.assert_close(rssm.core(deter, stoch, torch.zeros(3, 2)), torch.sigmoid(torch.tensor(1.0)) * deter)

    rssm = make().world_model.rssm
    big, clipped, inside = (torch.tensor([[v, -0.5]] * 3) for v in (3.0, 1.0, 0.5))
    torch.testing.assert_close(rssm.core(deter, stoch, big), rssm.core(deter, stoch, clipped))
    assert not torch.allclose(rssm.core(deter, stoch, inside), rssm.core(deter, stoch, clipped))


def reference_laprop(param, grads, lr, warmup, agc=0.3, b1=0.9, b2=0.999, eps=1e-20):
    """danijar/dreamerv3's optax chain in numpy: clip_by_agc, scale_by_rms, scale_by_momentum,
    then the warm-up schedule (optax counts from 0)."""
    nu, mu = np.zeros_like(param), np.zeros_like(param)
    for count, grad in enumerate(grads):
        step = count + 1
        grad = grad / max(1.0, np.linalg.norm(grad) / (agc * max(1e-3, np.linalg.norm(param))))
        nu = b2 * nu + (1 - b2) * grad ** 2
        update = grad / (np.sqrt(nu / (1 - b2 ** step)) + eps)
        mu = b1 * mu + (1 - b1) * update
        param = param - lr * min(count / warmup, 1.0) * mu / (1 - b1 ** step)
    return param


def test_laprop_follows_the_reference_chain_with_clipping_and_warm_up():
    rng = np.random.default_rng(0)
    start = rng.normal(size=(4, 3))
    # Gradient scales from tiny to far beyond the clip (0.3 * |param| ~ 1).
    grads = [rng.normal(size=(4, 3)) * scale for scale in (1e-3, 0.1, 50.0, 1.0, 1e4, 0.5)]
    param = torch.nn.Parameter(torch.tensor(start))
    optimizer = LaProp([param], lr=0.1, warmup=4)
    for grad in grads:
        param.grad = torch.tensor(grad)
        optimizer.step()
    np.testing.assert_allclose(param.detach().numpy(), reference_laprop(start, grads, 0.1, 4), rtol=1e-10)
    # The first update is at learning rate 0 (the warm-up starts there).
    param = torch.nn.Parameter(torch.tensor(start))
    param.grad = torch.tensor(grads[0])
    LaProp([param], lr=0.1, warmup=4).step()
    assert torch.equal(param.detach(), torch.tensor(start))


def test_laprop_state_round_trips_and_the_warm_up_continues():
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    optimizer = LaProp(net.parameters(), lr=0.01, warmup=10)
    x = torch.randn(8, 3)

    def steps(net, optimizer, count):
        for _ in range(count):
            optimizer.zero_grad()
            net(x).pow(2).sum().backward()
            optimizer.step()

    steps(net, optimizer, 3)
    saved_net, saved_state = copy.deepcopy(net.state_dict()), copy.deepcopy(optimizer.state_dict())
    steps(net, optimizer, 4)
    again = torch.nn.Linear(3, 2)
    again.load_state_dict(saved_net)
    resumed = LaProp(again.parameters(), lr=0.01, warmup=10)
    resumed.load_state_dict(saved_state)
    steps(again, resumed, 4)
    for a, b in zip(net.parameters(), again.parameters()):
        assert torch.equal(a, b)
    assert resumed.state_dict()["state"][0]["step"] == 7
    # A fresh optimizer (warm-up from the start) takes other steps from the same weights.
    fresh = torch.nn.Linear(3, 2)
    fresh.load_state_dict(saved_net)
    steps(fresh, LaProp(fresh.parameters(), lr=0.01, warmup=10), 4)
    assert not torch.equal(fresh.weight, net.weight)


def test_imagination_weights_include_the_start_state_and_lambda_returns_recurse():
    cont = torch.tensor([[0.5], [1.0], [0.25]])
    torch.testing.assert_close(imagination_weights(cont, 0.9), torch.tensor([[0.5], [0.45], [0.10125]]))
    reward, value = torch.tensor([[1.0], [2.0]]), torch.tensor([[0.0], [10.0], [20.0]])
    last = 2.0 + 0.9 * 0.25 * 20.0
    first = 1.0 + 0.9 * 1.0 * (0.5 * 10.0 + 0.5 * last)
    torch.testing.assert_close(lambda_returns(reward, cont[1:], value, 0.9, 0.5), torch.tensor([[first], [last]]))


@pytest.mark.parametrize("discrete", [False, True], ids=["continuous", "discrete"])
def test_fresh_heads_predict_zero_and_the_actor_starts_near_uniform(discrete):
    torch.manual_seed(0)
    agent = make(discrete=discrete)
    feat = torch.randn(5, agent.world_model.rssm.feat_dim) * 3
    assert agent.world_model.predicted_reward(feat).abs().max() < 1e-6
    assert agent.critic_value(feat).abs().max() < 1e-6
    dist = agent.policy(feat)
    if discrete:
        torch.testing.assert_close(dist.probs, torch.full((5, 2), 0.5), atol=0.02, rtol=0)
    else:
        assert dist.base_dist.loc.abs().max() < 0.05   # output scale 0.01
        torch.testing.assert_close(dist.base_dist.scale, torch.full((5, 2), 0.1 + 0.9 * torch.sigmoid(torch.tensor(2.0)).item()),
                                   atol=0.02, rtol=0)


@pytest.mark.parametrize("actor_grad,discrete", [("reinforce", False), ("reinforce", True), ("dynamics", False),
                                                 ("dynamics", True)])
def test_the_actor_loss_trains_only_the_actor(actor_grad, discrete):
    torch.manual_seed(0)
    agent = make(actor_grad, discrete, actor_entropy=0.0)
    with torch.no_grad():   # non-zero rewards and values, so that advantages are not all zero
        for head in (agent.world_model.reward_head[-1], agent.critic[-1]):
            head.weight.normal_(0.0, 0.1)
    losses, _ = agent.losses(batch_for(agent))
    wm, critic, actor = (list(m.parameters()) for m in (agent.world_model, agent.critic, agent.actor))
    grads = torch.autograd.grad(losses["policy"], wm + critic + actor, allow_unused=True, retain_graph=True)
    assert all(g is None for g in grads[:len(wm) + len(critic)])
    # Without the entropy bonus the actor learns only from the advantages: through the log-probability
    # (reinforce) or through the imagined actions, the frozen model and critic (dynamics).
    assert sum(g.abs().sum() for g in grads[len(wm) + len(critic):]) > 0
    # Imagination and the critic's losses leave the world model to its own loss and the replay value loss.
    total = losses["model"] + losses["policy"] + losses["value"] + agent.cfg.repval_scale * losses["repval"]
    expected = torch.autograd.grad(losses["model"] + agent.cfg.repval_scale * losses["repval"], wm, retain_graph=True)
    total.backward()
    for param, grad in zip(wm, expected):
        torch.testing.assert_close(param.grad, grad)


def test_backprop_imagination_reaches_later_states_through_actions_only():
    torch.manual_seed(0)
    agent = make("dynamics")
    deter, stoch = agent.world_model.rssm.initial(3)
    deter = (deter + 0.1).requires_grad_()
    feats, actions = agent.imagine(deter, stoch, differentiable=True)
    # The actor's input is stopped: a later action does not depend on the start through the
    # state the actor saw, but later states depend on the actor's parameters through its actions.
    assert torch.autograd.grad(actions[1].sum(), deter, retain_graph=True, allow_unused=True)[0] is None
    assert torch.autograd.grad(feats[2].sum(), agent.actor[0][0].weight)[0].abs().sum() > 0


def test_the_replay_value_loss_trains_the_critic_and_the_representation():
    torch.manual_seed(0)
    agent = make()
    with torch.no_grad():   # a zero output layer passes no gradient back; after the first updates it does
        agent.critic[-1].weight.normal_(0.0, 0.1)
    losses, _ = agent.losses(batch_for(agent))
    encoder = list(agent.world_model.encoder.parameters())
    grads = torch.autograd.grad(losses["repval"], list(agent.critic.parameters()) + encoder)
    assert all(g.abs().sum() > 0 for g in grads)


def test_an_agent_resumed_from_its_state_takes_the_same_updates():
    def train(agent, optimizers, seeds):
        for seed in seeds:
            agent.train_step(batch_for(agent, seed), optimizers)

    torch.manual_seed(0)
    agent = make(warmup=5)
    optimizers = agent.make_optimizers()
    train(agent, optimizers, range(2))
    saved = copy.deepcopy({"agent": agent.state_dict(), "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
                           "rng": torch.get_rng_state()})
    train(agent, optimizers, range(2, 4))
    resumed = make(warmup=5)
    resumed.load_state_dict(saved["agent"])
    resumed_optimizers = resumed.make_optimizers()
    for name, optimizer in resumed_optimizers.items():
        optimizer.load_state_dict(saved["optimizers"][name])
    torch.set_rng_state(saved["rng"])
    train(resumed, resumed_optimizers, range(2, 4))
    for (name, a), b in zip(agent.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    # The updates after the save did move the actor, the critic's slow copy and the world model.
    for name in ("actor.3.weight", "slow_critic.3.weight", "world_model.rssm.gru_gates.weight"):
        assert not torch.equal(agent.state_dict()[name], saved["agent"][name]), name


def test_the_pixel_reconstruction_loss_is_the_per_frame_squared_error_and_leaves_the_batch_alone():
    cfg = world_model_config("dreamer", "xs", {"sequence_length": 4, "batch_size": 2})
    torch.manual_seed(0)
    model = make_world_model("dreamer", cfg, "pixels", (3, 64, 64), 1)
    generator = torch.Generator().manual_seed(0)
    shape = (cfg.batch_size, cfg.sequence_length)
    obs = torch.randint(0, 256, (*shape, 3, 64, 64), dtype=torch.uint8, generator=generator)
    batch = {"obs": obs.clone(), "prev_action": torch.rand(*shape, 1, generator=generator) * 2 - 1,
             "reward": torch.rand(shape, generator=generator), "is_first": torch.zeros(shape, dtype=torch.bool),
             "is_terminal": torch.zeros(shape, dtype=torch.bool)}
    _, metrics, states = model.loss(batch)
    assert torch.equal(batch["obs"], obs)
    target = obs.float() / 255.0 - 0.5
    assert torch.equal(model.reconstruction_target(obs), target)
    with torch.no_grad():
        per_frame = (model.decoder(states["feat"]) - target).pow(2).flatten(2).sum(-1)
    assert metrics["reconstruction"] == pytest.approx(float(per_frame.mean()), rel=1e-5)
    assert model.decoder(states["feat"]).is_contiguous()


@pytest.mark.slow
def test_compiled_rssm_steps_compute_what_the_eager_ones_do():
    """`--compile`: the same losses, weights and actions as eager (sampling stays eager, so every
    random number is eager's; inductor only rounds differently)."""
    seen = []
    for compiled in (False, True):
        torch.manual_seed(0)
        agent = make()
        if compiled:
            agent.compile()
        optimizers = agent.make_optimizers()
        torch.manual_seed(1)
        metrics = [agent.train_step(batch_for(agent, seed), optimizers) for seed in range(3)]
        action, _ = agent.act(batch_for(agent)["obs"][:2, 0], agent.initial_state(2),
                              torch.ones(2, dtype=torch.bool), explore=False)
        seen.append((metrics, action, agent.state_dict()))
    (eager_metrics, eager_action, eager_state), (metrics, action, state) = seen
    for eager_row, row in zip(eager_metrics, metrics):
        assert row == pytest.approx(eager_row, rel=1e-3, abs=1e-5)
    torch.testing.assert_close(action, eager_action, atol=1e-4, rtol=0)
    for name, value in eager_state.items():
        torch.testing.assert_close(state[name], value, atol=1e-5, rtol=1e-4, msg=name)
