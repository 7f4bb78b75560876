"""Audit item 3: OPT sequences start with id 0 as with upstream's slow tokenizer and `bos_token_id = 0`;
--native_opt_bos keeps the tokenizer's own BOS. Other families are untouched."""
import pytest
from tokenizers import processors

from conftest import build_tiny_model, build_tiny_tokenizer
from tasks.encoding import encode_candidates
from tasks.templates import SST2Template
from tasks.base import Sample
from zo.models import load_model


def _save(folder, family):
    """A tiny model whose tokenizer prepends </s> (id 2), as OPT's does natively."""
    tokenizer = build_tiny_tokenizer()
    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
        single="</s>:0 $A:0", pair="</s>:0 $A:0 </s>:1 $B:1", special_tokens=[("</s>", 2)])
    assert tokenizer("a")["input_ids"][0] == 2
    build_tiny_model(family, vocab_size=len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def opt_dir(tmp_path_factory):
    return _save(tmp_path_factory.mktemp("opt-bos"), "opt")


def test_opt_sequences_start_with_id_0_as_upstream(opt_dir):
    _, tokenizer = load_model(opt_dir)
    ids = tokenizer("It was great")["input_ids"]
    plain = tokenizer("It was great", add_special_tokens=False)["input_ids"]
    assert ids == [0] + plain
    sample = Sample(id=0, data={"sentence": "It was fun."}, candidates=["terrible", "great"], correct="great")
    rows = encode_candidates(sample, tokenizer, SST2Template())
    assert all(r.input_ids[0] == 0 for r in rows)  # every scored row, and the option length is unchanged
    assert [r.option_len for r in rows] == [len(tokenizer(" " + w, add_special_tokens=False)["input_ids"])
                                            for w in ("terrible", "great")]


def test_native_opt_bos_keeps_the_tokenizer_bos(opt_dir):
    _, tokenizer = load_model(opt_dir, native_opt_bos=True)
    assert tokenizer("It was great")["input_ids"][0] == 2


def test_other_families_keep_their_bos(tmp_path):
    _, tokenizer = load_model(_save(tmp_path, "llama"))
    assert tokenizer("It was great")["input_ids"][0] == 2
