"""Layer-wise sharing of sigma (the paper's Table 3 ablation): grouping, pooled features, invariants."""
import pytest
import torch
from torch import nn

from conftest import build_tiny_model
from zo.blocks import parameter_blocks
from zo.estimator import ZOConfig, ZOOptimizer
from zo.init_bank import init_bank
from zo.noise import NoiseSource
from zo.pertnn import BankMismatchError, PertNNBank, SigmaGrouping, fresh_bank, load_bank
from zo.sigma import ConstantSigma, LayerwiseLearnedSigma, LearnedSigma, learned_sigma_for
from zo.stats import block_stats


def test_layer_groups_are_the_layers_plus_one_non_layer_group():
    blocks = parameter_blocks(build_tiny_model("llama", 400))
    grouping = SigmaGrouping(blocks, "layer")
    assert grouping.names == ["non_layer", "layer.0", "layer.1"]
    non_layer = [blocks[i].name for i in grouping.members[0]]
    assert non_layer == ["model.embed_tokens.weight", "model.norm.weight"]  # tied head: no lm_head block
    assert all(blocks[i].layer == 1 for i in grouping.members[2])
    assert grouping.group_of.tolist() == [[g for g, m in enumerate(grouping.members) if i in m][0]
                                          for i in range(len(blocks))]


def test_pooled_group_stats_equal_the_stats_of_the_concatenated_elements():
    blocks = parameter_blocks(build_tiny_model("llama", 400))
    grouping = SigmaGrouping(blocks, "layer")
    mean, var = grouping.pool(*block_stats(blocks))
    for g, members in enumerate(grouping.members):
        flat = torch.cat([blocks[i].param.detach().double().reshape(-1) for i in members])
        assert float(mean[g]) == pytest.approx(float(flat.mean()), rel=1e-5, abs=1e-7)
        assert float(var[g]) == pytest.approx(float(flat.var()), rel=1e-5)  # unbiased, pooled exactly
    # block granularity: the statistics pass through untouched
    stats = block_stats(blocks)
    assert all(torch.equal(a, b) for a, b in zip(SigmaGrouping(blocks, "block").pool(*stats), stats))


def _batches(n, vocab=400):
    gen = torch.Generator().manual_seed(1)
    return [torch.randint(3, vocab, (3, 10), generator=gen) for _ in range(n)]


def _run(model, sigma, config, batches, loss=None, seed=5):
    opt = ZOOptimizer(model, sigma, config, seed=seed, noise=NoiseSource(threads=2))
    loss = loss or (lambda ids: model(input_ids=ids, labels=ids).loss)
    return [opt.step(lambda ids=ids: loss(ids)) for ids in batches]


@pytest.mark.parametrize("normalize", [False, True])
def test_constant_sigma_layerwise_bank_reproduces_mezo_exactly(normalize):
    config = ZOConfig(lr=1e-3, eps=1e-3)
    mezo_model = build_tiny_model("llama", 400)
    mezo = _run(mezo_model, ConstantSigma(parameter_blocks(mezo_model)), config, _batches(4))
    model = build_tiny_model("llama", 400)
    blocks = parameter_blocks(model)
    bank = fresh_bank(blocks, "layer")
    with torch.no_grad():
        bank.w2.zero_()
        bank.b2.fill_(1.0)
    sigma = learned_sigma_for(bank, blocks, batch_size=3, normalize=normalize)
    assert isinstance(sigma, LayerwiseLearnedSigma) and sigma.memory.sigma_prev.shape == (3,)
    learned = _run(model, sigma, config, _batches(4))
    assert [r.to_dict() for r in mezo] == [r.to_dict() for r in learned]
    for p, q in zip(mezo_model.parameters(), model.parameters()):
        assert torch.equal(p, q)


class OneTensorPerLayer(nn.Module):
    """A toy LM whose every layer group holds exactly one block: the embedding (tied head) and 3 layers."""

    def __init__(self, vocab=50, hidden=8, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.model = nn.Module()
        self.model.embed = nn.Embedding(vocab, hidden)
        self.model.layers = nn.ModuleList(nn.Linear(hidden, hidden, bias=False) for _ in range(3))

    def loss(self, ids):
        h = self.model.embed(ids)
        for layer in self.model.layers:
            h = h + torch.tanh(layer(h))
        logits = h @ self.model.embed.weight.T
        return nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def test_layerwise_bank_with_one_block_per_layer_equals_the_blockwise_bank():
    config = ZOConfig(lr=1e-2, eps=1e-3)
    batches = [torch.randint(0, 50, (3, 7), generator=torch.Generator().manual_seed(i)) for i in range(4)]
    runs = []
    for granularity in ("block", "layer"):
        model = OneTensorPerLayer()
        blocks = parameter_blocks(model)
        bank = fresh_bank(blocks, granularity, torch.Generator().manual_seed(3))  # same weights, other names
        assert len(bank) == 4
        sigma = learned_sigma_for(bank, blocks, batch_size=3, normalize=True)
        records = _run(model, sigma, config, batches, loss=model.loss)
        runs.append((model, sigma, records))
    (block_model, block_sigma, block_records), (layer_model, layer_sigma, layer_records) = runs
    assert type(layer_sigma) is LayerwiseLearnedSigma and type(block_sigma) is LearnedSigma
    assert [r.to_dict() for r in block_records] == [r.to_dict() for r in layer_records]
    assert torch.equal(block_sigma.last_sigma, layer_sigma.last_sigma)
    for p, q in zip(block_model.parameters(), layer_model.parameters()):
        assert torch.equal(p, q)


def test_a_bank_of_the_other_granularity_is_a_clear_error():
    blocks = parameter_blocks(build_tiny_model("llama", 400))
    with pytest.raises(BankMismatchError, match=r"layer-wise .*--granularity block"):
        LearnedSigma(fresh_bank(blocks, "layer"), blocks, batch_size=3)
    with pytest.raises(BankMismatchError, match=r"block-wise .*--granularity layer"):
        LayerwiseLearnedSigma(fresh_bank(blocks, "block"), blocks, batch_size=3)
    # a bank without the key (every bank before this ablation, the authors') is block-wise
    assert type(learned_sigma_for(PertNNBank([b.name for b in blocks]), blocks, 3)) is LearnedSigma


def test_layerwise_state_round_trips():
    blocks = parameter_blocks(build_tiny_model("llama", 400))
    sigma = learned_sigma_for(fresh_bank(blocks, "layer", torch.Generator().manual_seed(0)), blocks, 3)
    stats = block_stats(blocks)
    sigma.coefficients(stats)
    sigma.observe(1.5, 1.25)
    other = learned_sigma_for(fresh_bank(blocks, "layer", torch.Generator().manual_seed(0)), blocks, 3)
    other.load_state_dict(sigma.state_dict())
    assert other.coefficients(stats) == sigma.coefficients(stats)


def test_init_bank_writes_a_layerwise_bank(tmp_path, tiny_llama_dir):
    path = tmp_path / "layer.safetensors"
    init_bank(str(tiny_llama_dir), path, seed=1, granularity="layer")
    bank = load_bank(path)
    assert bank.metadata["granularity"] == "layer" and bank.block_names[0] == "non_layer"
    assert all(name.startswith("layer.") for name in bank.block_names[1:])
    init_bank(str(tiny_llama_dir), tmp_path / "block.safetensors")
    assert load_bank(tmp_path / "block.safetensors").metadata["granularity"] == "block"


def test_bank_noise_budget_reports_a_layerwise_bank(tmp_path, tiny_llama_dir):
    import subprocess
    import sys
    from pathlib import Path

    bank = tmp_path / "layer.safetensors"
    init_bank(str(tiny_llama_dir), bank, seed=1, granularity="layer")
    script = Path(__file__).resolve().parents[2] / "scripts" / "bank_noise_budget.py"
    proc = subprocess.run([sys.executable, str(script), str(bank), "--model", str(tiny_llama_dir), "--batch_size", "2",
                           "--steps", "2"], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert "(layer-wise)" in proc.stdout and "share by layer group: " in proc.stdout
    assert "layer.0" in proc.stdout and "non_layer" in proc.stdout
