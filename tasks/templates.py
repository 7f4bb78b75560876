"""Prompt templates of the 11 tasks (MeZO's `templates.py`). The prompt strings are data and must not drift.

`encode(sample)` is the prompt; `verbalize(sample, candidate)` is the prompt followed by the option, so the
option tokens are whatever the verbalized string adds after the prompt. Candidates are the option strings
(label words for the label tasks); an int is also accepted and mapped through `verbalizer`.
"""
from __future__ import annotations

from typing import Any

from .base import Sample


class Template:
    verbalizer: dict[int, str] = {}

    def encode(self, sample: Sample) -> str:
        raise NotImplementedError

    def verbalize(self, sample: Sample, candidate: Any) -> str:
        raise NotImplementedError

    def word(self, candidate: Any) -> str:
        """The option text of a candidate (label index -> label word; strings pass through)."""
        return self.verbalizer[candidate] if isinstance(candidate, int) else str(candidate)

    # Content-free prompt for sfc / icl_sfc calibration (MeZO's encode_sfc / verbalize_sfc): the sample's
    # content removed, the option kept; an option's calibrated score is its log-prob minus this one's.
    def encode_sfc(self, sample: Sample) -> str:
        raise ValueError(f"{type(self).__name__} has no content-free prompt: --sfc / --icl_sfc calibrate the "
                         "classification tasks only")

    def verbalize_sfc(self, sample: Sample, candidate: Any) -> str:
        return self.encode_sfc(sample)  # raises for templates without a content-free prompt


class LabelWordSfc:
    """MeZO's content-free prompt of the label-word tasks: nothing, then the label word."""

    def encode_sfc(self, sample: Sample) -> str:
        return ""

    def verbalize_sfc(self, sample: Sample, candidate: Any) -> str:
        return self.word(candidate)


class SST2Template(Template):
    verbalizer = {0: "terrible", 1: "great"}

    def encode(self, sample: Sample) -> str:
        return f"{sample.data['sentence'].strip()} It was"

    def verbalize(self, sample: Sample, candidate: Any) -> str:
        return f"{self.encode(sample)} {self.word(candidate)}"

    def encode_sfc(self, sample: Sample) -> str:
        return " It was"

    def verbalize_sfc(self, sample: Sample, candidate: Any) -> str:
        return f" It was {self.word(candidate)}"


class CopaTemplate(Template):
    """Premise without its final '.', then ' so ' (effect) or ' because ' (cause), then the choice."""

    def encode(self, sample: Sample) -> str:
        premise = sample.data["premise"].rstrip()
        if premise.endswith("."):
            premise = premise[:-1]
        question = sample.data["question"]
        if question == "effect":
            return premise + " so "
        if question == "cause":
            return premise + " because "
        raise ValueError(f"Copa question must be 'cause' or 'effect', got {question!r}")

    @staticmethod
    def lower_first_word(choice: str) -> str:
        # The choice continues a sentence: lower-case its first word, except the pronoun "I".
        words = choice.split(" ")
        if words[0] != "I":
            words[0] = words[0].lower()
        return " ".join(words)

    def verbalize(self, sample: Sample, candidate: Any) -> str:
        return self.encode(sample) + self.lower_first_word(str(candidate))

    def encode_sfc(self, sample: Sample) -> str:
        return "so" if sample.data["question"] == "effect" else "because"

    def verbalize_sfc(self, sample: Sample, candidate: Any) -> str:
        return f"{self.encode_sfc(sample)} {self.lower_first_word(str(candidate))}"


class BoolQTemplate(LabelWordSfc, Template):
    """Upstream's BoolQTemplateV3: passage, capitalized question with '?', newline, Yes/No."""

    verbalizer = {0: "No", 1: "Yes"}

    def encode(self, sample: Sample) -> str:
        question = sample.data["question"]
        if not question.endswith("?"):
            question += "?"
        question = question[0].upper() + question[1:]
        return f"{sample.data['passage']} {question}\n"

    def verbalize(self, sample: Sample, candidate: Any) -> str:
        return self.encode(sample) + self.word(candidate)


class MultiRCTemplate(LabelWordSfc, Template):
    verbalizer = {0: "No", 1: "Yes"}

    def encode(self, sample: Sample) -> str:
        d = sample.data
        return (f"{d['paragraph']}\nQuestion: {d['question']}\n"
                f"I found this answer \"{d['answer']}\". Is that correct? Yes or No?\n")

    def verbalize(self, sample: Sample, candidate: Any) -> str:
        return self.encode(sample) + self.word(candidate)


class CBTemplate(LabelWordSfc, Template):
    verbalizer = {0: "Yes", 1: "No", 2: "Maybe"}

    def encode(self, sample: Sample) -> str:
        d = sample.data
        return f"Suppose {d['premise']} Can we infer that \"{d['hypothesis']}\"? Yes, No, or Maybe?\n"

    def verbalize(self, sample: Sample, candidate: Any) -> str:
        return self.encode(sample) + self.word(candidate)


class WICTemplate(LabelWordSfc, Template):
    verbalizer = {0: "No", 1: "Yes"}

    def encode(self, sample: Sample) -> str:
        d = sample.data
        return (f"Does the word \"{d['word']}\" have the same meaning in these two sentences? Yes, No?\n"
                f"{d['sentence1']}\n{d['sentence2']}\n")

    def verbalize(self, sample: Sample, candidate: Any) -> str:
        return self.encode(sample) + self.word(candidate)


class WSCTemplate(LabelWordSfc, Template):
    verbalizer = {0: "No", 1: "Yes"}

    def encode(self, sample: Sample) -> str:
        d = sample.data
        return (f"{d['text']}\nIn the previous sentence, does the pronoun \"{d['span2_text'].lower()}\" "
                f"refer to {d['span1_text']}? Yes or No?\n")

    def verbalize(self, sample: Sample, candidate: Any) -> str:
        return self.encode(sample) + self.word(candidate)


class ReCoRDTemplate(Template):
    """Upstream's ReCoRDTemplateGPT3: highlights become '- ' bullets; the option is the filled-in query."""

    @staticmethod
    def passage(sample: Sample) -> str:
        return sample.data["passage"].replace("@highlight\n", "- ")

    def encode(self, sample: Sample) -> str:
        return f"{self.passage(sample)}\n-"

    def verbalize(self, sample: Sample, candidate: Any) -> str:
        return f"{self.passage(sample)}\n{self.verbalize_sfc(sample, candidate)}"

    def encode_sfc(self, sample: Sample) -> str:
        return "-"

    def verbalize_sfc(self, sample: Sample, candidate: Any) -> str:
        entity = candidate[0] if isinstance(candidate, list) else str(candidate)
        return f"- {sample.data['query'].replace('@placeholder', entity)}"


class RTETemplate(LabelWordSfc, Template):
    verbalizer = {0: "Yes", 1: "No"}

    def encode(self, sample: Sample) -> str:
        d = sample.data
        return f"{d['premise']}\nDoes this mean that \"{d['hypothesis']}\" is true? Yes or No?\n"

    def verbalize(self, sample: Sample, candidate: Any) -> str:
        return self.encode(sample) + self.word(candidate)


class SQuADTemplate(Template):
    """Upstream's SQuADv2Template. The target is always the first gold answer; `candidate` is ignored."""

    def encode(self, sample: Sample) -> str:
        d = sample.data
        return f"Title: {d['title']}\nContext: {d['context']}\nQuestion: {d['question'].strip()}\nAnswer:"

    def verbalize(self, sample: Sample, candidate: Any = None) -> str:
        return f"{self.encode(sample)} {sample.data['answers'][0]}\n"


class DROPTemplate(Template):
    """The target is always the first gold answer; `candidate` is ignored."""

    def encode(self, sample: Sample) -> str:
        d = sample.data
        return f"Passage: {d['context']}\nQuestion: {d['question'].strip()}\nAnswer:"

    def verbalize(self, sample: Sample, candidate: Any = None) -> str:
        return f"{self.encode(sample)} {sample.data['answers'][0]}\n"
