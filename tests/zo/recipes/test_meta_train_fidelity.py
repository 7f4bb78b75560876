"""L2L behaviours pinned against upstream: multi-task history reset and loader restart per epoch (audit item 5),
and the loud warning for an SGD-sized LR_LLM copied under Adam (the copied-value trap)."""
import logging

import pytest
import torch

import tasks
from run_helpers import requires_shared_data
from test_meta_train import _l2l_config
from zo.l2l import MetaLearner, MetaStepResult, TrajectoryOptimizer
from zo.recipes.meta_train import L2LConfig, meta_train, warn_copied_values


@pytest.fixture
def history_spy(monkeypatch):
    """(epoch-free) list of (task, history seen by the step); steps are stubbed, history set to (step, -step)."""
    seen = []
    starts = {"n": 0}
    real_forever = tasks.TrainBatches.forever

    def forever(self):
        starts["n"] += 1
        return real_forever(self)

    def meta_step(self, loss_fn, batch, task="default"):
        state = self.state_for(task)
        seen.append((task, state.history))
        state.history = (float(len(seen)), -float(len(seen)))
        return MetaStepResult(0, 1.0, 1.0, 1.0, torch.ones(len(self.blocks)), 1.0)

    monkeypatch.setattr(MetaLearner, "meta_step", meta_step)
    monkeypatch.setattr(TrajectoryOptimizer, "step", lambda self, loss_fn, batch: 1.0)
    monkeypatch.setattr(tasks.TrainBatches, "forever", forever)
    return seen, starts


@requires_shared_data
@pytest.mark.parametrize("persistent", [False, True])
def test_multi_task_history_and_loaders_restart_each_epoch_as_upstream(tmp_path, tiny_llama_dir, history_spy,
                                                                       persistent):
    seen, starts = history_spy
    meta_train(_l2l_config(tiny_llama_dir, tmp_path / "run", multi_task_training=True, multi_task_name=["SST2", "Copa"],
                           num_train_epochs=3, epochs_per_restart=3, num_train=4, per_device_train_batch_size=2,
                           persistent_task_state=persistent))
    assert [t for t, _ in seen] == ["SST2", "Copa"] * 6  # 2 outer steps per epoch, 3 epochs
    first_of_epoch = [seen[0], seen[1], seen[4], seen[5], seen[8], seen[9]]
    if persistent:
        assert [h for _, h in first_of_epoch[2:]] == [(3.0, -3.0), (4.0, -4.0), (7.0, -7.0), (8.0, -8.0)]
        assert starts["n"] == 2  # one endless feed per task
    else:
        assert all(h == (0.0, 0.0) for _, h in first_of_epoch)  # upstream: history zeroed every epoch
        assert starts["n"] == 2 * 3  # a fresh loader per task and epoch
    # within an epoch the history carries on
    assert seen[2] == ("SST2", (1.0, -1.0)) and seen[3] == ("Copa", (2.0, -2.0))


@requires_shared_data
def test_single_task_history_is_not_reset_at_epochs(tmp_path, tiny_llama_dir, history_spy):
    seen, _ = history_spy
    meta_train(_l2l_config(tiny_llama_dir, tmp_path / "run", num_train_epochs=2, num_train=4,
                           per_device_train_batch_size=2))
    assert [h for _, h in seen] == [(0.0, 0.0), (1.0, -1.0), (2.0, -2.0), (3.0, -3.0)]


@pytest.mark.parametrize("optimizer, lr, warned", [("adam", 1e-2, True), ("adam", 1e-3, True), ("adam", 1e-5, False),
                                                   ("sgd", 1e-2, False)])
def test_sgd_sized_lr_llm_under_adam_is_warned(caplog, optimizer, lr, warned):
    with caplog.at_level(logging.INFO, logger="zo.recipes.meta_train"):
        messages = warn_copied_values(L2LConfig(trajectory_optimizer=optimizer, lr_llm=lr))
    assert bool(messages) == warned
    if warned:
        assert "TRAJECTORY_OPTIMIZER=sgd" in messages[0] and "10^3x too far" in messages[0]
        assert any(r.levelno == logging.WARNING and "10^3x" in r.getMessage() for r in caplog.records)
    assert any("NEED_NORMALIZATION=True" in r.getMessage() for r in caplog.records)


@requires_shared_data
def test_a_task_spec_file_is_a_task_for_meta_training(tmp_path, tiny_llama_dir, history_spy):
    from custom_task_helpers import ROWS, SENTIMENT_SPEC, write_task

    seen, _ = history_spy
    spec = write_task(tmp_path / "data", SENTIMENT_SPEC, ROWS)
    summary = meta_train(_l2l_config(tiny_llama_dir, tmp_path / "run", task_name=str(spec), num_train_epochs=1,
                                     num_train=4, num_dev=2, per_device_train_batch_size=2))
    assert summary["tasks"] == ["Reviews"] and [t for t, _ in seen] == ["Reviews", "Reviews"]
