import pytest
import torch

from conftest import build_tiny_model
from zo.blocks import block_aliases, effective_dim, effective_dims, layer_groups, parameter_blocks, trainable_blocks


def test_tied_embedding_is_one_block_under_its_first_name():
    model = build_tiny_model("llama", 400, tie=True)
    names = [b.name for b in parameter_blocks(model)]
    assert "model.embed_tokens.weight" in names and "lm_head.weight" not in names
    assert block_aliases(model) == {"model.embed_tokens.weight": ["lm_head.weight"]}
    untied = [b.name for b in parameter_blocks(build_tiny_model("llama", 400, tie=False))]
    assert untied[-1] == "lm_head.weight"


def test_frozen_parameters_are_not_blocks():
    model = build_tiny_model("llama", 400)
    model.model.norm.weight.requires_grad_(False)
    assert "model.norm.weight" not in [b.name for b in parameter_blocks(model)]


def test_trainable_blocks_keeps_the_matching_tensors_and_freezes_the_rest():
    model = build_tiny_model("llama", 400)
    everything = [b.name for b in parameter_blocks(model)]
    assert [b.name for b in trainable_blocks(model)] == everything  # no pattern: all of them
    kept = [b.name for b in trainable_blocks(model, r"layers\.1\.(self_attn|mlp)\.")]
    assert kept and all(".layers.1." in n for n in kept) and len(kept) < len(everything)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == kept  # the rest is frozen


def test_a_tied_weight_goes_by_its_block_name():
    model = build_tiny_model("llama", 400, tie=True)
    assert [b.name for b in trainable_blocks(model, "embed_tokens")] == ["model.embed_tokens.weight"]
    with pytest.raises(ValueError, match="matches no parameter"):  # lm_head.weight is that block's second name
        trainable_blocks(build_tiny_model("llama", 400, tie=True), "^lm_head")
    everything_else = trainable_blocks(build_tiny_model("llama", 400, tie=True), r"^(?!model\.embed_tokens)")
    assert everything_else and "model.embed_tokens.weight" not in [b.name for b in everything_else]


def test_a_pattern_that_matches_nothing_is_refused_with_the_names():
    with pytest.raises(ValueError, match="matches no parameter; names look like model.embed_tokens.weight"):
        trainable_blocks(build_tiny_model("llama", 400), "no_such_tensor")


def test_effective_dimension_follows_upstream_embed_rule():
    # Llama-3.2-1B embedding: hidden 2048 x 15 tokens x batch 16 (the authors' rule)
    assert effective_dim("model.embed_tokens.weight", torch.Size((128256, 2048)), 16) == 2048 * 15 * 16
    assert effective_dim("model.layers.0.mlp.up_proj.weight", torch.Size((8192, 2048)), 16) == 8192 * 2048
    assert effective_dim("model.norm.weight", torch.Size((2048,)), 16) == 2048
    model = build_tiny_model("opt", 400)
    dims = effective_dims(parameter_blocks(model), batch_size=8)
    names = [b.name for b in parameter_blocks(model)]
    # OPT's learned positions also match 'embed' upstream
    assert dims[names.index("model.decoder.embed_positions.weight")] == 32 * 15 * 8


def test_layer_groups():
    groups = layer_groups(parameter_blocks(build_tiny_model("llama", 400)))
    assert list(groups) == ["non_layer", "layer.0", "layer.1"]
    assert sum(len(v) for v in groups.values()) == 20


def test_tied_full_rule_counts_a_tied_embedding_whole_and_keeps_upstreams_rule_otherwise():
    tied = parameter_blocks(build_tiny_model("llama", 400, tie=True))
    untied = parameter_blocks(build_tiny_model("llama", 400, tie=False))
    assert [b.name for b in tied if b.tied] == ["model.embed_tokens.weight"]
    assert not any(b.tied for b in untied)
    embed = tied[0]
    assert embed.name == "model.embed_tokens.weight"
    upstream = effective_dims(tied, batch_size=8, rule="upstream")
    fair = effective_dims(tied, batch_size=8, rule="tied_full")
    assert upstream[0] == 32 * 15 * 8  # hidden x 15 tokens x batch
    assert fair[0] == 400 * 32  # every row: the tied head reads all of them
    assert torch.equal(upstream[1:], fair[1:])
    # An input-only embedding keeps the sparse count under both rules.
    assert effective_dims(untied, 8, rule="tied_full")[0] == effective_dims(untied, 8, rule="upstream")[0] == 32 * 15 * 8


def test_unknown_effective_dimension_rule_is_refused():
    import pytest

    with pytest.raises(ValueError, match="tied_full"):
        effective_dim("model.embed_tokens.weight", torch.Size((10, 4)), 8, rule="fair")
