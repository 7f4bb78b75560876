"""--length_groups in fine-tuning: the same run up to rounding, also with paired forwards; refused where
there is no encoded batch."""
import pytest

from conftest import SHARED_DATA
from run_helpers import read_jsonl, requires_shared_data
from zo.recipes.finetune import FineTuneConfig, fine_tune

pytestmark = requires_shared_data


def _steps(tmp_path, model_dir, name, **extra):
    out = tmp_path / name
    settings = dict(task_name="CB", model_name=str(model_dir), data_dir=str(SHARED_DATA), output_dir=str(out),
                    train_mode="mezo", max_steps=4, eval_steps=0, num_train=16, num_dev=2, num_eval=2,
                    per_device_train_batch_size=8, learning_rate=1e-3, zo_eps=1e-3, threads=1, progress=False)
    fine_tune(FineTuneConfig(**{**settings, **extra}))
    steps = [r for r in read_jsonl(out / "train_log.jsonl") if r["kind"] == "step"]
    return [r[key] for r in steps for key in ("loss_plus", "loss_minus")]


def test_grouped_batches_take_the_same_steps_up_to_rounding(tmp_path, tiny_llama_dir):
    plain = _steps(tmp_path, tiny_llama_dir, "plain")
    grouped = _steps(tmp_path, tiny_llama_dir, "grouped", length_groups=3)
    assert len(grouped) == len(plain) == 8  # 4 steps, L+ and L-
    assert grouped == pytest.approx(plain, rel=1e-5)
    assert grouped != plain  # the micro-batches really ran (only rounding tells them apart)
    # paired forwards pair each micro-batch's call: bit for bit the two-forward losses
    assert _steps(tmp_path, tiny_llama_dir, "paired", length_groups=3, pair_forwards=True) == grouped


def test_length_groups_refused_when_meaningless():
    with pytest.raises(ValueError, match="length_groups must be >= 1"):
        FineTuneConfig(task_name="CB", train_mode="mezo", length_groups=0).validate()
    with pytest.raises(ValueError, match="non_diff"):
        FineTuneConfig(task_name="SQuAD", train_mode="mezo", length_groups=2, non_diff=True).validate()


@pytest.mark.parametrize("mode", ["zo_fine_tuner", "mezo_adam", "hizoo", "lozo", "fzoo", "fo_adam"])
def test_every_method_takes_grouped_batches(tmp_path, tiny_llama_dir, tiny_llama_bank, mode):
    extra = {"train_mode": mode, "max_steps": 2}
    if mode == "zo_fine_tuner":
        extra["load_mlp_path"] = str(tiny_llama_bank[0])
    plain = _steps(tmp_path, tiny_llama_dir, "plain", **extra)
    assert _steps(tmp_path, tiny_llama_dir, "grouped", length_groups=3, **extra) == pytest.approx(plain, rel=1e-4)
