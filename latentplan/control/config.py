"""The settings of `latentplan control` (a planner as the real-time controller of a simulated robot):
the command's flags are the fields of `ControlConfig`; its runner is `latentplan.cli.control`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["ControlConfig"]


@dataclass(frozen=True)
class ControlConfig:
    """`latentplan control`: a planner as the real-time controller of a simulated robot.

    The robot is the checkpoint's dm_control task running in wall-clock time
    (`SimulatedRobot`); one tick of the loop is one model decision. A model of a `gym:` env or
    one observing pixels is refused (exit code 2, the message naming why).

    Attributes:
        checkpoint: the trained model (`checkpoint.pt` or its run folder).
        rate: control rate in Hz (ticks per wall second).
        mode: `"sync"` (observe, plan, send in each tick) or `"async"` (planning in a
            background thread, actions sent at the fixed rate from the newest plan indexed by
            time; see `run_control_loop`).
        planner: a registry name with optional overrides (`latentplan.registry`), e.g. `cem`,
            `icem:noise_beta=3`, `mppi`, `gradient`.
        budget_evals: size of the planner in model evaluations per decision (`None`: a large
            configuration that only the deadline stops).
        budget_ms: the controller's latency budget per decision in ms. Default: 70 % of the
            period in `sync` mode, none in `async` mode (the next tick is the deadline).
        real_time_factor: simulated seconds per wall second. Default: `rate * action_repeat *
            dt`, so that one tick is one model decision (cartpole at 20 Hz: 20 * 8 * 0.01 = 1.6).
        steps: ticks to run (default: the whole episode).
        seed: episode and planner seed.
        fallback_policy: a distilled policy file (`policy.pt` of `latentplan distill`) that
            answers the decisions the planner cannot; default: the previous plan.
        warmup: plan once before the clock starts (primes the planner and its timing).
        threads: torch threads.
        json: also write the statistics to this JSON file.
    """

    checkpoint: str
    rate: float = 20.0
    mode: Literal["sync", "async"] = "async"
    planner: str = "cem"
    budget_evals: int | None = 3000
    budget_ms: float | None = None
    real_time_factor: float | None = None
    steps: int | None = None
    seed: int = 0
    fallback_policy: str | None = None
    warmup: bool = True
    threads: int = 1
    json: str | None = None

    def __post_init__(self) -> None:
        from latentplan.planners.validate import check_choice, check_int, check_positive

        check_positive(self, "rate")
        check_positive(self, "budget_ms", "real_time_factor", optional=True)
        check_int(self, "budget_evals", "steps", minimum=1, optional=True)
        check_int(self, "threads", minimum=1)
        check_choice(self, "mode", ("sync", "async"))
