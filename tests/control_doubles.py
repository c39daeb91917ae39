"""Shared test doubles of the control tests (tests/test_control_*.py): a fake clock, a scripted
planner, a 1-D point model and a fake robot, all with exact answers."""

import numpy as np
import torch

from latentplan.planners import Plan
from latentplan.worldmodels import AnalyticModel


class FakeClock:
    """A clock that only moves when told: `clock()` is the time, `sleep(dt)` advances it."""

    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def sleep(self, dt: float) -> None:
        self.t += max(dt, 0.0)


class Scripted:
    """A planner that replays a script: a `Plan`, an exception to raise, or a function of the call."""

    def __init__(self, script, *, then=None, clock=None, cost_s: float = 0.0):
        self.script = list(script)
        self.then = then
        self.calls = 0
        self.deadlines = []
        self.clock, self.cost_s = clock, cost_s

    def plan(self, objective, state, *, warm_start=None, generator=None, deadline=None):
        self.calls += 1
        self.deadlines.append(deadline)
        if self.clock is not None:
            self.clock.sleep(self.cost_s)  # the planner "takes" cost_s seconds of fake time
        item = self.script.pop(0) if self.script else self.then
        if isinstance(item, BaseException):
            raise item
        if callable(item):
            return item(state)
        return item


def make_plan(values, value=0.0):
    """A `[1, H, 1]` plan with the given actions."""
    a = torch.tensor(values, dtype=torch.float32).reshape(1, -1, 1)
    return Plan(a, torch.tensor([value]), {"iterations": 1, "model_evals": 7, "plan_ms": 0.1})


def point_model():
    """x' = x + u in 1-D, reward -(x - 0.8)^2, actions in [-0.5, 0.5]."""
    return AnalyticModel(lambda x, u: x + u, lambda x: -((x - 0.8) ** 2).sum(-1), 1, [-0.5], [0.5])


class FakeRobot:
    """A robot over x' = x + u, one decision per tick: the m-th observation is x0 + the sum of
    the first m actions sent (whether the loop sends before or after reading at a tick)."""

    def __init__(self, period: float = 0.05, x0: float = 2.0):
        self.period = period
        self.x0 = np.array([x0], np.float32)
        self.sent: list[np.ndarray] = []
        self.reads = 0

    def read_observation(self):
        x = self.x0 + sum(self.sent[: self.reads], np.zeros(1, np.float32))
        self.reads += 1
        return x.astype(np.float32)

    def send_action(self, action):
        self.sent.append(np.array(action, copy=True))

    def stats(self):
        return {"actions_received": len(self.sent)}




def hold_gil(ms: float) -> None:
    """Sleep `ms` milliseconds inside one C call that holds the GIL (libc `usleep` through
    `ctypes.PyDLL`, which, unlike `ctypes.CDLL`, does not release the GIL around the call): no
    other Python thread runs meanwhile, as in a long C extension call that never releases it."""
    import ctypes

    ctypes.PyDLL(None).usleep(int(ms * 1000))


class Hanging:
    """A planner whose first call returns `first` and whose second call hangs until `release`
    is set; `finished` is set when that call returns (then it raises)."""

    def __init__(self, first):
        import threading

        self.first, self.calls = first, 0
        self.release, self.finished = threading.Event(), threading.Event()

    def plan(self, objective, state, *, warm_start=None, generator=None, deadline=None):
        self.calls += 1
        if self.calls == 1:
            return self.first
        self.release.wait(30.0)
        self.finished.set()
        raise RuntimeError("came back from a hang")
