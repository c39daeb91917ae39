"""What a backward pass through the world model costs, in forward transitions: the weight behind the
gradient planners' `model_evals` (`latentplan.planners.ascent.VJP_EVALS`).

    OMP_NUM_THREADS=1 python benchmarks/backward_cost.py [--repeats 7]

On a freshly initialised RSSM of PlaNet's size (GRU 200, stochastic 30, hidden 200, A = 1; the
weights do not change the cost) and on the CPU, one thread:

- gradient step (`GradientPlanner`, CEM+GD's `ascend`): `objective.returns` of N sequences of H = 12
  steps with a graph, then `torch.autograd.grad` to the actions, against the same rollout under
  `torch.no_grad()`. The ratio `(forward with graph + backward) / forward` is the cost of one
  optimizer step in forward rollouts; the weight of the backward pass is that ratio minus 1
  (the step's own forward pass counts 1).
- iLQR's linearisation: `jacrev` of the prior-mean transition over M = B * H rows (F = 230 outputs
  per row: F vector-Jacobian products, batched by `vmap`) against one forward transition of the M
  rows; the weight per product is `(jacobian / forward - 1) / F`.

Times are medians over `--repeats` after one warm-up. Prints a table and writes
`benchmarks/results/backward_cost.json`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from torch.func import jacrev

import latentplan as lp
from latentplan.planners.ascent import VJP_EVALS


def planet_rssm() -> lp.RSSMWorldModel:
    """A freshly initialised RSSM of PlaNet's size (GRU 200, stochastic 30, hidden 200), A = 1, vector
    observations, in eval mode without parameter gradients (seeded: `torch.manual_seed(0)`)."""
    torch.manual_seed(0)
    model = lp.RSSMWorldModel(dataclasses.replace(lp.RSSMConfig(), obs_shape=(5,), action_dim=1)).eval()
    return model.requires_grad_(False)


def median_ms(fn, repeats: int) -> float:
    """Median wall milliseconds of `repeats` calls of `fn()` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def gradient_rows(model, n: int, horizon: int, repeats: int) -> dict:
    """Forward vs forward + backward of `objective.returns` for N sequences."""
    g = torch.Generator().manual_seed(0)
    objective = lp.Objective(model)
    state = model.initial(n)
    actions = torch.rand(n, horizon, 1, generator=g) * 2 - 1

    def forward():
        with torch.no_grad():
            objective.returns(state, actions, generator=g)

    def step():
        a = actions.clone().requires_grad_(True)
        torch.autograd.grad(objective.returns(state, a, generator=g).sum(), a)

    fwd, both = median_ms(forward, repeats), median_ms(step, repeats)
    return dict(kind="gradient step", rows=n, horizon=horizon, forward_ms=fwd, with_backward_ms=both,
                ratio=both / fwd, backward_weight=both / fwd - 1)


def jacobian_rows(model, m: int, repeats: int) -> dict:
    """One transition of M rows vs its Jacobian by `jacrev` (F products, vmapped)."""
    g = torch.Generator().manual_seed(0)
    s = model.initial(m)
    d = s.deter.shape[1]
    x = torch.randn(m, s.features().shape[1], generator=g) * 0.1
    u = torch.rand(m, 1, generator=g) * 2 - 1

    def dyn(x, u):
        return model.imagine_step(lp.LatentState(x[:, :d], x[:, d:]), u, sample=False).features()

    def forward():
        with torch.no_grad():
            dyn(x, u)

    def jac():
        jacrev(lambda x, u: dyn(x, u).sum(0), argnums=(0, 1))(x, u)

    fwd, jm = median_ms(forward, repeats), median_ms(jac, repeats)
    f = x.shape[1]
    return dict(kind="iLQR Jacobian", rows=m, features=f, forward_ms=fwd, jacobian_ms=jm, ratio=jm / fwd,
                weight_per_product=(jm / fwd - 1) / f)


def timing_args(doc: str, name: str) -> argparse.Namespace:
    """`--repeats` (default 7) and `--out` (default `benchmarks/results/<name>.json`) of a timing
    script; sets one torch thread."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / f"{name}.json")
    torch.set_num_threads(1)
    return ap.parse_args()


def main() -> None:
    args = timing_args(__doc__, "backward_cost")
    model = planet_rssm()
    rows = [gradient_rows(model, n, 12, args.repeats) for n in (10, 100, 500)]
    rows += [jacobian_rows(model, m, args.repeats) for m in (12, 120)]
    print(f"counted weight of one vector-Jacobian product (VJP_EVALS): {VJP_EVALS} forward transitions")
    for r in rows:
        if r["kind"] == "gradient step":
            print(f"gradient step  N={r['rows']:4d} H=12: forward {r['forward_ms']:8.2f} ms, forward+backward "
                  f"{r['with_backward_ms']:8.2f} ms: backward = {r['backward_weight']:.2f} forward passes")
        else:
            print(f"iLQR Jacobian  M={r['rows']:4d} F={r['features']}: forward {r['forward_ms']:8.2f} ms, jacrev "
                  f"{r['jacobian_ms']:8.2f} ms: {r['weight_per_product']:.3f} forward per product")
    meta = dict(torch=torch.__version__, threads=1, machine=platform.machine(), load=os.getloadavg(),
                vjp_evals=VJP_EVALS, command=f"OMP_NUM_THREADS=1 python benchmarks/backward_cost.py --repeats {args.repeats}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=1) + "\n")
    print(f"load {os.getloadavg()}; wrote {args.out}")


if __name__ == "__main__":
    main()
