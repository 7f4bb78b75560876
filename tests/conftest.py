"""Shared fixtures: an offline tokenizer and tiny random causal LMs (Llama, OPT, Qwen2)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DATA_DIR", REPO_ROOT.parent / "shared" / "data"))
UPSTREAM_BANKS = REPO_ROOT.parent / "shared" / "upstream" / "learned_finetuner"

_CORPUS = [
    "It was great. It was terrible. Yes or No? Maybe so because the man went home.",
    "Question: what is the answer? Answer: the answer is forty two, said the passage.",
    "Does this mean that the hypothesis is true? Suppose the premise holds. Can we infer that?",
    "In the previous sentence, does the pronoun refer to the dog? Title: Context: Passage:",
    "0 1 2 3 4 5 6 7 8 9 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ .,;:!?'\"-()",
]


def build_tiny_tokenizer():
    """A byte-level BPE tokenizer trained in memory: offline, deterministic, covers any text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", padding_side="left"
    )


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tiny_tokenizer()


def _tiny_config(family: str, vocab_size: int, tie: bool):
    from transformers import LlamaConfig, OPTConfig, Qwen2Config

    if family == "llama":
        return LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                           tie_word_embeddings=tie, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if family == "opt":
        return OPTConfig(vocab_size=vocab_size, hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=512, word_embed_proj_dim=32,
                         tie_word_embeddings=True, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                         dropout=0.1)
    if family == "qwen2":
        return Qwen2Config(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                           tie_word_embeddings=tie, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    raise ValueError(family)


def build_tiny_model(family: str = "llama", vocab_size: int = 400, tie: bool = True, seed: int = 0,
                     dtype: torch.dtype = torch.float32):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_tiny_config(family, vocab_size, tie), dtype=dtype)
    return model.eval()


def causal_lm_loss(model, ids: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy computed outside the model from its logits, as the task losses are: unlike
    `labels=`, such a loss lets a ZO step run its + and - forwards as one paired forward (zo.paired_calls)."""
    logits = model(input_ids=ids, use_cache=False).logits
    return torch.nn.functional.cross_entropy(logits[:, :-1].float().flatten(0, 1), ids[:, 1:].flatten())


def central_losses(model, blocks, directions, ids, eps):
    """L(theta + eps u) and L(theta - eps u) of a plain reference: perturb in place, restore by copy.
    On return the weights are exactly theta again; returns (L+, L-, the saved theta)."""
    saved = [b.param.detach().clone() for b in blocks]
    with torch.no_grad():
        for b, u in zip(blocks, directions):
            b.param.add_(u, alpha=eps)
        loss_plus = causal_lm_loss(model, ids).item()
        for b, u, s in zip(blocks, directions, saved):
            b.param.copy_(s).add_(u, alpha=-eps)
        loss_minus = causal_lm_loss(model, ids).item()
        for b, s in zip(blocks, saved):
            b.param.copy_(s)
    return loss_plus, loss_minus, saved


@pytest.fixture
def tiny_llama(tiny_tokenizer):
    return build_tiny_model("llama", vocab_size=len(tiny_tokenizer))


def save_tiny_model(folder: Path, family: str = "llama", tie: bool = True, seed: int = 0) -> Path:
    """A tiny random model + the tiny tokenizer saved with save_pretrained: loads offline with
    `zo.models.load_model(folder)` (config.json, model.safetensors, tokenizer files)."""
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(family, vocab_size=len(tokenizer), tie=tie, seed=seed)
    folder = Path(folder)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """tiny_model_dir(family) -> a saved tiny model folder ('llama', 'qwen2', 'opt'), built once per session."""
    cache: dict[str, Path] = {}

    def get(family: str = "llama") -> Path:
        if family not in cache:
            cache[family] = save_tiny_model(tmp_path_factory.mktemp(f"tiny-{family}"), family)
        return cache[family]

    return get


@pytest.fixture(scope="session")
def tiny_llama_dir(tiny_model_dir) -> Path:
    return tiny_model_dir("llama")


@pytest.fixture(scope="session")
def tiny_llama_bank(tiny_llama_dir, tmp_path_factory):
    """(bank path, finished process) of `python -m zo.init_bank --model <tiny llama> --out <tmp>`."""
    from run_helpers import run_cmd

    out = tmp_path_factory.mktemp("bank") / "tiny_llama_init.safetensors"
    proc = run_cmd([sys.executable, "-m", "zo.init_bank", "--model", str(tiny_llama_dir), "--out", str(out),
                    "--seed", "3"])
    return out, proc


def pytest_sessionstart(session):
    # Tests that need ../shared skip without it on a user's machine; in CI a skip would hide them, so
    # a missing resource there is an error. (Real-model tests are marked `slow`; CI runs them short.)
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        missing = [str(p) for p in (SHARED_DATA / "SST2", UPSTREAM_BANKS) if not p.is_dir()]
        if missing:
            raise pytest.UsageError(f"CI needs the shared resources, missing: {', '.join(missing)}")
