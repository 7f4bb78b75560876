"""--config FILE.yaml: the file sets defaults, flags override it; an unknown key or a wrong type is one error
naming the key; every shipped configs/*.yaml is valid for its recipe."""
import argparse
import dataclasses

import pytest

import run_l2l
import run_zo_fine_tuner
from conftest import REPO_ROOT, SHARED_DATA
from run_helpers import requires_shared_data
from zo.cli import load_yaml_config, run_main
from zo.recipes.finetune import FineTuneConfig
from zo.recipes.meta_train import L2LConfig


@pytest.fixture
def captured(monkeypatch):
    seen = {}
    monkeypatch.setattr(run_zo_fine_tuner, "fine_tune", lambda config: seen.setdefault("ft", config))
    monkeypatch.setattr(run_l2l, "meta_train", lambda config: seen.setdefault("l2l", config))
    return seen


def test_flags_override_the_yaml_file(tmp_path, captured):
    path = tmp_path / "c.yaml"
    path.write_text("task_name: Copa\nlearning_rate: 1e-5\nmax_steps: 7\nnum_dev: null\nnon_diff: false\n")
    run_zo_fine_tuner.main(["--config", str(path), "--max_steps", "9"])
    config = captured["ft"]
    assert (config.task_name, config.learning_rate, config.max_steps, config.num_dev) == ("Copa", 1e-5, 9, None)
    assert config.eval_steps == FineTuneConfig().eval_steps  # neither in the file nor a flag: the default


def test_l2l_yaml_with_a_task_list(tmp_path, captured):
    path = tmp_path / "l.yaml"
    path.write_text("multi_task_training: true\nmulti_task_name: [SST2, Copa]\nlr_llm: 2.0e-5\n")
    run_l2l.main(["--config", str(path)])
    assert captured["l2l"].multi_task_name == ["SST2", "Copa"] and captured["l2l"].lr_llm == 2e-5


@pytest.mark.parametrize("text, fragments", [
    ("learning_rat: 1.0e-6\n", ["unknown key 'learning_rat'", "did you mean 'learning_rate'"]),
    ("max_steps: 1.5\n", ["max_steps must be int", "1.5"]),
    ("max_steps: '100'\n", ["max_steps must be int", "'100'"]),
    ("need_normalization: maybe\n", ["need_normalization must be bool", "'maybe'"]),
    ("learning_rate: fast\n", ["learning_rate must be float", "'fast'"]),
    ("num_dev: [1]\n", ["num_dev must be int or null"]),
    ("- a\n- b\n", ["expected a mapping"]),
])
def test_bad_yaml_is_one_error_naming_the_key(tmp_path, caplog, text, fragments, captured):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SystemExit) as info:
        run_main(lambda: run_zo_fine_tuner.main(["--config", str(path)]))
    assert info.value.code == 2 and "ft" not in captured
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and str(path) in errors[0], errors
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])


@pytest.mark.parametrize("name, cls", [("smollm2_bank.yaml", L2LConfig), ("compare_banks.yaml", FineTuneConfig),
                                       ("finetune_sst2.yaml", FineTuneConfig)])
def test_shipped_configs_are_valid(name, cls):
    values = load_yaml_config(REPO_ROOT / "configs" / name, cls)
    cls(**values)  # every key is a field of the recipe's config
    assert values


def test_smollm2_bank_yaml_matches_the_script():
    script = (REPO_ROOT / "scripts" / "train_smollm2_bank.sh").read_text()
    values = load_yaml_config(REPO_ROOT / "configs" / "smollm2_bank.yaml", L2LConfig)
    for env, key in (("EPOCH=${EPOCH:-", "num_train_epochs"), ("EPOCHS_PER_RESTART=", "epochs_per_restart"),
                     ("BS=", "per_device_train_batch_size"), ("LR_LLM=", "lr_llm"), ("LR_MLP=", "lr_mlp"),
                     ("LR_UPDATE=", "lr_update"), ("ZO_EPS=", "zo_eps"), ("MAX_STEPS=${MAX_STEPS:-", "max_steps")):
        value = script.split(env, 1)[1].split()[0].rstrip("}")
        assert float(value) == float(values[key]), (key, value, values[key])
    assert "--mlp_optimizer adam" in script and values["mlp_optimizer"] == "adam"
    assert "--save_every_steps 20" in script and values["save_every_steps"] == 20


@requires_shared_data
@pytest.mark.parametrize("entry", ["fine-tune", "l2l"])
def test_truncated_bank_is_one_error_naming_the_file(tmp_path, tiny_llama_dir, tiny_llama_bank, caplog, entry):
    data = tiny_llama_bank[0].read_bytes()
    bank = tmp_path / "cut.safetensors"
    bank.write_bytes(data[:len(data) // 2])
    common = ["--model_name", str(tiny_llama_dir), "--data_dir", str(SHARED_DATA), "--output_dir",
              str(tmp_path / "out"), "--num_train", "4", "--num_dev", "2", "--num_eval", "2", "--threads", "1",
              "--progress", "False"]
    if entry == "fine-tune":
        main = lambda: run_zo_fine_tuner.main([*common, "--train_mode", "zo_fine_tuner", "--load_mlp_path", str(bank)])  # noqa: E731
    else:
        main = lambda: run_l2l.main([*common, "--init_mlp_path", str(bank)])  # noqa: E731
    with pytest.raises(SystemExit) as info:
        run_main(main)
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert info.value.code == 2 and len(errors) == 1, errors
    assert str(bank) in errors[0] and "truncated or corrupt" in errors[0]
    assert not (tmp_path / "out").exists()


def test_an_existing_bank_at_the_save_path_is_one_error_line(tmp_path, tiny_llama_dir, caplog):
    bank = tmp_path / "shipped.safetensors"
    bank.write_bytes(b"a bank")
    with pytest.raises(SystemExit) as info:
        run_main(lambda: run_l2l.main(["--model_name", str(tiny_llama_dir), "--data_dir", str(SHARED_DATA),
                                       "--output_dir", str(tmp_path / "out"), "--save_mlp_path", str(bank)]))
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert info.value.code == 2 and len(errors) == 1 and "--overwrite" in errors[0], errors
    assert bank.read_bytes() == b"a bank"


@dataclasses.dataclass
class _Noted:
    # a note above,
    # on two lines
    above: int = 1
    beside: str = "x#y"  # a note beside (the '#' in the default is not one)
    bare: float = 0.5


@dataclasses.dataclass
class _MoreNoted(_Noted):
    """A docstring line may start with a hash:
    # not a comment
    """
    both: bool = False  # and here, 100 % sure
    #   indented note above a last field
    last: int | None = None  # beside too


def test_field_comments_are_the_notes_above_and_beside_each_field():
    from zo.cli import field_comments

    assert field_comments(_MoreNoted) == {"above": "a note above, on two lines",
                                          "beside": "a note beside (the '#' in the default is not one)",
                                          "both": "and here, 100 % sure",
                                          "last": "indented note above a last field beside too"}
    parser = argparse.ArgumentParser()
    from zo.cli import add_dataclass_arguments
    add_dataclass_arguments(parser, _MoreNoted)
    assert "100 % sure" in parser.format_help()  # a % in a note does not break --help


@pytest.mark.parametrize("module, cls", [(run_zo_fine_tuner, FineTuneConfig), (run_l2l, L2LConfig)])
def test_every_flag_of_the_two_clis_has_help(module, cls):
    from zo.cli import add_dataclass_arguments

    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, cls, module.HELP)
    bare = [action.dest for action in parser._actions if action.help and action.help.startswith(" (default:")]
    assert not bare, f"flags without help: {bare}"
    shown = {action.dest: action.help for action in parser._actions}
    # a list field shows its factory's value, not dataclasses.MISSING or the word "list"
    assert not [dest for dest, text in shown.items() if text and ("MISSING" in text or "default: list" in text)]
    if cls is L2LConfig:
        assert shown["multi_task_name"].endswith("(default: SST2 Copa WSC)")
