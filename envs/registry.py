"""``make``: one entry point for dm_control suite tasks and Gymnasium ids."""

from __future__ import annotations

import difflib
import math
from typing import Any

import gymnasium
import numpy as np
from gymnasium.envs.registration import EnvSpec, load_env_creator

from .dmc import DEFAULT_DMC_ACTION_REPEAT, PLANET_ACTION_REPEAT, add_aliases, dmc_names, load_dmc
from .wrappers import ActionRepeat, FlatObservation, NormalizeActions, PlanningEnv

PREFIXES = ("dmc:", "gym:")
OBS_MODES = ("state", "pixels")


def available_envs() -> list[str]:
    """Names of all dm_control suite tasks in ``make`` form, e.g. ``"dmc:cartpole-swingup"``.

    Any registered Gymnasium id also works as ``"gym:<id>"``.

    Raises:
        RuntimeError: if dm_control cannot be imported (OpenGL backend problem).
    """
    return dmc_names()


def _load_gym(gym_id: str, *, pixels: bool, render_mode: str | None = None):
    try:
        spec = gymnasium.spec(gym_id)
    except gymnasium.error.Error as err:
        ids = sorted(gymnasium.registry)
        close = difflib.get_close_matches(gym_id, ids, n=5)
        raise ValueError(
            f"unknown Gymnasium id {gym_id!r} ({err}); close matches: {close}; registered ids: {', '.join(ids)}"
        ) from err
    creator = spec.entry_point
    if isinstance(creator, str):
        creator = load_env_creator(creator)
    modes = list(getattr(creator, "metadata", {}).get("render_modes") or [])
    if not (pixels or render_mode):
        env = gymnasium.make(spec)
    else:
        if "rgb_array" not in modes:
            raise ValueError(
                f"gym:{gym_id} cannot render 'rgb_array' frames (render modes: {modes}), "
                "so obs='pixels' and render_mode='rgb_array' are unavailable; use obs='state'"
            )
        env = gymnasium.make(spec, render_mode="rgb_array")
    limit = env.spec.max_episode_steps if env.spec is not None else None
    return env, limit, env.render, ["rgb_array"] if "rgb_array" in modes else []


def _prefix_hint(name: Any) -> str:
    """`"; did you mean 'dmc:...'?"` when `name` is a dm_control task or a Gymnasium id given
    without its prefix (or with `:` in place of `-`), else `""`."""
    if not isinstance(name, str):
        return ""
    guesses = [f"dmc:{name}", f"dmc:{name.replace(':', '-')}", f"gym:{name}"]
    try:
        known = set(dmc_names())
    except Exception:  # dm_control missing or broken: no dm_control guess
        known = set()
    known |= {f"gym:{env_id}" for env_id in gymnasium.registry}
    found = [g for g in dict.fromkeys(guesses) if g in known]
    return f"; did you mean {found[0]!r}?" if found else ""


def make(
    name: str,
    *,
    obs: str = "state",
    action_repeat: int | None = None,
    seed: int | None = 0,
    image_size: int = 64,
    render_mode: str | None = None,
) -> gymnasium.Env:
    """Build an environment with ``[-1, 1]`` actions and flat-state or pixel observations.

    Args:
        name: ``"dmc:<domain>-<task>"`` (dm_control suite, e.g. ``"dmc:walker-walk"``)
            or ``"gym:<id>"`` (any Gymnasium id, e.g. ``"gym:Pendulum-v1"``).
        obs: ``"state"``: float32 ``[D]`` vector, the simulator's observation entries
            flattened in their own order. ``"pixels"``: uint8 ``[3, S, S]`` frame
            (dm_control: ``physics.render`` with camera 0, 2 for quadruped; gym:
            ``env.render()`` resized), with the state still in ``info["state"]``.
        action_repeat: simulator steps per decision; default PlaNet's value for
            the domain (:data:`PLANET_ACTION_REPEAT`), else 2 for dm_control, 1 for gym.
        seed: seed of the first episode; ``None`` for fresh entropy. Semantics: the
            first ``reset()`` acts as ``reset(seed=seed)``; later unseeded resets
            continue the stream; ``reset(seed=k)`` reseeds.
        image_size: side ``S`` of pixel observations, in pixels.
        render_mode: ``None`` or ``"rgb_array"`` (Gymnasium's convention: ``env.render()``
            returns the simulator's frame, uint8 ``[H, W, 3]``); the observation is unchanged.

    Returns:
        A ``gymnasium.Env`` (a :class:`PlanningEnv`) with ``action_space`` =
        float32 ``Box(-1, 1, (m,))`` (affinely rescaled to the simulator's bounds;
        out-of-range actions are clipped) and attributes ``env_name``,
        ``action_repeat``, ``max_episode_steps`` (decisions per episode; 125 for
        cartpole, whose 1000-step limit is kept) and ``obs_slices`` (entry name ->
        slice of the state vector, plus aliases such as ``pole_cos`` for known
        tasks). ``step`` sums rewards over the repeated steps, stops early at
        termination/truncation, and puts ``"state"`` and ``"env_steps"`` in info.
        ``env.spec`` rebuilds the same env (``env.spec.make()``, entry point this
        function, the arguments as its ``kwargs``), so Gymnasium's ``check_env`` and
        vector envs work on it.

    Raises:
        ValueError: unknown prefix (lists ``"dmc:"``, ``"gym:"``), unknown
            dm_control task (lists ``available_envs()``) or Gymnasium id, bad
            ``obs`` (lists ``"state"``, ``"pixels"``), bad ``action_repeat``,
            ``image_size`` or ``render_mode``, a ``seed`` that is not None or an int in
            ``[0, 2**32 - 1]``, a non-Box action space, or pixels / ``render_mode="rgb_array"``
            on a gym env without ``rgb_array`` rendering or whose first frame fails to render
            (e.g. pygame missing).
        RuntimeError: dm_control cannot be imported or cannot render (the message
            says to set ``MUJOCO_GL=egl`` or ``osmesa``).
    """
    if obs not in OBS_MODES:
        raise ValueError(f"obs must be one of {list(OBS_MODES)}, got {obs!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be an int >= 1, got {image_size!r}")
    if render_mode not in (None, "rgb_array"):
        raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
    seed = _check_seed(seed)
    pixels = obs == "pixels"
    prefix, sep, rest = name.partition(":") if isinstance(name, str) else ("", "", "")
    if not sep or prefix + ":" not in PREFIXES:
        raise ValueError(f"unknown env {name!r}: the name must start with one of {list(PREFIXES)}{_prefix_hint(name)}")

    if prefix == "dmc":
        domain, _, task = rest.partition("-")
        base, keys, limit, render_fn = load_dmc(domain, task, seed=seed, image_size=image_size)
        default_repeat = PLANET_ACTION_REPEAT.get(domain, DEFAULT_DMC_ACTION_REPEAT)
        render_modes = ["rgb_array"]
    else:
        domain, keys = None, None
        base, limit, render_fn, render_modes = _load_gym(rest, pixels=pixels, render_mode=render_mode)
        default_repeat = 1
    repeat = default_repeat if action_repeat is None else action_repeat

    try:
        env = ActionRepeat(base, repeat)
        env = FlatObservation(env, keys=keys, pixels=pixels, image_size=image_size, render_fn=render_fn, name=name)
        if pixels and domain is not None:
            env.frame()  # fail here, not at the first reset, if rendering is broken
        elif pixels or render_mode:
            _probe_gym_render(base, name, seed)
        slices = add_aliases(domain, env.obs_slices) if domain else env.obs_slices
        env = NormalizeActions(env)
    except Exception:
        base.close()
        raise
    max_steps = None if limit is None else math.ceil(limit / repeat)
    # the spec that rebuilds this env: set on the simulator, so every wrapper above appends its own
    kwargs = {"name": name, "obs": obs, "action_repeat": action_repeat, "seed": seed, "image_size": image_size,
              "render_mode": render_mode}
    _set_spec(env, EnvSpec(id=spec_id(name), entry_point="latentplan.envs.registry:make", kwargs=kwargs,
                           max_episode_steps=None, order_enforce=False, disable_env_checker=True))
    return PlanningEnv(
        env, env_name=name, action_repeat=repeat, max_episode_steps=max_steps, obs_slices=slices, seed=seed,
        render_mode=render_mode, render_modes=render_modes,
    )


def _check_seed(seed: Any) -> int | None:
    """``seed`` as a Python int in ``[0, 2**32 - 1]`` (numpy ints accepted), or None.

    Raises:
        ValueError: a bool, a non-integer, or an int outside that range (both simulators' seeds
            are unsigned 32-bit).
    """
    if seed is None:
        return None
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be None or an int in [0, 2**32 - 1], got {seed!r} ({type(seed).__name__})")
    if not 0 <= int(seed) <= 2**32 - 1:
        raise ValueError(f"seed must be in [0, 2**32 - 1] (an unsigned 32-bit seed), got {int(seed)}")
    return int(seed)


def _probe_gym_render(base: gymnasium.Env, name: str, seed: int | None) -> None:
    """Reset ``base`` and render one frame, so that a gym env that cannot render (a missing
    pygame, a broken display) fails in ``make`` and not at the first reset. The first
    ``reset`` of the returned env reseeds with ``seed``, so the probe does not change the
    episodes' stream (with ``seed=None`` the stream is fresh entropy either way).

    Raises:
        ValueError: rendering fails; the message names the env and the error.
    """
    try:
        base.reset(seed=seed)
        frame = base.render()
    except Exception as err:
        raise ValueError(
            f"{name} cannot render frames here ({type(err).__name__}: {err}); obs='pixels' and "
            "render_mode='rgb_array' need its rendering dependencies (e.g. pip install \"gymnasium[classic-control]\" "
            "for pygame); or use obs='state'"
        ) from err
    if frame is None:
        raise ValueError(f"{name} rendered no frame (render() returned None); use obs='state'")


def _set_spec(env: gymnasium.Env, spec: EnvSpec) -> None:
    """Give the simulator under ``env`` the spec ``spec`` and drop the specs the wrappers cached."""
    env.unwrapped.spec = spec
    layer = env
    while isinstance(layer, gymnasium.Wrapper):
        layer._cached_spec = None
        layer = layer.env


def spec_id(name: str) -> str:
    """The Gymnasium id of a ``make`` name: ``"dmc:cartpole-swingup"`` -> ``"latentplan/cartpole-swingup-v0"``,
    ``"gym:Pendulum-v1"`` -> ``"latentplan/gym-Pendulum-v1"`` (``/`` in a namespaced gym id becomes ``.``)."""
    prefix, _, rest = name.partition(":")
    if prefix == "dmc":
        return f"latentplan/{rest}-v0"
    return "latentplan/gym-" + rest.replace("/", ".")
