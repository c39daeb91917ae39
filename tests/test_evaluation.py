"""`latentplan.evaluation`: the one episode loop (`run_episode`) and PlaNet's agent as a controller
preset (`Agent`), pinned bit for bit to the agent loop they replaced."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch

import latentplan as lp
from latentplan import envs
from latentplan.evaluation import Agent, run_episode
from latentplan.planners import CEM, Objective
from latentplan.worldmodels import RSSMConfig, RSSMWorldModel


def _tiny_model(seed: int = 0) -> RSSMWorldModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return RSSMWorldModel(RSSMConfig(obs_shape=(5,), action_dim=1, deter=16, stoch=4, hidden=16, embed=16,
                                         action_low=(-1.0,), action_high=(1.0,)))


def _reference_episode(env, model, planner, *, seed, noise, generator, warm_start=False):
    """The filter-plan-act episode of the pre-refactor `Agent` / `run_episode` (latentplan/agent.py
    at commit 93a8f88), written out: per decision, the posterior sample, the plan and the noise
    are drawn from `generator` in that order."""
    obs, _ = env.reset(seed=seed)
    belief, last, first, last_plan = model.initial(1), torch.zeros(1, 1), True, None
    obs_list, actions, rewards, done = [obs], [np.zeros(1, np.float32)], [0.0], False
    while not done:
        with torch.no_grad():
            belief = model.observe(belief, last, torch.as_tensor(obs)[None], torch.tensor([first]), generator=generator)
        first = False
        warm = last_plan.shift() if (warm_start and last_plan is not None) else None
        plan = planner.plan(Objective(model), belief, warm_start=warm, generator=generator)
        last_plan = plan
        a = plan.first_action
        if noise > 0:
            a = a + noise * torch.randn(a.shape, generator=generator)
        last = torch.maximum(torch.minimum(a, model.action_high), model.action_low).detach()
        action = last[0].numpy().astype(np.float32)
        obs, r, term, trunc, _ = env.step(action)
        obs_list.append(obs)
        actions.append(action)
        rewards.append(float(r))
        done = term or trunc
    return np.stack(obs_list), np.stack(actions), np.asarray(rewards, np.float32)


@pytest.mark.parametrize("noise,warm_start", [(0.3, False), (0.0, True)])
def test_agent_episode_is_the_old_agent_loop_bit_for_bit(noise, warm_start):
    """Same model, planner, env seed and generator: the same observations, actions and rewards,
    and the generator left in the same state (the same random draws, in the same order)."""
    model, cem = _tiny_model(), CEM(horizon=3, iterations=2, candidates=16, elites=4)
    env = envs.make("dmc:cartpole-swingup", obs="state", seed=0)
    g_new, g_ref = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    episode, stats = run_episode(env, Agent(model, cem, warm_start=warm_start), seed=4, noise=noise, generator=g_new)
    obs, actions, rewards = _reference_episode(env, model, cem, seed=4, noise=noise, generator=g_ref,
                                               warm_start=warm_start)
    np.testing.assert_array_equal(episode["obs"], obs)
    np.testing.assert_array_equal(episode["action"], actions)
    np.testing.assert_array_equal(episode["reward"], rewards)
    assert torch.equal(g_new.get_state(), g_ref.get_state())
    assert stats.decisions == 125 and stats.env_steps == 1000  # cartpole: 1000 steps, action repeat 8
    assert stats.ret == pytest.approx(float(rewards.sum()), rel=1e-6)
    assert stats.model_evals == 2 * 16 * 3


def test_random_episodes_draw_uniform_actions_from_the_generator():
    env = envs.make("dmc:cartpole-swingup", obs="state", seed=0)
    episode, stats = run_episode(env, None, seed=2, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    expected = np.stack([(torch.rand(1, generator=g) * 2 - 1).numpy() for _ in range(125)])
    np.testing.assert_array_equal(episode["action"][1:], expected.astype(np.float32))
    assert episode["is_first"].tolist() == [True] + [False] * 125
    assert (stats.plan_ms, stats.model_evals) == (0.0, 0.0)


def test_max_decisions_and_the_controllers_statistics_cover_one_episode():
    model, cem = _tiny_model(), CEM(horizon=3, iterations=2, candidates=16, elites=4)
    env = envs.make("dmc:cartpole-swingup", obs="state", seed=0)
    agent = Agent(model, cem)
    for _ in range(2):  # statistics are zeroed per episode
        episode, stats = run_episode(env, agent, seed=1, max_decisions=4)
        assert stats.decisions == 4 and stats.env_steps == 32 and len(episode["obs"]) == 5
        s = agent.stats()
        assert (s.steps, s.planned, s.fallbacks) == (4, 4, 0) and len(agent.latencies_ms) == 4
    # without a generator the controller's own seeded generators act: two fresh agents agree
    a = run_episode(env, Agent(model, cem, seed=3), seed=1, max_decisions=6)[0]["action"]
    b = run_episode(env, Agent(model, cem, seed=3), seed=1, max_decisions=6)[0]["action"]
    np.testing.assert_array_equal(a, b)


def test_agent_rejects_bad_observations_instead_of_predicting():
    agent = Agent(_tiny_model(), CEM(horizon=2, iterations=1, candidates=4, elites=2))
    with pytest.raises(ValueError, match="NaN"):
        agent.act(np.array([0.0, float("nan"), 0.0, 0.0, 0.0], np.float32))
    with pytest.raises(ValueError, match="missing"):
        agent.filter(None)
    assert agent.stats().observation_failures == 0
    assert isinstance(agent, lp.MPCController) and lp.Agent is Agent and lp.run_episode is run_episode


def test_there_is_one_episode_loop():
    """Training, compare and distillation step environments only through `run_episode`."""
    root = Path(lp.__file__).parent
    stepping = sorted(str(p.relative_to(root)) for p in root.rglob("*.py")
                      if re.search(r"\benv\.step\(", p.read_text()))
    assert stepping == ["evaluation.py"]
    for name in ("training.py", "compare.py", "distillation.py"):
        assert "run_episode(" in (root / name).read_text()
