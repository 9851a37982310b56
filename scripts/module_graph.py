#!/usr/bin/env python3
"""The import graph of mistralrs-core, from the code's own paths.

Reads every `crate::…`, `super::…` and `self::…` path in mistralrs-core/src
(and `use child::…` of a module's own children), resolves each to the file
that defines the module it names, and prints

  - the crate's top-level modules (those `lib.rs` declares), bottom to top,
    each with the top-level modules it imports;
  - for every directory module (`layers/`, `kernels/`, …), its files bottom
    to top, each with the sibling files it imports.

Declaring a child (`mod x;`) is containment, not an import: a `mod.rs`
imports a child only where it names the child's items (`pub use x::Item`,
`x::load(…)`), and a child imports its `mod.rs` where it names an item
defined there (`super::Item`). Both at once is a cycle.
Test code counts like any other code (a test that imports a module above
its own is an upward import too).

Exits 1 when any graph has a cycle, after printing it.

Usage: python3 scripts/module_graph.py [path/to/mistralrs-core/src]
"""

import re
import sys
from pathlib import Path

KEYWORDS_NOT_MODULES = {"crate", "super", "self", "Self"}


def strip(text):
    """The source with comments, strings and char literals blanked out
    (newlines kept), so that paths inside them are not read as imports."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    if text[i] == "\n":
                        out.append("\n")
                    i += 1
        elif re.match(r'b?r#*"', text[i:i + 8]) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            m = re.match(r'b?r(#*)"', text[i:])
            close = '"' + m.group(1)
            j = text.find(close, i + m.end())
            j = n if j < 0 else j + len(close)
            out.append("\n" * text.count("\n", i, j) + '""')
            i = j
        elif c == '"' or (c == "b" and text.startswith('b"', i) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_"))):
            j = i + (2 if c == "b" else 1)
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append("\n" * text.count("\n", i, j) + '""')
            i = j + 1
        elif c == "'":
            # A char literal ('x', '\n', '\u{..}'), else a lifetime or label.
            m = re.match(r"'(\\u\{[0-9a-fA-F]+\}|\\.|[^\\'])'", text[i:])
            if m:
                out.append("' '")
                i += m.end()
            else:
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|::|[{}();,*]|\S")


def module_of(path, src):
    rel = path.relative_to(src).with_suffix("")
    parts = list(rel.parts)
    if parts == ["lib"]:
        return ()
    if parts[-1] == "mod":
        parts = parts[:-1]
    return tuple(parts)


class InlineMods:
    """The inline `mod x { ... }` blocks open at each token of a file, by brace depth."""

    def __init__(self):
        self.depth, self.stack = 0, []

    def see(self, toks, k):
        """Takes token k; True when it opens an inline module."""
        t, opened = toks[k], False
        if t == "mod" and k + 2 < len(toks) and toks[k + 2] == "{":
            self.stack.append((toks[k + 1], self.depth + 1))
            opened = True
        if t == "{":
            self.depth += 1
        elif t == "}":
            self.depth -= 1
            while self.stack and self.stack[-1][1] > self.depth:
                self.stack.pop()
        return opened

    def path(self):
        return tuple(s for s, _ in self.stack)


class Crate:
    def __init__(self, src):
        self.src = src
        self.files = {}  # module path -> file (relative)
        for p in sorted(src.rglob("*.rs")):
            self.files[module_of(p, src)] = p.relative_to(src).as_posix()
        self.inline = {}  # inline module path -> the file that holds it
        self.tokens = {}
        for mod, f in self.files.items():
            toks = TOKEN.findall(strip((src / f).read_text()))
            self.tokens[mod] = toks
            mods = InlineMods()
            for k in range(len(toks)):
                if mods.see(toks, k):
                    self.inline[mod + mods.path()] = f

    def is_module(self, path):
        return path in self.files or path in self.inline

    def file_of(self, path):
        """The file defining the longest module prefix of `path`."""
        for k in range(len(path), -1, -1):
            p = path[:k]
            if p in self.files:
                return self.files[p]
            if p in self.inline:
                return self.inline[p]
        return self.files[()]

    def references(self, mod):
        """(file, resolved path) for every path in module `mod`'s file."""
        toks = self.tokens[mod]
        mods = InlineMods()
        refs = []

        def here():
            return mod + mods.path()

        def parse_tree(k, base):
            """A path (or use tree) from toks[k]; returns (paths, next k)."""
            paths, seg = [], list(base)
            while k < len(toks):
                t = toks[k]
                if t == "{":
                    k += 1
                    while k < len(toks) and toks[k] != "}":
                        sub, k = parse_tree(k, seg)
                        paths += sub
                        if k < len(toks) and toks[k] == ",":
                            k += 1
                    return paths, k + 1
                if t == "*":
                    return paths + [tuple(seg)], k + 1
                if t == "self" and seg:
                    k += 1
                elif t == "super":
                    seg = seg[:-1] if seg else seg
                    k += 1
                elif re.match(r"[A-Za-z_]", t):
                    seg.append(t)
                    k += 1
                else:
                    break
                if k < len(toks) and toks[k] == "::":
                    k += 1
                else:
                    break
            return paths + [tuple(seg)], k

        k = 0
        while k < len(toks):
            t = toks[k]
            mods.see(toks, k)
            prev = toks[k - 1] if k else ""
            starts = t in ("crate", "super", "self") and k + 1 < len(toks) and toks[k + 1] == "::" and prev != "::"
            # `child::…` (in a `use` or in code): a path relative to the current module.
            relative = prev != "::" and k + 1 < len(toks) and toks[k + 1] == "::" and self.is_module(here() + (t,))
            if starts or relative:
                base = [] if t == "crate" else list(here())
                start = k + 2 if t == "crate" else k
                if t == "self":
                    start = k + 2
                paths, k = parse_tree(start, base)
                refs += paths
                continue
            k += 1
        return refs


def cycles(graph):
    """Strongly connected components of more than one node (Tarjan)."""
    index, low, on, st, out = {}, {}, set(), [], []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        st.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = st.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def layered(graph):
    """Nodes bottom to top: each after everything it imports (ties by name).
    Nodes on a cycle come last, unordered."""
    done, order = set(), []
    while True:
        ready = sorted(v for v in graph if v not in done and graph[v] <= done)
        if not ready:
            break
        # One level at a time, so a node's level is its longest import chain.
        order.append(ready)
        done |= set(ready)
    rest = sorted(set(graph) - done)
    return order, rest


def report(title, graph):
    print(title)
    order, rest = layered(graph)
    width = max((len(v) for v in graph), default=0)
    for level, nodes in enumerate(order):
        for v in nodes:
            deps = ", ".join(sorted(graph[v])) or "-"
            print(f"  {level:>2}  {v:<{width}}  <- {deps}")
    for v in rest:
        print(f"  ??  {v:<{width}}  <- {', '.join(sorted(graph[v]))}")
    found = cycles(graph)
    for c in found:
        print(f"  CYCLE: {' <-> '.join(c)}")
    print()
    return found


def main():
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "mistralrs-core" / "src"
    crate = Crate(src)
    top = sorted({m[0] for m in crate.files if m})
    modules = {m: set() for m in top}
    dirs = sorted({m for m in crate.files if m and any(o[:len(m)] == m and len(o) > len(m) for o in crate.files)})
    files = {d: {} for d in dirs}
    for mod in crate.files:
        if not mod:
            continue  # lib.rs declares the modules and re-exports; it is the top
        me = crate.files[mod]
        for path in crate.references(mod):
            target = crate.file_of(path)
            tmod = module_of(src / target, src)
            if tmod and tmod[0] != mod[0]:
                modules[mod[0]].add(tmod[0])
            # File-level edges between files of the same directory module.
            for d in dirs:
                inside = lambda m: m[:len(d)] == d
                if inside(mod) and inside(tmod) and target != me:
                    # Name files by their path under d; deeper files by their child of d.
                    a = mod[: len(d) + 1]
                    b = tmod[: len(d) + 1]
                    if a != b:
                        files[d].setdefault(a, set()).add(b)
    found = report("Top-level modules, bottom to top (level  module  <- the modules it imports):", modules)
    for d in dirs:
        children = {m[: len(d) + 1] for m in crate.files if m[: len(d)] == d}
        name = lambda m: "mod.rs" if m == d else m[len(d)] + ("/" if m in dirs else ".rs")
        graph = {name(c): {name(x) for x in files[d].get(c, ())} for c in children}
        found += report(f"Files of {'/'.join(d)}/, bottom to top:", graph)
    if found:
        print(f"{len(found)} cycle(s)")
        return 1
    print("No cycles.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
