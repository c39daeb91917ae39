"""`latentplan control`: a planner as the real-time controller of a simulated robot, configured by
the `ControlConfig` dataclass (the command's flags are its fields)."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from typing import Literal

import torch

from .controller import ControllerConfig, MPCController
from .loop import run_control_loop
from .robot import SimulatedRobot

__all__ = ["ControlConfig", "cli_main"]

@dataclass(frozen=True)
class ControlConfig:
    """`latentplan control`: a planner as the real-time controller of a simulated robot.

    The robot is the checkpoint's dm_control task running in wall-clock time
    (`SimulatedRobot`); one tick of the loop is one model decision.

    Attributes:
        checkpoint: the trained model (`checkpoint.pt` or its run folder).
        rate: control rate in Hz (ticks per wall second).
        mode: `"sync"` (observe, plan, send in each tick) or `"async"` (planning in a
            background thread, actions sent at the fixed rate from the newest plan indexed by
            time; see `run_control_loop`).
        planner: a registry name with optional overrides (`latentplan.compare`), e.g. `cem`,
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


def cli_main(args: list[str]) -> int:
    """`latentplan control --checkpoint … --rate 20 [--mode async] [--planner cem] …`.

    Runs one episode of the checkpoint's task on a `SimulatedRobot` in real time and prints the
    loop's and the controller's statistics (and writes them to `--json`).

    Args:
        args: the command's flags (the fields of `ControlConfig`).

    Returns:
        The exit code: 0, or 2 for a missing or pixel checkpoint or an unknown planner (the
        reason on stderr). Raises nothing for those; tyro exits on malformed flags.
    """
    import json as _json

    import tyro

    from latentplan.envs.dmc import DEFAULT_DMC_ACTION_REPEAT, PLANET_ACTION_REPEAT
    from latentplan.training import load_checkpoint

    from latentplan.compare import Budget, PlannerNotAvailable, make_planner

    cfg = tyro.cli(ControlConfig, args=args, prog="latentplan control")
    torch.set_num_threads(cfg.threads)
    try:
        model, tcfg, _ = load_checkpoint(cfg.checkpoint)
        if tcfg.obs != "state":
            raise ValueError(f"latentplan control simulates state observations; this model observes {tcfg.obs!r}")
        domain = tcfg.env[4:].partition("-")[0]
        repeat = tcfg.action_repeat or PLANET_ACTION_REPEAT.get(domain, DEFAULT_DMC_ACTION_REPEAT)
        probe = SimulatedRobot(tcfg.env, action_repeat=repeat, seed=cfg.seed)
        rtf = cfg.real_time_factor or cfg.rate * repeat * probe.dt
        robot = SimulatedRobot(tcfg.env, action_repeat=repeat, real_time_factor=rtf, seed=cfg.seed)
        period_ms = 1e3 / cfg.rate
        budget_ms = cfg.budget_ms if cfg.budget_ms is not None else (0.7 * period_ms if cfg.mode == "sync" else None)
        build = make_planner(cfg.planner, model, Budget(evals=cfg.budget_evals, ms=budget_ms or period_ms))
        policy = None
        if cfg.fallback_policy:
            from latentplan.planners.distill import GaussianPolicy

            policy = GaussianPolicy.load(cfg.fallback_policy, device=model.action_low.device)
        ctrl = MPCController(model, build.planner, ControllerConfig(
            budget_ms=budget_ms, mode="thread", warm_start=build.warm_start, seed=cfg.seed,
            margin_ms=min(1.0, (budget_ms or period_ms) / 10)), objective=build.objective, fallback_policy=policy)
    except (ValueError, FileNotFoundError, PlannerNotAvailable) as err:
        print(f"latentplan control: {err}", file=sys.stderr)
        return 2
    obs0 = robot.reset(cfg.seed)
    print(f"{tcfg.env}: {cfg.rate:g} Hz ({period_ms:.1f} ms per tick), {repeat} physics steps of "
          f"{robot.dt * 1e3:g} ms per decision, real-time factor {rtf:g}; mode {cfg.mode}; planner {build.description}")
    if cfg.warmup:
        print(f"warm-up plan: {ctrl.warmup(obs0):.1f} ms")
    stats = run_control_loop(robot, ctrl, cfg.rate, cfg.steps, mode=cfg.mode)
    ctrl.close()
    print(stats.table())
    if cfg.json:
        from pathlib import Path

        Path(cfg.json).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.json).write_text(_json.dumps({"config": dataclasses.asdict(cfg), "stats": stats.as_dict()}, indent=1))
    return 0
