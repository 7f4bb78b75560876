"""The LR grid of a bank used without normalization, from its measured noise (scripts/campaign/noise_grid.py),
the measurement itself (scripts/bank_noise_budget.py --write) and what the plan does with both."""
from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "scripts"))
from campaign.noise_grid import (ladder_index, ladder_value, measured_trace_ratio, noise_record_path,  # noqa: E402
                                 noise_scaled_grid)
from campaign.plan import bank_in_training, build_plan  # noqa: E402
from campaign.settings import load_settings  # noqa: E402


def test_the_ladder_and_the_scaled_grid():
    assert [ladder_value(i) for i in (-9, -8, -7)] == pytest.approx([3e-5, 1e-4, 3e-4])
    assert ladder_index(1e-4) == -8 and ladder_index(2.2e-4) == -7 and ladder_index(1.6e-4) == -8
    assert noise_scaled_grid(1.0, 3e-5) == ("0.0001", "3e-05", "1e-05")  # MeZO's noise: the ZO-SGD grid itself
    # an untrained bank without c has ~0.05 of MeZO's noise: its step at one LR is ~20x smaller, its grid higher
    assert noise_scaled_grid(0.046, 3e-5) == ("0.003", "0.001", "0.0003")
    assert noise_scaled_grid(44.0, 3e-5) == ("3e-06", "1e-06", "3e-07")  # ~44x MeZO's noise: ~30x lower


def _bank(tmp_path, ratio: float | None, digest: str | None = None):
    bank = tmp_path / "bank.safetensors"
    bank.write_bytes(b"bank bytes")
    if ratio is not None:
        noise_record_path(bank).write_text(json.dumps({
            "bank_sha256": digest or hashlib.sha256(b"bank bytes").hexdigest(), "noise_trace_vs_mezo": ratio,
            "need_normalization": False}))
    return bank


def test_a_record_counts_only_for_the_bytes_it_measured(tmp_path):
    assert measured_trace_ratio(_bank(tmp_path, None)) is None
    assert measured_trace_ratio(_bank(tmp_path, 0.2)) == 0.2
    assert measured_trace_ratio(_bank(tmp_path, 0.2, digest="0" * 64)) is None  # retrained since: measure again
    assert measured_trace_ratio(_bank(tmp_path, float("nan"))) is None
    bank = _bank(tmp_path, 0.2)
    record = json.loads(noise_record_path(bank).read_text())
    noise_record_path(bank).write_text(json.dumps({**record, "need_normalization": True}))
    assert measured_trace_ratio(bank) is None  # measured with c: MeZO's trace whatever the bank, sizes nothing
    noise_record_path(bank).write_text("{not json")
    assert measured_trace_ratio(bank) is None and measured_trace_ratio(None) is None


def _safetensors_with(path, metadata: dict) -> None:
    header = json.dumps({"__metadata__": metadata}).encode()
    path.write_bytes(len(header).to_bytes(8, "little") + header)


def test_the_plan_waits_for_a_bank_in_training_and_for_its_noise_record(tmp_path):
    bank = tmp_path / "base.safetensors"
    env = {"RESULTS_DIR": str(tmp_path / "results"), "TASKS": "SST2", "SEEDS": "1", "METHODS": "zoft_base",
           "BANK_zoft_base": str(bank)}
    _safetensors_with(bank, {"format": "zo-pertnn-bank", "complete": "false"})  # L2L saves it every 20 steps
    assert bank_in_training(bank)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x05")
    assert not bank_in_training(broken)  # unreadable: not this check's to judge, fine-tuning refuses it
    plan = build_plan(load_settings(env))
    assert "still being meta-trained" in plan.unavailable["zoft_base"] and not plan.runs

    _safetensors_with(bank, {"format": "zo-pertnn-bank", "complete": "false", "stop_reason": "stopped by hand"})
    assert not bank_in_training(bank)  # as the shipped SmolLM2 bank: stopped on purpose, complete=false
    plan = build_plan(load_settings(env))
    assert "bank_noise_budget.py" in plan.unavailable["zoft_base"] and not plan.runs

    by_task = build_plan(load_settings({**env, "LRS_zoft_base_SST2": "1e-3"}))  # every task's grid set by hand
    assert not by_task.unavailable and [r.lr for r in by_task.runs] == ["0.001"]
    noise_record_path(bank).write_text(json.dumps({"bank_sha256": hashlib.sha256(bank.read_bytes()).hexdigest(),
                                                   "noise_trace_vs_mezo": 0.046, "need_normalization": False}))
    plan = build_plan(load_settings(env))
    assert not plan.unavailable and sorted(r.lr for r in plan.runs) == ["0.0003", "0.001", "0.003"]
    by_hand = build_plan(load_settings({**env, "LRS_zoft_base": "1e-4"}))  # LRS_<method> wins
    assert [r.lr for r in by_hand.runs] == ["0.0001"]
    # a bank used with normalization keeps the ZO-SGD grid whatever its noise record says
    normalized = build_plan(load_settings({**env, "METHODS": "zoft_norm", "BANK_zoft_norm": str(bank)}))
    assert sorted(r.lr for r in normalized.runs) == ["0.0001", "1e-05", "3e-05"]


def test_bank_noise_budget_measures_a_bank_without_normalization_as_it_is_used(tmp_path, tiny_llama_dir):
    from zo.init_bank import init_bank
    from zo.pertnn import load_bank

    script = REPO_ROOT / "scripts" / "bank_noise_budget.py"
    ratios = {}
    for norm in (True, False):
        bank_path = tmp_path / f"norm_{norm}.safetensors"
        bank = init_bank(str(tiny_llama_dir), bank_path, seed=3)
        bank.save(bank_path, {"need_normalization": norm})
        assert load_bank(bank_path).metadata["need_normalization"] == json.dumps(norm)
        proc = subprocess.run([sys.executable, str(script), str(bank_path), "--model", str(tiny_llama_dir),
                               "--batch_size", "2", "--steps", "2", "--write"], capture_output=True, text=True,
                              timeout=240)
        assert proc.returncode == 0, proc.stderr
        assert ("no normalization: k = sigma" in proc.stdout) == (not norm)
        record = json.loads(noise_record_path(bank_path).read_text())
        assert record["need_normalization"] is norm
        assert record["bank_sha256"] == hashlib.sha256(bank_path.read_bytes()).hexdigest()
        ratios[norm] = record["noise_trace_vs_mezo"]
    assert math.isclose(ratios[True], 1.0, rel_tol=1e-6)  # c gives every normalized bank MeZO's noise
    assert 0 < ratios[False] < 0.5  # an untrained PertNN's sigma is well below 1: its steps are far smaller
    # only the measurement without c sizes a grid
    assert measured_trace_ratio(tmp_path / "norm_True.safetensors") is None
    assert measured_trace_ratio(tmp_path / "norm_False.safetensors") == ratios[False]

    # --if_missing: a valid record is kept, without loading any model (this folder is none)
    unnormalized = tmp_path / "norm_False.safetensors"
    before = noise_record_path(unnormalized).read_text()
    proc = subprocess.run([sys.executable, str(script), str(unnormalized), "--model", str(tmp_path / "absent"),
                           "--write", "--if_missing"], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0 and "skipped (--if_missing)" in proc.stdout, proc.stdout + proc.stderr
    assert noise_record_path(unnormalized).read_text() == before
    record = json.loads(before)
    assert record["model"] == tiny_llama_dir.name and record["c"] is None and record["embedding_k"] > 0
    # measured with the other normalization than the bank's: it sizes no grid, so it is measured again; as is
    # a missing record
    for stale in ({**record, "need_normalization": True}, None):
        if stale is None:
            noise_record_path(unnormalized).unlink()
        else:
            noise_record_path(unnormalized).write_text(json.dumps(stale))
        proc = subprocess.run([sys.executable, str(script), str(unnormalized), "--model", str(tiny_llama_dir),
                               "--batch_size", "2", "--steps", "2", "--write", "--if_missing"], capture_output=True,
                              text=True, timeout=240)
        assert proc.returncode == 0 and "skipped" not in proc.stdout, proc.stderr
        assert measured_trace_ratio(unnormalized) == ratios[False]
