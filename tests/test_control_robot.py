"""`SimulatedRobot` (latentplan/control/robot.py): a dm_control task in wall-clock time, checked
step for step against the environment of `latentplan.envs.make`."""

import numpy as np
import pytest

from control_doubles import FakeClock
from latentplan import envs
from latentplan.control import SimulatedRobot


def test_simulated_robot_on_time_equals_the_env_with_action_repeat():
    """Driven exactly on the tick, the robot is `make(..., action_repeat=8)`: same states, same return."""
    clock = FakeClock(0.0)
    robot = SimulatedRobot("dmc:cartpole-swingup", real_time_factor=1.6, seed=3, clock=clock)
    assert robot.period == pytest.approx(0.05) and robot.action_repeat == 8
    env = envs.make("dmc:cartpole-swingup", obs="state", seed=3)
    obs_env, _ = env.reset(seed=3)
    np.testing.assert_array_equal(robot.reset(3), obs_env)
    rng = np.random.default_rng(0)
    ret_env = 0.0
    for k in range(6):
        clock.t = k * robot.period
        obs = robot.read_observation()
        np.testing.assert_array_equal(obs, obs_env)
        a = rng.uniform(-1, 1, size=1).astype(np.float32)
        robot.send_action(a)
        obs_env, r, *_ = env.step(a)
        ret_env += r
    clock.t = 6 * robot.period
    np.testing.assert_array_equal(robot.read_observation(), obs_env)
    st = robot.stats()
    assert st["physics_steps"] == 48 and st["return"] == pytest.approx(ret_env, rel=1e-12)


def test_simulated_robot_holds_the_last_action_while_the_controller_is_late():
    clock = FakeClock(0.0)
    robot = SimulatedRobot("dmc:cartpole-swingup", real_time_factor=1.6, seed=1, clock=clock)
    ref = envs.make("dmc:cartpole-swingup", obs="state", action_repeat=1, seed=1)
    ref.reset(seed=1)
    robot.read_observation()  # starts the clock at t = 0
    robot.send_action(np.array([1.0], np.float32))
    # the controller is silent for three decisions: 24 physics steps at the held action
    clock.t = 3 * robot.period
    obs = robot.read_observation()
    for _ in range(24):
        ref_obs, *_ = ref.step(np.array([1.0], np.float32))
    np.testing.assert_array_equal(obs, ref_obs)
    assert robot.sim_time == pytest.approx(0.24)
    # an action arriving half-way through a physics step is applied from then on: the step gets
    # the time-weighted mean 0.5 * 1 + 0.5 * (-1) = 0
    clock.t += 0.5 * robot.dt / robot.real_time_factor
    robot.send_action(np.array([-1.0], np.float32))
    clock.t += 1.5 * robot.dt / robot.real_time_factor
    obs = robot.read_observation()
    ref.step(np.array([0.0], np.float32))
    ref_obs, *_ = ref.step(np.array([-1.0], np.float32))
    np.testing.assert_allclose(obs, ref_obs, rtol=0, atol=1e-6)  # 0.005 s * (1 - 1) in floating point
    # bad actions: NaN and wrong shape rejected (the held one stays), out of bounds clipped
    robot.send_action(np.array([float("nan")]))
    robot.send_action(np.array([0.1, 0.2]))
    robot.send_action(np.array([3.0]))
    st = robot.stats()
    assert (st["actions_rejected"], st["actions_clipped"], st["actions_received"]) == (2, 1, 5)


def test_simulated_robot_checks_its_arguments():
    with pytest.raises(ValueError, match="dm_control"):
        SimulatedRobot("gym:Pendulum-v1")
    with pytest.raises(ValueError, match="real_time_factor"):
        SimulatedRobot(real_time_factor=0.0)
