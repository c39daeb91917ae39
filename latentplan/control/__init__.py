"""Real-time model-predictive control: the controller (`MPCController`, with its public steps
filter, predict, plan, act, record), the fixed-rate control loop (`run_control_loop`, synchronous or
with planning in a background thread and the plan indexed by time), the robot protocol and a
dm_control task running in wall-clock time as a simulated robot, and the settings of the
`latentplan control` command.

Modules: `controller` (the controller and its config), `loop` (both loops and their shared tick
bookkeeping), `robot` (`Robot`, `SimulatedRobot`), `stats` (the statistics records), `config`
(`ControlConfig`, the settings of `latentplan control`, whose runner is `latentplan.cli.control`).

The controller is the receding-horizon loop of PlaNet (Hafner et al. 2019) made safe for a real
robot; the asynchronous loop follows MuJoCo MPC (Howell et al. 2022, "Predictive Sampling:
Real-time Behaviour Synthesis with MuJoCo").
"""

from .config import ControlConfig
from .controller import ControllerConfig, MPCController
from .loop import AsyncLoop, SyncLoop, run_control_loop
from .robot import Robot, SimulatedRobot
from .stats import ControllerStats, LoopStats

__all__ = [
    "AsyncLoop", "ControlConfig", "ControllerConfig", "ControllerStats", "LoopStats", "MPCController", "Robot",
    "SimulatedRobot", "SyncLoop", "run_control_loop",
]
