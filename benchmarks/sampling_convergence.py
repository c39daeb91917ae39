"""Sampling planners run to convergence or to a budget: the measurements behind the defaults of
`CEMConfig.tol` / `max_evals`, `MPPIConfig.iterations` / `tol`, and iCEM's noise colour.

    OMP_NUM_THREADS=1 python benchmarks/sampling_convergence.py                 # all parts, 20 x 3
    OMP_NUM_THREADS=1 python benchmarks/sampling_convergence.py --part colour --instances 20 --seeds 3

Parts (each over `latentplan.families.lq_family(instances, seed=0)` x seeds, one decision from x0,
open loop; excess = J(u) / J* - 1 of the returned plan, `LQProblem.excess`):

- `cem`: CEM shapes (PlaNet's J = 1000, K = 100; J = 100, K = 10 with and without iCEM's momentum)
  with `iterations` a large cap, so the budget of 120,000 model evaluations (`max_evals`) or the
  convergence stop `tol` ends the search; tol in {0, 1e-4, 1e-3, 1e-2, 3e-2}. Reports worst / median
  excess, the mean model evaluations and how often each stop ended the search.
- `registry`: the registry's `cem`, `cem_gd` and `icem` at the budget with J capped at 100, 150, 300,
  1000 or not (beyond the cap the budget buys iterations; `cem_family(max_candidates=)`).
- `demo`: whether the stops can trigger at the demo's CEM config (300 swing-up decisions on the analytic
  cart-pole with the demo's bounds +-1: the largest relative std after its 5th iteration).
- `mppi`: `MPPI` with one update per call (the paper's; K = 1000, and K fitted to the budget as the
  registry does) against iterating one decision to convergence or the budget (K = 1000 and 250,
  tol in {0, 1e-3, 1e-2}).
- `colour`: iCEM (the registry preset's keep 0.3, decay 1.25, include_mean, `iterations` capped by the
  budget) with β in {0, 0.5, 1, 2, 3} and mixed populations (`white_fraction` 0.3 and 0.5 with β = 2),
  on the LQ family (up to 90 degrees of rotation per step: optimal actions that often alternate in
  sign) and a smooth one (`lq_family(..., max_angle=10)`); `smoothness` (lag-1 autocorrelation of
  u*) is printed for both.

Prints the tables and writes `benchmarks/results/sampling_convergence.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from latentplan.families import lq_family, smoothness
from latentplan.planners import CEM, MPPI, CEMConfig, MPPIConfig
from latentplan.registry import PRESETS, Budget, PlannerSpec, cem_family, make_planner

OUT = Path(__file__).parent / "results" / "sampling_convergence.json"
BUDGET = 120_000
CAP = 10_000  # an iteration cap the budget always reaches first


def run(label: str, family: list, make, seeds: int) -> dict:
    """Plan each problem of `family` with `make(H)` for `seeds` seeds; one row of statistics."""
    excess, evals, stops, iters = [], [], {}, []
    t0 = time.perf_counter()
    for prob in family:
        _, objective, start = prob.build()
        planner = make(prob.horizon)
        for s in range(seeds):
            plan = planner.plan(objective, start, generator=torch.Generator().manual_seed(s))
            excess.append(prob.excess(plan.actions[0].double().numpy()))
            evals.append(plan.info["model_evals"])
            iters.append(plan.info["iterations"])
            stop = plan.info.get("stopped", "-")
            stops[stop] = stops.get(stop, 0) + 1
    ex = np.array(excess)
    row = {"label": label, "worst": float(ex.max()), "median": float(np.median(ex)), "p90": float(np.quantile(ex, 0.9)),
           "evals_mean": float(np.mean(evals)), "evals_max": int(max(evals)), "iterations_mean": float(np.mean(iters)),
           "stopped": stops, "runs": len(excess), "seconds": time.perf_counter() - t0}
    stop_text = " ".join(f"{k} {v}" for k, v in sorted(stops.items()))
    print(f"{label:<44} worst {100 * row['worst']:9.2f} %  median {100 * row['median']:8.2f} %  "
          f"evals {row['evals_mean']:8.0f} (max {row['evals_max']:6d})  it {row['iterations_mean']:6.1f}  [{stop_text}]",
          flush=True)
    return row


def cem_part(family: list, seeds: int) -> list[dict]:
    rows = []
    shapes = {
        "PlaNet J1000 K100": dict(candidates=1000, elites=100),
        "J100 K10": dict(candidates=100, elites=10),
        "J100 K10 momentum 0.5": dict(candidates=100, elites=10, momentum=0.5),
    }
    for name, shape in shapes.items():
        for tol in (0.0, 1e-4, 1e-3, 1e-2, 3e-2):
            def make(h, shape=shape, tol=tol):
                return CEM(CEMConfig(horizon=h, iterations=CAP, max_evals=BUDGET, tol=tol, compile="eager", **shape))
            rows.append(run(f"cem {name} tol {tol:g}", family, make, seeds))
    # the config's defaults (iterations = 10 a cap, max_evals, tol) as a user gets them
    rows.append(run("cem CEMConfig defaults (I <= 10)", family, lambda h: CEM(horizon=h, compile="eager"), seeds))
    return rows


def mppi_part(family: list, seeds: int) -> list[dict]:
    rows = [run("mppi 1 update K1000 (paper, defaults)", family, lambda h: MPPI(horizon=h), seeds)]
    rows.append(run("mppi 1 update K=budget", family,
                    lambda h: MPPI(horizon=h, samples=BUDGET // h - 1), seeds))
    for k in (1000, 250):
        for tol in (0.0, 1e-3, 1e-2):
            rows.append(run(f"mppi K{k} to budget tol {tol:g}", family,
                            lambda h, k=k, tol=tol: MPPI(MPPIConfig(horizon=h, samples=k, iterations=CAP, tol=tol)), seeds))
    rows.append(run("mppi 1 update K=budget std 0.3", family,
                    lambda h: MPPI(horizon=h, samples=BUDGET // h - 1, noise_std=0.3), seeds))
    rows.append(run("mppi K1000 to budget std 0.3", family,
                    lambda h: MPPI(MPPIConfig(horizon=h, samples=1000, iterations=CAP, noise_std=0.3)), seeds))
    rows.append(run("mppi K1000 to budget std 0.3 no control cost", family,
                    lambda h: MPPI(MPPIConfig(horizon=h, samples=1000, iterations=CAP, noise_std=0.3,
                                              control_cost=False)), seeds))
    return rows


COLOURS = [(f"beta {b:g}", dict(noise_beta=b, white_fraction=0.0)) for b in (0.0, 0.5, 1.0, 2.0, 3.0)]
COLOURS += [("beta 2, 30 % white", dict(noise_beta=2.0, white_fraction=0.3)),
            ("beta 2, 50 % white", dict(noise_beta=2.0, white_fraction=0.5)),
            ("beta 1, 50 % white", dict(noise_beta=1.0, white_fraction=0.5))]


def colour_part(family: list, seeds: int, name: str) -> list[dict]:
    """iCEM's colours twice: on CEMConfig's J = 1000, K = 100 with the preset's options ("config"), and
    as the registry builds `icem` at the budget ("registry")."""
    preset = dict(PRESETS["icem"][0])
    rows = []
    for label, colour in COLOURS:
        def make(h, colour=colour):
            return CEM(CEMConfig(horizon=h, iterations=CAP, compile="eager", **{**preset, **colour}))
        row = run(f"icem[{name}] config {label}", family, make, seeds)
        row.update(family=name, mode="config")
        rows.append(row)
    for label, colour in COLOURS:
        spec = PlannerSpec("icem", tuple(colour.items()))
        row = run(f"icem[{name}] registry {label}", family,
                  lambda h, spec=spec: make_planner(spec, None, Budget(evals=BUDGET), horizon=h).planner, seeds)
        row.update(family=name, mode="registry")
        rows.append(row)
    return rows


def registry_part(family: list, seeds: int) -> list[dict]:
    """The registry's CEM family at the budget with different caps on J (`cem_family(max_candidates=)`):
    beyond the cap the budget buys iterations."""
    rows = []
    for name in ("cem", "cem_gd", "icem"):
        preset, warm = PRESETS[name]
        for cap in (100, 150, 300, 1000, None):
            factory = cem_family(preset, warm_start=warm, max_candidates=cap)
            rows.append(run(f"registry {name} J cap {cap}", family,
                            lambda h, f=factory: f(None, Budget(evals=BUDGET), h, {}).planner, seeds))
    return rows


def demo_part(steps: int = 300) -> list[dict]:
    """Whether the stops can trigger at the demo's CEM (`demo_config().planner`: H = 12, I = 5, J = 100,
    K = 10): its budget is 6,000 < `max_evals`, and in `steps` closed-loop decisions of a swing-up on the
    analytic cart-pole with the demo's action bounds (+-1) the largest relative std after the last
    iteration is recorded (the convergence stop needs it below `tol`)."""
    import latentplan.planners.cem as cem_module
    from latentplan import AnalyticModel, Objective
    from latentplan.config import demo_config

    cfg = demo_config().planner
    seen: list[float] = []
    original = cem_module.converged

    def spy(std, low, high, tol):
        seen.append(float((std / ((high - low) / 2)).amax()))
        return original(std, low, high, tol)

    cem_module.converged = spy
    try:
        model = AnalyticModel.cartpole(max_force=1.0)
        planner, objective = CEM(cfg, compile="eager"), Objective(model)
        x = torch.tensor([[0.0, 0.0, -1.0, 0.0, 0.0]])  # hanging down
        g = torch.Generator().manual_seed(0)
        finals, stops = [], {}
        for _ in range(steps):
            s = model.from_observation(x)
            seen.clear()
            plan = planner.plan(objective, s, generator=g)
            finals.append(seen[-1])
            stops[plan.info["stopped"]] = stops.get(plan.info["stopped"], 0) + 1
            x = model.imagine_step(s, plan.actions[:, 0]).deter
    finally:
        cem_module.converged = original
    row = {"label": "demo CEM on the analytic cart-pole", "config": repr(cfg), "model_evals": cfg.model_evals,
           "stopped": stops, "final_rel_std_min": min(finals), "final_rel_std_median": float(np.median(finals))}
    print(f"demo CEM: {cfg.model_evals} evals per decision (max_evals {cfg.max_evals}); stopped {stops}; "
          f"relative std after the last iteration: min {row['final_rel_std_min']:.3f}, median "
          f"{row['final_rel_std_median']:.3f} (tol {cfg.tol})")
    return [row]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=["cem", "registry", "mppi", "colour", "demo", "all"], default="all")
    ap.add_argument("--instances", type=int, default=20)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    lq = lq_family(args.instances, seed=0)
    rows: dict[str, list[dict]] = {}
    print(f"LQ family: {args.instances} instances x {args.seeds} seeds, budget {BUDGET} evals; excess J/J* - 1")
    if args.part in ("cem", "all"):
        rows["cem"] = cem_part(lq, args.seeds)
    if args.part in ("demo", "all"):
        rows["demo"] = demo_part()
    if args.part in ("registry", "all"):
        rows["registry"] = registry_part(lq, args.seeds)
    if args.part in ("mppi", "all"):
        rows["mppi"] = mppi_part(lq, args.seeds)
    if args.part in ("colour", "all"):
        smooth = lq_family(args.instances, seed=0, max_angle=10.0)
        for name, fam in (("lq", lq), ("smooth", smooth)):
            s = [smoothness(p.u_star) for p in fam]
            print(f"family {name}: smoothness of u* median {np.median(s):.2f}, min {min(s):.2f}, "
                  f"{sum(x < 0 for x in s)} of {len(s)} negative")
        rows["colour"] = colour_part(lq, args.seeds, "lq") + colour_part(smooth, args.seeds, "smooth")
    meta = {"command": "python benchmarks/sampling_convergence.py " + " ".join(os.sys.argv[1:]),
            "seconds": time.time() - t0, "torch": torch.__version__, "machine": platform.machine(),
            "load": os.getloadavg()[0]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(args.out.read_text()) if args.out.exists() else {}
    old.update(rows)
    old["meta"] = meta
    args.out.write_text(json.dumps(old, indent=1))
    print(f"wrote {args.out} ({meta['seconds']:.0f} s, load {meta['load']:.1f})")


if __name__ == "__main__":
    main()
