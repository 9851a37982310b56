"""Issue 13: no `unwrap()` in the engine's code, and every other way to panic
(`expect`, `unreachable!`, `panic!`) is one of the reviewed invariants below,
none of which a file or a request controls. Test modules are not scanned.
Both Rust crates are scanned: the engine (every module, the grammar, tools,
speculative and paged-engine code included) and the binding, whose sites are
named `mistralrs-pyo3/<file>` below (it has none: it converts and maps errors).

A panic that a file or request could trigger is a bug even where it would be
caught (the engine's step and the binding catch panics as a last resort): the
fuzzer (scripts/fuzz.sh) aborts on every panic, caught or not, so it finds
them, and this list keeps new ones from slipping in unreviewed. Adding a site
means adding it here with the reason it cannot fire."""

from __future__ import annotations

import pathlib
import re

CORE = pathlib.Path(__file__).resolve().parents[1] / "mistralrs-core" / "src"
BINDING = pathlib.Path(__file__).resolve().parents[1] / "mistralrs-pyo3" / "src"


def sources():
    """(name in REVIEWED, path) of every Rust source of both crates."""
    for root, prefix in ((CORE, ""), (BINDING, "mistralrs-pyo3/")):
        for path in sorted(root.rglob("*.rs")):
            yield prefix + path.relative_to(root).as_posix(), path
PANICS = re.compile(r"\.unwrap\(\)|\.expect\(|unreachable!|panic!\(|todo!\(|unimplemented!\(|\.unwrap_unchecked\(")

# (file under src/, text of the call) -> why it cannot fire.
REVIEWED = {
    ("adapters/source.rs", 'delta.expect("pairs is not empty")'): "the loop above runs once per pair and pairs is non-empty",
    ("adapters/xlora.rs", '.expect("required")'): "take(..., required=true) returns Some or an error",
    ("adapters/xlora.rs", '.expect("not live, so frozen")'): "the branch is taken only for sequences whose scalings are frozen",
    ("adapters/xlora.rs", '.expect("one part")'): "the list has exactly one element in this branch",
    ("engine/scheduler.rs", '.expect("peeked")'): "the queue's front was just inspected under the same borrow",
    ("engine/scheduler.rs", '.expect("i is in range")'): "the victim index comes from the non-empty running list",
    ("engine/mod.rs", '.expect("filtered on it")'): "iterates only sequences that have a grammar",
    ("kernels/kquant_panels.rs", '.expect("panel-block")'): "chunks_exact of the panel block size",
    ("kernels/kquant_panels.rs", '.expect("block")'): "slices of exactly one block (rows are whole blocks, checked at load)",
    ("kernels/kquant_panels.rs", '.expect("4 bytes")'): "the slice is at..at + 4, exactly 4 bytes",
    ("kernels/kquant_panels.rs", '.expect("amax is one of the values")'): "amax is the max of the finite |x|; NaN is skipped by f32::max and all-NaN returns early",
    ("kernels/legacy_panels.rs", '.expect("panel-block")'): "chunks_exact of the panel block size",
    ("kernels/legacy_panels.rs", '.expect("block")'): "slices of exactly one block",
    ("kernels/legacy_panels.rs", '.expect("4 bytes")'): "4-byte slices of a fixed-size block",
    ("kernels/legacy_panels.rs", 'unreachable!("panel kernels need AVX2")'): "callers check the CPU features first",
    ("kernels/legacy_quant.rs", 'unreachable!("handled above")'): "Q8_0 returns before this match",
    ("kv_cache/blocks.rs", '.expect("longer than n")'): "pops only while the list is longer than n",
    ("layers/attention.rs", '.expect("one output")'): "inside `if outs.len() == 1`",
}


def code_lines(path: pathlib.Path):
    """The file's lines up to its test module."""
    text = path.read_text()
    cut = text.find("#[cfg(test)]")
    if cut >= 0:
        text = text[:cut]
    return text.splitlines()


def test_every_panic_site_is_a_reviewed_invariant():
    unreviewed, seen = [], set()
    assert any(rel.startswith("mistralrs-pyo3/") for rel, _ in sources()), "the binding's sources were not found"
    for rel, path in sources():
        for n, line in enumerate(code_lines(path), 1):
            if line.strip().startswith("//") or not PANICS.search(line):
                continue
            key = next((k for k in REVIEWED if k[0] == rel and k[1] in line), None)
            if key is None:
                unreviewed.append(f"{rel}:{n}: {line.strip()}")
            else:
                seen.add(key)
    assert not unreviewed, "panic sites not reviewed (handle the error, or add the invariant here):\n" + "\n".join(
        unreviewed
    )
    stale = set(REVIEWED) - seen
    assert not stale, f"reviewed sites that no longer exist (remove them): {sorted(stale)}"


def test_no_unwrap_at_all():
    found = [
        f"{rel}:{n}"
        for rel, p in sources()
        for n, line in enumerate(code_lines(p), 1)
        if ".unwrap()" in line and not line.strip().startswith("//")
    ]
    assert not found, found
