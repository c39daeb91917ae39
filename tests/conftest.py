import os

import torch

# The tests' models are tiny: one thread is faster than two and does not fight other processes.
torch.set_num_threads(1)
os.environ.setdefault("MUJOCO_GL", "egl")
