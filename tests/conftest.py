import os

import pytest
import torch

# The tests' models are tiny: one thread is faster than two and does not fight other processes.
torch.set_num_threads(1)
os.environ.setdefault("MUJOCO_GL", "egl")
# compile="auto" never compiles in the suite (tests that compile ask for it and are marked slow)
os.environ.setdefault("LATENTPLAN_COMPILE", "0")


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory):
    """A real RSSM checkpoint on dmc:cartpole-swingup, trained in seconds and shared by the whole
    test run (3 episodes, a tiny model): what `latentplan compare/control/distill` read in CI.

    Returns the path of its `checkpoint.pt`; the run folder beside it holds its replay episodes.
    """
    import latentplan as lp

    run_dir = tmp_path_factory.mktemp("trained") / "run"
    config = lp.demo_config(
        run_dir=str(run_dir), episodes=3, seed_episodes=2, updates_per_episode=3, batch_size=4,
        chunk_length=10, final_eval_episodes=0, progress=False, device="cpu", max_wall_minutes=None,
        model=lp.RSSMConfig(deter=16, stoch=4, hidden=16, embed=16),
        planner=lp.CEMConfig(horizon=3, iterations=2, candidates=16, elites=4),
    )
    lp.train(config)
    return run_dir / "checkpoint.pt"
