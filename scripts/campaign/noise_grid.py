"""The LR grid of a bank used without the normalization c (Table 2's base and reset banks), from its noise.

With c, a bank's noise trace equals MeZO's, so ZO-FT takes MeZO's grid. Without it k_b = sigma_b, and the
trace is whatever meta-training left (an untrained bank: ~0.05 of MeZO's, a step ~20x smaller at one LR).
A ZO-SGD step scales with lr x k^2, so the grid is the ZO-SGD grid divided by the measured trace ratio, snapped
to the 1-3-10 ladder: the trace comes from `python scripts/bank_noise_budget.py BANK --write`, which
scripts/train_ablation_banks.sh runs after each bank; it is read from <bank>.noise.json and used only while
that file's sha256 is the bank's.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

LADDER = (1.0, 3.0)

_digests: dict[tuple, str] = {}


def noise_record_path(bank: Path) -> Path:
    return bank.with_suffix(".noise.json")


def file_sha256(path: Path) -> str:
    """The file's sha256, computed once per version of the file (its size, mtime and inode)."""
    stat = path.stat()
    key = (path, stat.st_size, stat.st_mtime_ns, stat.st_ino)
    if key not in _digests:
        _digests[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return _digests[key]


def noise_record(bank: Path | None) -> dict | None:
    """The bank's <bank>.noise.json as a dict, if it is readable and measured these bank bytes; else None."""
    if bank is None:
        return None
    record = noise_record_path(bank)
    if not bank.is_file() or not record.is_file():
        return None
    try:
        info = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or info.get("bank_sha256") != file_sha256(bank):
        return None
    return info


def measured_trace_ratio(bank: Path | None) -> float | None:
    """The bank's noise trace / MeZO's, measured without normalization, from its record; None where there is no
    bank or record, the record is unreadable, measured other bytes, or measured the bank with normalization."""
    info = noise_record(bank)
    if info is None or info.get("need_normalization") is not False:
        return None  # with c the trace is MeZO's whatever the bank: it would size nothing
    ratio = info.get("noise_trace_vs_mezo")
    if not isinstance(ratio, (int, float)) or not 0 < ratio < math.inf:
        return None
    return float(ratio)


def ladder_index(value: float) -> int:
    """The rung of the ladder ... 1e-5, 3e-5, 1e-4 ... (index 2e + 0 for 1e<e>, 2e + 1 for 3e<e>) nearest to
    `value` in log scale."""
    exponent = math.floor(math.log10(value))
    candidates = [2 * e + rung for e in (exponent - 1, exponent, exponent + 1) for rung in (0, 1)]
    return min(candidates, key=lambda c: abs(math.log10(ladder_value(c) / value)))


def ladder_value(index: int) -> float:
    exponent, rung = divmod(index, 2)
    return LADDER[rung] * 10.0 ** exponent


def noise_scaled_grid(ratio: float, zo_sgd_centre: float) -> tuple[str, ...]:
    """Three LRs, one ladder rung apart, centred on zo_sgd_centre / ratio (zo_sgd_centre: the middle of the
    ZO-SGD grid, MeZO's and the normalized banks' LRs): high, centre, low."""
    centre = ladder_index(zo_sgd_centre / ratio)
    return tuple(format(float(f"{ladder_value(i):.1g}"), "g") for i in (centre + 1, centre, centre - 1))
