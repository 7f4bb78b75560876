"""OPT's first token as upstream and MeZO have it (audit item 3).

Both load OPT with the slow tokenizer and set `bos_token_id = 0` whenever "opt" is in the model name, so every
OPT sequence starts with id 0 (`<s>`) instead of OPT's native BOS (id 2, `</s>`). The authors' opt30B bank was
meta-trained on such sequences. Here the rule keys on the model's config (`model_type == "opt"`), not on its
name, and `native_opt_bos=True` keeps the tokenizer's own BOS.
"""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)

UPSTREAM_OPT_BOS_ID = 0


def adds_bos(tokenizer) -> bool:
    with_special = tokenizer("a")["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    return len(with_special) > len(plain)


def use_upstream_opt_bos(tokenizer) -> bool:
    """Make `tokenizer(text)` start with id 0, as upstream's slow OPT tokenizer does; True if changed.

    A tokenizer that adds no BOS is left alone (upstream's slow tokenizer only swaps the id it prepends).
    """
    if not adds_bos(tokenizer) or tokenizer("a")["input_ids"][0] == UPSTREAM_OPT_BOS_ID:
        return False
    from tokenizers import processors

    token = tokenizer.convert_ids_to_tokens(UPSTREAM_OPT_BOS_ID)
    tokenizer.bos_token = token
    # The fast tokenizer's BOS lives in its post-processor: rebuild it around id 0 (slow: build_inputs...).
    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{token}:0 $A:0", pair=f"{token}:0 $A:0 {token}:1 $B:1",
        special_tokens=[(token, UPSTREAM_OPT_BOS_ID)])
    first = tokenizer("a")["input_ids"][0]
    if first != UPSTREAM_OPT_BOS_ID:
        raise RuntimeError(f"could not set OPT's upstream BOS id 0 (sequences start with {first})")
    log.info("OPT: sequences start with id 0 (%r) as upstream/MeZO; --native_opt_bos keeps the native BOS", token)
    return True
