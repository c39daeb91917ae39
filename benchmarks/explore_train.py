"""Train one run of the Plan2Explore comparison on cartpole-swingup (the demo preset), keeping copies of
the checkpoint at chosen episodes.

    OMP_NUM_THREADS=1 python benchmarks/explore_train.py explore 0    # runs/explore_s0, explore=True
    OMP_NUM_THREADS=1 python benchmarks/explore_train.py task 0       # runs/task_s0, the learned reward

The run is `lp.train(lp.demo_config(episodes=50, eval_every=10, final_eval_episodes=0,
max_wall_minutes=None, seed=SEED, run_dir=..., explore=...))`: the demo's model, CEM and update
schedule, training seed SEED (which also seeds the env episodes, so a task/explore pair with
one seed collects from the same initial states). When the run writes its checkpoint after
episode k for k in `--keep`, a copy is kept as `checkpoint_ep<k>.pt` beside it, so one run gives
the models at several env-step budgets (docs/exploration.md compares 30 and 50 episodes).
"""

from __future__ import annotations

import argparse
import shutil
import time

import latentplan as lp
from latentplan.exploration import make_trainer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("which", choices=("task", "explore"))
    p.add_argument("seed", type=int)
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--keep", type=int, nargs="*", default=[20, 30], help="episodes whose checkpoint is copied")
    p.add_argument("--run-dir", default=None, help="default: runs/<which>_s<seed>")
    args = p.parse_args()
    run_dir = args.run_dir or f"runs/{args.which}_s{args.seed}"
    cfg = lp.demo_config(episodes=args.episodes, eval_every=10, final_eval_episodes=0, max_wall_minutes=None,
                         seed=args.seed, run_dir=run_dir, progress=False, explore=args.which == "explore")
    trainer = make_trainer(cfg)
    save = trainer.save_checkpoint

    def save_and_keep():
        path = save()
        if trainer.episode in args.keep:
            shutil.copy(path, path.parent / f"checkpoint_ep{trainer.episode}.pt")
        print(time.strftime("%H:%M:%S"), "episode", trainer.episode, flush=True)
        return path

    trainer.save_checkpoint = save_and_keep
    print(trainer.run())


if __name__ == "__main__":
    main()
