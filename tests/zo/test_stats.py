"""zo.stats: per-block mean and unbiased variance from noise chunks, merged by Chan's formula in float64."""
import pytest
import torch
from torch import nn

from zo.blocks import Block
from zo.noise import NoiseSource, block_chunks
from zo.stats import BlockStatsCollector, block_stats


def _blocks(*tensors):
    return [Block(i, f"b{i}", nn.Parameter(t, requires_grad=False)) for i, t in enumerate(tensors)]


@pytest.mark.parametrize("threads", [1, 2])
def test_blocks_of_several_chunks_merge_to_torchs_float64_statistics(threads):
    gen = torch.Generator().manual_seed(0)
    # 600k numbers in three chunks of unequal size, whose means differ (rows drift): the merge's between-chunk
    # term matters
    wide = torch.randn(2000, 300, generator=gen) * 0.02 + torch.linspace(0.0, 1.0, 2000).unsqueeze(1)
    column = torch.randn(700_000, generator=gen) + 3.0  # a 1-D block, cut into chunks of rows of one
    single = torch.tensor([4.0])  # one element: variance 0, not NaN
    blocks = _blocks(wide, column, single)
    assert len(block_chunks(wide.shape)) == 3 and len(block_chunks(column.shape)) == 3
    mean, var = block_stats(blocks, NoiseSource(threads=threads))
    for b in blocks[:2]:
        ref_var, ref_mean = torch.var_mean(b.param.double())
        assert mean[b.index].item() == pytest.approx(ref_mean.item(), rel=1e-6)
        assert var[b.index].item() == pytest.approx(ref_var.item(), rel=1e-5)
    assert mean[2].item() == 4.0 and var[2].item() == 0.0


def test_the_merge_does_not_depend_on_the_order_chunks_arrive_in():
    """Pool workers finish chunks in any order: the parts are merged in block and chunk order."""
    wide = torch.randn(2000, 300, generator=torch.Generator().manual_seed(1))
    blocks = _blocks(wide)
    chunks = block_chunks(wide.shape)
    results = []
    for order in (chunks, chunks[::-1]):
        collector = BlockStatsCollector(blocks)
        for chunk in order:
            collector.add_chunk(0, chunk.index, wide[chunk.row_start:chunk.row_stop])
        results.append(collector.result())
    assert all(torch.equal(a, b) for a, b in zip(*results))
