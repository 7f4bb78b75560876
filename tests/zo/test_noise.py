import torch

from zo.noise import CHUNK_ELEMENTS, NoiseSource, block_chunks, chunk_seed, rows_view


def test_chunks_cover_every_row_once():
    for shape in [(7,), (3, 5), (CHUNK_ELEMENTS // 100 + 3, 100), (2 * CHUNK_ELEMENTS + 5,), (4, 3, 2)]:
        chunks = block_chunks(torch.Size(shape))
        rows = rows_view(torch.empty(shape)).shape[0]
        covered = [r for c in chunks for r in range(c.row_start, c.row_stop)]
        assert covered == list(range(rows))


def test_noise_is_independent_of_thread_count():
    shape = torch.Size((3 * CHUNK_ELEMENTS // 64 + 7, 64))
    z1 = NoiseSource(threads=1).block_noise(11, 4, shape)
    t = torch.zeros(shape)
    seen = []
    NoiseSource(threads=2).for_each_chunk(11, [(4, t)], lambda b, c, rows, z: rows.copy_(z))
    assert torch.equal(z1, t)
    assert len(block_chunks(shape)) > 2  # the threaded path really split the block


def test_noise_differs_by_seed_block_and_chunk_and_is_standard_normal():
    src = NoiseSource(threads=1)
    a = src.block_noise(1, 0, torch.Size((1000, 300)))
    assert not torch.equal(a, src.block_noise(2, 0, torch.Size((1000, 300))))
    assert not torch.equal(a, src.block_noise(1, 1, torch.Size((1000, 300))))
    chunks = block_chunks(torch.Size((1000, 300)))
    first = a[chunks[0].row_start:chunks[0].row_stop]
    second = a[chunks[1].row_start:chunks[1].row_start + first.shape[0]]
    assert not torch.equal(first[: second.shape[0]], second)
    assert abs(a.mean().item()) < 0.01 and abs(a.std().item() - 1) < 0.01
    assert len({chunk_seed(s, b, c) for s in range(5) for b in range(5) for c in range(5)}) == 125


def test_global_rng_untouched():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    NoiseSource(threads=2).block_noise(5, 0, torch.Size((100, 10)))
    assert torch.equal(torch.rand(3), expected)
