"""Everything an L2L run's future depends on, as one checkpoint dict, and back.

Bank and bank optimizer, theta, the trajectory optimizer and its schedule, the per-task PertNN state
(sigma_prev, loss history), the seed stream of the meta steps. The recipe adds its own part (schedule
position, data feeds, the task-order RNG, counters); zo.run.rng covers the global RNGs (dropout).
"""
from __future__ import annotations

from zo.l2l import MetaLearner, TrajectoryOptimizer


def learner_state(learner: MetaLearner, trajectory: TrajectoryOptimizer) -> dict:
    return {"model": learner.model.state_dict(), "bank": learner.bank.state_dict(),
            "bank_optimizer": learner.bank_optimizer.state_dict(),
            "seed_rng": learner.seed_rng.bit_generator.state,
            "task_states": {task: s.state_dict() for task, s in learner.states.items()},
            "trajectory": {"optimizer": trajectory.optimizer.state_dict(),
                           "scheduler": trajectory.scheduler.state_dict()}}


def load_learner_state(learner: MetaLearner, trajectory: TrajectoryOptimizer, state: dict) -> None:
    learner.model.load_state_dict(state["model"])
    learner.bank.load_state_dict(state["bank"])
    learner.bank_optimizer.load_state_dict(state["bank_optimizer"])
    learner.seed_rng.bit_generator.state = state["seed_rng"]
    learner.states = {}
    for task, saved in state["task_states"].items():
        learner.state_for(task).load_state_dict(saved)
    trajectory.optimizer.load_state_dict(state["trajectory"]["optimizer"])
    trajectory.scheduler.load_state_dict(state["trajectory"]["scheduler"])


