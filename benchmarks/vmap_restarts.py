"""Per-restart gradients for the gradient planner: one batched backward pass of the summed returns (what
`planners.ascent.ascend` does) against `torch.func.vmap(grad(...))` over the restarts.

    OMP_NUM_THREADS=1 python benchmarks/vmap_restarts.py [--repeats 7]

Rows are independent, so the gradient of the sum of the R returns w.r.t. the `[R, H, A]` actions
is every restart's own gradient: the batched form already gives per-restart gradients. The vmapped
form computes the same (checked: max abs difference printed) with one `grad` per restart mapped by
`vmap`. Models: a freshly initialised RSSM of PlaNet's size (A = 1), prior-mean rollouts
(`sample=False`, as `GradientConfig(use_mean=True)`: vmap has no per-row generator), and
`AnalyticModel.pendulum()`; H = 12, CPU, one thread; median ms of one gradient after a warm-up.
A form that fails (torch 2.13: `nn.GRUCell` under `vmap` of a one-row batch raises a shape error)
is recorded with its error. Prints a table and writes `benchmarks/results/vmap_restarts.json`.
"""

from __future__ import annotations

import json
import os

import torch
from torch.func import grad, vmap

import latentplan as lp
from backward_cost import median_ms, planet_rssm, timing_args  # benchmarks/ is on sys.path when run as a script


def measure(name: str, model, objective: lp.Objective, r: int, repeats: int) -> dict:
    """Batched vs vmapped gradients of R restarts' returns w.r.t. their actions `[R, 12, 1]`."""
    state = model.initial(r)
    actions = torch.rand(r, 12, 1, generator=torch.Generator().manual_seed(0)) * 2 - 1
    one = model.initial(1)

    def batched() -> torch.Tensor:
        a = actions.clone().requires_grad_(True)
        return torch.autograd.grad(objective.returns(state, a).sum(), a)[0]

    def vmapped() -> torch.Tensor:
        return vmap(grad(lambda a: objective.returns(one, a[None])[0]))(actions)

    row = dict(model=name, restarts=r, batched_ms=median_ms(batched, repeats))
    try:
        row.update(max_abs_diff=(batched() - vmapped()).abs().max().item(), vmap_ms=median_ms(vmapped, repeats))
        print(f"{name:8s} R={r:4d}: batched {row['batched_ms']:8.2f} ms, vmap(grad) {row['vmap_ms']:8.2f} ms "
              f"({row['vmap_ms'] / row['batched_ms']:.2f}x), max |difference| {row['max_abs_diff']:.1e}")
    except RuntimeError as err:
        row.update(vmap_error=f"{type(err).__name__}: {str(err).splitlines()[0]}")
        print(f"{name:8s} R={r:4d}: batched {row['batched_ms']:8.2f} ms, vmap(grad) failed: {row['vmap_error']}")
    return row


def main() -> None:
    args = timing_args(__doc__, "vmap_restarts")
    rssm = planet_rssm()
    rows = []
    for name, model in (("rssm", rssm), ("pendulum", lp.AnalyticModel.pendulum())):
        objective = lp.Objective(model).with_prior_means()
        for r in (10, 100):
            rows.append(measure(name, model, objective, r, args.repeats))
    meta = dict(torch=torch.__version__, threads=1, load=os.getloadavg(),
                command=f"OMP_NUM_THREADS=1 python benchmarks/vmap_restarts.py --repeats {args.repeats}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=1) + "\n")
    print(f"load {os.getloadavg()}; wrote {args.out}")


if __name__ == "__main__":
    main()
