"""--upstream_fp16_semantics: the authors' fp16 loss, PertNN and history; refused flag combinations."""
import pytest
import torch

from conftest import build_tiny_model
from tasks.objective import batch_loss
from zo.blocks import parameter_blocks
from zo.pertnn import PertNNBank
from zo.recipes.finetune import FineTuneConfig
from zo.sigma import LearnedSigma


def test_fp16_logits_give_an_fp16_loss_and_the_default_stays_float32():
    model = build_tiny_model("llama", 400, dtype=torch.float16)
    ids = torch.randint(3, 400, (2, 12), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "option_len": torch.tensor([3, 5])}
    with torch.inference_mode():
        upstream = batch_loss(model, batch, logits_dtype=torch.float16)
        default = batch_loss(model, batch)
    assert upstream.dtype == torch.float16 and default.dtype == torch.float32
    torch.testing.assert_close(upstream.float(), default, rtol=1e-2, atol=1e-2)


def test_fp16_pertnn_and_history_are_rounded_to_fp16():
    model = build_tiny_model("llama", 400)
    blocks = parameter_blocks(model)
    bank = PertNNBank([b.name for b in blocks], generator=torch.Generator().manual_seed(1))
    half = LearnedSigma(bank, blocks, 4, dtype=torch.float16)
    assert half.bank.w1.dtype == torch.float16
    half.observe(1.2345678, 0.3)
    assert half.memory.history == (torch.tensor(1.2345678).half().item(), torch.tensor(0.3).half().item())
    full = LearnedSigma(PertNNBank([b.name for b in blocks], generator=torch.Generator().manual_seed(1)), blocks, 4)
    full.observe(1.2345678, 0.3)
    stats = (torch.randn(len(blocks)) * 1e-2, torch.rand(len(blocks)) * 1e-3)
    assert half.coefficients(stats) == pytest.approx(full.coefficients(stats), rel=2e-2)


@pytest.mark.parametrize("flags, message", [({"upstream_fp16_semantics": True}, "load_float16"),
                                            ({"load_int8": True}, "load_int8"),
                                            ({"device_map": "everywhere"}, "device_map")])
def test_refused_flag_combinations(flags, message):
    with pytest.raises(ValueError, match=message):
        FineTuneConfig(train_mode="mezo", **flags).validate()
