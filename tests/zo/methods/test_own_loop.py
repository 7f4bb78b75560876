"""docs/design.md's "A method in your own training loop" block runs as written (on a tiny model) and trains."""
import contextlib
import io
import re

import pytest
from transformers import AutoModelForCausalLM

from conftest import REPO_ROOT
from run_helpers import snapshot, weights_differ
from zo.blocks import parameter_blocks
from zo.estimator import ZOConfig
from zo.methods import MethodContext, build_method


def _documented_block() -> str:
    text = (REPO_ROOT / "docs" / "design.md").read_text()
    section = text.split("## A method in your own training loop", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_documented_loop_steps_a_method_and_moves_the_weights(tiny_llama_dir):
    before = snapshot(AutoModelForCausalLM.from_pretrained(tiny_llama_dir))
    scope: dict = {}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(_documented_block().replace("path/to/model", str(tiny_llama_dir)), scope)
    lines = printed.getvalue().splitlines()
    assert [line.split()[0] for line in lines] == ["0", "1", "2"]
    assert weights_differ(scope["model"], before)


def test_another_methods_option_is_refused_outside_the_recipe_too(tiny_llama_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    ctx = MethodContext(model, parameter_blocks(model), ZOConfig(lr=1e-3), seed=0)
    with pytest.raises(ValueError, match="--lozo_rank is an option of lozo, not of train_mode mezo"):
        build_method("mezo", ctx, {"lozo_rank": 4})
