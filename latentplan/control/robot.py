"""The robot side of the control loop: the `Robot` protocol that `run_control_loop` drives, and
`SimulatedRobot`, a dm_control task running in wall-clock time behind it."""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np

__all__ = ["Robot", "SimulatedRobot"]

Clock = Callable[[], float]


@runtime_checkable
class Robot(Protocol):
    """What `run_control_loop` drives: a sensor, an actuator and a control period.

    Attributes:
        period: the control period the robot (and the model) expects, in wall seconds.

    Methods:
        read_observation() -> the current observation (`[D]` float32 for state models).
        send_action(action `[A]` float32) -> None: the actuator holds it until the next one
            (zero-order hold).

    Optional members the loop uses when present: `done` (bool: the episode is over),
    `stats()` (a dict reported next to the loop's statistics).
    """

    period: float

    def read_observation(self) -> np.ndarray: ...

    def send_action(self, action: np.ndarray) -> None: ...


class SimulatedRobot:
    """A dm_control task running in wall-clock time, behind the `Robot` protocol.

    Simulated time advances with the clock: `sim_time = real_time_factor * (clock() - start)`,
    where `start` is the first `read_observation` or `send_action` after `reset` (so warming up
    a controller after `reset` costs no simulated time). Whatever the controller does, physics
    keeps going: the actuator holds the last action received (zero-order hold), and a late
    controller sees the world move on without it.

    Physics runs in steps of the task's control timestep `dt` (cartpole: 0.01 s) and is
    advanced lazily: every call first simulates all steps that have ended by the current
    simulated time. The result equals a simulator running in its own thread, without a
    thread. An action that arrives during a step is applied from its arrival time: the step is
    simulated with the time-weighted mean of the actions held during it (the same impulse as
    the continuous-time hold), so an action switch is neither delayed to the next step nor
    applied before it arrived.

    The model's decision is `action_repeat` physics steps (cartpole: 8 x 0.01 s = 80 ms of
    simulated time). `period = action_repeat * dt / real_time_factor` is the wall time of one
    decision: to control the cartpole model at 20 Hz (50 ms), use `real_time_factor=1.6`.

    Observations are the flat float32 state vector of `latentplan.envs.make(env, obs="state")`
    (cartpole: cart position, pole cos/sin, two velocities); actions are `[-1, 1]^A` like
    `make`'s, mapped affinely onto the task's bounds. With `seed=s` the episode starts from the
    same state as `make(env, seed=s).reset(seed=s)`.

    Args:
        env: a dm_control task as `"dmc:<domain>-<task>"`.
        action_repeat: physics steps per model decision; default PlaNet's for the domain
            (`latentplan.envs.PLANET_ACTION_REPEAT`, cartpole 8).
        real_time_factor: simulated seconds per wall second (> 0).
        seed: seed of the first episode.
        clock: the time source in seconds (default `time.perf_counter`).

    Attributes:
        period: wall seconds per decision; `dt`: simulated seconds per physics step;
        `action_low`, `action_high`: `[A]` float32 (-1 and 1); `done`: the episode is over
        (the task's time limit, cartpole 1000 steps = 10 s of simulated time).

    Raises:
        ValueError: for a name that is not `"dmc:..."`, a non-positive `real_time_factor`, or
            a bad `action_repeat`.
    """

    def __init__(
        self,
        env: str = "dmc:cartpole-swingup",
        *,
        action_repeat: int | None = None,
        real_time_factor: float = 1.0,
        seed: int = 0,
        clock: Clock = time.perf_counter,
    ) -> None:
        if not (isinstance(env, str) and env.startswith("dmc:")):
            raise ValueError(f"SimulatedRobot: env must be a dm_control task 'dmc:<domain>-<task>'; got {env!r}")
        if not (math.isfinite(real_time_factor) and real_time_factor > 0):
            raise ValueError(f"SimulatedRobot: real_time_factor must be > 0; got {real_time_factor}")
        from latentplan import envs
        from latentplan.envs.dmc import DEFAULT_DMC_ACTION_REPEAT, PLANET_ACTION_REPEAT

        domain = env[4:].partition("-")[0]
        if action_repeat is None:
            action_repeat = PLANET_ACTION_REPEAT.get(domain, DEFAULT_DMC_ACTION_REPEAT)
        if isinstance(action_repeat, bool) or not isinstance(action_repeat, int) or action_repeat < 1:
            raise ValueError(f"SimulatedRobot: action_repeat must be an int >= 1; got {action_repeat!r}")
        self.env_name = env
        self._env = envs.make(env, obs="state", action_repeat=1, seed=seed)
        self._dm = self._env.unwrapped._env  # the dm_control environment under shimmy's wrapper
        self.dt = float(self._dm.control_timestep())
        self.action_repeat = int(action_repeat)
        self.real_time_factor = float(real_time_factor)
        self.period = self.action_repeat * self.dt / self.real_time_factor
        spec = self._dm.action_spec()
        self._center = (np.asarray(spec.maximum, np.float64) + np.asarray(spec.minimum, np.float64)) / 2
        self._half = (np.asarray(spec.maximum, np.float64) - np.asarray(spec.minimum, np.float64)) / 2
        self._dtype = spec.dtype
        self.action_dim = int(np.prod(spec.shape))
        self.action_low = -np.ones(self.action_dim, np.float32)
        self.action_high = np.ones(self.action_dim, np.float32)
        self._keys = list(self._dm.observation_spec())
        self.clock = clock
        self._seed = seed
        self.reset(seed)

    def reset(self, seed: int | None = None) -> np.ndarray:
        """Start an episode (the clock starts at the next call) and return its first observation `[D]`."""
        obs, _ = self._env.reset(seed=self._seed if seed is None else seed)
        self._obs = np.asarray(obs, np.float32)
        self._start: float | None = None
        self._n = 0  # physics steps simulated
        self._held = np.zeros(self.action_dim, np.float64)
        self._segments: list[tuple[float, np.ndarray]] = [(0.0, self._held)]  # (start within step, action)
        self.done = False
        self._return = 0.0
        self._counts = dict(actions_received=0, actions_rejected=0, actions_clipped=0, reads=0)
        return self._obs.copy()

    def _now(self) -> float:
        """Simulated seconds since the start (starting the clock at the first call)."""
        t = self.clock()
        if self._start is None:
            self._start = t
        return (t - self._start) * self.real_time_factor

    @property
    def sim_time(self) -> float:
        """Simulated seconds of physics done so far."""
        return self._n * self.dt

    def _advance(self, now: float) -> None:
        eps = 1e-9 * self.dt
        while not self.done and (self._n + 1) * self.dt <= now + eps:
            if len(self._segments) == 1:
                u = self._segments[0][1]
            else:  # the time-weighted mean of the actions held during this step
                starts = [s for s, _ in self._segments] + [self.dt]
                u = sum(a * (starts[i + 1] - starts[i]) for i, (_, a) in enumerate(self._segments)) / self.dt
            ts = self._dm.step((self._center + self._half * u).astype(self._dtype))
            self._return += float(ts.reward or 0.0)
            self._n += 1
            self._segments = [(0.0, self._held)]
            self._obs = np.concatenate(
                [np.ravel(np.asarray(ts.observation[k], np.float64)) for k in self._keys]
            ).astype(np.float32)
            if ts.last():
                self.done = True

    def read_observation(self) -> np.ndarray:
        """The state at the end of the last completed physics step, `[D]` float32."""
        self._advance(self._now())
        self._counts["reads"] += 1
        return self._obs.copy()

    def send_action(self, action: np.ndarray) -> None:
        """Hold `action` (`[A]` in `[-1, 1]`) from now on.

        A wrongly shaped or non-finite action is rejected (the previous one stays) and counted;
        one outside `[-1, 1]` is clipped and counted. After the episode ends actions are ignored.
        """
        now = self._now()
        self._advance(now)
        self._counts["actions_received"] += 1
        a = np.asarray(action, dtype=np.float64)
        if a.shape != (self.action_dim,) or not np.all(np.isfinite(a)):
            self._counts["actions_rejected"] += 1
            return
        if np.any(a < -1.0) or np.any(a > 1.0):
            self._counts["actions_clipped"] += 1
            a = np.clip(a, -1.0, 1.0)
        if self.done:
            return
        offset = now - self._n * self.dt
        if offset <= 1e-9 * self.dt:
            self._segments = [(0.0, a)]
        else:
            self._segments.append((min(offset, self.dt), a))
        self._held = a

    def stats(self) -> dict[str, Any]:
        """Return, physics steps, simulated time and the action counts of this episode."""
        return {
            "return": self._return, "physics_steps": self._n, "sim_time_s": self.sim_time,
            "decisions_of_sim_time": self._n / self.action_repeat, "real_time_factor": self.real_time_factor,
            **self._counts,
        }

