"""The `latentplan` command: one tyro subcommand per job, each generated from its frozen config
dataclass, so `latentplan <command> --help` lists every field with its documentation.

    latentplan train    PlaNet's training loop (`TrainConfig`)
    latentplan demo     the embedded default run (`demo_config()`), the README's main job
    latentplan compare  planners on one checkpoint at equal budgets (`CompareConfig`)
    latentplan control  a planner as a real-time controller of a simulated robot (`ControlConfig`)
    latentplan distill  a planner distilled into a policy network (`DistillRunConfig`)
    latentplan suite    a grid of training runs, tasks x recipes x seeds, on Ray (`SuiteConfig`)

Each command's runner lives in its own module of this package and is imported only when run.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Union

__all__ = ["COMMANDS", "Command", "main"]


@dataclass(frozen=True)
class Command:
    """One subcommand.

    Attributes:
        config: `"module:Class"` of the frozen config dataclass its flags are generated from.
        runner: `"module:function"`, `function(config, args) -> exit code`.
        default: `"module:function"` returning the default config, or `None` when the config has
            required fields (then every default is the dataclass's own).
        help: the one-line summary in `latentplan --help`.
    """

    config: str
    runner: str
    default: str | None
    help: str


COMMANDS: dict[str, Command] = {
    "train": Command("latentplan.config:TrainConfig", "latentplan.cli.train:run_train", "latentplan.config:TrainConfig",
                     "PlaNet's training loop; with --resume the run folder's own config is the default"),
    "demo": Command("latentplan.config:TrainConfig", "latentplan.cli.train:run_demo", "latentplan.config:demo_config",
                    "the embedded default: a CPU-sized run on dmc:cartpole-swingup from state, ending with a "
                    "5-episode evaluation (4-8 minutes on 2 cores; it stops by 15)"),
    "compare": Command("latentplan.compare:CompareConfig", "latentplan.cli.compare:run", None,
                       "several planners on one checkpoint, the same seeds and budgets: a table, JSON, CSV, a plot"),
    "control": Command("latentplan.control:ControlConfig", "latentplan.cli.control:run", None,
                       "a planner as a real-time controller of a simulated robot"),
    "distill": Command("latentplan.distillation:DistillRunConfig", "latentplan.cli.distill:run", None,
                       "distil a planner into a policy network on a checkpoint"),
    "suite": Command("latentplan.suite:SuiteConfig", "latentplan.cli.suite:run", "latentplan.suite:SuiteConfig",
                     "a grid of training runs (tasks x recipes x seeds) on Ray or in-process: one table, one figure"),
}


def _load(ref: str) -> Any:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


class NothingToResume(ValueError):
    """`--resume` names a folder that holds neither a checkpoint nor a `config.json`."""


def _flag_value(args: list[str], names: tuple[str, ...]) -> str | None:
    """The value of the last of `--name VALUE` / `--name=VALUE` in `args`, for any spelling in `names`."""
    value = None
    for i, a in enumerate(args):
        if a in names and i + 1 < len(args):
            value = args[i + 1]
        elif a.startswith(tuple(f"{n}=" for n in names)):
            value = a.split("=", 1)[1]
    return value


def _stored_config(args: list[str], default: Any) -> Any:
    """With `--resume`, the run's own config, with `resume` on: the run's settings become the
    defaults the flags override. The checkpoint's config comes first (every session rewrites it at
    its start, so it is the latest session's, extensions included); `config.json` when there is no
    checkpoint yet (a run stopped before its first: it starts afresh with that config).

    With neither, a new run starts from the flags given (one line says so), or, when no flag
    but `--run-dir` and `--resume` was given, `NothingToResume` is raised (most likely a typo in
    `--run-dir`; the default config would start PlaNet's full 1000-episode run).

    Raises:
        NothingToResume: the folder holds neither and no other flag was given.
    """
    if "--resume" not in args:
        return default
    run_dir = _flag_value(args, ("--run-dir", "--run_dir")) or default.run_dir
    from latentplan.training import read_run_checkpoint

    try:
        stored = read_run_checkpoint(run_dir).config["train"]
    except FileNotFoundError:
        try:
            stored = json.loads((Path(run_dir) / "config.json").read_text())
        except (OSError, json.JSONDecodeError):
            given = [a for a in args if a.startswith("--") and a != "--resume"
                     and not a.startswith(("--run-dir", "--run_dir"))]
            if not given:  # nothing there and no config given: most likely a typo in the folder's name
                raise NothingToResume(f"nothing to resume in {run_dir}: it holds no checkpoint.pt and no "
                                      "config.json; drop --resume to start a new run there") from None
            print(f"latentplan: nothing to resume in {run_dir} (no checkpoint.pt, no config.json): starting a new "
                  "run from the flags given", file=sys.stderr)
            return dataclasses.replace(default, resume=True)
        print(f"latentplan: {run_dir} holds no checkpoint yet (the run stopped before its first): starting it "
              "afresh from its config.json", file=sys.stderr)
    except ValueError:
        return default  # a damaged checkpoint: the Trainer says why it cannot resume
    return dataclasses.replace(type(default).from_dict(stored), resume=True, overwrite=False)


def _cli_type(name: str | None, args: list[str]) -> Any:
    """The union of all subcommands; only the one being run builds its (possibly stored) default."""
    import tyro

    options = []
    for cmd_name, cmd in COMMANDS.items():
        default = None
        if cmd.default is not None and cmd_name == name:
            default = _stored_config(args, _load(cmd.default)())
        elif cmd.default is not None:
            default = _load(cmd.default)()
        marker = tyro.conf.subcommand(cmd_name, default=default, description=cmd.help)
        options.append(Annotated[_load(cmd.config), marker])
    return Union[tuple(options)]  # noqa: UP007 (a runtime union of Annotated types)


def _command_type(name: str, args: list[str]) -> tuple[Any, Any]:
    """`(config type, default)` of command `name`; the default is the run's stored config with
    `--resume` (`_stored_config`; for `distill`, the unfinished run's in `--out`), `None` when the
    config has required fields."""
    cmd = COMMANDS[name]
    default = None if cmd.default is None else _stored_config(args, _load(cmd.default)())
    if name == "distill" and "--resume" in args:  # the killed run's own config: its flags need not be repeated
        from latentplan.distill_run_state import stored_config
        from latentplan.distillation import DistillConfig, DistillRunConfig

        out = _flag_value(args, ("--out",)) or "runs/distill"
        stored = stored_config(out)
        if stored is None and _flag_value(args, ("--checkpoint",)) is None:
            raise NothingToResume(f"nothing to resume in {out}: it holds no unfinished distillation run "
                                  "(distiller.pt); give --checkpoint and the run's flags to start one there")
        if stored is not None:
            default = DistillRunConfig(**{**stored, "distill": DistillConfig.from_dict(stored["distill"]),
                                          "resume": True, "out": out})
    return _load(cmd.config), default


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `latentplan` script: parse the subcommand and its flags, run it.

    Returns:
        The exit code: 0 on success, 2 for bad flags, an unknown command or bad input (the
        runners print the reason to stderr), 130 after an interruption.
    """
    import tyro

    argv = list(sys.argv[1:] if argv is None else argv)
    name = argv[0] if argv and argv[0] in COMMANDS else None
    try:
        cli_type, default = (_cli_type(name, argv[1:]), None) if name is None else _command_type(name, argv[1:])
    except (NothingToResume, TypeError, ValueError) as err:  # --resume: nothing there, or a config this version cannot read
        print(f"latentplan {name}: {err}", file=sys.stderr)
        return 2
    try:
        if name is None:  # no or an unknown command: the union, for the top-level help and its error
            config = tyro.cli(cli_type, args=argv, prog="latentplan",
                              description="Planning and model-predictive control over one learned latent dynamics model.")
        else:  # the command's own type: its errors and suggestions name only its flags
            config = tyro.cli(cli_type, args=argv[1:], default=default, prog=f"latentplan {name}",
                              description=COMMANDS[name].help)
    except SystemExit as exit_:  # --help (0) or a parse error (2), already printed by tyro
        return exit_.code if isinstance(exit_.code, int) else 2
    runner: Callable[[Any, list[str]], int] = _load(COMMANDS[name].runner)
    return int(runner(config, argv[1:]) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
