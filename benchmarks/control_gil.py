"""How late can a planner that holds the GIL make the controller? A measured bound.

    python benchmarks/control_gil.py                      # the table of docs/control-loop.md
    python benchmarks/control_gil.py --decisions 20 --budgets 10 --holds 0 20

`MPCController` in thread mode promises an action by the budget whatever the planner does, by
planning on a worker thread and answering with the fallback when the plan is late. That holds
for a planner that releases the GIL (torch's kernels, `time.sleep`, I/O). It cannot hold for a
planner that stays inside one C call holding the GIL: the thread waiting for the budget needs
the GIL to wake up and return, and a Python thread cannot preempt a C call (the interpreter's
switch interval only applies between bytecodes). The action then goes out when the call ends.

Here the planner is one C call that holds the GIL for `hold` ms: libc `usleep` through
`ctypes.PyDLL` (unlike `ctypes.CDLL`, it keeps the GIL during the call). For each budget and
hold, `run_control_loop(mode="sync")` runs `--decisions` ticks of a 1-D point robot at a period
of twice the budget, and the controller's statistics give the late actions (latency over the
budget), the largest latency and the largest lateness (latency - budget). A row with the same
hold released (`libc.usleep` through `ctypes.CDLL`) shows the promise kept when the GIL is free.

Writes the table to stdout and the rows to `benchmarks/results/control_gil.json`.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from latentplan.control import ControllerConfig, MPCController, run_control_loop
from latentplan.planners import Plan
from latentplan.worldmodels import AnalyticModel

_HOLDING = ctypes.PyDLL(None)   # calls keep the GIL
_RELEASING = ctypes.CDLL(None)  # calls release the GIL


class SleepyPlanner:
    """A planner that spends `hold_ms` in one libc `usleep` call, holding the GIL or not, then
    returns a zero plan `[1, 4, 1]`."""

    def __init__(self, hold_ms: float, holds_gil: bool) -> None:
        self.usleep = (_HOLDING if holds_gil else _RELEASING).usleep
        self.hold_us = int(hold_ms * 1000)

    def plan(self, objective, state, *, warm_start=None, generator=None, deadline=None) -> Plan:
        if self.hold_us:
            self.usleep(self.hold_us)
        return Plan(torch.zeros(1, 4, 1), torch.zeros(1), {"iterations": 1, "model_evals": 0})


class PointRobot:
    """x' = x + u: enough of a robot for the loop (`period` in seconds)."""

    def __init__(self, period: float) -> None:
        self.period, self.x = period, np.zeros(1, np.float32)

    def read_observation(self) -> np.ndarray:
        return self.x.copy()

    def send_action(self, action: np.ndarray) -> None:
        self.x = self.x + np.asarray(action, np.float32)


def measure(budget_ms: float, hold_ms: float, holds_gil: bool, decisions: int) -> dict:
    """One row: `decisions` ticks of the sync loop with a thread-mode budget of `budget_ms`."""
    model = AnalyticModel(lambda x, u: x + u, lambda x: -(x ** 2).sum(-1), 1, [-1.0], [1.0])
    ctrl = MPCController(model, SleepyPlanner(hold_ms, holds_gil),
                         ControllerConfig(budget_ms=budget_ms, mode="thread", margin_ms=min(1.0, budget_ms / 5)))
    ctrl.warmup(np.zeros(1, np.float32))
    period = 2 * budget_ms / 1e3
    load0 = os.getloadavg()[0]
    stats = run_control_loop(PointRobot(period), ctrl, 1.0 / period, decisions)
    ctrl.wait_idle(max(1.0, 2 * hold_ms / 1e3))
    ctrl.close()
    c = stats.controller
    return {
        "budget_ms": budget_ms, "hold_ms": hold_ms, "holds_gil": holds_gil, "decisions": c.steps,
        "late_actions": c.late_steps, "deadline_misses": c.deadline_misses, "planned": c.planned,
        "latency_ms_p50": c.latency_ms_p50, "latency_ms_max": c.latency_ms_max,
        "max_lateness_ms": max(0.0, c.latency_ms_max - budget_ms), "overruns": stats.overruns,
        "load_avg_1min": [load0, os.getloadavg()[0]],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--budgets", type=float, nargs="+", default=[5.0, 14.0, 50.0])
    p.add_argument("--holds", type=float, nargs="+", default=[0.0, 2.0, 10.0, 20.0, 50.0, 100.0])
    p.add_argument("--decisions", type=int, default=40)
    p.add_argument("--out", default="benchmarks/results/control_gil.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = []
    print(f"{'budget ms':>9} {'hold ms':>7} {'GIL':>8} {'late actions':>12} {'max latency ms':>14} "
          f"{'max lateness ms':>15}")
    for budget in args.budgets:
        cases = [(h, True) for h in args.holds] + [(max(args.holds), False)]
        for hold, holds_gil in cases:
            r = measure(budget, hold, holds_gil, args.decisions)
            rows.append(r)
            print(f"{budget:9.0f} {hold:7.0f} {'held' if holds_gil else 'released':>8} "
                  f"{r['late_actions']:>5d} / {r['decisions']:<4d} {r['latency_ms_max']:14.1f} "
                  f"{r['max_lateness_ms']:15.1f}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"python": platform.python_version(), "torch": torch.__version__, "machine": platform.machine(),
            "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M"), "decisions": args.decisions}
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
