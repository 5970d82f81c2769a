"""Synthetic long-context retrieval documents: passkey and multi-key recall hidden in natural filler.

Shared by the corpus builder (the committed test cases) and the trainer (fresh training documents).
A document is `prompt + answer`: the prompt holds filler sentences with the needle(s) placed at a
chosen depth and ends with the question; the answer is the number asked for (with its leading
space), so a model retrieves correctly when it predicts every answer token after the prompt.

  passkey   "The pass key is 48213. Remember it. 48213 is the pass key." somewhere in the filler;
            the question: "What is the pass key? The pass key is" -> " 48213"
  multikey  four records "The code for amber-512 is 90311." at different depths, one of them asked
            for: "What is the code for amber-512? The code for amber-512 is" -> " 90311"

Lengths are in tokens of the model's tokenizer: a test case is grown or shrunk until prompt + answer
fit its context length (a `count_tokens` function measures; tools/corpus/bpe_count.py here, HF
`tokenizers` on the GPU machine). Sized from characters alone (CHARS_PER_TOKEN), the first test set's
"2048-token" cases were 2,600 tokens, past the training context, and a fifth of the training documents
lost their question and answer to truncation.
"""

import random
import re

CHARS_PER_TOKEN = 2.3  # the trained tokenizer on the held-out filler, for the first guess
MIN_FILL = 0.9  # a test case holds at least this share of its context length
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


def sized(make, seed, filler, n_tokens, depth, count_tokens):
    """make(...) at the largest filler size whose prompt + answer holds between MIN_FILL·n_tokens and n_tokens
    tokens; the same seed at every try, so only the filler length changes."""
    n_chars = n_tokens * CHARS_PER_TOKEN
    best = None
    for _ in range(12):
        prompt, answer = make(random.Random(seed), filler, int(n_chars), depth)
        n = count_tokens(prompt + answer)
        if n <= n_tokens:
            best = (prompt, answer)
            if n >= MIN_FILL * n_tokens:
                break
        n_chars *= (0.5 + 0.5 * MIN_FILL) * n_tokens / n
    if best is None:
        raise ValueError(f"no {make.__name__} case fits {n_tokens} tokens")
    return best


def make_cases(filler, contexts, per_context, seed, count_tokens):
    """Test cases: for each task and context length (tokens, prompt + answer), per_context cases cycling
    through DEPTHS."""
    cases = []
    for task, make in TASKS.items():
        for context in contexts:
            for i in range(per_context):
                depth = DEPTHS[i % len(DEPTHS)]
                prompt, answer = sized(make, f"{seed}/{task}/{context}/{i}", filler, context, depth, count_tokens)
                cases.append({"task": task, "context": context, "depth": depth, "prompt": prompt, "answer": answer})
    return cases


def make_training_document(rng, filler, n_tokens):
    """(prompt, answer) of a random task and depth, about n_tokens long (sized from characters: the
    trainer measures the real length and drops what does not fit its rows)."""
    task = rng.choice(sorted(TASKS))
    return TASKS[task](rng, filler, int(n_tokens * CHARS_PER_TOKEN), rng.random())
