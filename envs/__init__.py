"""Environments for latentplan.

:func:`make` builds dm_control suite tasks (``"dmc:cartpole-swingup"``) and
Gymnasium ids (``"gym:Pendulum-v1"``) with ``[-1, 1]`` actions, PlaNet's action
repeat, and flat-state or pixel observations; :class:`LinearQuadratic` is an
LQR problem with a known optimal solution for testing planners.
"""

from .dmc import PLANET_ACTION_REPEAT
from .lqr import LinearQuadratic
from .registry import available_envs, make
from .wrappers import ActionRepeat, FlatObservation, NormalizeActions, PlanningEnv, validate_action

__all__ = [
    "make",
    "available_envs",
    "LinearQuadratic",
    "PLANET_ACTION_REPEAT",
    "ActionRepeat",
    "FlatObservation",
    "NormalizeActions",
    "PlanningEnv",
    "validate_action",
]
