"""Synthetic long-context retrieval documents: passkey and multi-key recall hidden in natural filler.

Shared by the corpus builder (the committed test cases) and the trainer (fresh training documents).
A document is `prompt + answer`: the prompt holds filler sentences with the needle(s) placed at a
chosen depth and ends with the question; the answer is the number asked for (with its leading
space), so a model retrieves correctly when it predicts every answer token after the prompt.

  passkey   "The pass key is 48213. Remember it. 48213 is the pass key." somewhere in the filler;
            the question: "What is the pass key? The pass key is" -> " 48213"
  multikey  four records "The code for amber-512 is 90311." at different depths, one of them asked
            for: "What is the code for amber-512? The code for amber-512 is" -> " 90311"

Lengths are in characters, sized from a token budget with CHARS_PER_TOKEN (an estimate for the
4K-token tokenizer on English filler; the evaluation reports the real token counts).
"""

import random
import re

CHARS_PER_TOKEN = 3.0
DEPTHS = [0.05, 0.25, 0.5, 0.75, 0.95]  # where the asked-for needle sits, as a share of the filler
WORDS = ["amber", "basil", "cedar", "delta", "ember", "fable", "garnet", "harbor", "indigo", "juniper",
         "kestrel", "lagoon", "meadow", "nectar", "orchid", "pepper", "quartz", "raven", "saffron",
         "tundra", "umber", "velvet", "willow", "yarrow", "zephyr", "falcon", "glacier", "hazel"]
MULTIKEY_RECORDS = 4


def sentences(text):
    """Filler units: sentences of 40-300 characters with single spaces, in text order."""
    flat = re.sub(r"\s+", " ", text)
    return [s for s in re.split(r"(?<=[.!?]) (?=[A-Z])", flat) if 40 <= len(s) <= 300]


def _filler(rng, filler, n_chars):
    """Consecutive sentences from a random start (wrapping), about n_chars characters in all."""
    out, size, i = [], 0, rng.randrange(len(filler))
    while size < n_chars:
        out.append(filler[i % len(filler)])
        size += len(out[-1]) + 1
        i += 1
    return out


def _insert(parts, depth, needle):
    parts.insert(min(len(parts), int(round(depth * len(parts)))), needle)


def _number(rng):
    return str(rng.randrange(10000, 100000))


def passkey(rng, filler, n_chars, depth):
    key = _number(rng)
    question = "\nWhat is the pass key? The pass key is"
    parts = _filler(rng, filler, n_chars - len(question) - 70)
    _insert(parts, depth, f"The pass key is {key}. Remember it. {key} is the pass key.")
    return " ".join(parts) + question, " " + key


def multikey(rng, filler, n_chars, depth):
    names = rng.sample(WORDS, MULTIKEY_RECORDS)
    records = [(f"{name}-{rng.randrange(100, 1000)}", _number(rng)) for name in names]
    asked_name, asked_value = records[0]
    question = f"\nWhat is the code for {asked_name}? The code for {asked_name} is"
    parts = _filler(rng, filler, n_chars - len(question) - 40 * MULTIKEY_RECORDS)
    _insert(parts, depth, f"The code for {asked_name} is {asked_value}.")
    for name, value in records[1:]:  # distractors at random depths
        _insert(parts, rng.random(), f"The code for {name} is {value}.")
    return " ".join(parts) + question, " " + asked_value


TASKS = {"passkey": passkey, "multikey": multikey}


def make_cases(filler, contexts, per_context, seed):
    """Test cases: for each task and context length, per_context cases cycling through DEPTHS."""
    cases = []
    for task, make in TASKS.items():
        for context in contexts:
            rng = random.Random(f"{seed}/{task}/{context}")
            for i in range(per_context):
                depth = DEPTHS[i % len(DEPTHS)]
                prompt, answer = make(rng, filler, int(context * CHARS_PER_TOKEN), depth)
                cases.append({"task": task, "context": context, "depth": depth, "prompt": prompt, "answer": answer})
    return cases


def make_training_document(rng, filler, max_tokens):
    """One training document of a random task, length (up to max_tokens) and depth."""
    task = rng.choice(sorted(TASKS))
    n_chars = int(rng.uniform(0.1, 0.9) * max_tokens * CHARS_PER_TOKEN)
    prompt, answer = TASKS[task](rng, filler, n_chars, rng.random())
    return prompt + answer + "."
