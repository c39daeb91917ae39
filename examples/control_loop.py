"""A trained model and a budgeted CEM as the real-time controller of a simulated cartpole at 20 Hz.

    OMP_NUM_THREADS=1 python examples/control_loop.py runs/cartpole_long.pt [sync|async|steps]

The robot is dm_control's cartpole running in wall-clock time: the model decides every 8 physics
steps of 10 ms (80 ms of simulated time), so at 20 Hz (50 ms per tick) the simulation runs 1.6x
faster than real time. While the controller thinks, the robot holds its last action and physics
goes on. The command-line equivalent: latentplan control --checkpoint runs/cartpole_long.pt --rate 20

`steps` writes the synchronous loop out with the controller's public steps (filter, plan,
fallback, record), as a loop of your own would.
"""

import sys
import time

import torch

import latentplan as lp
from latentplan.control import ControllerConfig, MPCController, SimulatedRobot, run_control_loop

torch.set_num_threads(1)
checkpoint = sys.argv[1] if len(sys.argv) > 1 else "runs/cartpole_long.pt"
mode = sys.argv[2] if len(sys.argv) > 2 else "async"
model, config, _ = lp.load_checkpoint(checkpoint)

rate_hz = 20.0
robot = SimulatedRobot("dmc:cartpole-swingup", real_time_factor=rate_hz * 8 * 0.01, seed=0)  # 1.6
planner = lp.CEM(horizon=12, iterations=4, candidates=50, elites=5)  # ~2,400 model evaluations
controller = MPCController(
    model, planner,
    # sync: each act() must return within 35 ms (the fallback answers otherwise);
    # async: the next tick is the deadline of the planner thread
    ControllerConfig(budget_ms=35.0 if mode == "sync" else None, mode="thread", warm_start=False),
)
print(f"warm-up plan: {controller.warmup(robot.reset(seed=0)):.0f} ms")
try:
    if mode in ("sync", "async"):
        stats = run_control_loop(robot, controller, rate_hz, mode=mode)  # until the episode ends (10 s simulated)
        print(stats.table())
    else:  # the sync loop by hand: one tick every 50 ms, the planner stopped 35 ms after the observation
        controller.reset()
        t0 = time.perf_counter()
        try:
            while not robot.done:
                t_obs = time.perf_counter()
                controller.filter(robot.read_observation())
                plan = controller.plan(deadline=t_obs + 0.035)
                action = plan.actions[0, 0] if plan is not None else controller.fallback()
                sent = controller.record(action, outcome="planned" if plan is not None else "failed",
                                         latency_ms=(time.perf_counter() - t_obs) * 1e3)
                robot.send_action(sent)
                time.sleep(max(0.0, t0 + controller.step / rate_hz - time.perf_counter()))
        except BaseException:  # Ctrl-C or an error: leave the robot on the safe action, as run_control_loop does
            robot.send_action(controller.safe_action.cpu().numpy())
            raise
        print(controller.stats().table(), f"\n  robot return            {robot.stats()['return']:.1f}")
except KeyboardInterrupt as err:  # run_control_loop already sent the safe action and kept the statistics
    stats = getattr(err, "loop_stats", None)
    print("interrupted", "" if stats is None else f"\n{stats.table()}")
finally:
    controller.close()
