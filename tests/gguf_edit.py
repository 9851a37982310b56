"""A tiny GGUF (v2/v3) reader and writer, for tests that build corrupt files.

Why this exists: the hostile-input tests (tests/test_hostile_files.py) need
GGUF files that are wrong in exactly one place -- a metadata value out of
range, a key of the wrong type, a duplicated key or tensor, a tensor offset
or type that lies about the data -- while everything else stays valid. The
``gguf`` package is not available in CI and refuses to write much of this
anyway, so this module does it with ``struct`` only.

Layout (llama.cpp's gguf.h / ggml docs/gguf.md), all little-endian::

    magic "GGUF" | version u32 | n_tensors u64 | n_kv u64
    n_kv x       (key: string, value_type: u32, value)
    n_tensors x  (name: string, n_dims: u32, dims: n_dims x u64, ggml_type: u32, offset: u64)
    zero padding up to a multiple of the alignment
    data section (tensor offsets are relative to its start)

    string = u64 length + bytes;  array = elem_type u32 + count u64 + elements

``GGUFFile.parse(bytes)`` gives an editable object; ``to_bytes()`` writes it
back, byte-identical when nothing was changed (tests/test_hostile_files.py
asserts that for the fixtures). Strings are kept as ``str`` when they are
valid UTF-8 and as ``bytes`` otherwise; the writer accepts either, so a test
can put invalid UTF-8 into a token. ``Raw(b"...")`` as a value is written
verbatim after its type field: that is how a test writes a length or count
field with nothing behind it (a 2**62-byte string, a 2**40-element array).

The data section is placed with ``layout_alignment`` (the alignment the file
was parsed with) even when a test changes ``general.alignment`` itself, so
that a lie in the metadata stays a lie.
"""

from __future__ import annotations

import dataclasses
import struct
from typing import Any

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32

# Metadata value types (gguf_type).
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = range(13)

_SCALAR_FORMATS = {
    UINT8: "<B",
    INT8: "<b",
    UINT16: "<H",
    INT16: "<h",
    UINT32: "<I",
    INT32: "<i",
    FLOAT32: "<f",
    BOOL: "<?",
    UINT64: "<Q",
    INT64: "<q",
    FLOAT64: "<d",
}

# ggml tensor types: id -> (name, elements per block, bytes per block). Enough for the fixtures.
GGML_TYPES = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24),
    8: ("Q8_0", 32, 34),
    9: ("Q8_1", 32, 36),
    10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292),
    30: ("BF16", 1, 2),
}
F32, F16, Q4_0, Q4_1, Q8_0 = 0, 1, 2, 3, 8


@dataclasses.dataclass(frozen=True)
class Raw:
    """Bytes written verbatim in place of a value (after the key and the type field)."""

    data: bytes


@dataclasses.dataclass
class KV:
    key: str | bytes
    vtype: int
    value: Any  # scalar, str/bytes, (elem_type, list) for ARRAY, or Raw


@dataclasses.dataclass
class TensorInfo:
    name: str | bytes
    dims: list[int]  # in file order (ggml: fastest-varying first)
    ggml_type: int
    offset: int  # relative to the start of the data section

    def n_elements(self) -> int:
        n = 1
        for d in self.dims:
            n *= d
        return n

    def n_bytes(self) -> int:
        """Size of the tensor's data (for the types in GGML_TYPES)."""
        _, block, size = GGML_TYPES[self.ggml_type]
        return self.n_elements() // block * size


class _Reader:
    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def take(self, fmt: str):
        (v,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return v

    def string(self) -> str | bytes:
        n = self.take("<Q")
        raw = self.data[self.pos : self.pos + n]
        if len(raw) != n:
            raise ValueError(f"string of {n} bytes runs past the end at {self.pos}")
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return bytes(raw)

    def value(self, vtype: int):
        if vtype == STRING:
            return self.string()
        if vtype == ARRAY:
            etype = self.take("<I")
            count = self.take("<Q")
            if etype in _SCALAR_FORMATS:
                fmt = _SCALAR_FORMATS[etype]
                size = struct.calcsize(fmt)
                vals = list(struct.unpack_from(f"<{count}{fmt[1]}", self.data, self.pos))
                self.pos += size * count
                return (etype, vals)
            return (etype, [self.value(etype) for _ in range(count)])
        return self.take(_SCALAR_FORMATS[vtype])


def _pack_string(s: str | bytes) -> bytes:
    b = s.encode("utf-8") if isinstance(s, str) else bytes(s)
    return struct.pack("<Q", len(b)) + b


def _pack_value(vtype: int, value) -> bytes:
    if isinstance(value, Raw):
        return value.data
    if vtype == STRING:
        return _pack_string(value)
    if vtype == ARRAY:
        etype, items = value
        head = struct.pack("<IQ", etype, len(items))
        if etype in _SCALAR_FORMATS:
            return head + struct.pack(f"<{len(items)}{_SCALAR_FORMATS[etype][1]}", *items)
        return head + b"".join(_pack_value(etype, v) for v in items)
    return struct.pack(_SCALAR_FORMATS[vtype], value)


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


@dataclasses.dataclass
class GGUFFile:
    version: int
    metadata: list[KV]
    tensors: list[TensorInfo]
    alignment: int  # from general.alignment when it is a sane UINT32, else 32
    data: bytes  # the data section, from its (aligned) start to the end of the file
    layout_alignment: int = 0  # alignment used to place the data section when writing (0: alignment)

    # ------------------------------------------------------------------ reading / writing

    @classmethod
    def parse(cls, blob: bytes) -> GGUFFile:
        r = _Reader(blob)
        if blob[:4] != GGUF_MAGIC:
            raise ValueError("not a GGUF file")
        r.pos = 4
        version = r.take("<I")
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version}: only v2 and v3")
        n_tensors = r.take("<Q")
        n_kv = r.take("<Q")
        metadata = []
        for _ in range(n_kv):
            key = r.string()
            vtype = r.take("<I")
            metadata.append(KV(key, vtype, r.value(vtype)))
        tensors = []
        for _ in range(n_tensors):
            name = r.string()
            n_dims = r.take("<I")
            dims = [r.take("<Q") for _ in range(n_dims)]
            ggml_type = r.take("<I")
            offset = r.take("<Q")
            tensors.append(TensorInfo(name, dims, ggml_type, offset))
        alignment = DEFAULT_ALIGNMENT
        for kv in metadata:
            if kv.key == "general.alignment" and kv.vtype == UINT32 and kv.value > 0:
                alignment = kv.value
        start = _align(r.pos, alignment)
        if any(blob[r.pos : start]):
            raise ValueError("non-zero padding before the data section (not supported here)")
        return cls(version, metadata, tensors, alignment, bytes(blob[start:]), alignment)

    @classmethod
    def read(cls, path) -> GGUFFile:
        with open(path, "rb") as f:
            return cls.parse(f.read())

    def header_bytes(self) -> bytes:
        out = [GGUF_MAGIC, struct.pack("<IQQ", self.version, len(self.tensors), len(self.metadata))]
        for kv in self.metadata:
            out.append(_pack_string(kv.key))
            out.append(struct.pack("<I", kv.vtype))
            out.append(_pack_value(kv.vtype, kv.value))
        for t in self.tensors:
            out.append(_pack_string(t.name))
            out.append(struct.pack("<I", len(t.dims)))
            out.append(struct.pack(f"<{len(t.dims)}Q", *t.dims))
            out.append(struct.pack("<IQ", t.ggml_type, t.offset))
        return b"".join(out)

    def data_start(self) -> int:
        """Where the data section starts in the written file."""
        return _align(len(self.header_bytes()), self.layout_alignment or self.alignment)

    def to_bytes(self) -> bytes:
        head = self.header_bytes()
        start = _align(len(head), self.layout_alignment or self.alignment)
        return head + b"\0" * (start - len(head)) + self.data

    def write(self, path) -> None:
        with open(path, "wb") as f:
            f.write(self.to_bytes())

    def copy(self) -> GGUFFile:
        """A copy whose metadata and tensor lists (and their entries) can be edited freely.
        Metadata values themselves are shared: replace them (set), don't mutate them in place."""
        return GGUFFile(
            self.version,
            [dataclasses.replace(kv) for kv in self.metadata],
            [dataclasses.replace(t, dims=list(t.dims)) for t in self.tensors],
            self.alignment,
            self.data,
            self.layout_alignment,
        )

    # ------------------------------------------------------------------ metadata

    def index_of(self, key: str) -> int:
        for i, kv in enumerate(self.metadata):
            if kv.key == key:
                return i
        raise KeyError(key)

    def has(self, key: str) -> bool:
        return any(kv.key == key for kv in self.metadata)

    def get(self, key: str):
        return self.metadata[self.index_of(key)].value

    def get_kv(self, key: str) -> KV:
        return self.metadata[self.index_of(key)]

    def set(self, key: str, value, vtype: int | None = None) -> None:
        """Sets an existing key's value (and type, when given); adds the key at the end if absent."""
        try:
            kv = self.metadata[self.index_of(key)]
        except KeyError:
            if vtype is None:
                raise
            self.metadata.append(KV(key, vtype, value))
            return
        kv.value = value
        if vtype is not None:
            kv.vtype = vtype

    def add(self, key: str, vtype: int, value, at: int | None = None) -> None:
        """Adds an entry (even when the key exists: that makes a duplicate), at the end by default."""
        kv = KV(key, vtype, value)
        if at is None:
            self.metadata.append(kv)
        else:
            self.metadata.insert(at, kv)

    def duplicate(self, key: str, value=None, vtype: int | None = None) -> None:
        """Appends a second entry for ``key`` (same type and value unless given)."""
        kv = self.get_kv(key)
        self.add(key, kv.vtype if vtype is None else vtype, kv.value if value is None else value)

    def remove(self, key: str) -> None:
        del self.metadata[self.index_of(key)]

    def arch(self) -> str:
        return self.get("general.architecture")

    # ------------------------------------------------------------------ tensors

    def tensor(self, name: str) -> TensorInfo:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)

    def tensor_names(self) -> list:
        return [t.name for t in self.tensors]

    def set_tensor(self, name: str, *, ggml_type=None, offset=None, dims=None, new_name=None) -> None:
        t = self.tensor(name)
        if ggml_type is not None:
            t.ggml_type = ggml_type
        if offset is not None:
            t.offset = offset
        if dims is not None:
            t.dims = list(dims)
        if new_name is not None:
            t.name = new_name

    def write_tensor_bytes(self, name: str, raw: bytes, at: int = 0) -> None:
        """Overwrites ``raw`` at byte ``at`` of the tensor's data (as placed by its current offset)."""
        pos = self.tensor(name).offset + at
        if pos + len(raw) > len(self.data):
            raise ValueError(f"{name}: bytes {pos}..{pos + len(raw)} are past the data section")
        self.data = self.data[:pos] + bytes(raw) + self.data[pos + len(raw) :]

    def tensor_bytes(self, name: str) -> bytes:
        t = self.tensor(name)
        return self.data[t.offset : t.offset + t.n_bytes()]

    def tensors_by_offset(self) -> list[TensorInfo]:
        return sorted(self.tensors, key=lambda t: t.offset)
