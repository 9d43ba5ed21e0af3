#!/usr/bin/env python3
"""Layout checks run by .ci/run (issue 16). Plain text reading, no build.

1. No import cycle between the top-level modules of any crate: the graph is
   read from `crate::<module>` paths in each file (test modules excluded),
   and every strongly connected component larger than one module fails.
2. No L7 crate (weft-waypoint) depends on the L4 node crate (weft-node).
3. No source file over 700 lines unless its first comment block says why
   (a line containing "Over 700 lines").

Exit status 1 with one line per finding; nothing printed but a summary when
all is well.
"""
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
MAX_LINES = 700
L7_CRATES = ["weft-waypoint"]

findings = []


def strip_tests(text):
    """Drops `#[cfg(test)] mod … { … }` blocks: tests may reach anywhere."""
    out = []
    i = 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{", text):
        if m.start() < i:
            continue
        out.append(text[i : m.start()])
        depth = 1
        j = m.end()
        while j < len(text) and depth:
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
            j += 1
        i = j
    out.append(text[i:])
    return "".join(out)


def strip_comments(text):
    return "\n".join(line.split("//", 1)[0] for line in text.splitlines())


def referenced_modules(text):
    """Top-level modules named by `crate::x` and `use crate::{x, y::z}`."""
    names = set(re.findall(r"\bcrate::(\w+)", text))
    for m in re.finditer(r"\bcrate::\{", text):
        depth, j, token = 1, m.end(), ""
        expect_name = True
        while j < len(text) and depth:
            c = text[j]
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
            elif depth == 1 and c == ",":
                expect_name = True
            elif depth == 1 and expect_name and (c.isalnum() or c == "_"):
                token += c
                j += 1
                continue
            if token:
                names.add(token)
                token = ""
                expect_name = False
            j += 1
    return names


def top_module(src, path):
    rel = path.relative_to(src).parts
    name = rel[0]
    return name[:-3] if name.endswith(".rs") else name


def sccs(graph):
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


crates = sorted(p.parent for p in ROOT.glob("crates/*/Cargo.toml"))
crates.append(ROOT / "fuzz")
modules_checked = 0
for crate in crates:
    src = crate / "src"
    if not src.is_dir():
        continue
    graph = {}
    for path in sorted(src.rglob("*.rs")):
        text = path.read_text()
        lines = text.count("\n") + 1
        head = "\n".join(text.splitlines()[:40])
        if lines > MAX_LINES and "Over 700 lines" not in head:
            findings.append(
                f"{path.relative_to(ROOT)}: {lines} lines; split it or say why in its top comment ('Over 700 lines: …')"
            )
        mod = top_module(src, path)
        if mod in ("lib", "main"):
            continue
        body = strip_comments(strip_tests(text))
        deps = graph.setdefault(mod, set())
        for name in referenced_modules(body):
            if name != mod and ((src / f"{name}.rs").exists() or (src / name).is_dir()):
                deps.add(name)
    modules_checked += len(graph)
    for comp in sccs(graph):
        if len(comp) > 1:
            ties = []
            for a in comp:
                for b in sorted(graph[a]):
                    if b in comp:
                        ties.append(f"{a}->{b}")
            findings.append(
                f"{crate.relative_to(ROOT)}: import cycle between modules {', '.join(comp)} ({'; '.join(ties)})"
            )

for name in L7_CRATES:
    manifest = (ROOT / "crates" / name / "Cargo.toml").read_text()
    deps = manifest.split("[dev-dependencies]", 1)[0]
    if re.search(r"^weft-node\s*=", deps, re.M):
        findings.append(f"crates/{name}/Cargo.toml: an L7 crate depends on weft-node (the L4 node)")

if findings:
    for f in findings:
        print("layout:", f)
    sys.exit(1)
print(f"layout: {len(crates)} crates, {modules_checked} modules, no import cycle, no oversized file, L7 independent of weft-node")
