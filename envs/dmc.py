"""DeepMind Control Suite tasks behind shimmy's Gymnasium compatibility wrapper.

Importing this module sets ``MUJOCO_GL=egl`` on Linux unless the variable is
already set: dm_control picks its OpenGL backend once, at its first import, and
EGL is the one that renders headless. dm_control itself is imported lazily.

Import order with PyTorch's CUDA build: Mesa's EGL (llvmpipe) and triton each
load their own LLVM, and importing triton after EGL is up kills the process
with a segmentation fault. PyTorch imports triton lazily (``torch._dynamo``,
which ``torch.optim.Adam`` pulls in), so before dm_control is first imported
this module imports triton where it is installed (see `load_triton_first`).
"""

from __future__ import annotations

import difflib
import importlib.util
import math
import os
import sys
import warnings

import numpy as np

if sys.platform.startswith("linux"):
    os.environ.setdefault("MUJOCO_GL", "egl")

#: PlaNet's action repeat per dm_control domain (Hafner et al., 2019).
PLANET_ACTION_REPEAT: dict[str, int] = {
    "cartpole": 8,
    "reacher": 4,
    "cheetah": 4,
    "finger": 2,
    "ball_in_cup": 4,
    "walker": 2,
}
DEFAULT_DMC_ACTION_REPEAT = 2
_CAMERA_ID = {"quadruped": 2}  # PlaNet's camera; 0 elsewhere

# domain -> (expected entry sizes, alias -> (entry, index)). Checked against the
# suite sources: cartpole "position" is (cart x, cos, sin) of the pole angle
# (0 = upright), "velocity" is qvel (cart, pole); pendulum "orientation" is
# (cos, sin) of the pole angle; ball_in_cup "position"/"velocity" are the
# qpos/qvel of the joints cup_x, cup_z, ball_x, ball_z.
_ALIASES: dict[str, tuple[dict[str, int], dict[str, tuple[str, int]]]] = {
    "cartpole": (
        {"position": 3, "velocity": 2},
        {"cart_x": ("position", 0), "pole_cos": ("position", 1), "pole_sin": ("position", 2),
         "cart_vel": ("velocity", 0), "pole_angvel": ("velocity", 1)},
    ),
    "pendulum": (
        {"orientation": 2, "velocity": 1},
        {"pole_cos": ("orientation", 0), "pole_sin": ("orientation", 1), "pole_angvel": ("velocity", 0)},
    ),
    "ball_in_cup": (
        {"position": 4, "velocity": 4},
        {"cup_x": ("position", 0), "cup_z": ("position", 1), "ball_x": ("position", 2),
         "ball_z": ("position", 3), "cup_vx": ("velocity", 0), "cup_vz": ("velocity", 1),
         "ball_vx": ("velocity", 2), "ball_vz": ("velocity", 3)},
    ),
}


def load_triton_first() -> bool:
    """Import triton now, if it is installed, so that it loads its LLVM before Mesa's EGL does.

    With PyTorch's CUDA build on a machine that renders with Mesa (``MUJOCO_GL=egl``, llvmpipe),
    importing triton after dm_control has brought up EGL crashes the process (two LLVMs in one
    process); importing it first is safe. Called before dm_control's first import; costs nothing
    where triton is absent (PyTorch's CPU build) or already imported.

    Returns:
        True if triton is loaded in this process afterwards.

    Warns:
        RuntimeWarning: if dm_control was imported before triton (by the user's own code), since
            a later ``import triton`` (e.g. by ``torch.optim.Adam``) may then crash the process.
    """
    if "triton" in sys.modules:
        return True
    if importlib.util.find_spec("triton") is None:
        return False
    if "dm_control" in sys.modules and os.environ.get("MUJOCO_GL", "").lower() == "egl":
        warnings.warn(
            "dm_control was imported before triton with MUJOCO_GL=egl: importing triton now (as "
            "torch.optim and torch.compile do) may crash the process; import latentplan, torch._dynamo "
            "or triton before dm_control",
            RuntimeWarning, stacklevel=3,
        )
        return False
    try:
        import triton  # noqa: F401  (loaded for its side effect: its LLVM comes first)
    except Exception:  # a broken triton install: torch falls back without it as well
        return False
    return True


def _suite():
    load_triton_first()
    try:
        from dm_control import suite
    except Exception as err:  # a broken OpenGL backend already fails at import
        raise RuntimeError(
            f"could not import dm_control.suite ({type(err).__name__}: {err}) with "
            f"MUJOCO_GL={os.environ.get('MUJOCO_GL')!r}; set MUJOCO_GL=egl (GPU, headless) or "
            "MUJOCO_GL=osmesa (CPU, needs libOSMesa) before dm_control is first imported"
        ) from err
    return suite


def dmc_names() -> list[str]:
    """All dm_control suite tasks as ``"dmc:<domain>-<task>"`` strings, in suite order."""
    return [f"dmc:{domain}-{task}" for domain, task in _suite().ALL_TASKS]


def add_aliases(domain: str, slices: dict[str, slice]) -> dict[str, slice]:
    """Return ``slices`` plus width-1 physical aliases (e.g. ``pole_cos``) for known domains.

    Aliases are added only if the entry sizes match the known layout (so e.g.
    cartpole-two_poles gets none).
    """
    out = dict(slices)
    if domain not in _ALIASES:
        return out
    sizes, aliases = _ALIASES[domain]
    if all(k in slices and slices[k].stop - slices[k].start == n for k, n in sizes.items()):
        for alias, (key, i) in aliases.items():
            start = slices[key].start + i
            out[alias] = slice(start, start + 1)
    return out


def load_dmc(domain: str, task: str, *, seed: int | None, image_size: int):
    """Load a suite task wrapped by ``shimmy.dm_control_compatibility.DmControlCompatibilityV0``.

    Args:
        domain, task: suite names, e.g. ``"cartpole"``, ``"swingup"``.
        seed: seed of the task's ``RandomState`` (None: fresh entropy).
        image_size: side of the frames produced by the returned ``render_fn``.

    Returns:
        ``(env, keys, step_limit, render_fn)``: the Gymnasium env (Dict
        observations, raw action bounds); the observation keys in dm_control's
        order; the episode limit in simulator steps (None if unlimited); a
        callable rendering the current state as uint8 ``[image_size, image_size, 3]``.

    Raises:
        ValueError: unknown domain/task; the message lists all ``dmc:`` names.
        RuntimeError: dm_control cannot be imported (OpenGL backend problem).
    """
    suite = _suite()
    if (domain, task) not in suite.ALL_TASKS:
        names = dmc_names()
        close = difflib.get_close_matches(f"dmc:{domain}-{task}", names, n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise ValueError(f"unknown dm_control task {domain}-{task}; {hint}available: {', '.join(names)}")
    from shimmy.dm_control_compatibility import DmControlCompatibilityV0

    camera_id = _CAMERA_ID.get(domain, 0)
    dm_env = suite.load(domain, task, task_kwargs={"random": seed})
    env = DmControlCompatibilityV0(dm_env, render_mode="rgb_array", render_kwargs={"camera_id": camera_id})
    keys = list(dm_env.observation_spec())
    limit = getattr(dm_env, "_step_limit", float("inf"))  # no public accessor in dm_control
    limit = math.ceil(limit) if np.isfinite(limit) else None  # dm_control ends at step_count >= limit

    def render_fn() -> np.ndarray:
        return dm_env.physics.render(height=image_size, width=image_size, camera_id=camera_id)

    return env, keys, limit, render_fn
