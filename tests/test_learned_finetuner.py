"""The banks this project ships in learned_finetuner/: they load, fit their base model, and say how they were made."""
import json

import pytest
import torch

from conftest import REPO_ROOT
from zo.blocks import parameter_blocks
from zo.pertnn import bank_effective_dim_rule, load_bank

BANK_DIR = REPO_ROOT / "learned_finetuner"

# SmolLM2-135M architecture (the embedded model's config.json; tied embeddings, so no lm_head block).
SMOLLM2_135M = dict(model_type="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536,
                    num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, head_dim=64,
                    tie_word_embeddings=True, attention_bias=False, mlp_bias=False)


def smollm2_block_names() -> list[str]:
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        net = AutoModelForCausalLM.from_config(AutoConfig.for_model(**SMOLLM2_135M))
    return [b.name for b in parameter_blocks(net)]


# The default bank (fair rule for the tied embedding) and the first one, kept for the comparison.
BANKS = {"smollm2-135m_copa": "tied_full", "smollm2-135m_copa_upstream-rule": "upstream"}


@pytest.mark.parametrize("stem, rule", sorted(BANKS.items()))
def test_smollm2_bank_matches_the_model_and_its_config_file(stem, rule):
    bank = load_bank(BANK_DIR / f"{stem}.safetensors")
    names = smollm2_block_names()
    assert len(names) == 272 and "lm_head.weight" not in names
    bank.check_blocks(names)  # raises BankMismatchError on any missing or extra block
    assert bank.block_names == names

    meta = bank.metadata
    assert meta["base_model"] == "SmolLM2-135M" and meta["trained"] == "true"
    assert bank_effective_dim_rule(meta) == rule  # fine-tuning normalizes with the rule the bank was trained with
    sidecar = json.loads((BANK_DIR / f"{stem}.json").read_text())
    # a bank stopped before the end of its schedule says why, in the file and beside it
    assert meta["complete"] == "true" or (sidecar["stop_reason"] and meta["stop_reason"] == sidecar["stop_reason"])
    assert sidecar["steps_done"] == int(meta["steps_done"]) and sidecar["num_blocks"] == len(names)
    hyper = json.loads(meta["hyperparameters"])
    assert {k: v for k, v in sidecar["hyperparameters"].items() if k != "model_name"} == \
        {k: v for k, v in hyper.items() if k != "model_name"}

    # sigma for a typical input (weights near 0, small variance, Copa-level losses, sigma_prev 1)
    features = torch.tensor([0.0, 4e-4, 2.0, 2.0, 1.0]).expand(len(names), 5)
    with torch.no_grad():
        sigma = bank(features)
    assert torch.isfinite(sigma).all() and (sigma > 0).all()
