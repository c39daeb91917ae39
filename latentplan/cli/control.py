"""`latentplan control`: one episode of a checkpoint's task on a `SimulatedRobot` in real time."""

from __future__ import annotations

import dataclasses
import json
import sys

import torch

from latentplan.control import ControlConfig, ControllerConfig, MPCController, SimulatedRobot, run_control_loop
from latentplan.io import atomic_write_text
from latentplan.registry import Budget, PlannerNotAvailable, load_policy, make_planner

__all__ = ["run"]


def _controller(cfg: ControlConfig):
    """The robot, the controller and the planner's build for `cfg`.

    Raises:
        ValueError: a bad setting, an unknown planner spec, a pixel model, or a checkpoint whose env is
            not a dm_control task (`SimulatedRobot` runs dm_control physics only; a `gym:` model is refused
            before anything is built, the message naming its env and `latentplan compare` instead).
        FileNotFoundError: no checkpoint (or fallback policy) at the path given.
    """
    from latentplan.envs.dmc import DEFAULT_DMC_ACTION_REPEAT, PLANET_ACTION_REPEAT
    from latentplan.training import load_checkpoint

    model, tcfg, _ = load_checkpoint(cfg.checkpoint)
    if tcfg.obs != "state":
        raise ValueError(f"latentplan control simulates state observations; this model observes {tcfg.obs!r}")
    if not tcfg.env.startswith("dmc:"):
        raise ValueError(
            f"latentplan control runs dm_control tasks in wall-clock time (SimulatedRobot); this model was trained "
            f"on {tcfg.env!r}. For a Gymnasium env, evaluate its planners with `latentplan compare` (episodes "
            "stepped as fast as planning allows) or drive your own robot with latentplan.control.run_control_loop"
        )
    domain = tcfg.env[4:].partition("-")[0]
    repeat = tcfg.action_repeat or PLANET_ACTION_REPEAT.get(domain, DEFAULT_DMC_ACTION_REPEAT)
    probe = SimulatedRobot(tcfg.env, action_repeat=repeat, seed=cfg.seed)
    rtf = cfg.real_time_factor or cfg.rate * repeat * probe.dt
    robot = SimulatedRobot(tcfg.env, action_repeat=repeat, real_time_factor=rtf, seed=cfg.seed)
    period_ms = 1e3 / cfg.rate
    budget_ms = cfg.budget_ms if cfg.budget_ms is not None else (0.7 * period_ms if cfg.mode == "sync" else None)
    build = make_planner(cfg.planner, model, Budget(evals=cfg.budget_evals, ms=budget_ms or period_ms))
    policy = load_policy(cfg.fallback_policy, model) if cfg.fallback_policy else None
    ctrl = MPCController(model, build.planner, ControllerConfig(
        budget_ms=budget_ms, mode="thread", warm_start=build.warm_start, seed=cfg.seed,
        margin_ms=min(1.0, (budget_ms or period_ms) / 10)), objective=build.objective, fallback_policy=policy)
    header = (f"{tcfg.env}: {cfg.rate:g} Hz ({period_ms:.1f} ms per tick), {repeat} physics steps of "
              f"{robot.dt * 1e3:g} ms per decision, real-time factor {rtf:g}; mode {cfg.mode}; planner {build.description}")
    return robot, ctrl, header


def run(cfg: ControlConfig, args: list[str] | None = None) -> int:
    """Run the loop, print the loop's and the controller's statistics, write them to `cfg.json`.

    On Ctrl-C the loop sends the robot its safe action, and the statistics up to that moment are
    printed (and written to `cfg.json`, with `stopped_by: "KeyboardInterrupt"`). The planner
    thread is closed however the run ends.

    Returns:
        The exit code: 0, 2 for a bad setting, an unknown planner, a missing checkpoint or one whose
        model is not of a dm_control task from state, 130
        after an interruption.
    """
    torch.set_num_threads(cfg.threads)
    try:
        robot, ctrl, header = _controller(cfg)
    except (ValueError, FileNotFoundError, PlannerNotAvailable) as err:
        print(f"latentplan control: {err}", file=sys.stderr)
        return 2
    code = 0
    try:
        obs0 = robot.reset(cfg.seed)
        print(header)
        if cfg.warmup:
            print(f"warm-up plan: {ctrl.warmup(obs0):.1f} ms")
        try:
            stats = run_control_loop(robot, ctrl, cfg.rate, cfg.steps, mode=cfg.mode)
        except KeyboardInterrupt as err:
            stats = getattr(err, "loop_stats", None)
            print("latentplan control: interrupted; the safe action was sent", file=sys.stderr)
            if stats is None:
                return 130
            code = 130
    except KeyboardInterrupt:  # during the warm-up: nothing ran on the robot yet
        print("latentplan control: interrupted before the loop started", file=sys.stderr)
        return 130
    finally:
        ctrl.close()
    print(stats.table())
    if cfg.json:
        atomic_write_text(cfg.json, json.dumps({"config": dataclasses.asdict(cfg), "stats": stats.as_dict()}, indent=1))
    return code
