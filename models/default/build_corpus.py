#!/usr/bin/python3
"""Build the training corpus of the embedded default model from English prose every Debian
machine has, and the demo's text files.

    /usr/bin/python3 models/default/build_corpus.py [--out-dir DIR]

Sources (read-only, nothing downloaded):
  * /usr/share/common-licenses/*  (license texts; symlinks counted once)
  * /usr/share/doc/*/  copyright, README*, NEWS*, changelog*, TODO*, THANKS*, AUTHORS*, *.txt,
    *.md, *.rst  (gzip files decompressed)

Filtering keeps prose: a line survives when it is ASCII, at least 20 characters long after
stripping, and at least 85% letters and spaces; lines of code, e-mail signatures, version
headers and tables fall out. Paragraphs (blank-line separated) are de-duplicated over the whole
corpus, so the hundreds of copies of the GPL in copyright files count once.

Split is by document, so held-out text comes from files the model never saw: a document goes
to the held-out part when the first byte of sha1(its path) is below 13 (about 5%).

Out-of-distribution texts for the demo: ood_code.txt (excerpts of Python's textwrap.py and
glibc's stdio.h), ood_german.txt and ood_french.txt (the dpkg(1) man page in German and French,
rendered with man and reduced to prose lines). Each holds 32 windows of 128 bytes.

Writes DIR/train.txt and DIR/heldout.txt (DIR defaults to models/default/corpus, which is not
committed: it is regenerated from the machine), then models/default/fit.txt and
models/default/heldout_in.txt (committed: what the demo uses).
"""
import argparse
import glob
import gzip
import hashlib
import os
import re
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
CONTEXT = 128
FIT_WINDOWS = 64
HELDOUT_WINDOWS = 64
OOD_WINDOWS = 32
# Out-of-distribution texts for the demo (excerpts committed beside this script).
OOD_CODE = {"/usr/lib/python3.11/textwrap.py": 11000, "/usr/include/stdio.h": 2000}  # path: bytes skipped
OOD_MAN_PAGES = {"german": "/usr/share/man/de/man1/dpkg.1.gz", "french": "/usr/share/man/fr/man1/dpkg.1.gz"}
DOC_PATTERNS = re.compile(r"^(copyright|README.*|NEWS.*|changelog.*|TODO.*|THANKS.*|AUTHORS.*|.*\.txt(\.gz)?|.*\.md(\.gz)?|.*\.rst(\.gz)?)$")


def source_files():
    seen = set()
    paths = sorted(glob.glob("/usr/share/common-licenses/*"))
    for root, _, files in sorted(os.walk("/usr/share/doc")):
        for name in sorted(files):
            if DOC_PATTERNS.match(name) and not name.endswith((".html", ".css", ".js")):
                paths.append(os.path.join(root, name))
    for path in paths:
        real = os.path.realpath(path)
        if real in seen or not os.path.isfile(real):
            continue
        seen.add(real)
        yield path, real


def read_text(path):
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            return f.read(2_000_000).decode("utf-8")
    except (OSError, UnicodeDecodeError, EOFError):
        return None


def is_prose(line):
    if not line.isascii():
        return False
    s = line.strip().lstrip("*-+ ")
    if len(s) < 20:
        return False
    good = sum(c.isalpha() or c == " " for c in s)
    return good >= 0.85 * len(s)


def prose_paragraphs(text, seen_paragraphs):
    out = []
    for para in re.split(r"\n\s*\n", text.replace("\r", "")):
        lines = [l.rstrip() for l in para.split("\n") if is_prose(l)]
        if not lines:
            continue
        key = " ".join(" ".join(lines).split()).lower()
        if key in seen_paragraphs:
            continue
        seen_paragraphs.add(key)
        out.append("\n".join(lines))
    return out


def is_heldout(path):
    return hashlib.sha1(path.encode()).digest()[0] < 13


def windows_text(text, count, stride):
    """`count` windows of CONTEXT bytes, each starting at the first line start after a multiple
    of `stride`, concatenated without separators (the demo cuts the file every CONTEXT bytes)."""
    data = text.encode("ascii")
    out = []
    for i in range(count):
        start = data.index(b"\n", i * stride) + 1
        while data[start:start + 1] in (b"\n", b" ", b"\t"):  # start on a word, not on blank space
            start += 1
        out.append(data[start:start + CONTEXT])
        assert len(out[-1]) == CONTEXT, "corpus too small"
    return b"".join(out).decode("ascii")


def excerpt(text, size, skip):
    """`size` bytes of `text` starting at the first line start after byte `skip`; a trailing
    partial UTF-8 character is dropped."""
    data = text.encode("utf-8")
    start = data.index(b"\n", skip) + 1
    piece = data[start:start + size]
    assert len(piece) == size, "source too small"
    return piece.decode("utf-8", errors="ignore")


def rendered_man_page(path):
    """The man page as plain text, prose paragraphs only, indentation removed."""
    env = dict(os.environ, MANWIDTH="100", LANG="C.UTF-8")
    raw = subprocess.run(["man", "-E", "UTF-8", "-l", path], capture_output=True, env=env, check=True).stdout
    plain = subprocess.run(["col", "-bx"], input=raw, capture_output=True, check=True).stdout.decode("utf-8")
    lines = [l.strip() for l in plain.split("\n")]
    keep = [l for l in lines if len(l) >= 40 and sum(c.isalpha() or c == " " for c in l) >= 0.85 * len(l)]
    return "\n".join(keep) + "\n"


def write_ood_files():
    half = OOD_WINDOWS * CONTEXT // 2
    code = "".join(excerpt(read_text(p), half, skip) for p, skip in OOD_CODE.items())
    with open(os.path.join(HERE, "ood_code.txt"), "w", encoding="utf-8") as f:
        f.write(code)
    for language, path in OOD_MAN_PAGES.items():
        text = excerpt(rendered_man_page(path), OOD_WINDOWS * CONTEXT, 0)
        with open(os.path.join(HERE, f"ood_{language}.txt"), "w", encoding="utf-8") as f:
            f.write(text)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out-dir", default=os.path.join(HERE, "corpus"))
    parser.add_argument("--ood-only", action="store_true", help="only rewrite the ood_*.txt files")
    args = parser.parse_args()
    write_ood_files()
    if args.ood_only:
        return
    os.makedirs(args.out_dir, exist_ok=True)
    seen_paragraphs = set()
    train, heldout = [], []
    documents = [0, 0]
    for path, real in source_files():
        text = read_text(real)
        if text is None:
            continue
        paras = prose_paragraphs(text, seen_paragraphs)
        doc = "\n\n".join(paras)
        if len(doc) < 200:
            continue
        part = heldout if is_heldout(path) else train
        part.append(doc)
        documents[part is heldout] += 1
    train_text = "\n\n".join(train) + "\n"
    heldout_text = "\n\n".join(heldout) + "\n"
    for name, text in (("train.txt", train_text), ("heldout.txt", heldout_text)):
        with open(os.path.join(args.out_dir, name), "w", encoding="ascii") as f:
            f.write(text)
    print(f"train: {documents[0]} documents, {len(train_text)} bytes")
    print(f"heldout: {documents[1]} documents, {len(heldout_text)} bytes")
    # Demo files: windows spread evenly over each part, so they sample many documents.
    with open(os.path.join(HERE, "fit.txt"), "w", encoding="ascii") as f:
        f.write(windows_text(train_text, FIT_WINDOWS, len(train_text) // FIT_WINDOWS))
    with open(os.path.join(HERE, "heldout_in.txt"), "w", encoding="ascii") as f:
        f.write(windows_text(heldout_text, HELDOUT_WINDOWS, len(heldout_text) // HELDOUT_WINDOWS))


if __name__ == "__main__":
    main()
