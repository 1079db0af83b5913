"""Every pointer to a section is true: each reference in code, help text and docs to a README or docs section
resolves to a heading that exists.

Two kinds of pointer are checked, wherever they stand (the package's code, so its help text too, README, docs/,
examples/, benchmarks/, tests/; CHANGELOG.md is history and is left as written):

- a link with an anchor, ``[text](docs/x.md#anchor)``, ``[text](x.md#anchor)`` or ``[text](#anchor)``, and a bare
  ``docs/x.md#anchor`` in code: the anchor must be the slug of a heading of that file (GitHub's and mkdocs' rule:
  lower case, punctuation dropped, spaces to hyphens, as GitHub or as mkdocs makes it);
- a section named in prose, ``README "Section"`` or ``docs/x.md "Section"`` (also ``README.md``, and
  ``benchmarks/README.md``): the file must have a heading with that text (backticks aside, any case).

A loose form that names no file or no section exactly (``README: Statistics``, ``README, "…"``) is refused, so
that every pointer is one of the two checkable kinds.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
LINK = re.compile(r"\]\(((?:[\w./-]+\.md)?)#([\w-]+)\)")
BARE = re.compile(r"(?<![\w/(])((?:docs|benchmarks)/[\w/-]+\.md)#([\w-]+)")
PROSE = re.compile(r"((?<![\w/])README(?:\.md)?|(?:docs|benchmarks)/[\w/-]+\.md) \\?\"([^\"\\]+)\\?\"")
LOOSE = re.compile(r"(?<![\w/])README(?:\.md)?(?:[:,] [\"A-Z]|'s \")")


def sources() -> list[Path]:
    files = sorted((ROOT / "ticketctl").rglob("*.py")) + sorted((ROOT / "docs").rglob("*.md"))
    files += [ROOT / "README.md", ROOT / "benchmarks" / "README.md", ROOT / "mkdocs.yml"]
    files += sorted(p for p in (ROOT / "examples").rglob("*") if p.is_file())
    files += sorted((ROOT / "benchmarks").glob("*.py")) + sorted((ROOT / "tests").glob("*.py"))
    here = Path(__file__).resolve()  # this file's examples of broken pointers are on purpose
    return [p for p in files if p.suffix in {".py", ".md", ".sh", ".yml", ""} and p.resolve() != here]


def headings(path: Path) -> list[str]:
    """The headings of a Markdown file, outside code blocks, backticks removed."""
    text = FENCE.sub("", path.read_text())
    return [m.group(1).replace("`", "").strip() for m in re.finditer(r"^#{1,6} +(.+?) *#*$", text, re.M)]


def slugs(heading: str) -> set[str]:
    """A heading's anchor as GitHub makes it (every space a hyphen: ``the---quick-preset``) and as mkdocs does
    (runs of spaces and hyphens one hyphen: ``the-quick-preset``); a link may use either."""
    text = re.sub(r"[^\w\- ]", "", heading.lower()).strip()
    return {text.replace(" ", "-"), re.sub(r"[-\s]+", "-", text)}


def target(source: Path, name: str) -> Path:
    """The file a pointer names: relative to the repository for README / docs/... / benchmarks/..., relative to
    the Markdown file itself for a relative link, the file itself for ``#anchor``."""
    if not name:
        return source
    if name in ("README", "README.md") or name.startswith(("docs/", "benchmarks/")):
        return ROOT / ("README.md" if name == "README" else name)
    return (source.parent / name).resolve()


def pointers(path: Path) -> list[tuple[str, str, str]]:
    """(kind, file named, anchor or section) of every pointer in ``path``."""
    text = path.read_text()
    found = [("anchor", f, a) for f, a in LINK.findall(text) if path.suffix == ".md"]
    found += [("anchor", f, a) for f, a in BARE.findall(text)]
    found += [("section", f, s) for f, s in PROSE.findall(text)]
    return found


def broken(path: Path) -> list[str]:
    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
    out = []
    for kind, name, what in pointers(path):
        file = target(path, name)
        if not file.is_file():
            out.append(f"{where}: {name or path.name} does not exist")
            continue
        heads = headings(file)
        what = " ".join(what.split())  # a section named across a line break (wrapped help text)
        if kind == "anchor" and what not in {s for h in heads for s in slugs(h)}:
            out.append(f"{where}: {name or path.name}#{what}: no such heading")
        if kind == "section" and what.replace("`", "").casefold() not in {h.casefold() for h in heads}:
            out.append(f"{where}: {name} \"{what}\": no such heading")
    return out


def test_every_pointer_resolves_to_a_heading():
    problems = [p for path in sources() for p in broken(path)]
    assert not problems, "\n".join(problems)
    assert sum(len(pointers(p)) for p in sources()) >= 10  # the patterns still find the pointers there are


def test_no_pointer_in_a_loose_form():
    loose = [f"{p.relative_to(ROOT)}:{text[:m.start()].count(chr(10)) + 1}: {text[m.start():m.end() + 30]!r}"
             for p in sources() for text in [p.read_text()] for m in LOOSE.finditer(text)]
    assert not loose, "name the file and the section as README \"Section\" or docs/x.md \"Section\":\n" + \
        "\n".join(loose)


@pytest.mark.parametrize("text, problem", [
    ('see README "No such section"', 'README "No such section": no such heading'),
    ('see docs/statistics.md "Statistics" and [x](docs/statistics.md#nope)', "docs/statistics.md#nope: no such"),
    ('see docs/nowhere.md "Statistics"', "docs/nowhere.md does not exist"),
    ('help="(docs/scale-out.md \\"GPUs and data parallelism\\")"', None),
    ('[x](docs/scale-out.md#gpus-and-data-parallelism) and README "The `--quick` preset is a speed preset"', None),
])
def test_a_broken_pointer_is_found(tmp_path, text, problem):
    """The checker itself: a missing section, anchor or file is reported; true pointers are not."""
    page = tmp_path / "probe.md"
    page.write_text(text + "\n")
    got = broken(page)
    assert (problem is None and got == []) or (problem is not None and len(got) == 1 and problem in got[0]), got


def test_slugs_follow_github_and_mkdocs():
    assert slugs("The --quick preset is a speed preset") == {"the---quick-preset-is-a-speed-preset",
                                                             "the-quick-preset-is-a-speed-preset"}
    assert slugs("GPUs and data parallelism") == {"gpus-and-data-parallelism"}
    assert slugs("Scale-out, GPUs and speed") == {"scale-out-gpus-and-speed"}
