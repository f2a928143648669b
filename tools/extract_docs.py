"""Extract a package's documentation from its source archive (used by tools/setup.sh).

    extract_docs.py ARCHIVE TOP DOCS SUFFIX LICENCE OUT_DIR LICENCE_OUT

Copies TOP/DOCS/**/*SUFFIX from the .tar.gz ARCHIVE into OUT_DIR (relative paths kept) and
TOP/LICENCE to LICENCE_OUT. Stdlib only; refuses members that would escape OUT_DIR; fails if
nothing matched or the licence is missing.
"""

import os
import shutil
import sys
import tarfile


def main() -> None:
    archive, top, docs, suffix, licence, out, licence_out = sys.argv[1:8]
    prefix = f"{top}/{docs}/"
    n = size = 0
    with tarfile.open(archive, "r:gz") as t:
        for m in t.getmembers():
            if m.isfile() and m.name == f"{top}/{licence}":
                with t.extractfile(m) as src, open(licence_out, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            if not (m.isfile() and m.name.startswith(prefix) and m.name.endswith(suffix)):
                continue
            rel = m.name[len(prefix):]
            if rel.startswith("/") or ".." in rel.split("/"):
                sys.exit(f"unsafe member {m.name}")
            dest = os.path.join(out, rel)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with t.extractfile(m) as src, open(dest, "wb") as dst:
                shutil.copyfileobj(src, dst)
            n += 1
            size += m.size
    if n == 0 or not os.path.exists(licence_out):
        sys.exit("no documents or no licence found")
    print(f"{n} files, {size / 1e6:.2f} MB", file=sys.stderr)


if __name__ == "__main__":
    main()
