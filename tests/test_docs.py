"""The repository's documents stay consistent with the code that cites them.

Code and configs cite the design document as "DESIGN.md section N" (or "DESIGN section N",
"sections 2-5"); every cited section must exist as a numbered heading of DESIGN.md, and no
tracked file may point outside the repository (a clone has nothing beside it).
"""
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CITATION = re.compile(r"DESIGN(?:\.md)?,? sections? (\d+)(?:\s*(?:-|and|,)\s*(\d+))?")
HEADING = re.compile(r"^## (\d+)\. \S", re.MULTILINE)


def tracked_text_files():
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:  # not a git checkout (e.g. an unpacked archive): walk the tree
        return [p for p in ROOT.rglob("*") if p.is_file() and ".git" not in p.parts]
    return [ROOT / line for line in out.stdout.splitlines()]


def text_of(path):
    if path.suffix in {".png", ".h5", ".npy", ".pt", ".tar"}:
        return ""
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, FileNotFoundError):
        return ""


def test_design_document_exists_with_numbered_sections():
    sections = {int(n) for n in HEADING.findall((ROOT / "DESIGN.md").read_text())}
    assert set(range(1, 9)) <= sections, sorted(sections)


def test_every_design_citation_resolves():
    sections = {int(n) for n in HEADING.findall((ROOT / "DESIGN.md").read_text())}
    cited = []
    for path in tracked_text_files():
        for match in CITATION.finditer(text_of(path)):
            lo = int(match.group(1))
            hi = int(match.group(2) or lo)
            cited += [(path.relative_to(ROOT), n) for n in range(lo, hi + 1)]
    assert cited, "no citation found: the pattern no longer matches how the code cites"
    missing = [(str(p), n) for p, n in cited if n not in sections]
    assert not missing, f"citations of DESIGN.md sections that do not exist: {missing}"


def test_nothing_refers_outside_the_repository():
    needle = "../" + "shared"  # split so this file does not match itself
    hits = [str(p.relative_to(ROOT)) for p in tracked_text_files() if needle in text_of(p)]
    assert not hits, hits
