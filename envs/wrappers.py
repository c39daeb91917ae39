"""Small Gymnasium wrappers composed by :func:`latentplan.envs.make`.

The stack built by ``make`` is, from the inside out::

    simulator env -> ActionRepeat -> FlatObservation -> NormalizeActions -> PlanningEnv

so frames are rendered once per decision (not once per repeated step) and the
action checks see exactly what the caller passed.

Every wrapper records its constructor arguments (`gymnasium.utils.RecordConstructorArgs`), so a
Gymnasium env wrapped in them keeps a spec that `env.spec.make()` can rebuild, and Gymnasium's
`check_env` passes on the stack (`FlatObservation` does not record its `render_fn`, a callable:
a pixel `FlatObservation` is rebuilt through `latentplan.envs.make`, whose spec the stack carries).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces
from gymnasium.utils import RecordConstructorArgs


def validate_action(action: Any, shape: tuple[int, ...]) -> np.ndarray:
    """Convert ``action`` to a float64 array and check it.

    Args:
        action: array-like (numpy array, list, CPU tensor) of shape ``shape``.
        shape: the expected shape, e.g. ``(m,)``.

    Returns:
        A new float64 array of shape ``shape``.

    Raises:
        ValueError: if ``action`` is not numeric, has another shape (the message
            names the expected shape), or contains NaN/inf.
    """
    shape = tuple(shape)
    try:
        arr = np.array(action, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"action must be a numeric array of shape {shape}, got {type(action).__name__}"
        ) from err
    if arr.shape != shape:
        raise ValueError(f"expected an action of shape {shape}, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"action contains NaN or inf: {arr.tolist()}")
    return arr


def _resize_chw(frame: np.ndarray, size: int) -> np.ndarray:
    """Resize a uint8 ``[H, W, 3]`` frame to uint8 ``[3, size, size]`` (antialiased bilinear)."""
    if frame.shape[:2] == (size, size):
        return np.ascontiguousarray(frame.transpose(2, 0, 1))
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None].float()
    y = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return y[0].round().clamp(0, 255).to(torch.uint8).numpy()


class FlatObservation(gymnasium.Wrapper, RecordConstructorArgs):
    """Expose a flat float32 state vector, or rendered pixels, as the observation.

    The inner observation (a ``Box``, or a ``Dict`` of ``Box`` entries as produced
    by shimmy for dm_control) is flattened into one float32 vector ``[D]``; Dict
    entries are raveled and concatenated in ``keys`` order. ``obs_slices[key]``
    is the slice of entry ``key`` in that vector (``"observation"`` for a Box).

    With ``pixels=True`` the observation is instead a uint8 ``[3, S, S]`` frame
    (``S = image_size``) from ``render_fn``, taken once per ``step``/``reset``.
    In both modes ``info["state"]`` is the float32 state vector ``[D]``.

    Args:
        env: env with a ``Box`` or ``Dict``-of-``Box`` observation space.
        keys: order of the Dict entries; defaults to the space's order. Pass
            dm_control's own order: Gymnasium's ``Dict`` space sorts its keys.
        pixels: return pixels instead of the state vector.
        image_size: side ``S`` of pixel observations, in pixels (>= 1).
        render_fn: returns the current frame as uint8 ``[H, W, 3]``; other sizes
            are resized to ``S x S``. Required when ``pixels`` is true.
        name: env name used in error messages.

    Raises:
        ValueError: unsupported observation space, ``keys`` not matching it,
            or ``pixels`` without ``render_fn``.
        RuntimeError: from ``reset``/``step`` when the state is non-finite
            (physics divergence), the simulator fails, or rendering fails.
    """

    def __init__(
        self,
        env: gymnasium.Env,
        *,
        keys: Sequence[str] | None = None,
        pixels: bool = False,
        image_size: int = 64,
        render_fn: Callable[[], np.ndarray] | None = None,
        name: str = "env",
    ):
        keys = None if keys is None else list(keys)
        RecordConstructorArgs.__init__(self, keys=keys, pixels=pixels, image_size=image_size, name=name)
        super().__init__(env)
        self.name = name
        space = env.observation_space
        if isinstance(space, spaces.Dict):
            keys = list(space.spaces) if keys is None else list(keys)
            if sorted(keys) != sorted(space.spaces):
                raise ValueError(f"{name}: keys {keys} do not match observation keys {list(space.spaces)}")
            parts = [space[k] for k in keys]
        elif isinstance(space, spaces.Box):
            keys, parts = None, [space]
        else:
            raise ValueError(f"{name}: need a Box or Dict-of-Box observation space, got {space}")
        if not all(isinstance(p, spaces.Box) for p in parts):
            raise ValueError(f"{name}: every Dict entry must be a Box, got {space}")
        self._keys = keys
        self.obs_slices: dict[str, slice] = {}
        start = 0
        for key, part in zip(keys or ["observation"], parts):
            size = int(np.prod(part.shape, dtype=np.int64))
            self.obs_slices[key] = slice(start, start + size)
            start += size
        low = np.concatenate([np.ravel(p.low) for p in parts]).astype(np.float32)
        high = np.concatenate([np.ravel(p.high) for p in parts]).astype(np.float32)
        self.state_space = spaces.Box(low, high, dtype=np.float32)

        if pixels and render_fn is None:
            raise ValueError(f"{name}: pixel observations need a render_fn")
        self.pixels = bool(pixels)
        self.image_size = int(image_size)
        self._render_fn = render_fn
        if self.pixels:
            shape = (3, self.image_size, self.image_size)
            self.observation_space = spaces.Box(0, 255, shape, dtype=np.uint8)
        else:
            self.observation_space = self.state_space

    def state(self, raw: Any) -> np.ndarray:
        """Flatten one inner observation into the float32 state vector ``[D]``.

        Raises:
            RuntimeError: if the result contains NaN/inf (physics divergence).
        """
        if self._keys is None:
            flat = np.ravel(np.asarray(raw, dtype=np.float64))
        else:
            flat = np.concatenate([np.ravel(np.asarray(raw[k], dtype=np.float64)) for k in self._keys])
        flat = flat.astype(np.float32)
        if not np.all(np.isfinite(flat)):
            raise RuntimeError(
                f"{self.name}: simulator returned a non-finite observation (physics diverged): {flat.tolist()}"
            )
        return flat

    def frame(self) -> np.ndarray:
        """Render the current state as uint8 ``[3, S, S]``.

        Raises:
            RuntimeError: if rendering fails; the message says how to select a
                headless OpenGL backend (``MUJOCO_GL=egl`` or ``osmesa``).
        """
        try:
            img = self._render_fn()
        except Exception as err:
            raise RuntimeError(
                f"{self.name}: rendering failed ({type(err).__name__}: {err}). If this is an OpenGL "
                "problem (MuJoCo/dm_control), set MUJOCO_GL=egl (GPU, headless) or MUJOCO_GL=osmesa "
                "(CPU software rendering) before the first import of dm_control/mujoco; or use obs='state'."
            ) from err
        img = np.asarray(img)
        if img.ndim != 3 or img.shape[2] not in (3, 4) or img.dtype != np.uint8:
            raise RuntimeError(
                f"{self.name}: render returned {img.dtype} {img.shape}, expected uint8 [H, W, 3]"
            )
        return _resize_chw(img[..., :3], self.image_size)

    def _observe(self, raw: Any, info: dict) -> tuple[np.ndarray, dict]:
        state = self.state(raw)
        info = dict(info)
        info["state"] = state
        return (self.frame() if self.pixels else state.copy()), info

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Reset the inner env; returns ``(obs, info)`` with ``info["state"]``."""
        raw, info = self.env.reset(seed=seed, options=options)
        return self._observe(raw, info)

    def step(self, action):
        """Step the inner env; returns ``(obs, reward, terminated, truncated, info)``.

        Raises:
            RuntimeError: simulator failure (e.g. dm_control's ``PhysicsError``),
                non-finite state, or rendering failure; the message names the env.
        """
        try:
            raw, reward, terminated, truncated, info = self.env.step(action)
        except RuntimeError as err:
            raise RuntimeError(f"{self.name}: simulator failed (physics divergence?): {err}") from err
        obs, info = self._observe(raw, info)
        return obs, reward, terminated, truncated, info


class ActionRepeat(gymnasium.Wrapper, RecordConstructorArgs):
    """Apply each action ``repeat`` times and sum the rewards.

    Stops early when the inner env terminates or truncates mid-repeat; the
    returned observation/info are those of the last inner step taken.
    ``info["env_steps"]`` is the number of inner steps taken (1..repeat; 0 after
    ``reset``).

    Args:
        env: the env to wrap.
        repeat: number of inner steps per decision (int >= 1).

    Raises:
        ValueError: if ``repeat`` is not an int >= 1.
    """

    def __init__(self, env: gymnasium.Env, repeat: int):
        RecordConstructorArgs.__init__(self, repeat=repeat)
        super().__init__(env)
        if isinstance(repeat, bool) or not isinstance(repeat, (int, np.integer)) or repeat < 1:
            raise ValueError(f"action_repeat must be an int >= 1, got {repeat!r}")
        self.repeat = int(repeat)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Reset the inner env; ``info["env_steps"] = 0``."""
        obs, info = self.env.reset(seed=seed, options=options)
        return obs, {**info, "env_steps": 0}

    def step(self, action):
        """Step ``repeat`` times (fewer at episode end); returns the summed reward."""
        total = 0.0
        for n in range(1, self.repeat + 1):
            obs, reward, terminated, truncated, info = self.env.step(action)
            total += float(reward)
            if terminated or truncated:
                break
        return obs, total, terminated, truncated, {**info, "env_steps": n}


class NormalizeActions(gymnasium.ActionWrapper, RecordConstructorArgs):
    """Expose a float32 ``Box`` action space in ``[-1, 1]^m``.

    Incoming actions are checked with :func:`validate_action`, clipped to
    ``[-1, 1]`` and mapped linearly (affinely) onto the inner env's bounds
    ``[low, high]``: ``u = (high + low) / 2 + a * (high - low) / 2``; for inner
    bounds already ``[-1, 1]`` this is the identity, bit for bit.

    Args:
        env: env with a ``Box`` action space with finite bounds.

    Raises:
        ValueError: at construction if the inner action space is not a finite
            ``Box``; at ``step`` for a wrongly shaped or non-finite action.
    """

    def __init__(self, env: gymnasium.Env):
        RecordConstructorArgs.__init__(self)
        super().__init__(env)
        inner = env.action_space
        if not isinstance(inner, spaces.Box):
            raise ValueError(f"need a continuous Box action space, got {inner}")
        low, high = inner.low.astype(np.float64), inner.high.astype(np.float64)
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
            raise ValueError(f"the action space must have finite bounds, got {inner}")
        self._center = (high + low) / 2.0
        self._half = (high - low) / 2.0
        self._low, self._high = low, high
        self.action_space = spaces.Box(-1.0, 1.0, inner.shape, dtype=np.float32)

    def action(self, action: Any) -> np.ndarray:
        """Map a ``[-1, 1]`` action of shape ``[m]`` to the inner env's units."""
        a = np.clip(validate_action(action, self.action_space.shape), -1.0, 1.0)
        u = np.clip(self._center + self._half * a, self._low, self._high)
        return u.astype(self.env.action_space.dtype)


class PlanningEnv(gymnasium.Wrapper, RecordConstructorArgs):
    """Outermost wrapper returned by :func:`make`: metadata, seeding, episode checks.

    Attributes:
        env_name: the name given to ``make``, e.g. ``"dmc:cartpole-swingup"``.
        action_repeat: inner simulator steps per decision.
        max_episode_steps: decisions per episode (``ceil(limit / action_repeat)``),
            or ``None`` when the simulator has no time limit.
        obs_slices: name -> slice into the float32 state vector (the observation
            in state mode, ``info["state"]`` in pixel mode).
        render_mode: ``"rgb_array"`` when asked for at construction (``render()``
            then returns the simulator's frame), else ``None``.
        metadata: ``{"render_modes": ["rgb_array"], ...}`` when the simulator can
            render frames, so Gymnasium's ``check_env`` tests that mode through the spec.

    Seeding: the first ``reset()`` without a seed behaves as ``reset(seed=seed)``
    with the constructor's ``seed``; later unseeded resets continue that random
    stream, so a whole sequence of episodes is reproducible from ``seed``.
    ``reset(seed=k)`` reseeds the simulator and the action space (for
    ``action_space.sample()``) as if the env had been made with ``seed=k``.
    ``seed=None`` means fresh OS entropy.

    Raises:
        RuntimeError: from ``step`` before the first ``reset`` or after the
            episode terminated/truncated (dm_control would otherwise silently
            start a new episode).
    """

    def __init__(
        self,
        env: gymnasium.Env,
        *,
        env_name: str,
        action_repeat: int,
        max_episode_steps: int | None,
        obs_slices: dict[str, slice],
        seed: int | None,
        render_mode: str | None = None,
        render_modes: Sequence[str] = (),
    ):
        RecordConstructorArgs.__init__(
            self, env_name=env_name, action_repeat=action_repeat, max_episode_steps=max_episode_steps,
            obs_slices=dict(obs_slices), seed=seed, render_mode=render_mode, render_modes=list(render_modes),
        )
        super().__init__(env)
        self._render_mode = render_mode
        self.metadata = {**env.metadata, "render_modes": list(render_modes)}
        self.env_name = env_name
        self.action_repeat = int(action_repeat)
        self.max_episode_steps = max_episode_steps
        self.obs_slices = dict(obs_slices)
        self._pending_seed = seed
        self._needs_reset = True
        if seed is not None:
            self.action_space.seed(seed)

    @property
    def spec(self):
        """The env's ``EnvSpec``. For an env built by :func:`latentplan.envs.make` it is that call
        (entry point ``latentplan.envs.registry:make``, its arguments as ``kwargs``, no additional
        wrappers, since ``make`` builds them), so ``env.spec.make(**overrides)`` rebuilds the whole
        stack; otherwise Gymnasium's usual spec, with this wrapper appended."""
        inner = self.env.unwrapped.spec
        if inner is not None and inner.entry_point == "latentplan.envs.registry:make":
            return inner
        return super().spec

    @property
    def render_mode(self) -> str | None:
        """The render mode asked for at construction (``"rgb_array"`` or ``None``)."""
        return self._render_mode

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Start an episode; returns ``(obs, info)`` (see the class doc for seeding)."""
        if seed is None:
            seed = self._pending_seed
        self._pending_seed = None
        if seed is not None:
            self.action_space.seed(seed)
        obs, info = self.env.reset(seed=seed, options=options)
        self._needs_reset = False
        return obs, info

    def step(self, action):
        """Take one decision (``action_repeat`` simulator steps) with ``action`` in ``[-1, 1]^m``.

        Returns:
            ``(obs, reward, terminated, truncated, info)``; ``reward`` is the float sum
            over the repeated steps; ``info`` has ``"state"`` and ``"env_steps"``.

        Raises:
            ValueError: wrongly shaped or non-finite action.
            RuntimeError: episode not started/over, or simulator failure.
        """
        if self._needs_reset:
            raise RuntimeError(f"{self.env_name}: call reset() before step() (episode not started or over)")
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._needs_reset = bool(terminated or truncated)
        return obs, reward, terminated, truncated, info
