import pytest
import torch

from conftest import build_tiny_model
from zo.blocks import parameter_blocks
from zo.noise import NoiseSource
from zo.perturb import VirtualPerturbation, add_noise_


def _loss(model, ids):
    return model(input_ids=ids, labels=ids).loss


@pytest.mark.parametrize("family", ["llama", "opt", "qwen2"])
def test_virtual_and_inplace_perturbations_give_the_same_loss(family):
    model = build_tiny_model(family, 400)
    blocks = parameter_blocks(model)
    ids = torch.randint(3, 400, (3, 10), generator=torch.Generator().manual_seed(0))
    noise = NoiseSource(threads=2)
    scales = [1e-2 * (1 + i % 3) for i in range(len(blocks))]
    with torch.inference_mode():
        clean = _loss(model, ids).item()
        ctx = VirtualPerturbation(model, blocks, noise, 7, scales)
        with ctx:
            virtual = _loss(model, ids).item()
        ctx.check_all_applied()
        add_noise_(noise, 7, blocks, scales)
        inplace = _loss(model, ids).item()
    assert virtual == inplace
    assert virtual != clean


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_virtual_perturbation_restores_exactly_in_every_dtype(dtype):
    model = build_tiny_model("llama", 400, dtype=dtype)
    blocks = parameter_blocks(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.randint(3, 400, (2, 8))
    noise = NoiseSource(threads=2)
    with torch.inference_mode():
        for sign in (1, -2, 1):
            with VirtualPerturbation(model, blocks, noise, 3, [sign * 1e-3] * len(blocks)):
                model(input_ids=ids)
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), name
    assert all(type(p) is torch.nn.Parameter for p in model.parameters())
    assert "forward" not in model.model.embed_tokens.__dict__


def test_inplace_round_trip_is_only_approximate_in_fp32():
    """Why virtual is the default: +eps, -2eps, +eps in place does not return fp32 weights exactly."""
    model = build_tiny_model("llama", 400)
    blocks = parameter_blocks(model)
    before = [b.param.detach().clone() for b in blocks]
    noise = NoiseSource(threads=2)
    with torch.no_grad():
        for factor in (1, -2, 1):
            add_noise_(noise, 9, blocks, [factor * 1e-3] * len(blocks))
    drift = max((b.param - x).abs().max().item() for b, x in zip(blocks, before))
    assert 0 < drift <= 2.5e-7  # a few ulps of weights of magnitude ~1


def test_unreached_block_is_reported():
    model = build_tiny_model("llama", 400)
    blocks = parameter_blocks(model)
    ctx = VirtualPerturbation(model, blocks, NoiseSource(threads=1), 1, [1e-3] * len(blocks))
    with torch.inference_mode(), ctx:
        model.model.embed_tokens(torch.tensor([[1, 2]]))  # only one module ran
    with pytest.raises(RuntimeError, match="did not reach"):
        ctx.check_all_applied()


class _TiedLookupAndHead(torch.nn.Module):
    """An embedding and an output head sharing one weight large enough to span several noise chunks."""

    def __init__(self, vocab: int = 3000, dim: int = 200):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, dim)
        self.head = torch.nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids):
        return self.head(self.embed(ids))


def test_large_tied_weight_goes_by_rows_and_draws_only_the_looked_up_chunks(monkeypatch):
    import zo.perturb
    from zo.noise import block_chunks

    monkeypatch.setattr(zo.perturb, "MATERIALIZE_LIMIT", 1000)  # force the by-rows head path
    torch.manual_seed(0)
    model = _TiedLookupAndHead()
    blocks = parameter_blocks(model)
    assert len(blocks) == 1
    chunks = block_chunks(model.embed.weight.shape)
    assert len(chunks) == 3
    rows = chunks[0].row_stop
    ids = torch.tensor([[1, 5, rows * 2 + 3], [7, rows * 2 + 9, 2]])  # chunks 0 and 2 only
    noise = NoiseSource(threads=2)
    drawn = []
    real_draw = noise.draw

    def counting_draw(step_seed, block_index, chunk, *args, **kwargs):
        drawn.append(chunk.index)
        return real_draw(step_seed, block_index, chunk, *args, **kwargs)

    monkeypatch.setattr(noise, "draw", counting_draw)
    scale = 1e-2
    with torch.inference_mode():
        perturbed_weight = torch.add(model.embed.weight, noise.block_noise(4, 0, model.embed.weight.shape), alpha=scale)
        looked_up = torch.nn.functional.embedding(ids, perturbed_weight)
        expected = torch.nn.functional.linear(looked_up, perturbed_weight)
        drawn.clear()
        ctx = VirtualPerturbation(model, blocks, noise, 4, [scale])
        with ctx:
            hidden = model.embed(ids)
            assert sorted(drawn) == [0, 2]  # the lookup skipped the chunk no id falls in
            out = model.head(hidden)
        ctx.check_all_applied()
    assert sorted(drawn) == [0, 0, 1, 2, 2]  # the head needs every row
    assert torch.equal(hidden, looked_up)
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)


def test_small_blocks_of_a_layer_are_materialized_in_one_parallel_pass(monkeypatch):
    model = build_tiny_model("llama", 400)
    blocks = parameter_blocks(model)
    layers = model.config.num_hidden_layers
    ids = torch.randint(3, 400, (2, 6), generator=torch.Generator().manual_seed(1))
    noise = NoiseSource(threads=2)
    calls = []
    real = noise.for_each_chunk
    monkeypatch.setattr(noise, "for_each_chunk", lambda seed, items, fn, **kw: (calls.append(len(list(items))),
                                                                                real(seed, items, fn, **kw))[1])
    scales = [1e-2] * len(blocks)
    with torch.inference_mode():
        ctx = VirtualPerturbation(model, blocks, noise, 5, scales)
        with ctx:
            virtual = _loss(model, ids)
        ctx.check_all_applied()
        add_noise_(NoiseSource(threads=1), 5, blocks, scales)
        inplace = _loss(model, ids)
    assert torch.equal(virtual, inplace)
    # one pass per layer (all its blocks), plus the embedding lookup, the final norm and the tied head
    assert len(calls) == layers + 3, calls
    assert sorted(calls)[-layers:] == [(len(blocks) - 2) // layers] * layers
