"""Tests for latentplan.envs: make() over dm_control / Gymnasium, and LinearQuadratic."""

import os

import gymnasium
import numpy as np
import pytest
from gymnasium import spaces

from latentplan.envs import (
    PLANET_ACTION_REPEAT,
    FlatObservation,
    LinearQuadratic,
    available_envs,
    make,
)

CARTPOLE = "dmc:cartpole-swingup"


def raw_dmc(domain, task, seed):
    from dm_control import suite

    return suite.load(domain, task, task_kwargs={"random": seed})


def flat(dm_obs):
    return np.concatenate([np.ravel(v) for v in dm_obs.values()]).astype(np.float32)


class _Toy(gymnasium.Env):
    """Tiny env without rgb_array rendering; emits NaN observations when asked."""

    metadata = {"render_modes": []}

    def __init__(self, nan_at_step=False):
        self.observation_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.action_space = spaces.Box(0.0, 4.0, (1,), np.float32)
        self.nan_at_step = nan_at_step

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(2, np.float32), {}

    def step(self, action):
        obs = np.full(2, np.nan if self.nan_at_step else 0.0, np.float32)
        return obs, 0.0, False, False, {}


class _BrokenRenderer(_Toy):
    """Declares rgb_array rendering but cannot render (as Pendulum without pygame)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(self, render_mode=None):
        super().__init__()
        self.render_mode = render_mode

    def render(self):
        raise ImportError("pygame is not installed")


if "LatentplanBrokenRenderer-v0" not in gymnasium.registry:
    gymnasium.register("LatentplanBrokenRenderer-v0", entry_point=_BrokenRenderer, max_episode_steps=10)

if "LatentplanToy-v0" not in gymnasium.registry:
    gymnasium.register("LatentplanToy-v0", entry_point=_Toy, max_episode_steps=10)


# ---------------------------------------------------------------- make: dm_control


def test_cartpole_state_spaces_and_attributes():
    env = make(CARTPOLE)
    assert isinstance(env, gymnasium.Env)
    assert env.observation_space == spaces.Box(-np.inf, np.inf, (5,), np.float32)
    assert env.action_space == spaces.Box(-1.0, 1.0, (1,), np.float32)
    assert (env.env_name, env.action_repeat, env.max_episode_steps) == (CARTPOLE, 8, 125)
    obs, info = env.reset()
    assert obs.shape == (5,) and obs.dtype == np.float32
    assert np.array_equal(info["state"], obs) and info["env_steps"] == 0
    obs, reward, terminated, truncated, info = env.step(np.zeros(1, np.float32))
    assert obs in env.observation_space and isinstance(reward, float)
    assert info["env_steps"] == 8 and not (terminated or truncated)
    assert PLANET_ACTION_REPEAT["cartpole"] == 8
    assert make("dmc:walker-walk").action_repeat == 2
    assert make("dmc:acrobot-swingup").action_repeat == 2  # not a PlaNet domain
    assert make("gym:Pendulum-v1").action_repeat == 1


def test_action_repeat_matches_raw_dm_control_over_full_episode():
    env, raw = make(CARTPOLE, seed=3), raw_dmc("cartpole", "swingup", 3)
    obs, _ = env.reset()
    assert np.array_equal(obs, flat(raw.reset().observation))
    actions = np.random.default_rng(0).uniform(-1, 1, (125, 1))
    for k, a in enumerate(actions):
        obs, reward, terminated, truncated, info = env.step(a)
        steps = [raw.step(a) for _ in range(8)]
        assert reward == pytest.approx(sum(ts.reward for ts in steps), rel=1e-12, abs=1e-12)
        assert np.array_equal(obs, flat(steps[-1].observation))
        assert not terminated and truncated == (k == 124)
    assert steps[-1].last() and info["env_steps"] == 8
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(1))  # dm_control would silently start a new episode here


def test_last_decision_is_cut_short():
    env = make(CARTPOLE, action_repeat=3)
    assert env.max_episode_steps == 334  # ceil(1000 / 3)
    env.reset()
    for _ in range(333):
        *_, truncated, info = env.step([0.0])
        assert not truncated and info["env_steps"] == 3
    *_, truncated, info = env.step([0.0])
    assert truncated and info["env_steps"] == 1


def test_step_before_reset_raises():
    with pytest.raises(RuntimeError, match="reset"):
        make(CARTPOLE).step([0.0])


@pytest.mark.parametrize("name", [CARTPOLE, "gym:Pendulum-v1"])
def test_seeding(name):
    first = lambda seed: make(name, seed=seed).reset()[0]  # noqa: E731
    assert np.array_equal(first(1), first(1))
    assert not np.array_equal(first(1), first(2))
    env = make(name, seed=1)
    env.reset()
    second_episode = env.reset()[0]
    assert not np.array_equal(second_episode, first(1))  # the stream continues
    env2 = make(name, seed=1)
    env2.reset()
    assert np.array_equal(env2.reset()[0], second_episode)  # ... reproducibly
    assert np.array_equal(env.reset(seed=2)[0], first(2))  # reset(seed=k) reseeds


def test_cartpole_slices_and_aliases_are_physical():
    slices = make(CARTPOLE).obs_slices
    assert slices["position"] == slice(0, 3) and slices["velocity"] == slice(3, 5)
    for alias, i in dict(cart_x=0, pole_cos=1, pole_sin=2, cart_vel=3, pole_angvel=4).items():
        assert slices[alias] == slice(i, i + 1)
    up, _ = make("dmc:cartpole-balance").reset()  # balance starts near upright
    down, _ = make(CARTPOLE).reset()  # swingup starts hanging down
    assert up[slices["pole_cos"]][0] > 0.99 and down[slices["pole_cos"]][0] < -0.99

    env = make(CARTPOLE, seed=5)
    env.reset()
    physics = env.unwrapped.physics
    for a in np.linspace(-1, 1, 10):
        obs, *_ = env.step([a])
        angle = physics.named.data.qpos["hinge_1"][0]
        assert obs[slices["pole_cos"]][0] ** 2 + obs[slices["pole_sin"]][0] ** 2 == pytest.approx(1, abs=1e-5)
        assert obs[slices["pole_cos"]][0] == pytest.approx(np.cos(angle), abs=1e-6)
        assert obs[slices["pole_sin"]][0] == pytest.approx(np.sin(angle), abs=1e-6)
        assert obs[slices["cart_x"]][0] == pytest.approx(physics.named.data.qpos["slider"][0], abs=1e-6)
        assert obs[slices["cart_vel"]][0] == pytest.approx(physics.named.data.qvel["slider"][0], abs=1e-5)
        assert obs[slices["pole_angvel"]][0] == pytest.approx(physics.named.data.qvel["hinge_1"][0], abs=1e-5)


def test_flattening_keeps_dm_control_order():
    # Gymnasium's Dict space sorts keys (height, orientations, velocity); dm_control's order wins.
    env, raw = make("dmc:walker-walk", seed=0), raw_dmc("walker", "walk", 0)
    assert list(env.obs_slices) == ["orientations", "height", "velocity"]
    obs, _ = env.reset()
    dm_obs = raw.reset().observation
    for key, value in dm_obs.items():
        assert np.array_equal(obs[env.obs_slices[key]], np.ravel(value).astype(np.float32))


def test_out_of_range_actions_are_clipped():
    a, b = make(CARTPOLE), make(CARTPOLE)
    a.reset(), b.reset()
    assert np.array_equal(a.step([5.0])[0], b.step([1.0])[0])
    assert np.array_equal(a.step([-7.0])[0], b.step([-1.0])[0])


def test_physics_divergence_names_env():
    env = make(CARTPOLE)
    env.reset()
    env.unwrapped.physics.data.qvel[:] = np.nan
    with pytest.raises(RuntimeError, match=CARTPOLE):
        env.step([0.0])


def test_non_finite_observation_raises():
    env = FlatObservation(_Toy(nan_at_step=True), name="toy")
    env.reset()
    with pytest.raises(RuntimeError, match="toy.*non-finite"):
        env.step(np.zeros(1, np.float32))


def test_available_envs():
    from dm_control import suite

    names = available_envs()
    assert "dmc:cartpole-swingup" in names and "dmc:ball_in_cup-catch" in names
    assert len(names) == len(suite.ALL_TASKS)


# ---------------------------------------------------------------- make: errors


def test_bad_names_list_what_is_available():
    with pytest.raises(ValueError, match="dmc:.*gym:"):
        make("cartpole-swingup")
    with pytest.raises(ValueError, match="dmc:"):
        make("mujoco:cartpole-swingup")
    for bad in ("dmc:cartpole-jump", "dmc:nope-walk", "dmc:cartpole"):
        with pytest.raises(ValueError, match="dmc:cartpole-swingup.*dmc:walker-walk"):
            make(bad)
    with pytest.raises(ValueError, match="Pendulum-v1"):
        make("gym:Pendulum-v9")


def test_bad_arguments():
    with pytest.raises(ValueError, match="'state'.*'pixels'"):
        make(CARTPOLE, obs="rgb")
    with pytest.raises(ValueError, match="action_repeat"):
        make(CARTPOLE, action_repeat=0)
    with pytest.raises(ValueError, match="image_size"):
        make(CARTPOLE, obs="pixels", image_size=0)
    with pytest.raises(ValueError, match="rgb_array"):
        make("gym:LatentplanToy-v0", obs="pixels")


def test_pixels_from_a_gym_env_that_cannot_render_fail_in_make():
    for kwargs in ({"obs": "pixels"}, {"render_mode": "rgb_array"}):
        with pytest.raises(ValueError, match=r"LatentplanBrokenRenderer-v0 cannot render.*pygame is not installed"):
            make("gym:LatentplanBrokenRenderer-v0", **kwargs)
    assert make("gym:LatentplanBrokenRenderer-v0").reset(seed=0)[0].shape == (2,)  # state needs no renderer


def test_seed_must_be_an_unsigned_32_bit_int_or_none():
    for bad, match in ((-1, r"\[0, 2\*\*32 - 1\].*got -1"), (2**32, "got 4294967296"), (1.5, "float"),
                       ("a", "str"), (True, "bool")):
        with pytest.raises(ValueError, match=match):
            make(CARTPOLE, seed=bad)
    with pytest.raises(ValueError, match="seed"):
        make("gym:Pendulum-v1", seed=-1)
    # numpy ints are ints: the same first observation as the Python int
    assert np.array_equal(make(CARTPOLE, seed=np.int64(3)).reset()[0], make(CARTPOLE, seed=3).reset()[0])


def test_bad_actions():
    env = make(CARTPOLE)
    env.reset()
    for bad in (np.zeros(2), np.zeros((1, 1)), 0.0):
        with pytest.raises(ValueError, match=r"\(1,\)"):
            env.step(bad)
    for bad in ([np.nan], [np.inf], [-np.inf]):
        with pytest.raises(ValueError, match="NaN or inf"):
            env.step(bad)
    obs, *_ = env.step([0.0])  # the env is still usable after rejected actions
    assert obs.shape == (5,)


# ---------------------------------------------------------------- make: gym


def test_gym_pendulum_rescales_to_torque():
    env = make("gym:Pendulum-v1")
    assert env.action_space == spaces.Box(-1.0, 1.0, (1,), np.float32)
    assert env.obs_slices == {"observation": slice(0, 3)}
    assert env.max_episode_steps == 200
    env.reset()
    for a, torque in ((0.5, 1.0), (-1.0, -2.0), (1.0, 2.0), (0.0, 0.0), (3.0, 2.0)):
        env.step([a])
        assert env.unwrapped.last_u == pytest.approx(torque)


def test_gym_affine_rescaling_of_asymmetric_bounds():
    env = make("gym:LatentplanToy-v0")  # bounds [0, 4]
    env.reset()
    inner = env.unwrapped
    seen = []
    inner.step = lambda u: (seen.append(np.array(u)), _Toy.step(inner, u))[1]
    for a in (-1.0, 0.0, 0.5, 1.0):
        env.step([a])
    assert np.allclose(np.concatenate(seen), [0.0, 2.0, 3.0, 4.0])


# ---------------------------------------------------------------- make: pixels


def test_pixels_cartpole():
    env = make(CARTPOLE, obs="pixels", image_size=64)
    assert env.observation_space == spaces.Box(0, 255, (3, 64, 64), np.uint8)
    obs0, info = env.reset()
    assert obs0.shape == (3, 64, 64) and obs0.dtype == np.uint8
    assert info["state"].shape == (5,) and info["state"].dtype == np.float32
    assert env.obs_slices["pole_cos"] == slice(1, 2) and info["state"][1] < -0.99
    for _ in range(5):
        obs, _, _, _, info = env.step([1.0])
    assert np.abs(obs.astype(int) - obs0).sum() > 1000  # the cart moved: a different image
    assert not np.array_equal(info["state"], make(CARTPOLE).reset()[0])


def test_pixel_frames_are_resized_to_chw():
    color = np.array([10, 20, 30], np.uint8)
    env = FlatObservation(
        _Toy(), pixels=True, image_size=16, render_fn=lambda: np.tile(color, (100, 80, 1)), name="toy"
    )
    assert env.observation_space == spaces.Box(0, 255, (3, 16, 16), np.uint8)
    obs, info = env.reset()
    assert obs.shape == (3, 16, 16) and obs.dtype == np.uint8
    assert np.array_equal(obs, np.broadcast_to(color[:, None, None], (3, 16, 16)))
    assert np.array_equal(info["state"], np.zeros(2, np.float32))


# ---------------------------------------------------------------- LinearQuadratic


def test_lq_defaults():
    env = LinearQuadratic()
    assert isinstance(env, gymnasium.Env)
    assert np.array_equal(env.A, [[1, 0.1], [0, 1]]) and np.array_equal(env.B, [[0.005], [0.1]])
    assert np.array_equal(env.Q, np.eye(2)) and np.array_equal(env.R, [[0.1]])
    assert all(m.dtype == np.float64 for m in (env.A, env.B, env.Q, env.R))
    assert env.observation_space.shape == (2,) and env.observation_space.dtype == np.float32
    assert env.action_space.shape == (1,) and env.obs_slices == {"x": slice(0, 2)}
    obs, _ = env.reset()
    assert obs.dtype == np.float32 and np.all(np.abs(obs) <= 1.0)
    assert np.array_equal(LinearQuadratic(seed=4).reset()[0], LinearQuadratic(seed=4).reset()[0])
    assert not np.array_equal(LinearQuadratic(seed=4).reset()[0], obs)
    assert np.array_equal(env.reset(seed=4)[0], LinearQuadratic(seed=4).reset()[0])


def test_lq_step_is_exact():
    rng = np.random.default_rng(0)
    A, B = rng.normal(size=(3, 3)) * 0.5, rng.normal(size=(3, 2))
    Q, R = np.diag([1.0, 2.0, 0.5]), np.array([[0.3, 0.1], [0.1, 0.2]])
    env = LinearQuadratic(A, B, Q, R, horizon=4, action_bound=5.0)
    env.reset(seed=1)
    for t in range(4):
        x, u = env.state, rng.uniform(-1, 1, 2)
        obs, reward, terminated, truncated, _ = env.step(u)
        assert np.array_equal(env.state, A @ x + B @ u)
        assert np.array_equal(obs, (A @ x + B @ u).astype(np.float32))
        assert reward == -(x @ Q @ x + u @ R @ u)
        assert not terminated and truncated == (t == 3)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(2))
    env.reset(options={"x0": [1.0, 0.0, 0.0]})
    _, reward, *_ = env.step([9.0, 0.0])  # clipped to the bound 5
    assert np.array_equal(env.state, A[:, 0] + B @ [5.0, 0.0]) and reward == -(1.0 + 0.3 * 25)


def test_lq_riccati_and_optimal_cost():
    env = LinearQuadratic(horizon=600)
    A, B, Q, R = env.A, env.B, env.Q, env.R
    P, K = env.riccati(), env.lqr_gain()
    residual = A.T @ P @ A - A.T @ P @ B @ np.linalg.solve(R + B.T @ P @ B, B.T @ P @ A) + Q - P
    assert np.abs(residual).max() < 1e-9
    assert np.allclose(K, np.linalg.solve(R + B.T @ P @ B, B.T @ P @ A)) and K.shape == (1, 2)
    x0 = np.array([0.7, -0.4])
    env.reset(options={"x0": x0})
    cost = 0.0
    for _ in range(600):
        cost -= env.step(-K @ env.state)[1]
    assert cost == pytest.approx(env.optimal_cost(x0), rel=1e-6)
    assert env.optimal_cost(np.stack([x0, 2 * x0])) == pytest.approx([cost, 4 * cost], rel=1e-6)


def test_lq_default_bound_holds_optimal_action():
    env = LinearQuadratic()
    K, Acl = env.lqr_gain(), env.A - env.B @ env.lqr_gain()
    x = np.random.default_rng(0).uniform(-env.x0_scale, env.x0_scale, (2000, 2))
    x[:4] = [[1, 1], [1, -1], [-1, 1], [-1, -1]]  # the box's corners
    peak = 0.0
    for _ in range(100):
        peak = max(peak, np.abs(x @ K.T).max())
        x = x @ Acl.T
    assert peak < 0.7 * env.action_bound


def test_lq_validation():
    with pytest.raises(ValueError, match="square"):
        LinearQuadratic(np.zeros((2, 3)), np.zeros((2, 1)))
    with pytest.raises(ValueError, match="B must have shape"):
        LinearQuadratic(np.eye(2), np.zeros((3, 1)))
    with pytest.raises(ValueError, match="both A and B"):
        LinearQuadratic(A=np.eye(2))
    with pytest.raises(ValueError, match=r"Q must have shape \(2, 2\)"):
        LinearQuadratic(Q=np.eye(3))
    with pytest.raises(ValueError, match="R must be positive definite"):
        LinearQuadratic(R=[[0.0]])
    with pytest.raises(ValueError, match="symmetric"):
        LinearQuadratic(Q=[[1.0, 1.0], [0.0, 1.0]])
    with pytest.raises(ValueError, match="horizon"):
        LinearQuadratic(horizon=0)
    env = LinearQuadratic()
    env.reset()
    with pytest.raises(ValueError, match=r"\(1,\)"):
        env.step([0.0, 0.0])
    with pytest.raises(ValueError, match="NaN"):
        env.step([np.nan])


_DYNAMO_AFTER_DM_CONTROL = """
import latentplan.envs as envs
env = envs.make("dmc:cartpole-swingup", obs="{obs}", seed=0)
obs, _ = env.reset(seed=0)
import torch
torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # imports torch._dynamo, which imports triton
import torch._dynamo
print("shape", tuple(obs.shape), "triton", "triton" in __import__("sys").modules)
"""


@pytest.mark.parametrize("obs, shape", [("state", "(5,)"), ("pixels", "(3, 64, 64)")])
def test_an_optimizer_after_a_dm_control_env_does_not_crash(obs, shape):
    """Regression (fresh machine, PyTorch's CUDA build): Mesa's EGL and triton each load an LLVM, and
    importing triton after EGL is up segfaults. `envs.dmc` imports triton first where it is installed.

    Run in a subprocess so that a crash fails this test instead of killing the suite. Where triton
    is absent (the CPU build) the crash cannot happen; CI also runs this test in a venv with the
    CUDA build, where removing `load_triton_first` from `envs.dmc._suite` makes it fail (exit -11).
    """
    import subprocess
    import sys

    env = {**os.environ, "MUJOCO_GL": "egl"}
    proc = subprocess.run([sys.executable, "-c", _DYNAMO_AFTER_DM_CONTROL.format(obs=obs)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-2000:]}"
    assert f"shape {shape}" in proc.stdout


@pytest.mark.parametrize("name, guess", [("cartpole-swingup", "dmc:cartpole-swingup"),
                                         ("cartpole:swingup", "dmc:cartpole-swingup"),
                                         ("Pendulum-v1", "gym:Pendulum-v1"), ("nothing-like-it", None)])
def test_a_name_without_its_prefix_gets_the_prefixed_name_suggested(name, guess):
    with pytest.raises(ValueError, match="must start with one of") as err:
        make(name)
    assert (f"did you mean {guess!r}" in str(err.value)) if guess else ("did you mean" not in str(err.value))
