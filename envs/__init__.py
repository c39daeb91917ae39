"""Environments for latentplan.

:func:`make` builds dm_control suite tasks (``"dmc:cartpole-swingup"``) and
Gymnasium ids (``"gym:Pendulum-v1"``) with ``[-1, 1]`` actions, PlaNet's action
repeat, and flat-state or pixel observations; :class:`LinearQuadratic` is an
LQR problem with a known optimal solution for testing planners. PlaNet's six tasks
(:data:`PLANET_TASKS`) are registered with Gymnasium on import, as
``gymnasium.make("latentplan/cartpole-swingup-v0")`` and so on.
"""

from .dmc import PLANET_ACTION_REPEAT
from .lqr import LinearQuadratic
from .presets import PLANET_TASKS, TASK_GROUPS, gym_id, register_gymnasium, resolve_tasks
from .registry import available_envs, make
from .wrappers import ActionRepeat, FlatObservation, NormalizeActions, PlanningEnv, validate_action

__all__ = [
    "make",
    "available_envs",
    "LinearQuadratic",
    "PLANET_ACTION_REPEAT",
    "PLANET_TASKS",
    "TASK_GROUPS",
    "gym_id",
    "register_gymnasium",
    "resolve_tasks",
    "ActionRepeat",
    "FlatObservation",
    "NormalizeActions",
    "PlanningEnv",
    "validate_action",
]

register_gymnasium()
