"""zo.init_bank: block names from the config alone (meta device), for a given folder or the embedded default."""
import json

import pytest

from zo.blocks import parameter_blocks
from zo.init_bank import init_bank
from zo.models import DEFAULT_MODEL
from zo.pertnn import load_bank

from conftest import build_tiny_model


@pytest.fixture
def no_weight_loading(monkeypatch):
    from transformers import AutoModelForCausalLM

    def refuse(*args, **kwargs):
        raise AssertionError("init_bank must not load weights")
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)


@pytest.mark.parametrize("family", ["llama", "opt", "qwen2"])
def test_init_bank_for_a_folder_matches_the_model_blocks(tmp_path, tiny_model_dir, no_weight_loading, family):
    folder = tiny_model_dir(family)
    bank = init_bank(str(folder), tmp_path / "b.safetensors", seed=5)
    names = [b.name for b in parameter_blocks(build_tiny_model(family, 400))]
    assert bank.block_names == names
    loaded = load_bank(tmp_path / "b.safetensors")
    assert loaded.block_names == names and loaded.metadata["base_model"] == folder.name
    assert json.loads(loaded.metadata["init_seed"]) == 5 and loaded.metadata["trained"] == "false"
    # seeded: the same seed gives the same bank
    again = init_bank(str(folder), tmp_path / "c.safetensors", seed=5)
    assert all((a == b).all() for a, b in zip(bank.parameters(), again.parameters()))


def test_init_bank_without_model_uses_the_embedded_default(tmp_path, no_weight_loading):
    # The set-up step is part of the contract (scripts/test.sh runs it): fail, never skip.
    assert (DEFAULT_MODEL / "config.json").exists(), f"run `bash scripts/setup.sh` first ({DEFAULT_MODEL} missing)"
    bank = init_bank(None, tmp_path / "default.safetensors")
    assert bank.metadata["base_model"] == DEFAULT_MODEL.name
    assert bank.block_names[0] == "model.embed_tokens.weight" and "lm_head.weight" not in bank.block_names  # tied
    assert len(load_bank(tmp_path / "default.safetensors")) == len(bank)
