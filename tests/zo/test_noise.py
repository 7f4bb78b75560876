import torch

from types import SimpleNamespace

from zo.noise import CHUNK_ELEMENTS, NoiseSource, block_chunks, chunk_seed, noise_signature, rows_view


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


def _fake_gpus(monkeypatch, **sm_counts):
    """torch.cuda.get_device_properties for GPUs given as cuda_<index>=(multiprocessors, threads per one)."""
    def props(device):
        sms, threads = sm_counts[f"cuda_{torch.device(device).index}"]
        return SimpleNamespace(multi_processor_count=sms, max_threads_per_multi_processor=threads)
    monkeypatch.setattr(torch.cuda, "get_device_properties", props)


def test_noise_signature_is_the_grid_of_the_largest_chunk(monkeypatch):
    _fake_gpus(monkeypatch, cuda_0=(108, 2048), cuda_1=(132, 2048), cuda_2=(40, 1024), cuda_3=(80, 2048))
    big = torch.Size([4096, 1024])  # full chunks of CHUNK_ELEMENTS: 1024 blocks of 256 threads wanted
    assert CHUNK_ELEMENTS // 256 == 1024
    assert noise_signature([("cpu", big), ("cpu", torch.Size([7]))]) == "cpu"
    assert noise_signature([("cuda:0", big)]) == "cuda grid 864"  # an A100 holds 108 x 8 blocks: capped
    assert noise_signature([("cuda:1", big)]) == "cuda grid 1024"  # an H100 holds 1056: not capped
    assert noise_signature([("cuda:2", big)]) == "cuda grid 160"  # a T4
    # small blocks never fill either GPU: the same z on both, and the signatures say so
    small = torch.Size([300, 256])
    assert noise_signature([("cuda:0", small)]) == noise_signature([("cuda:1", small)]) == "cuda grid 300"
    # a device map over two GPU models draws with both grids
    assert noise_signature([("cuda:0", big), ("cuda:3", big)]) == "cuda grid 640 + cuda grid 864"
