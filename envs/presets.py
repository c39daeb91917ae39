"""PlaNet's six DeepMind Control tasks as named presets, registered with Gymnasium.

PlaNet (Hafner et al. 2019, "Learning Latent Dynamics for Planning from Pixels", Table 1 and
Appendix A) reports six tasks, each with its own action repeat; Dreamer, TD-MPC2 and later work
use the same six. Here they are ``make`` names (``"dmc:cartpole-swingup"``: PlaNet's action
repeat by default) and Gymnasium ids (``gymnasium.make("latentplan/cartpole-swingup-v0")``,
observations from state unless ``obs="pixels"`` is passed), registered when
``latentplan.envs`` is imported.
"""

from __future__ import annotations

import gymnasium

__all__ = ["PLANET_TASKS", "TASK_GROUPS", "gym_id", "register_gymnasium", "resolve_tasks"]

#: PlaNet's six tasks in the order of its Table 1, with their action repeats.
PLANET_TASKS: dict[str, int] = {
    "dmc:cartpole-swingup": 8,
    "dmc:reacher-easy": 4,
    "dmc:cheetah-run": 4,
    "dmc:finger-spin": 2,
    "dmc:ball_in_cup-catch": 4,
    "dmc:walker-walk": 2,
}

#: Named groups of tasks (``latentplan suite --tasks planet6``).
TASK_GROUPS: dict[str, tuple[str, ...]] = {"planet6": tuple(PLANET_TASKS)}


def gym_id(name: str) -> str:
    """The Gymnasium id of a preset, e.g. ``"dmc:walker-walk"`` -> ``"latentplan/walker-walk-v0"``.

    Raises:
        ValueError: if ``name`` is not one of :data:`PLANET_TASKS` (the message lists them).
    """
    if name not in PLANET_TASKS:
        raise ValueError(f"no Gymnasium id for {name!r}: the registered presets are {list(PLANET_TASKS)}")
    return f"latentplan/{name.partition(':')[2]}-v0"


def resolve_tasks(tasks: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Expand group names (``"planet6"``) and short names (``"cartpole-swingup"`` -> ``"dmc:cartpole-swingup"``)
    into ``make`` names, keeping their order and dropping repeats.

    Raises:
        ValueError: for an empty list, or a name that is no group and has no ``dmc:``/``gym:`` prefix
            after expansion (the message lists the groups).
    """
    items = [tasks] if isinstance(tasks, str) else list(tasks)
    out: list[str] = []
    for item in items:
        if item in TASK_GROUPS:
            out.extend(TASK_GROUPS[item])
        elif item.startswith(("dmc:", "gym:")):
            out.append(item)
        elif f"dmc:{item}" in PLANET_TASKS:
            out.append(f"dmc:{item}")
        else:
            raise ValueError(f"unknown task {item!r}: give a group ({', '.join(TASK_GROUPS)}), a PlaNet task "
                             f"({', '.join(n.partition(':')[2] for n in PLANET_TASKS)}) or a 'dmc:'/'gym:' name")
    if not out:
        raise ValueError("no tasks given")
    return tuple(dict.fromkeys(out))


def register_gymnasium() -> list[str]:
    """Register each of :data:`PLANET_TASKS` with Gymnasium as ``latentplan/<domain>-<task>-v0``.

    The entry point is ``latentplan.envs.make`` with ``obs="state"`` and PlaNet's action repeat;
    ``gymnasium.make(id, obs="pixels", seed=3)`` passes other arguments through. The spec's
    ``max_episode_steps`` is the decisions per episode (1000 simulator steps / action repeat), the
    limit at which the simulator itself truncates. Idempotent: ids already registered are kept.

    Returns:
        The ids registered by this call.
    """
    added = []
    for name, repeat in PLANET_TASKS.items():
        env_id = gym_id(name)
        if env_id in gymnasium.registry:
            continue
        gymnasium.register(
            id=env_id, entry_point="latentplan.envs.registry:make", kwargs={"name": name, "obs": "state"},
            max_episode_steps=-(-1000 // repeat), disable_env_checker=True, order_enforce=False,
        )
        added.append(env_id)
    return added
