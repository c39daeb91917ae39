"""Compare planners on a trained model from Python: same seeds, same budget, a table and a plot.

    OMP_NUM_THREADS=1 python examples/compare_planners.py runs/cartpole_long.pt

The command-line equivalent: latentplan compare --checkpoint runs/cartpole_long.pt --planners cem icem mppi
--episodes 3 --budget-evals 1500 6000 --out runs/compare_example
"""

import sys

import torch

from latentplan.compare import compare
from latentplan.registry import Budget

torch.set_num_threads(1)  # one thread: timings that compare across planners
checkpoint = sys.argv[1] if len(sys.argv) > 1 else "runs/cartpole_long.pt"
result = compare(
    checkpoint,
    # registry names with config overrides; also "gradient", "cem_gd", "mcts" and a distilled
    # policy from `latentplan distill`: "policy:checkpoint=runs/distill_cartpole/policy.pt"
    ["cem", "icem", "mppi:temperature=0.5"],
    episodes=3,  # env and planner seeds 0, 1, 2 for every planner
    budgets=[Budget(evals=1500), Budget(evals=6000)],  # model evaluations per decision
    out_dir="runs/compare_example",  # cells.jsonl (resume), results.json/.csv, return_vs_ms.png
)
print(result.table())
