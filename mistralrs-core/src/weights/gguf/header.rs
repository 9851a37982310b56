//! A strict reader of the GGUF header (metadata and tensor infos) into
//! candle's `Content`, checking what llama.cpp's `gguf_init_from_file`
//! checks before it trusts a file: every length within the bytes that are
//! left, valid UTF-8, unique keys and tensor names, a power-of-two
//! alignment, at most four non-zero dims whose product does not overflow,
//! rows of whole blocks, and tensor data that starts where the previous
//! tensor's (padded) data ends and lies inside the file. candle's reader
//! accepts duplicates (the last wins), replaces bad UTF-8, divides by a
//! zero alignment and never compares offsets with sizes, so a corrupt file
//! would load and compute garbage.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, TensorInfo, Value, VersionedMagic};
use candle_core::quantized::GgmlDType;

use crate::weights::gguf_types::{dtype_of, ggml_type_name};
use crate::error::{Error, Result};

/// ggml's `GGML_MAX_DIMS`.
const MAX_DIMS: u32 = 4;
const DEFAULT_ALIGNMENT: u64 = 32;
pub const SUPPORTED_TYPES: &str = "F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K";

/// The ggml type id of `dtype` (for messages).
fn type_id(dtype: GgmlDType) -> u32 {
    (0..=30).find(|&i| dtype_of(i) == Some(dtype)).unwrap_or(u32::MAX)
}

/// A bounds-checked cursor over the header bytes; every read that would
/// pass the end is an error, so no length read from the file sizes an
/// allocation beyond the bytes that are there.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &dyn Fn() -> String) -> std::result::Result<&'a [u8], String> {
        match self.pos.checked_add(n).filter(|&end| end <= self.bytes.len()) {
            Some(end) => {
                let s = &self.bytes[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(format!(
                "truncated GGUF header: {} needs {n} bytes at byte {} but the file has {}",
                what(),
                self.pos,
                self.bytes.len()
            )),
        }
    }
    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> std::result::Result<[u8; N], String> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    fn u32(&mut self, what: &dyn Fn() -> String) -> std::result::Result<u32, String> {
        self.array(what).map(u32::from_le_bytes)
    }
    fn u64(&mut self, what: &dyn Fn() -> String) -> std::result::Result<u64, String> {
        self.array(what).map(u64::from_le_bytes)
    }
    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }
    /// A length-prefixed UTF-8 string (trailing NULs dropped, as some
    /// writers add one).
    fn string(&mut self, what: &dyn Fn() -> String) -> std::result::Result<String, String> {
        let (at, n) = self.str_span(what)?;
        // Checked UTF-8 by `str_span`, so nothing is replaced.
        Ok(String::from_utf8_lossy(&self.bytes[at..at + n as usize]).into_owned())
    }
    /// Where the next string lies: (start, length), checked as `string` does.
    fn str_span(&mut self, what: &dyn Fn() -> String) -> std::result::Result<(usize, u32), String> {
        let n = self.u64(what)?;
        if n > self.remaining() {
            return Err(format!("{}: a string of {n} bytes, but only {} bytes are left in the file", what(), self.remaining()));
        }
        let n = u32::try_from(n).map_err(|_| format!("{}: a string of {n} bytes", what()))?;
        let at = self.pos;
        let raw = self.take(n as usize, what)?;
        let end = raw.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        std::str::from_utf8(&raw[..end]).map_err(|e| format!("{}: not valid UTF-8 ({e})", what()))?;
        Ok((at, end as u32))
    }
}

/// A metadata array of strings, kept as where its items lie in the file.
/// A vocabulary and its merges are 150k strings each: as separate
/// allocations they were made one by one before any weight loaded and
/// freed one by one after, together a third of a Qwen2.5-0.5B load.
#[derive(Debug, Default)]
pub struct StrArray {
    spans: Vec<(usize, u32)>,
}

impl StrArray {
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// The items, borrowed from `bytes`: the file the header was read from.
    /// Err if `bytes` no longer holds the UTF-8 that was checked (the file
    /// changed under its memory map).
    pub fn items<'a>(&self, bytes: &'a [u8]) -> std::result::Result<Vec<&'a str>, String> {
        self.spans
            .iter()
            .enumerate()
            .map(|(i, &(at, n))| {
                bytes
                    .get(at..at + n as usize)
                    .and_then(|b| std::str::from_utf8(b).ok())
                    .ok_or_else(|| format!("element {i} changed since the file was opened"))
            })
            .collect()
    }
}

/// What the header holds: candle's `Content`, less its string arrays.
#[derive(Debug)]
pub struct Header {
    pub content: Content,
    /// Arrays of strings by key (not in `content.metadata`).
    pub strings: HashMap<String, StrArray>,
}

/// One metadata value as read.
enum Item {
    Value(Value),
    Strings(StrArray),
}

/// Bytes one value of GGUF type `ty` takes at least (to bound array counts).
fn min_size(ty: u32) -> u64 {
    match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        _ => 8, // 64-bit numbers; strings (their length)
    }
}

fn scalar(c: &mut Cursor, ty: u32, what: &dyn Fn() -> String) -> std::result::Result<Value, String> {
    Ok(match ty {
        0 => Value::U8(c.array::<1>(what)?[0]),
        1 => Value::I8(c.array::<1>(what)?[0] as i8),
        2 => Value::U16(u16::from_le_bytes(c.array(what)?)),
        3 => Value::I16(i16::from_le_bytes(c.array(what)?)),
        4 => Value::U32(c.u32(what)?),
        5 => Value::I32(i32::from_le_bytes(c.array(what)?)),
        6 => Value::F32(f32::from_le_bytes(c.array(what)?)),
        7 => match c.array::<1>(what)?[0] {
            0 => Value::Bool(false),
            1 => Value::Bool(true),
            b => return Err(format!("{}: bool byte {b} is neither 0 nor 1", what())),
        },
        8 => Value::String(c.string(what)?),
        10 => Value::U64(c.u64(what)?),
        11 => Value::I64(i64::from_le_bytes(c.array(what)?)),
        12 => Value::F64(f64::from_le_bytes(c.array(what)?)),
        9 => return Err(format!("{}: arrays of arrays are not valid GGUF", what())),
        other => return Err(format!("{}: unknown value type {other}", what())),
    })
}

fn value(c: &mut Cursor, key: &str) -> std::result::Result<Item, String> {
    let here = || format!("metadata key `{key}`");
    let ty = c.u32(&here)?;
    if ty != 9 {
        return scalar(c, ty, &here).map(Item::Value);
    }
    let elem = c.u32(&here)?;
    let n = c.u64(&here)?;
    if n.saturating_mul(min_size(elem)) > c.remaining() {
        return Err(format!(
            "metadata key `{key}`: an array of {n} elements, but only {} bytes are left in the file",
            c.remaining()
        ));
    }
    if elem == 8 {
        let mut spans = Vec::with_capacity(n as usize);
        for i in 0..n {
            spans.push(c.str_span(&|| format!("metadata key `{key}` (element {i})"))?);
        }
        return Ok(Item::Strings(StrArray { spans }));
    }
    let mut items = Vec::with_capacity(n as usize);
    for i in 0..n {
        let at = || format!("metadata key `{key}` (element {i})");
        items.push(scalar(c, elem, &at)?);
    }
    Ok(Item::Value(Value::Array(items)))
}

/// The alignment `general.alignment` sets (32 by default): an unsigned
/// integer that is a power of two, as llama.cpp requires.
fn alignment(metadata: &HashMap<String, Value>) -> std::result::Result<u64, String> {
    let v = match metadata.get("general.alignment") {
        None => return Ok(DEFAULT_ALIGNMENT),
        Some(Value::U8(x)) => *x as u64,
        Some(Value::U16(x)) => *x as u64,
        Some(Value::U32(x)) => *x as u64,
        Some(Value::U64(x)) => *x,
        Some(other) => {
            return Err(format!("metadata key `general.alignment` must be an unsigned integer, got {:?}", other.value_type()))
        }
    };
    if !v.is_power_of_two() {
        return Err(format!("metadata key `general.alignment` must be a power of two, got {v}"));
    }
    Ok(v)
}

/// Bytes a tensor of `elems` elements of `dtype` takes.
pub fn tensor_bytes(dtype: GgmlDType, elems: usize) -> usize {
    elems / dtype.block_size() * dtype.type_size()
}

/// Reads and checks the header of the GGUF file `bytes` (the whole file, so
/// tensor data can be checked against its length).
pub fn read(bytes: &[u8], path: &Path) -> Result<Header> {
    parse(bytes).map_err(|why| Error::bad_file(path, why))
}

fn parse(bytes: &[u8]) -> std::result::Result<Header, String> {
    let mut c = Cursor { bytes, pos: 0 };
    let head = || "the file header".to_string();
    if c.array::<4>(&head)? != *b"GGUF" {
        return Err(format!("not a GGUF file: bad magic {:?} (expected b\"GGUF\")", &bytes[..bytes.len().min(4)]));
    }
    let magic = match c.u32(&head)? {
        2 => VersionedMagic::GgufV2,
        3 => VersionedMagic::GgufV3,
        v => return Err(format!("GGUF version {v} is not supported (2 and 3 are)")),
    };
    let n_tensors = c.u64(&head)?;
    let n_kv = c.u64(&head)?;
    // A key is at least 8 + 4 + 1 bytes, a tensor info 8 + 4 + 8 + 4 + 8.
    if n_kv.saturating_mul(13).saturating_add(n_tensors.saturating_mul(32)) > c.remaining() {
        return Err(format!(
            "the header declares {n_kv} metadata keys and {n_tensors} tensors, more than the file's {} bytes can hold",
            bytes.len()
        ));
    }
    let mut metadata = HashMap::with_capacity(n_kv as usize);
    let mut strings = HashMap::new();
    for i in 0..n_kv {
        let key = c.string(&|| format!("metadata key #{i}"))?;
        if metadata.contains_key(&key) || strings.contains_key(&key) {
            return Err(format!("duplicate metadata key `{key}`"));
        }
        match value(&mut c, &key)? {
            Item::Value(v) => {
                metadata.insert(key, v);
            }
            Item::Strings(a) => {
                strings.insert(key, a);
            }
        }
    }
    let align = alignment(&metadata)?;

    let mut order: Vec<(String, TensorInfo)> = Vec::with_capacity(n_tensors as usize);
    let mut names: HashMap<String, usize> = HashMap::with_capacity(n_tensors as usize);
    for i in 0..n_tensors {
        let name = c.string(&|| format!("tensor info #{i}"))?;
        let here = || format!("tensor `{name}`");
        let n_dims = c.u32(&here)?;
        if n_dims > MAX_DIMS {
            return Err(format!("tensor `{name}` has {n_dims} dims; GGUF allows at most {MAX_DIMS}"));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(c.u64(&here)?);
        }
        let ty = c.u32(&here)?;
        let offset = c.u64(&here)?;
        if names.insert(name.clone(), order.len()).is_some() {
            return Err(format!("duplicate tensor name `{name}`"));
        }
        let dtype = match dtype_of(ty) {
            Some(d) => d,
            None => {
                return Err(format!(
                    "tensor `{name}` has ggml type {} (type id {ty}), which mistralrs cannot run; supported: {SUPPORTED_TYPES}",
                    ggml_type_name(ty)
                ))
            }
        };
        if let Some(pos) = dims.iter().position(|&d| d == 0) {
            return Err(format!("tensor `{name}` has a dim of 0 (dim {pos} of {dims:?})"));
        }
        dims.iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&e| e <= i64::MAX as u64)
            .and_then(|e| usize::try_from(e).ok())
            .ok_or_else(|| format!("tensor `{name}`: dims {dims:?} overflow its element count"))?;
        // ne0, the row length, comes first in the file.
        if dims.first().is_some_and(|&ne0| ne0 % dtype.block_size() as u64 != 0) {
            return Err(format!(
                "tensor `{name}`: rows of {} elements are not whole {} blocks of {}",
                dims[0],
                ggml_type_name(ty),
                dtype.block_size()
            ));
        }
        dims.reverse();
        let dims: Vec<usize> = dims.into_iter().map(|d| d as usize).collect();
        order.push((name, TensorInfo { ggml_dtype: dtype, shape: candle_core::Shape::from(dims), offset }));
    }

    let data_start = (c.pos as u64).div_ceil(align) * align;
    let len = bytes.len() as u64;
    // llama.cpp's rule: each tensor's data starts where the previous one's,
    // padded to the alignment, ends. A tensor whose type or shape was
    // changed in place therefore moves every tensor after it.
    let mut expected = 0u64;
    let mut before: Option<&(String, TensorInfo)> = None;
    for entry in &order {
        let (name, info) = entry;
        let size = (info.shape.elem_count() / info.ggml_dtype.block_size())
            .checked_mul(info.ggml_dtype.type_size())
            .ok_or_else(|| format!("tensor `{name}`: dims {:?} overflow its size in bytes", info.shape.dims()))?
            as u64;
        if info.offset % align != 0 {
            return Err(format!("tensor `{name}`: data offset {} is not a multiple of the alignment {align}", info.offset));
        }
        if info.offset != expected {
            let prev = match before {
                Some((p, i)) => format!(
                    "the tensor before it, `{p}` ({} {:?}), ends at {expected}",
                    ggml_type_name(type_id(i.ggml_dtype)),
                    i.shape.dims()
                ),
                None => "it is the first tensor".to_string(),
            };
            return Err(format!(
                "tensor `{name}`: data offset {}, but {prev}: a type, shape or offset of one of the two is corrupt",
                info.offset
            ));
        }
        before = Some(entry);
        let end = data_start.checked_add(info.offset).and_then(|s| s.checked_add(size));
        match end {
            Some(end) if end <= len => {}
            _ => {
                return Err(format!(
                    "truncated GGUF: tensor `{name}` ({size} bytes at data offset {}) ends past the file's {len} bytes",
                    info.offset
                ))
            }
        }
        expected = size
            .checked_next_multiple_of(align)
            .and_then(|s| expected.checked_add(s))
            .ok_or_else(|| format!("tensor `{name}`: data offsets overflow"))?;
    }
    let content = Content { magic, metadata, tensor_infos: order.into_iter().collect(), tensor_data_offset: data_start };
    Ok(Header { content, strings })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A v3 file: one string key plus `extra` keys, and the given tensors
    /// (name, dims in file order, type id, offset), with data after them.
    fn file(extra: &[(&str, u32, Vec<u8>)], tensors: &[(&str, Vec<u64>, u32, u64)], data: usize) -> Vec<u8> {
        let s = |b: &mut Vec<u8>, x: &[u8]| {
            b.extend((x.len() as u64).to_le_bytes());
            b.extend(x);
        };
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend((tensors.len() as u64).to_le_bytes());
        b.extend((1 + extra.len() as u64).to_le_bytes());
        s(&mut b, b"general.architecture");
        b.extend(8u32.to_le_bytes());
        s(&mut b, b"llama");
        for (k, ty, v) in extra {
            s(&mut b, k.as_bytes());
            b.extend(ty.to_le_bytes());
            b.extend(v);
        }
        for (name, dims, ty, off) in tensors {
            s(&mut b, name.as_bytes());
            b.extend((dims.len() as u32).to_le_bytes());
            for d in dims {
                b.extend(d.to_le_bytes());
            }
            b.extend(ty.to_le_bytes());
            b.extend(off.to_le_bytes());
        }
        b.resize(b.len().div_ceil(32) * 32 + data, 0);
        b
    }

    /// The value of a metadata array of strings (after its type, 9).
    fn str_array(items: &[&[u8]]) -> Vec<u8> {
        let mut v = 8u32.to_le_bytes().to_vec();
        v.extend((items.len() as u64).to_le_bytes());
        for it in items {
            v.extend((it.len() as u64).to_le_bytes());
            v.extend(*it);
        }
        v
    }

    fn two(second_offset: u64, second_type: u32) -> Vec<u8> {
        file(&[], &[("a", vec![32, 2], 0, 0), ("b", vec![32], second_type, second_offset)], 256 + 128)
    }

    fn err(b: &[u8]) -> String {
        parse(b).unwrap_err()
    }

    #[test]
    fn a_well_formed_file_reads() {
        let c = parse(&two(256, 0)).unwrap().content;
        assert_eq!(c.tensor_infos["a"].shape.dims(), &[2, 32]);
        assert_eq!(c.tensor_infos["b"].offset, 256);
        assert_eq!(c.tensor_data_offset % 32, 0);
    }

    #[test]
    fn string_arrays_read_back_from_the_file() {
        let b = file(&[("tokenizer.ggml.tokens", 9, str_array(&[b"hello", b"", b"\xc4\xa0w\0"]))], &[], 0);
        let h = parse(&b).unwrap();
        assert!(!h.content.metadata.contains_key("tokenizer.ggml.tokens"));
        // The trailing NUL is dropped, as for single strings.
        assert_eq!(h.strings["tokenizer.ggml.tokens"].items(&b).unwrap(), ["hello", "", "\u{120}w"]);
        let dup = file(&[("general.architecture", 9, str_array(&[]))], &[], 0);
        assert!(err(&dup).contains("duplicate metadata key"));
    }

    #[test]
    fn offsets_must_follow_the_data() {
        assert!(err(&two(257, 0)).contains("not a multiple of the alignment"));
        assert!(err(&two(288, 0)).contains("`a` (F32 [2, 32]), ends at 256"));
        assert!(err(&two(u64::MAX - 31, 0)).contains("tensor `b`"));
        // `a` retyped from F32 to Q4_0 (same dims) leaves `b` at the wrong offset.
        let b = file(&[], &[("a", vec![32, 2], 2, 0), ("b", vec![32], 0, 256)], 384);
        assert!(err(&b).contains("tensor `b`"));
        assert!(err(&two(256, 0)[..300]).contains("truncated"));
    }

    #[test]
    fn names_keys_and_types_are_checked() {
        let dup = file(&[], &[("a", vec![32], 0, 0), ("a", vec![32], 0, 128)], 256);
        assert!(err(&dup).contains("duplicate tensor name `a`"));
        let dup_key = file(&[("general.architecture", 4, 1u32.to_le_bytes().to_vec())], &[], 0);
        assert!(err(&dup_key).contains("duplicate metadata key `general.architecture`"));
        assert!(err(&two(256, 16)).contains("IQ2_XXS"));
        let five = file(&[], &[("a", vec![1, 1, 1, 1, 32], 0, 0)], 128);
        assert!(err(&five).contains("at most 4"));
        let zero = file(&[], &[("a", vec![32, 0], 0, 0)], 128);
        assert!(err(&zero).contains("dim of 0"));
        let big = file(&[], &[("a", vec![1 << 31, 1 << 31], 0, 0)], 128);
        assert!(err(&big).contains("overflow its size"));
        let huge = file(&[], &[("a", vec![1 << 32, 1 << 32], 0, 0)], 128);
        assert!(err(&huge).contains("overflow"));
        let partial = file(&[], &[("a", vec![16], 8, 0)], 128);
        assert!(err(&partial).contains("whole Q8_0 blocks"));
    }

    #[test]
    fn alignment_must_be_a_power_of_two() {
        for (ty, v) in [(4u32, 7u32.to_le_bytes().to_vec()), (4, 0u32.to_le_bytes().to_vec())] {
            assert!(err(&file(&[("general.alignment", ty, v)], &[], 0)).contains("power of two"));
        }
        let s = [8u64.to_le_bytes().to_vec(), b"sixtyfou".to_vec()].concat();
        assert!(err(&file(&[("general.alignment", 8, s)], &[], 0)).contains("unsigned integer"));
    }

    #[test]
    fn lengths_are_bounded_by_the_file() {
        let long = [(1u64 << 62).to_le_bytes().to_vec()].concat();
        assert!(err(&file(&[("k", 8, long)], &[], 0)).contains("only"));
        let arr = [6u32.to_le_bytes().to_vec(), (1u64 << 40).to_le_bytes().to_vec()].concat();
        assert!(err(&file(&[("k", 9, arr)], &[], 0)).contains("array of 1099511627776"));
        let bad = [2u64.to_le_bytes().to_vec(), vec![0xff, 0xfe]].concat();
        assert!(err(&file(&[("tokenizer.ggml.tokens", 8, bad)], &[], 0)).contains("UTF-8"));
        assert!(err(&file(&[("tokenizer.ggml.merges", 9, str_array(&[b"a b", &[0xff]]))], &[], 0)).contains("(element 1): not valid UTF-8"));
        let nested = [9u32.to_le_bytes().to_vec(), 1u64.to_le_bytes().to_vec()].concat();
        assert!(err(&file(&[("k", 9, nested)], &[], 64)).contains("arrays of arrays"));
    }
}
