"""PlaNet's six tasks as presets and Gymnasium ids; Gymnasium's own `check_env` on every env and wrapper shipped."""

import warnings

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from latentplan.envs import (
    PLANET_TASKS,
    ActionRepeat,
    FlatObservation,
    LinearQuadratic,
    NormalizeActions,
    PlanningEnv,
    gym_id,
    make,
    resolve_tasks,
)

# warnings check_env gives for any wrapped env, and for dm_control's unbounded (-inf, inf) observations
EXPECTED = ("is different from the unwrapped version", "infinity", "symmetric and normalized space")


def checked(env, **kwargs):
    """Run Gymnasium's check_env; return the warnings it gave beyond the expected ones."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env, **kwargs)
    return [str(w.message) for w in caught if not any(e in str(w.message) for e in EXPECTED)]


@pytest.mark.parametrize("name", list(PLANET_TASKS))
def test_check_env_passes_on_each_planet_task(name):
    env = make(name)
    assert checked(env) == []
    assert env.action_repeat == PLANET_TASKS[name]
    assert env.spec.entry_point == "latentplan.envs.registry:make" and env.spec.kwargs["name"] == name


def test_planet_repeats_are_the_papers():
    assert list(PLANET_TASKS.values()) == [8, 4, 4, 2, 4, 2]
    assert [n.partition(":")[2] for n in PLANET_TASKS] == [
        "cartpole-swingup", "reacher-easy", "cheetah-run", "finger-spin", "ball_in_cup-catch", "walker-walk"]


def test_check_env_passes_on_gym_pendulum_and_its_spec_rebuilds_it():
    # the failure reported in issue 18: ActionRepeat did not record its arguments
    env = make("gym:Pendulum-v1", action_repeat=3, seed=5)
    assert checked(env, skip_render_check=True) == []  # Pendulum's renderer needs pygame, not a dependency
    again = env.spec.make()
    assert again.action_repeat == 3 and again.env_name == "gym:Pendulum-v1"
    fresh = make("gym:Pendulum-v1", action_repeat=3, seed=5)
    a, b = fresh.reset()[0], again.reset()[0]
    np.testing.assert_array_equal(a, b)  # the same seed (5) came through the spec
    env = fresh
    act = np.array([0.5], np.float32)
    np.testing.assert_array_equal(env.step(act)[0], again.step(act)[0])


def test_check_env_on_linear_quadratic():
    assert checked(LinearQuadratic()) == [
        "\x1b[33mWARN: Not able to test alternative render modes due to the environment not having a spec. "
        "Try instantiating the environment through `gymnasium.make`\x1b[0m"]


def test_each_wrapper_alone_records_its_arguments_and_passes_check_env():
    base = gymnasium.make("Pendulum-v1")
    stacked = PlanningEnv(
        NormalizeActions(FlatObservation(ActionRepeat(base, 2), name="pendulum")),
        env_name="pendulum", action_repeat=2, max_episode_steps=100, obs_slices={"observation": slice(0, 3)}, seed=1,
    )
    assert checked(stacked, skip_render_check=True) == []
    names = [w.name for w in stacked.spec.additional_wrappers]
    assert names[-4:] == ["ActionRepeat", "FlatObservation", "NormalizeActions", "PlanningEnv"]
    assert stacked.spec.additional_wrappers[-4].kwargs == {"repeat": 2}
    rebuilt = stacked.spec.make()  # Gymnasium rebuilds the stack from the recorded arguments
    assert isinstance(rebuilt, PlanningEnv) and rebuilt.action_repeat == 2
    np.testing.assert_array_equal(rebuilt.reset(seed=1)[0], stacked.reset(seed=1)[0])


@pytest.mark.parametrize("name", ["dmc:cartpole-swingup", "dmc:walker-walk"])
def test_gymnasium_make_gives_the_same_env_as_make(name):
    env = gymnasium.make(gym_id(name), seed=3)
    mine = make(name, seed=3)
    assert env.spec.max_episode_steps == mine.max_episode_steps == 1000 // PLANET_TASKS[name]
    assert env.observation_space == mine.observation_space and env.action_space == mine.action_space
    np.testing.assert_array_equal(env.reset()[0], mine.reset()[0])
    act = np.full(env.action_space.shape, 0.3, np.float32)
    a, b = env.step(act), mine.step(act)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1] == b[1] and a[4]["env_steps"] == PLANET_TASKS[name]
    assert checked(env) == []


def test_gymnasium_pixels_through_the_id():
    env = gymnasium.make("latentplan/cartpole-swingup-v0", obs="pixels", image_size=16)
    obs, info = env.reset()
    assert obs.shape == (3, 16, 16) and obs.dtype == np.uint8 and info["state"].shape == (5,)


def test_vector_env_steps_each_copy_like_a_single_env():
    vec = gymnasium.make_vec("latentplan/reacher-easy-v0", num_envs=2, vectorization_mode="sync")
    obs, _ = vec.reset(seed=[4, 9])
    singles = [make("dmc:reacher-easy", seed=s) for s in (4, 9)]
    np.testing.assert_array_equal(obs, np.stack([e.reset()[0] for e in singles]))
    actions = np.array([[0.2, -0.5], [-1.0, 0.7]], np.float32)
    obs, reward, *_ = vec.step(actions)
    for i, e in enumerate(singles):
        o, r, *_ = e.step(actions[i])
        np.testing.assert_array_equal(obs[i], o)
        assert reward[i] == pytest.approx(r, abs=0)


def test_resolve_tasks():
    assert resolve_tasks("planet6") == tuple(PLANET_TASKS)
    assert resolve_tasks(["cartpole-swingup", "dmc:cartpole-swingup", "gym:Pendulum-v1"]) == (
        "dmc:cartpole-swingup", "gym:Pendulum-v1")
    with pytest.raises(ValueError, match="planet6"):
        resolve_tasks(["cartpol"])
    with pytest.raises(ValueError, match="no tasks"):
        resolve_tasks([])
    with pytest.raises(ValueError, match="registered presets"):
        gym_id("dmc:acrobot-swingup")
