"""The authors' PertNN banks: safe reading, conversion, block naming vs the real models, exact sigma."""
from __future__ import annotations

import builtins
import copy
import os
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import REPO_ROOT, UPSTREAM_BANKS
from zo.blocks import parameter_blocks
from zo.convert_bank import UnsafeBankError, main, read_upstream_bank
from zo.pertnn import BankMismatchError, PertNNBank, load_bank

pytestmark = pytest.mark.skipif(not UPSTREAM_BANKS.is_dir(), reason="authors' banks not available")

# Public HF config.json values (architecture fields only; rope settings do not change parameter names).
# Llama-3.2-1B: meta-llama/Llama-3.2-1B config.json (same architecture block as -Instruct).
LLAMA_3_2_1B = dict(
    model_type="llama", vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
    num_attention_heads=32, num_key_value_heads=8, head_dim=64, max_position_embeddings=131072,
    tie_word_embeddings=True, rms_norm_eps=1e-5, hidden_act="silu", attention_bias=False, mlp_bias=False,
    rope_theta=500000.0, rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                       "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
# Llama-3.1-8B: meta-llama/Llama-3.1-8B config.json.
LLAMA_3_1_8B = dict(
    model_type="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
    num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
    tie_word_embeddings=False, rms_norm_eps=1e-5, hidden_act="silu", attention_bias=False, mlp_bias=False,
    rope_theta=500000.0, rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                       "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
# Qwen2.5-14B (base): Qwen/Qwen2.5-14B config.json.
QWEN2_5_14B = dict(
    model_type="qwen2", vocab_size=152064, hidden_size=5120, intermediate_size=13824, num_hidden_layers=48,
    num_attention_heads=40, num_key_value_heads=8, max_position_embeddings=131072, tie_word_embeddings=False,
    rms_norm_eps=1e-5, hidden_act="silu", rope_theta=1000000.0, use_sliding_window=False,
    sliding_window=131072, max_window_layers=48)
# OPT-30B: facebook/opt-30b config.json.
OPT_30B = dict(
    model_type="opt", vocab_size=50272, hidden_size=7168, ffn_dim=28672, num_hidden_layers=48,
    num_attention_heads=56, max_position_embeddings=2048, word_embed_proj_dim=7168, do_layer_norm_before=True,
    _remove_final_layer_norm=False, enable_bias=True, layer_norm_elementwise_affine=True,
    activation_function="relu", dropout=0.1, attention_dropout=0.0, activation_dropout=0.0, layerdrop=0.0,
    tie_word_embeddings=True, pad_token_id=1, bos_token_id=2, eos_token_id=2)

MODELS = {
    "Llama-3.2-1B": LLAMA_3_2_1B,
    "Llama-3.1-8B": LLAMA_3_1_8B,
    "Qwen2.5-14B": QWEN2_5_14B,
    "OPT-30B": OPT_30B,
    "Llama-3.2-1B-untied": {**LLAMA_3_2_1B, "tie_word_embeddings": False},  # a wrong pairing, on purpose
}
BANKS = {  # file stem: (model, block count, PertNN dtype)
    "llama1B": ("Llama-3.2-1B", 146, torch.float32),
    "llama8B": ("Llama-3.1-8B", 291, torch.float32),
    "opt30B": ("OPT-30B", 772, torch.float16),
    "qwen14B": ("Qwen2.5-14B", 579, torch.float16),
}


def bank_path(stem: str) -> Path:
    return UPSTREAM_BANKS / f"{stem}_finetuner.pth"


@lru_cache(maxsize=None)
def upstream(stem: str) -> PertNNBank:
    return read_upstream_bank(bank_path(stem))


@lru_cache(maxsize=None)
def model_block_names(model: str) -> list[str]:
    """Parameter blocks of the real architecture, built on the meta device (no weights, no hub)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(**MODELS[model])
    with torch.device("meta"):
        net = AutoModelForCausalLM.from_config(cfg)
    assert net.get_input_embeddings().weight.shape == (cfg.vocab_size, cfg.hidden_size)
    assert len(net.model.decoder.layers if cfg.model_type == "opt" else net.model.layers) == cfg.num_hidden_layers
    return [b.name for b in parameter_blocks(net)]


def float32_copy(bank: PertNNBank) -> PertNNBank:
    """The bank cast to float32 with Module.float(), the same cast applied to the reference modules."""
    return copy.deepcopy(bank).float()


def trusted_modules(stem: str) -> dict[str, nn.Sequential]:
    """TEST-ONLY reference: torch's full unpickler on the authors' own files (trusted here, never in zo/)."""
    return torch.load(bank_path(stem), map_location="cpu", weights_only=False)


# ---- conversion ------------------------------------------------------------------------------------
@pytest.mark.parametrize("stem", list(BANKS))
def test_convert_and_reload(stem, tmp_path):
    _, count, dtype = BANKS[stem]
    bank = upstream(stem)
    out = bank.save(tmp_path / f"{stem}.safetensors")
    back = load_bank(out)
    assert len(bank) == len(back) == count
    assert bank.w1.dtype == back.w1.dtype == dtype
    assert back.block_names == bank.block_names
    for a, b in zip(bank.parameters(), back.parameters()):
        assert torch.equal(a, b)
    meta = back.metadata
    assert meta["converted_from"] == "upstream-pth"
    assert meta["source_file"] == f"{stem}_finetuner.pth"
    assert meta["archive_root"].lower().startswith(stem.lower()) and "_Copa_" in meta["archive_root"]
    assert meta["block_count"] == str(count)
    family = {"llama1B": "llama, 16 layers, tied", "llama8B": "llama, 32 layers, untied",
              "opt30B": "opt, 48 layers, tied", "qwen14B": "qwen2, 48 layers, untied"}[stem]
    assert meta["model_family"].startswith(family)
    assert "inferred" in meta["base_model"]
    # load_bank on the .pth goes through the same safe reader
    assert load_bank(bank_path(stem)).block_names == bank.block_names


def test_archive_root_llama1b():
    assert upstream("llama1B").metadata["archive_root"] == (
        "llama1b_Copa_SGD1e-2_simplify_share_15_5_need_normalization_input5_fp32")


# ---- block names vs the real architectures ------------------------------------------------------------
@pytest.mark.parametrize("stem", list(BANKS))
def test_block_names_match_real_model_in_order(stem):
    model, count, _ = BANKS[stem]
    config = MODELS[model]
    names = model_block_names(model)
    bank = upstream(stem)
    assert names == bank.block_names  # same names, same order
    assert len(names) == count
    assert ("lm_head.weight" in names) == (not config["tie_word_embeddings"])
    bank.check_blocks(names)


def test_mismatched_model_is_refused():
    bank = upstream("llama1B")
    with pytest.raises(BankMismatchError, match="145 model blocks missing"):
        bank.check_blocks(model_block_names("Llama-3.1-8B"))  # 16 more layers and an untied lm_head
    # the same 1B layout but untied: the only difference is lm_head, and the message names it
    with pytest.raises(BankMismatchError, match=r"lm_head\.weight"):
        bank.check_blocks(model_block_names("Llama-3.2-1B-untied"))


# ---- sigma: bit-identical to the authors' modules -------------------------------------------------------
X0 = [0.0, 0.0, 0.0, 0.0, 1.0]
X1 = [0.0, 4e-4, 2.0, 2.0, 1.0]


@pytest.mark.parametrize("stem", list(BANKS))
def test_sigma_bit_identical_to_original_modules(stem):
    bank = upstream(stem)
    modules = trusted_modules(stem)
    assert list(modules) == bank.block_names
    # fp16 banks: both sides cast to float32 the same way (Tensor.float) before evaluating
    bank32 = float32_copy(bank)
    refs = [m.float().eval() for m in modules.values()]
    gen = torch.Generator().manual_seed(0)
    batches = {
        "x0": torch.tensor(X0).expand(len(bank), 5),
        "x1": torch.tensor(X1).expand(len(bank), 5),
        "random": torch.randn(len(bank), 5, generator=gen) * torch.tensor([0.05, 1e-3, 3.0, 3.0, 1.0]),
    }
    with torch.no_grad():
        for label, feats in batches.items():
            sigma = bank32(feats)
            ref = torch.stack([m(feats[b:b + 1]).reshape(()).abs() for b, m in enumerate(refs)])
            assert torch.equal(sigma, ref), f"{stem} {label}: max diff {(sigma - ref).abs().max().item()}"
            # upstream feeds bias/norm blocks a 1-D input (`trainer_zo_fine_tuner.py`); same bits
            ref1d = torch.stack([m(feats[b]).reshape(()).abs() for b, m in enumerate(refs)])
            assert torch.equal(sigma, ref1d), f"{stem} {label} (1-D input)"


SPEC_X0 = {  # reference outputs of the authors' banks (docs/upstream_banks.md), fp32, |PertNN([0,0,0,0,1])|
    "llama1B": {"model.embed_tokens.weight": 0.0782, "model.norm.weight": 0.1442},
    "llama8B": {"model.embed_tokens.weight": 0.0114, "lm_head.weight": 0.1032},
    "opt30B": {"model.decoder.embed_tokens.weight": 0.0361, "model.decoder.embed_positions.weight": 0.2296},
    "qwen14B": {"model.embed_tokens.weight": 0.0109, "lm_head.weight": 0.1074},
}


@pytest.mark.parametrize("stem", list(BANKS))
def test_spec_reference_values(stem):
    bank = float32_copy(upstream(stem))
    with torch.no_grad():
        s0 = dict(zip(bank.block_names, bank(torch.tensor(X0).expand(len(bank), 5)).tolist()))
        s1 = dict(zip(bank.block_names, bank(torch.tensor(X1).expand(len(bank), 5)).tolist()))
    for name, value in SPEC_X0[stem].items():
        assert round(s0[name], 4) == value, (name, s0[name])
    if stem == "llama1B":
        assert round(s1["model.embed_tokens.weight"], 4) == 0.5331
    if stem == "qwen14B":
        assert round(max(v for k, v in s1.items() if "gate_proj" in k), 2) == 5.63


# ---- safety ---------------------------------------------------------------------------------------------
class _Payload:
    """Unpickling this calls `func(*args)`: the classic pickle code-execution attack."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _payloads(marker: Path) -> dict[str, _Payload]:
    return {
        "os.system": _Payload(os.system, (f"touch '{marker}'",)),
        "builtins.exec": _Payload(builtins.exec, (f"open({str(marker)!r}, 'w').write('pwned')",)),
    }


@pytest.mark.parametrize("kind", ["os.system", "builtins.exec"])
@pytest.mark.parametrize("container", ["torch.save", "raw-pickle"])
def test_malicious_pickle_is_refused_and_never_runs(kind, container, tmp_path):
    import pickle

    marker = tmp_path / "pwned.txt"
    payload = _payloads(marker)[kind]
    evil = tmp_path / "evil_finetuner.pth"
    obj = {"model.embed_tokens.weight": payload}
    if container == "torch.save":
        torch.save(obj, evil)
    else:
        evil.write_bytes(pickle.dumps(obj, protocol=2))
    with pytest.raises(UnsafeBankError, match="outside the PertNN allow-list.*nothing from it was executed"):
        read_upstream_bank(evil)
    with pytest.raises(UnsafeBankError):
        load_bank(evil)
    assert not marker.exists()


def test_payload_is_real_under_an_unsafe_loader(tmp_path):
    # Guard against a vacuous safety test: the same file DOES run its payload with weights_only=False.
    marker = tmp_path / "ran.txt"
    evil = tmp_path / "evil.pth"
    torch.save({"x": _payloads(marker)["builtins.exec"]}, evil)
    torch.load(evil, map_location="cpu", weights_only=False)
    assert marker.exists()


def _lin(i, o, bias=True):
    return nn.Linear(i, o, bias=bias)


@pytest.mark.parametrize("obj, error, needle", [
    ({"model.norm.weight": nn.Sequential(_lin(5, 32), nn.Tanh(), _lin(32, 1))}, ValueError, "model.norm.weight"),
    ({"model.norm.weight": nn.Sequential(_lin(5, 64, False), nn.Tanh(), _lin(64, 1))}, ValueError, "bias=True"),
    ({"a": nn.Sequential(_lin(5, 64), nn.Tanh(), _lin(64, 1)), "b": nn.Sequential(_lin(5, 64), _lin(64, 1))},
     ValueError, "'b'"),
    ({"a": nn.Sequential(_lin(5, 64), nn.Tanh(), _lin(64, 1)).state_dict()}, ValueError, "'a'"),
    ([nn.Sequential(_lin(5, 64), nn.Tanh(), _lin(64, 1))], ValueError, "dict"),
    ({"a": nn.Sequential(_lin(5, 64), nn.ReLU(), _lin(64, 1))}, UnsafeBankError, "allow-list"),
])
def test_wrong_structure_is_rejected(obj, error, needle, tmp_path):
    path = tmp_path / "bad.pth"
    torch.save(obj, path)
    with pytest.raises(error, match=needle) as info:
        read_upstream_bank(path)
    if error is ValueError:
        assert not isinstance(info.value, UnsafeBankError)
    else:  # names the refused class, without torch's advice to allowlist it
        assert "activation.ReLU (not allowed)" in str(info.value) and "add_safe_globals" not in str(info.value)


@pytest.mark.parametrize("content, needle", [(b"hello\n", "is not a torch file"), (b"", "is not a torch file"),
                                             (b"\x80\x02", "not a readable torch archive")])
def test_a_file_that_is_not_a_torch_archive_says_so(content, needle, tmp_path):
    """Not as a refused object (the unpickler's error on such bytes), nor as a bare KeyError."""
    path = tmp_path / "notes.pth"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=needle) as info:
        read_upstream_bank(path)
    assert not isinstance(info.value, UnsafeBankError)


def test_a_safetensors_bank_given_to_the_converter_is_told_to_load_as_it_is(tmp_path):
    with pytest.raises(ValueError, match="needs no conversion"):
        read_upstream_bank(REPO_ROOT / "learned_finetuner" / "smollm2-135m_copa.safetensors")


# ---- CLI ------------------------------------------------------------------------------------------------
def test_cli_end_to_end(tmp_path):
    out = tmp_path / "llama1B.safetensors"
    proc = subprocess.run([sys.executable, "-m", "zo.convert_bank", str(bank_path("llama1B")), str(out)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "146 blocks" in proc.stdout and "float32" in proc.stdout and "llama, 16 layers" in proc.stdout
    assert str(out) in proc.stdout
    assert load_bank(out).block_names == upstream("llama1B").block_names


def test_cli_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main([str(tmp_path / "missing.pth"), str(tmp_path / "out.safetensors")])
    assert "not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(bank_path("llama1B")), str(tmp_path / "no_such_dir" / "out.safetensors")])
    assert "does not exist" in capsys.readouterr().err
    evil = tmp_path / "evil.pth"
    torch.save({"x": _payloads(tmp_path / "m")["os.system"]}, evil)
    assert main([str(evil), str(tmp_path / "out.safetensors")]) == 2
    assert "refused" in capsys.readouterr().err
    assert not (tmp_path / "m").exists() and not (tmp_path / "out.safetensors").exists()
