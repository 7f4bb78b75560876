"""The campaign's report from the finished runs of the current plan (same env / preset as the campaign): the
tables, the win counts and the notes in <RESULTS_DIR>/README.md, with the plots (plots.py) beside it."""
from __future__ import annotations

import dataclasses
import json
import math
import statistics
from pathlib import Path
from typing import NamedTuple

from .cells import MISSING, Cell, collect, mean_sd, on_seed
from .method_notes import curvature_line, hizoo_note
from .noise_grid import noise_record
from .plan import build_plan
from .plots import plots
from .settings import (DIAGNOSTICS, HIZOO_MOVING, PRESET_DIR, REFERENCES, TABLE2, TABLE3, ZERO_SHOT, Settings,
                       method_from_word)
from .significance import sampling_noise_line

REFERENCE_FILE = PRESET_DIR / "paper_reference.json"
PROVISIONAL_MARK = " †"
PROVISIONAL_NOTE = ("†: provisional, the best of the LRs run so far: its grid's best lay at an edge, and the LR one "
                    "step past it has not finished yet.")


def reference_for(settings: Settings) -> dict:
    """The paper's numbers for this model, when the preset names one that the reference file has."""
    if not REFERENCE_FILE.is_file():
        return {}
    table = json.loads(REFERENCE_FILE.read_text())
    model = settings.get("PAPER_MODEL") or (Path(settings.model).name if settings.model else "")
    return table.get("models", {}).get(model, {})


def is_rival(method: str) -> bool:
    """A ZO baseline ZO-FT (new bank) is counted against: not one of its own variants, not a reference."""
    return not method.startswith("zoft") and method not in REFERENCES


class WinCount(NamedTuple):
    """ZO-FT (new bank) against the ZO baselines, over the tasks where both have results."""
    pairs: int  # tasks compared
    lowest: int  # tasks where ZO-FT's loss is the lowest
    highest: int  # tasks where ZO-FT's metric is the highest
    seed_counts: set[int]  # the seed counts of the cells compared
    provisional: bool  # a compared cell is provisional (its grid's edge extension is still to run)


def count_wins(cells: dict[tuple[str, str], Cell], tasks) -> WinCount:
    """ZO-FT (new bank) against the ZO baselines (not its own variants, not the references), task by task."""
    pairs = lowest = highest = 0
    seed_counts: set[int] = set()
    provisional = False
    for task in tasks:
        mine = cells.get((task, "zoft_new"))
        rivals = [c for (t, m), c in cells.items() if t == task and is_rival(m)
                  and c.loss is not None and c.metric is not None]
        if mine is None or mine.loss is None or mine.metric is None or not rivals:
            continue
        pairs += 1
        lowest += mine.loss < min(c.loss for c in rivals)
        highest += mine.metric > max(c.metric for c in rivals)
        seed_counts |= {len(c.runs) for c in [mine, *rivals]}
        provisional |= any(c.provisional for c in [mine, *rivals])
    return WinCount(pairs, lowest, highest, seed_counts, provisional)


def wins(cells: dict[tuple[str, str], Cell], settings: Settings) -> list[str]:
    """Counted from the table: ZO-FT (new bank) against the ZO baselines (not its own variants, not first order)."""
    lines = []
    pairs, lowest, highest, seed_counts, provisional = count_wins(cells, settings.tasks)
    if pairs:
        lines.append(f"ZO-FT (new bank) has the lowest final training loss in {lowest} of {pairs} tasks and the "
                     f"highest test metric in {highest} of {pairs}, against the ZO baselines with results on the "
                     f"same task" + (" (provisional cells count as they stand)." if provisional else "."))
    if len(seed_counts) > 1:
        # a one-seed cell holds the very run its LR was chosen on (the lowest dev loss of its grid): next to a mean
        # over seeds it is flattered by that choice; on the first seed alone every method is chosen alike
        first = {(t, m): on_seed(c, settings.seeds_for(t)[0]) for (t, m), c in cells.items()}
        pairs, lowest, highest, _, _ = count_wins(first, settings.tasks)
        lines.append(f"On the first seed alone (the one each LR was chosen on, so every method is on the same "
                     f"footing; a one-seed cell above is flattered by that choice, a mean over seeds is not): lowest "
                     f"loss in {lowest} of {pairs} tasks, highest test metric in {highest} of {pairs}.")
    vs = [(cells[t, "zoft_new"], cells[t, "mezo"]) for t in settings.tasks
          if (t, "zoft_new") in cells and (t, "mezo") in cells
          and None not in (cells[t, "zoft_new"].loss, cells[t, "mezo"].loss, cells[t, "zoft_new"].metric,
                           cells[t, "mezo"].metric)]
    if vs:
        gain = statistics.mean(a.metric - b.metric for a, b in vs)
        lines.append(f"Against MeZO alone: lower loss in {sum(a.loss < b.loss for a, b in vs)} of {len(vs)} tasks, "
                     f"higher test metric in {sum(a.metric > b.metric for a, b in vs)} of {len(vs)}; mean test "
                     f"metric difference {gain:+.4f} (the paper, over 4 LLMs: +2.5 points of accuracy).")
        ends = [(a.end_loss, b.end_loss) for a, b in vs if None not in (a.end_loss, b.end_loss)]
        if ends:  # the losses above are at the best-dev state, which can be an early step for one method only
            lines.append(f"The same losses after the last step instead of at the best-dev state: lower for ZO-FT in "
                         f"{sum(a < b for a, b in ends)} of {len(ends)} tasks.")
        lines += ["", sampling_noise_line(vs)]
    return lines or ["No task has both ZO-FT (new bank) and a ZO baseline at a selected LR yet."]


def _ordered(cells, settings):
    task_order = {t: i for i, t in enumerate(settings.tasks)}
    method_order = {m.name: i for i, m in enumerate(settings.methods)}
    return sorted(cells.items(), key=lambda kv: (task_order.get(kv[0][0], 99), method_order.get(kv[0][1], 99)))


def paper_table(cells, settings) -> list[str]:
    """Methods x tasks, as the paper's Table 1: final train loss / test metric at the best LR, mean over seeds.
    Bold: the lowest loss and the highest metric of the task among the zeroth-order methods (first order and zero
    shot are references), where two or more have results; "·": no run at a selected LR yet. A method with no result on any
    task is named below the table instead of taking a row of dots."""
    tasks = [t for t in settings.tasks if any(c.runs for (task, _), c in cells.items() if task == t)]
    if not tasks:
        return ["No (task, method) has a selected LR yet."]

    def has_result(m, t):
        c = cells.get((t, m))
        return c is not None and c.loss is not None and c.metric is not None

    planned = [m.name for m in settings.methods if any((t, m.name) in cells for t in tasks)]
    methods = [m for m in planned if any(has_result(m, t) for t in tasks)]
    waiting = [m for m in planned if m not in methods]
    rows = ["| method | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
    best = {}
    for t in tasks:
        zo = [cells[t, m] for (task, m) in cells if task == t and m not in REFERENCES and has_result(m, t)]
        # nothing to win against with fewer than two methods
        best[t] = (min(c.loss for c in zo), max(c.metric for c in zo)) if len(zo) > 1 else (None, None)
    for m in methods:
        parts = []
        for t in tasks:
            if not has_result(m, t):
                parts.append("·")
                continue
            c = cells[t, m]
            zo = m not in REFERENCES
            loss = f"**{c.loss:.3f}**" if zo and c.loss == best[t][0] else f"{c.loss:.3f}"
            metric = f"**{c.metric:.3f}**" if zo and c.metric == best[t][1] else f"{c.metric:.3f}"
            seeds = f" ({len(c.runs)} seeds)" if len(c.runs) > 1 else ""
            parts.append(f"{loss} / {metric}{seeds}{PROVISIONAL_MARK if c.provisional else ''}")
        rows.append(f"| {m} | " + " | ".join(parts) + " |")
    metric_names = sorted({c.runs[0].metric_name for (t, _), c in cells.items() if t in tasks and c.runs})
    return rows + ["", f"Each cell: final train loss / test {' or '.join(metric_names)}, one seed unless it says "
                       "more. Bold: the task's lowest loss and highest metric among the zeroth-order methods, "
                       "where two or more have results. ·: no run at a selected LR yet."
                       + (f" {ZERO_SHOT}: the model without training (a reference, as first order: never bold)."
                          if ZERO_SHOT in methods else "")
                       + (f" No task has one yet for {', '.join(waiting)}." if waiting else "")
                       + (f" {PROVISIONAL_NOTE}" if any(cells[t, m].provisional for m in methods for t in tasks
                                                       if has_result(m, t)) else "")]


def not_started_line(cells, settings) -> list[str]:
    """The (task, method) pairs without a finished run, one line instead of a table row each."""
    waiting: dict[str, list[str]] = {}
    for (task, method), c in _ordered(cells, settings):
        if not c.grid_done and not c.runs:
            waiting.setdefault(task, []).append(method)
    if not waiting:
        return []
    return ["No run finished yet (not in the table): "
            + "; ".join(f"{task}: {', '.join(methods)}" for task, methods in waiting.items()) + "."]


def main_table(cells, settings, reference) -> list[str]:
    ref_col = bool(reference)
    head = "| task | method | best LR (dev) | final train loss | test metric | seeds | stopped non-finite |"
    rows = [head + (" paper loss / metric |" if ref_col else ""), "|---" * (7 + ref_col) + "|"]
    for (task, method), c in _ordered(cells, settings):
        if not c.grid_done and not c.runs and not ref_col:
            continue  # named in not_started_line
        if c.best_lr is None:
            lr = f"{MISSING} (grid {c.grid_done}/{c.grid_size})"
        else:
            lr = c.best_lr + (" (grid edge)" if c.at_edge else "") + (" (provisional)" if c.provisional else "")
        metric_name = c.runs[0].metric_name if c.runs else ""
        metric = mean_sd(c.metrics) + (f" ({metric_name})" if c.metrics else "")
        diverged = sum(r.diverged for r in c.runs)
        row = f"| {task} | {method} | {lr} | {mean_sd(c.losses)} | {metric} | {len(c.runs)} | {diverged} |"
        if ref_col:
            ref = reference.get(task, {}).get(method)
            row += f" {ref['loss']:.2f} / {ref['metric']:.2f} |" if ref else " not transcribed |"
        rows.append(row)
    return rows


def grid_table(cells, settings) -> list[str]:
    """Every grid run (first seed): what the best LR was chosen from."""
    rows = ["| task | method | LR | best dev loss (step) | train loss there | train loss at the end | test metric |",
            "|---" * 7 + "|"]
    task_order = {t: i for i, t in enumerate(settings.tasks)}
    for (task, method), c in sorted(cells.items(), key=lambda kv: (task_order.get(kv[0][0], 99), kv[0][1])):
        for r in sorted(c.grid_runs, key=lambda r: -float(r.lr)):
            chosen = " (chosen)" if r.lr == c.best_lr else ""
            status = "" if not r.diverged else f" ({r.metrics.get('status')})"
            rows.append(f"| {task} | {method} | {r.lr}{chosen} | {r.dev_loss:.4f} ({r.metrics.get('best_step')}) | "
                        f"{r.train_loss:.4f} | {r.end_train_loss:.4f}{status} | {r.metric('test'):.4f} |")
    return rows if len(rows) > 2 else ["No grid run has finished yet."]


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def bank_noise(method) -> str:
    """Where the method's bank puts its noise, from <bank>.noise.json (scripts/bank_noise_budget.py --write)."""
    if not method.bank:
        return "no bank"
    record = noise_record(method.bank_path())
    if record is None:
        return MISSING
    scale = {True: "with c", False: "no c"}.get(record.get("need_normalization"), "c unknown")
    ratio, share = record.get("noise_trace_vs_mezo"), record.get("embedding_share")
    parts = [f"{scale}: trace {ratio:.3g}× MeZO's" if _finite(ratio) else scale]
    if _finite(share):
        parts.append(f"{share:.1%} on the embedding / head")
    return ", ".join(parts)


def ablation_table(cells, settings, methods: tuple[str, ...], first: str = "bank",
                   shown_with: tuple[str, ...] = ()) -> list[str]:
    """One row per method, one column per task where `methods` have runs; `shown_with` adds rows for reference.
    A table of banks (first == "bank") ends with each bank's noise split, as measured beside the bank."""
    tasks = [t for t in settings.tasks if any((t, m) in cells and cells[t, m].runs for m in methods)]
    if not tasks:
        # a grid partly run chooses no LR yet: say so, not that nothing ran
        partial = [f"{t} {m} {c.grid_done}/{c.grid_size}" for (t, m), c in cells.items()
                   if m in methods and c.grid_done]
        if partial:
            return [f"No LR chosen yet for {', '.join(methods)}: grids partly run ({', '.join(partial)}); "
                    "their runs are in the table of every grid run."]
        return [f"No runs yet for {', '.join(methods)}."]
    methods = tuple(dict.fromkeys(shown_with + methods))
    by_name = {m.name: m for m in settings.methods}
    with_noise = first == "bank"
    rows = [f"| {first} | " + " | ".join(f"{t}: loss / metric (best LR)" for t in tasks)
            + (" | bank noise at the start of a run |" if with_noise else " |"),
            "|---" * (len(tasks) + 1 + with_noise) + "|"]
    for m in methods:
        parts = []
        for t in tasks:
            c = cells.get((t, m))
            if c is None or c.loss is None:
                parts.append(MISSING)
                continue
            metric = f"{c.metric:.4f}" if c.metric is not None else MISSING
            parts.append(f"{c.loss:.4f} / {metric} ({c.best_lr}{', grid edge' if c.at_edge else ''}"
                         f"{', provisional' if c.provisional else ''})")
        if with_noise:  # a table's row may name a method outside METHODS: its bank is the built-in one
            parts.append(bank_noise(by_name.get(m) or method_from_word(settings, m)))
        rows.append(f"| {m} | " + " | ".join(parts) + " |")
    return rows


def cpu_lines(cells) -> list[str]:
    runs = {r.folder: r for c in cells.values() for r in c.grid_runs + c.runs}.values()
    by_phase: dict[int, float] = {}
    for r in runs:
        by_phase[r.campaign.get("phase", 0)] = by_phase.get(r.campaign.get("phase", 0), 0.0) + r.cpu_seconds
    total = sum(by_phase.values())
    detail = ", ".join(f"phase {p}: {s / 3600:.2f}" for p, s in sorted(by_phase.items()))
    partial = sum(not r.cost_complete for r in runs)
    note = (f" At least: {partial} of them were resumed from checkpoints that carried no time (older versions), and "
            "count their last attempt only." if partial else "")
    return [f"CPU-hours spent on the {len(runs)} finished runs: {total / 3600:.2f} ({detail or 'none'}).{note}"]


def with_ablation_runs(settings: Settings) -> Settings:
    """The settings plus the Table 2 / 3 banks and the diagnostics that have runs in the results folder although
    METHODS does not name them: they run as campaigns of their own (scripts/campaign_queue.sh), and their tables
    belong in the one report."""
    named = {m.name for m in settings.methods}
    own_campaigns = TABLE2 + TABLE3 + DIAGNOSTICS + (HIZOO_MOVING,)
    extra = tuple(method_from_word(settings, name) for name in dict.fromkeys(own_campaigns)
                  if name not in named and any((settings.runs_dir / task / name).is_dir() for task in settings.tasks))
    return dataclasses.replace(settings, methods=settings.methods + extra)


BLOCK_BEGIN = "<!-- campaign-table:begin"
BLOCK_END = "<!-- campaign-table:end -->"


class BlockMarkersError(ValueError):
    """A file given to --readme without exactly one begin line and, after it, one end line."""


def splice_block(text: str, block: list[str], where: str) -> str:
    """`text` with the lines between its campaign-table marker lines replaced by `block` (the marker lines stay):
    one line that starts with BLOCK_BEGIN, then one line that is BLOCK_END, each on a line of its own."""
    lines = text.splitlines(keepends=True)
    begins = [i for i, line in enumerate(lines) if line.lstrip().startswith(BLOCK_BEGIN)]
    ends = [i for i, line in enumerate(lines) if line.strip() == BLOCK_END]
    if len(begins) != 1 or len(ends) != 1 or ends[0] <= begins[0] or text.count(BLOCK_END) != 1:
        raise BlockMarkersError(f"{where} needs one line starting '{BLOCK_BEGIN}' and, below it, one line "
                                f"'{BLOCK_END}', where the generated table goes")
    return "".join(lines[:begins[0] + 1]) + "\n".join(block) + "\n" + "".join(lines[ends[0]:])


def write_report(settings: Settings, readme: Path | None = None) -> Path:
    """<RESULTS_DIR>/README.md and plots/; with `readme`, also the paper-style table and the win counts into the
    marked block of that file (the project README), so that its numbers are the report's."""
    main_methods = {m.name for m in settings.methods}  # the main table and plots; the ablations have their tables
    settings = with_ablation_runs(settings)
    plan = build_plan(settings)
    cells = collect(settings, plan)
    main_cells = {key: c for key, c in cells.items() if key[1] in main_methods}
    reference = reference_for(settings)
    table, counts = paper_table(main_cells, settings), wins(main_cells, settings)
    if readme is not None:  # checked before anything is written: a README without the markers changes nothing
        readme_text = splice_block(readme.read_text(), table + [""] + counts, str(readme))
    out = settings.results_dir / "README.md"
    pngs = plots(main_cells, settings, settings.results_dir / "plots")
    model = settings.model or "embedded SmolLM2-135M"
    lines = ["# Campaign results", "",
             "Generated by `python scripts/make_report.py` from `runs/`; do not edit. Protocol: docs/campaign.md.", "",
             f"Model: {model}. Tasks: {' '.join(settings.tasks)}. LR chosen per (task, method) on the dev split "
             f"({settings.select_by.replace('_', ' ')}) with seed {settings.seeds[0]}; then the other seeds at that "
             "LR. Final train loss: cross-entropy on a fixed 64-example train subset at the unperturbed weights of "
             "the state evaluated on test (best dev loss). Mean ± sd over seeds.", ""]
    if plan.unavailable:
        lines += ["Not run (unavailable here): " + "; ".join(f"{m} ({why})" for m, why in plan.unavailable.items()),
                  ""]
    lines += ["## Paper-style table", ""] + table + [""]
    lines += ["## Main table", ""] + main_table(main_cells, settings, reference) + [""]
    if not reference:  # with a paper column, every row stays: the paper's number is worth seeing
        lines += not_started_line(main_cells, settings) + [""]
    edges = sorted(f"{t} {m}" for (t, m), c in main_cells.items() if c.at_edge)
    if edges:
        lines += ["\"grid edge\": the best LR is the largest or smallest of its grid, so a better one may lie "
                  "outside it; extend the grid (`LRS_<method>_<task>`): " + ", ".join(edges) + ".", ""]
    if reference:
        lines += [f"Paper column: {reference.get('_source', 'see scripts/presets/paper_reference.json')}.", ""]
    lines += counts + [""]
    notes = hizoo_note(main_cells)
    lines += notes + [""] if notes else []
    lines += ["## Table 2: reset and normalization in meta-training", ""] + ablation_table(cells, settings, TABLE2)
    lines += ["", "## Table 3: layer-wise against block-wise banks", ""] + ablation_table(cells, settings, TABLE3)
    lines += ["", "## Diagnostics: the tied embedding's share of ZO-FT's noise", "",
              "zoft_no_embed: ZO-FT (new bank) with the embedding / head frozen, c normalizing the other blocks to "
              "MeZO's noise budget; mezo_embed_only: MeZO on the embedding / head alone (docs/campaign.md).", ""]
    lines += ablation_table(cells, settings, DIAGNOSTICS, first="method", shown_with=("mezo", "zoft_new"))
    lines += ["", "## Diagnostics: HiZOO with a curvature that moves", "",
              f"{HIZOO_MOVING}: HiZOO with α = 1e-4 instead of the authors' 1e-8, so that its curvature D acts "
              "within the 100 steps (docs/campaign.md).", ""]
    lines += ablation_table(cells, settings, (HIZOO_MOVING,), first="method", shown_with=("mezo", "hizoo"))
    moved = curvature_line(cells, HIZOO_MOVING)
    lines += ["", *moved] if moved else []
    lines += ["", "## Plots", ""] + [f"![{p.stem}](plots/{p.name})" for p in pngs] + [""]
    lines += ["## Every grid run", ""] + grid_table(cells, settings) + [""]
    lines += cpu_lines(cells) + [""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    if readme is not None:
        readme.write_text(readme_text)
    return out
