"""Campaign settings from env vars (optionally a preset env file), the methods and the per-task caps.

Every knob is an env var so that scripts/reproduce_paper.sh reads like the other launchers; a preset
(scripts/presets/<name>.env) supplies defaults that real env vars override.
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .deadline import DEFAULT_MARGIN, parse_deadline
from .noise_grid import measured_trace_ratio, noise_scaled_grid

REPO_ROOT = Path(__file__).resolve().parents[2]
PRESET_DIR = REPO_ROOT / "scripts" / "presets"


def put_repo_on_path() -> None:
    """The campaign imports the repository's `zo` package only where it needs it (importing the campaign does not
    import torch), from this checkout whatever the working directory."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))


PAPER_TASKS = ("SST2", "Copa", "CB", "WSC", "BoolQ", "SQuAD", "DROP")
# Phase order: the core comparison first, so that a partial campaign is already a fair comparison.
CORE_METHODS = ("mezo", "zoft_new")
# zero_shot first among the others: it is cheap (one evaluation), and every other row is read against it. HiZOO
# last: at the authors' smoothing its curvature barely moves in 100 steps, so its runs repeat MeZO's at 1.5x the
# cost (the report's HiZOO note); a partial campaign learns more from the other methods first.
DEFAULT_METHODS = ("mezo", "zoft_new", "zero_shot", "zoft_old", "zoft_untrained", "mezo_adam", "lozo", "fzoo",
                   "fo_adam", "hizoo")
FIRST_ORDER = ("fo_sgd", "fo_adam")  # a reference, not a competitor in the "lowest loss" count
# The model as loaded, evaluated without training (MeZO's --trainer none): dev loss, train-subset loss and test
# metric at step 0, so that a gain over it is visible. Its one-point "grid" is LR 0.
ZERO_SHOT = "zero_shot"
REFERENCES = FIRST_ORDER + (ZERO_SHOT,)  # rows to read the others against, not competitors
TABLE2 = ("zoft_base", "zoft_reset", "zoft_norm", "zoft_reset_norm")  # banks meta-trained with/without reset, normalization
# layer-wise sharing against the block-wise bank trained by the same recipe (scripts/train_ablation_banks.sh);
# the shipped bank (zoft_new) had a longer schedule, so it would not be a controlled comparison
TABLE3 = ("zoft_layerwise", "zoft_reset_norm")
# Where ZO-FT's lag on some tasks comes from (docs/campaign.md, "Diagnostics"): the bank puts ~98 % of its noise on
# the tied embedding / head. ZO-FT without that tensor (c then normalizes the rest to MeZO's budget), and MeZO on
# that tensor alone, on the tasks where ZO-FT trails MeZO most.
# zoft_no_embed: c gives the other blocks MeZO's whole budget (their mean k^2 is 1, as MeZO's), so it takes the
# ZO-SGD grid; mezo_embed_only: ZO-FT's embedding step is ~4.7x MeZO's at one LR, so its grid sits higher.
DIAGNOSTICS = ("zoft_no_embed", "mezo_embed_only")
DIAGNOSTIC_TASKS = ("CB", "SQuAD")
# HiZOO at the authors' alpha = 1e-8 is MeZO over 100 steps (its curvature D moves < 0.3 %). At alpha = 1e-4, log D
# grows by alpha |L+ + L- - 2 L0| z^2 / (2 eps^2) ~ 0.15 z^2 a step at first (|L+ + L- - 2 L0| ~ 3e-3 here), then
# slower as that sum shrinks with the probe (mean D 1.27 after one step, 2.42 after 12, measured on SST-2): a
# curvature that acts within the budget. Its steps shrink as 1/sqrt(D), so its grid sits above HiZOO's; SST-2.
HIZOO_MOVING = "hizoo_alpha"

# LR grids for SmolLM2-135M in fp32 at ~100 steps, batch 16 (the campaign's phase 1, docs/campaign.md):
# - MeZO and ZO-FT (new bank) were best at 1e-4 on SST-2 (3e-4 worse) and at 3e-5 on Copa; 3e-6 was the
#   worst on both, so the ZO-SGD-like methods get 1e-4 3e-5 1e-5 on the other tasks.
# - MeZO-Adam and FZOO divide their step by a gradient scale (sqrt(v); the std of the N loss differences), so in
#   expectation both move about lr * grad / |grad|, where MeZO moves lr * grad. MeZO's projected gradient has an
#   RMS of ~14 here (11-22 across the campaign's tasks), so they match MeZO's best (1e-4) near 1.4e-3; FZOO's
#   step norm lr * sqrt(P / N) matches MeZO's at 1e-4 near 4e-3. Their grids centre there (the authors: FZOO at
#   50x MeZO's LR, ZO-Bench's ZO-Adam 10-100x ZO-SGD's).
# - The old bank (upstream's effective-dimension rule) steps about k^2 = 200x MeZO's step on the tied embedding /
#   head (docs/smollm2_bank.md): on SST-2 it diverged at 1e-5 and beat MeZO at 1e-6, so its grid sits 10x lower.
# A best LR at the edge of its grid is extended: by the plan, EXTEND_GRID times (default 1), or by hand
# (LRS_<method>, or LRS_<method>_<task> for one task).
ZO_SGD_GRID = "1e-4 3e-5 1e-5"
# Its middle LR: the grid of a noise-scaled bank (an ablation) is centred on it divided by the bank's noise ratio.
ZO_SGD_CENTRE = sorted(map(float, ZO_SGD_GRID.split()))[len(ZO_SGD_GRID.split()) // 2]
DEFAULT_GRIDS = {"mezo": ZO_SGD_GRID, "hizoo": ZO_SGD_GRID, "lozo": ZO_SGD_GRID, "zoft": ZO_SGD_GRID,
                 "zoft_old": "1e-5 3e-6 1e-6",
                 "mezo_adam": "3e-3 1e-3 3e-4", "fzoo": "1e-2 3e-3 1e-3",
                 "fo_adam": "3e-5 1e-5 3e-6", "fo_sgd": "1e-2 1e-3 1e-4", ZERO_SHOT: "0",
                 # ZO-FT's embedding step is ~4.7x MeZO's at one LR: MeZO on it alone needs a higher LR to match
                 "mezo_embed_only": "3e-4 1e-4 3e-5",
                 HIZOO_MOVING: "1e-3 3e-4 1e-4"}
# Wider grids of the core methods where the campaign ran more LRs: SST-2, WSC and CB were extended to 3e-4 (MeZO's
# best was 1e-4, at the edge), WSC to 3e-6 (ZO-FT's best was 1e-5, at the edge; both methods keep one grid), and
# SST-2 and Copa ran 3e-6 under the first grid (3e-5 1e-5 3e-6).
DEFAULT_TASK_GRIDS = {(method, task): grid for method in ("mezo", "zoft_new")
                      for task, grid in (("SST2", "3e-4 1e-4 3e-5 1e-5 3e-6"), ("Copa", "1e-4 3e-5 1e-5 3e-6"),
                                         ("WSC", "3e-4 1e-4 3e-5 1e-5 3e-6"), ("CB", "3e-4 1e-4 3e-5 1e-5"))}
# Grids of the later tasks centred where the first two put the best LR (chosen on their dev sets; no test result
# is used). The old bank was best at its grid's lowest LR, 1e-6, on SST-2 and Copa, and blew up at 1e-5 on both
# (train loss 13.7 and 3.9 after 100 steps); FZOO blew up or trailed at 1e-2 on both (dev loss 0.695 against
# 0.616-0.622 on SST-2, 3.765 against 2.883 on Copa) and was best at 1e-3 on SST-2. Both grids move one step down
# on WSC and CB, so that the three runs bracket the likely best instead of spending one on a blow-up. First-order
# Adam was best at its grid's highest LR, 3e-5, on both (dev loss 0.343 and 2.316, at steps 50 and 25): its grid
# moves one step up there.
DEFAULT_TASK_GRIDS.update({(method, task): grid for task in ("WSC", "CB")
                           for method, grid in (("zoft_old", "3e-6 1e-6 3e-7"), ("fzoo", "3e-3 1e-3 3e-4"),
                                                ("fo_adam", "1e-4 3e-5 1e-5"))})

# A step's time against MeZO's on SST-2, measured side by side (docs/benchmarks.md: `python
# scripts/benchmark_step.py --data_dir ../shared/data --repeats 3 --copa`). `--status` prices a method's runs with it
# until the campaign has finished runs of the method to measure; evaluation costs every method the same, so for
# whole runs it overstates the gaps a little.
# The mean of two runs on 2026-11-27.
STEP_COST_VS_MEZO = {"mezo": 1.0, "zo_fine_tuner": 1.043, "mezo_adam": 1.085, "hizoo": 1.475, "lozo": 0.850,
                     "fzoo": 5.074, "fo_sgd": 0.894, "fo_adam": 1.149}


@dataclass(frozen=True)
class TaskCaps:
    """What one run of a task costs on 2 CPU cores, written down (docs/campaign.md has the reasoning)."""
    steps: int = 100
    eval_steps: int = 25
    train: int = 1000
    dev: int = 100
    test: int = 200
    max_length: int = 2048
    max_new_tokens: int = 50
    seeds: int = 3  # how many of SEEDS this task gets at the best LR
    # training batches as up to this many micro-batches of similar length (--length_groups): the same loss up
    # to rounding, less padding. Worth it where lengths vary a lot: `bash scripts/benchmark_length_groups.sh`
    # (MeZO, batch 16, the same 3 batches in each setting): 2 groups take CB to 0.80x, WSC 0.89x, BoolQ 0.79x,
    # but SST-2 to 1.18x; 3 groups gain no more (each micro-forward draws the virtual perturbation's noise).
    length_groups: int = 1


# Long-passage tasks cost 3-6x a SST-2 step: one seed, shorter sequences, smaller test sets.
DEFAULT_CAPS = {
    "SST2": TaskCaps(),
    "Copa": TaskCaps(),
    "CB": TaskCaps(test=56, length_groups=2),  # the whole validation set
    "WSC": TaskCaps(test=104, length_groups=2),
    "BoolQ": TaskCaps(max_length=256, test=100, seeds=1, length_groups=2),
    "SQuAD": TaskCaps(max_length=320, test=100, max_new_tokens=20, seeds=1, length_groups=2),
    # DROP: most passages reach the 320 cap, so groups gain nothing (0.99x, docs/campaign.md)
    "DROP": TaskCaps(max_length=320, test=100, max_new_tokens=20, seeds=1),
}


@dataclass(frozen=True)
class Method:
    name: str
    train_mode: str
    bank: str | None = None  # PertNN bank for zo_fine_tuner
    generated_bank_seed: int | None = None  # the bank is written by zo.init_bank on first use
    args: tuple[str, ...] = ()
    grid: tuple[str, ...] = ()
    tasks: tuple[str, ...] | None = None  # None: every task of the campaign
    # the grid is the ZO-SGD grid scaled by the bank's measured noise (campaign/noise_grid.py): a bank used
    # without the normalization, whose step at one LR is not MeZO's
    noise_grid: bool = False

    def bank_path(self) -> Path | None:
        if not self.bank:
            return None
        return Path(self.bank) if Path(self.bank).is_absolute() else REPO_ROOT / self.bank


def _builtin(name: str) -> dict | None:
    bank_dir = "learned_finetuner"
    zoft = {"train_mode": "zo_fine_tuner", "grid_key": "zoft"}
    ablation_bank = f"{bank_dir}/ablations/smollm2-135m_copa_{{}}.safetensors"
    table = {
        "zoft_new": {**zoft, "bank": f"{bank_dir}/smollm2-135m_copa.safetensors"},
        "zoft_old": {**zoft, "grid_key": "zoft_old", "bank": f"{bank_dir}/smollm2-135m_copa_upstream-rule.safetensors"},
        "zoft_untrained": {**zoft, "generated_bank_seed": 42},
        # Table 2: a bank meta-trained without normalization is also used without it
        "zoft_base": {**zoft, "bank": ablation_bank.format("base"), "args": ("--need_normalization", "False"),
                      "tasks": ("SST2",), "noise_grid": True},
        "zoft_reset": {**zoft, "bank": ablation_bank.format("reset"), "args": ("--need_normalization", "False"),
                       "tasks": ("SST2",), "noise_grid": True},
        "zoft_norm": {**zoft, "bank": ablation_bank.format("norm"), "tasks": ("SST2",)},
        "zoft_reset_norm": {**zoft, "bank": ablation_bank.format("reset_norm"), "tasks": ("SST2",)},
        "zoft_layerwise": {**zoft, "bank": ablation_bank.format("layer_reset_norm"), "tasks": ("SST2",)},
        # the input embedding's block name has embed_tokens in Llama, Qwen2 and OPT (tied: the head too)
        "zoft_no_embed": {**zoft, "bank": f"{bank_dir}/smollm2-135m_copa.safetensors",
                          "args": ("--trainable_blocks", "^(?!.*embed_tokens)"), "tasks": DIAGNOSTIC_TASKS},
        "mezo_embed_only": {"train_mode": "mezo", "grid_key": "mezo_embed_only",
                            "args": ("--trainable_blocks", "embed_tokens"), "tasks": DIAGNOSTIC_TASKS},
        HIZOO_MOVING: {"train_mode": "hizoo", "grid_key": HIZOO_MOVING, "args": ("--hizoo_alpha", "1e-4"),
                       "tasks": ("SST2",)},
        ZERO_SHOT: {"train_mode": "none", "grid_key": ZERO_SHOT},
    }
    if name in table:
        return table[name]
    if name in ("mezo", "mezo_adam", "hizoo", "lozo", "fzoo", "fo_sgd", "fo_adam"):
        return {"train_mode": name, "grid_key": name}
    return None


def available_cores() -> int:
    """The cores this process may run on (its affinity mask, e.g. under taskset or a CPU quota'd container)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def split_words(text: str | None) -> tuple[str, ...]:
    return tuple((text or "").split())


def lr_words(text: str | None, name: str) -> tuple[str, ...]:
    """An LR grid from an env var: each word a number >= 0, else one error that names the variable."""
    words = split_words(text)
    for word in words:
        try:
            ok = 0 <= float(word) < math.inf
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(f"{name}: {word!r} is not a learning rate (a number >= 0, e.g. 1e-4)")
    return words


def int_words(text: str | None, name: str) -> tuple[int, ...]:
    try:
        return tuple(int(word) for word in split_words(text))
    except ValueError:
        raise ValueError(f"{name} must be whole numbers separated by spaces, got {text!r}") from None


def check_tasks_have_data(names: tuple[str, ...], data_dir: Path) -> None:
    """A task named in TASKS needs its folder in the data dir (named exactly as the task): a misspelled task
    fails here, once, instead of in every one of its runs. Skipped where there is no data dir (--status
    elsewhere)."""
    if not data_dir.is_dir():
        return
    present = sorted(p.name for p in data_dir.iterdir() if p.is_dir())
    for name in names:
        if name not in present:
            close = [p for p in present if p.lower().replace("-", "") == name.lower().replace("-", "")]
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ValueError(f"TASKS: no data folder for {name!r} in {data_dir}{hint}; tasks there: "
                             f"{', '.join(present)}")


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (quotes stripped, # comments); no shell expansion."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "=" in line:
            key, value = line.split("=", 1)
            values[key.strip().removeprefix("export ").strip()] = value.strip().strip("'\"")
    return values


@dataclass
class Settings:
    env: dict[str, str]
    tasks: tuple[str, ...] = PAPER_TASKS
    methods: tuple[Method, ...] = ()
    seeds: tuple[int, ...] = (42, 43, 44)
    model: str = ""
    data_dir: str = ""
    results_dir: Path = REPO_ROOT / "results"
    select_by: str = "dev_loss"
    caps: dict[str, TaskCaps] = field(default_factory=dict)
    deadline: float | None = None  # DEADLINE as Unix seconds (campaign.deadline): start only runs that end before
    deadline_margin: float = DEFAULT_MARGIN  # DEADLINE_MARGIN: a run's price times this must fit before it

    def get(self, key: str, default: str | None = None) -> str | None:
        value = self.env.get(key)
        return value if value not in (None, "") else default

    @property
    def runs_dir(self) -> Path:
        return self.results_dir / "runs"

    def seeds_for(self, task: str) -> tuple[int, ...]:
        override = self.get(f"SEEDS_{task}")
        return int_words(override, f"SEEDS_{task}") if override else self.seeds[:self.caps[task].seeds]

    def grid_for(self, method: Method, task: str) -> tuple[str, ...]:
        """The method's LR grid on one task: LRS_<method>_<task> when set (a grid extended where its best LR
        sat at an edge), else LRS_<method>, else the default for that task, else the method's default."""
        override = lr_words(self.get(f"LRS_{method.name}_{task}"), f"LRS_{method.name}_{task}")
        if override:
            return override
        if self.get(f"LRS_{method.name}") is None and (method.name, task) in DEFAULT_TASK_GRIDS:
            return split_words(DEFAULT_TASK_GRIDS[method.name, task])
        if method.noise_grid:  # unmeasured: the plan lists the method as unavailable, with the command to run
            ratio = measured_trace_ratio(method.bank_path())
            if ratio is None:
                return method.grid
            return noise_scaled_grid(ratio, zo_sgd_centre=ZO_SGD_CENTRE)
        return method.grid

    def tasks_for(self, method: Method) -> tuple[str, ...]:
        wanted = method.tasks if method.tasks is not None else self.tasks
        return tuple(t for t in self.tasks if t in wanted)


def load_settings(env: dict[str, str] | None = None) -> Settings:
    env = dict(os.environ if env is None else env)
    preset = env.get("PRESET")
    if preset:
        path = Path(preset) if Path(preset).is_file() else PRESET_DIR / f"{preset}.env"
        if not path.is_file():
            raise FileNotFoundError(f"preset {preset!r} not found (looked for {path})")
        env = {**read_env_file(path), **{k: v for k, v in env.items() if v != ""}}
    s = Settings(env=env)
    s.tasks = split_words(s.get("TASKS")) or PAPER_TASKS
    s.seeds = int_words(s.get("SEEDS", "42 43 44"), "SEEDS")
    s.model = s.get("MODEL", "")
    s.data_dir = s.get("DATA_DIR", str(REPO_ROOT.parent / "shared" / "data"))
    if s.get("TASKS"):
        check_tasks_have_data(s.tasks, Path(s.data_dir))
    s.results_dir = REPO_ROOT / s.get("RESULTS_DIR", "results")  # relative: to the repo, as the launchers cd there
    s.select_by = s.get("SELECT_BY", "dev_loss")
    if s.select_by not in ("dev_loss", "dev_metric"):
        raise ValueError(f"SELECT_BY must be dev_loss or dev_metric, got {s.select_by!r}")
    s.caps = {task: _caps_for(s, task) for task in s.tasks}
    s.deadline = parse_deadline(s.get("DEADLINE")) if s.get("DEADLINE") else None
    s.deadline_margin = float(s.get("DEADLINE_MARGIN", str(DEFAULT_MARGIN)))
    if not 0 < s.deadline_margin < math.inf:
        raise ValueError(f"DEADLINE_MARGIN must be positive, got {s.deadline_margin}")
    s.methods = tuple(method_from_word(s, word) for word in (split_words(s.get("METHODS")) or DEFAULT_METHODS))
    return s


def _caps_for(s: Settings, task: str) -> TaskCaps:
    """Per-task defaults; a global env var (STEPS, DEV, ...) overrides every task, STEPS_<task> one task."""
    base = DEFAULT_CAPS.get(task, TaskCaps())
    values = {}
    for key, env_name in (("steps", "STEPS"), ("eval_steps", "EVAL_STEPS"), ("train", "TRAIN"), ("dev", "DEV"),
                          ("test", "EVAL"), ("max_length", "MAX_LENGTH"), ("max_new_tokens", "MAX_NEW_TOKENS"),
                          ("length_groups", "LENGTH_GROUPS")):
        value = s.get(f"{env_name}_{task}", s.get(env_name))
        values[key] = int(value) if value is not None else getattr(base, key)
    return TaskCaps(**values, seeds=base.seeds)


def method_from_word(s: Settings, word: str) -> Method:
    """`name` (a built-in), `name=path/to/bank.safetensors` (ZO Fine-tuner with that bank), or a name of your own
    with MODE_<name> set to a built-in it varies (its train mode, bank, args and grid; ARGS_<name> adds to them)."""
    name, _, bank_path = word.partition("=")
    base = s.get(f"MODE_{name}")
    if base is not None and _builtin(name) is not None:
        raise ValueError(f"MODE_{name}: {name} is a built-in method already; give the variant a name of its own")
    spec = (_builtin(base) or {"train_mode": base, "grid_key": base}) if base is not None else (
        _builtin(name) or ({"train_mode": "zo_fine_tuner", "grid_key": "zoft"} if bank_path else
                           {"train_mode": name, "grid_key": name}))
    bank = s.get(f"BANK_{name}", bank_path or spec.get("bank"))
    grid = lr_words(s.get(f"LRS_{name}", DEFAULT_GRIDS.get(spec["grid_key"], ZO_SGD_GRID)), f"LRS_{name}")
    noise_grid = bool(spec.get("noise_grid")) and s.get(f"LRS_{name}") is None  # an LRS_<name> set by hand wins
    tasks = split_words(s.get(f"TASKS_{name}")) or spec.get("tasks")
    args = tuple(spec.get("args", ())) + split_words(s.get(f"ARGS_{name}"))
    return Method(name=name, train_mode=spec["train_mode"], bank=bank, args=args, grid=grid, tasks=tasks,
                  generated_bank_seed=None if bank else spec.get("generated_bank_seed"), noise_grid=noise_grid)
