import os

import pytest
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
    torch_version = ", torch " + ".".join(torch.__version__.split("+")[0].split(".")[:2])
    big = torch.Size([4096, 1024])  # full chunks of CHUNK_ELEMENTS: 1024 blocks of 256 threads wanted
    assert CHUNK_ELEMENTS // 256 == 1024
    assert noise_signature([("cuda:0", big)]) == "cuda grid 864" + torch_version  # an A100 holds 108 x 8: capped
    assert noise_signature([("cuda:1", big)]) == "cuda grid 1024" + torch_version  # an H100 SXM holds 1056
    assert noise_signature([("cuda:2", big)]) == "cuda grid 160" + torch_version  # a T4
    # small blocks never fill either GPU: the same z on both, and the signatures say so
    small = torch.Size([300, 256])
    assert noise_signature([("cuda:0", small)]) == noise_signature([("cuda:1", small)])
    # a device map over two GPU models: each device's grid, so swapping the devices is another signature
    assert noise_signature([("cuda:0", big), ("cuda:3", big)]) == "cuda:0 grid 864 + cuda:3 grid 640" + torch_version
    assert noise_signature([("cuda:0", big), ("cuda:1", small)]) != noise_signature([("cuda:0", small),
                                                                                     ("cuda:1", big)])


def test_on_the_cpu_the_signature_names_the_kernel_that_computes_normal(monkeypatch):
    torch_version = ", torch " + ".".join(torch.__version__.split("+")[0].split(".")[:2])
    blocks = [("cpu", torch.Size([4096, 1024])), ("cpu", torch.Size([7]))]
    for capability, kernel in (("AVX512", "avx2"), ("AVX2", "avx2"), ("DEFAULT", "default"), ("SVE256", "sve256")):
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda c=capability: c)
        assert noise_signature(blocks) == f"cpu {kernel}" + torch_version


def test_avx2_and_avx512_draw_the_same_z_and_the_default_kernel_does_not():
    """Why the signature merges AVX2 and AVX-512: torch picks the kernel per process (ATEN_CPU_CAPABILITY)."""
    import subprocess
    import sys

    draw = ("import hashlib, torch; g = torch.Generator().manual_seed(1); x = torch.empty(1 << 18).normal_("
            "generator=g); print(torch.backends.cpu.get_cpu_capability(), hashlib.sha256(x.numpy().tobytes())"
            ".hexdigest())")
    seen = {}
    for capability in ("avx512", "avx2", "default"):
        out = subprocess.run([sys.executable, "-c", draw], capture_output=True, text=True, check=True,
                             env={**os.environ, "ATEN_CPU_CAPABILITY": capability}).stdout.split()
        seen[out[0].lower()] = out[1]  # the capability torch really used (at most what the CPU has)
    if "avx2" not in seen or "default" not in seen:
        pytest.skip("this CPU has no AVX2")
    assert seen["default"] != seen["avx2"] and seen.get("avx512", seen["avx2"]) == seen["avx2"]
