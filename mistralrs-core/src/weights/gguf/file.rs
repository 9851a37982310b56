//! A GGUF file (v2, v3) opened for loading: its metadata and its tensors as
//! stored, read through a memory map.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::Device;
use rayon::prelude::*;

use super::header::{self, tensor_bytes, Header, StrArray};
use crate::error::{Error, Result};
use crate::layers::embedding::SharedBytes;
use crate::weights::finite::check_finite;
use crate::weights::stored::{MappedFile, MappedRange, StoredTensor};
use crate::weights::tensor_file::TensorFile;

/// How much of a tensor the finiteness check reads before giving its pages
/// back: also the unit of its parallel pass, small enough that most of a
/// model's matrices split across the threads.
const CHECK_SLICE_BYTES: usize = 512 << 10;
/// Tensors up to this size stay mapped from the check to their repack.
const KEEP_MAPPED_BYTES: usize = 8 << 20;

/// A GGUF file opened for loading, its tensors read through a memory map
/// (see `stored.rs`).
pub struct GgufFile {
    pub path: PathBuf,
    map: Arc<MappedFile>,
    content: Content,
    /// The metadata's arrays of strings (not in `content.metadata`).
    strings: HashMap<String, StrArray>,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let mut file = std::fs::File::open(path).map_err(|e| Error::not_found(path, e.to_string()))?;
        let mut head = [0u8; 8];
        let got = file.read(&mut head).map_err(|e| Error::bad_file(path, e))?;
        if got < 8 || &head[..4] != b"GGUF" {
            return Err(Error::bad_file(
                path,
                format!("not a GGUF file: bad magic {:?} (expected b\"GGUF\")", &head[..got.min(4)]),
            ));
        }
        let version = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if !(2..=3).contains(&version) {
            return Err(Error::bad_file(path, format!("GGUF version {version} is not supported (2 and 3 are)")));
        }
        let map = MappedFile::new(&file).map_err(|e| Error::bad_file(path, format!("cannot map the file: {e}")))?;
        let Header { content, strings } = header::read(map.bytes(), path)?;
        // The header is parsed: its pages can go (the tokenizer reads its
        // vocabulary's back from the page cache).
        drop(map.pages(0, usize::try_from(content.tensor_data_offset).unwrap_or(0)));
        Ok(Self { path: path.to_path_buf(), map: Arc::new(map), content, strings })
    }

    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.content.metadata
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    /// The metadata array of strings `key`, borrowed from the file; None
    /// when `key` is missing or holds something else.
    pub fn get_strings(&self, key: &str) -> Option<Result<Vec<&str>>> {
        let array = self.strings.get(key)?;
        Some(array.items(self.map.bytes()).map_err(|why| Error::bad_file(&self.path, format!("metadata key `{key}`: {why}"))))
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(|v| v.to_string().ok()).map(|s| s.as_str())
    }

    pub fn get_usize(&self, key: &str) -> Option<usize> {
        self.get(key).and_then(value_as_u64).map(|v| v as usize)
    }

    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(|v| match v {
            Value::F32(x) => Some(*x as f64),
            Value::F64(x) => Some(*x),
            other => value_as_u64(other).map(|x| x as f64),
        })
    }

    pub fn require_usize(&self, key: &str) -> Result<usize> {
        self.get_usize(key).ok_or_else(|| Error::bad_file(&self.path, format!("missing metadata key `{key}`")))
    }

    pub fn architecture(&self) -> Result<&str> {
        self.get_str("general.architecture")
            .ok_or_else(|| Error::bad_file(&self.path, "missing metadata key `general.architecture`"))
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// Tensor `name`'s shape as stored (transformers order), if present.
    pub fn tensor_dims(&self, name: &str) -> Option<&[usize]> {
        self.content.tensor_infos.get(name).map(|info| info.shape.dims())
    }

    pub fn tensor_count(&self) -> usize {
        self.content.tensor_infos.len()
    }

    /// Tensor `name` as stored, with its transformers-order shape (rows, cols).
    pub fn stored(&self, name: &str) -> Result<StoredTensor<'_>> {
        let info = self
            .content
            .tensor_infos
            .get(name)
            .ok_or_else(|| Error::bad_file(&self.path, format!("tensor `{name}` is missing")))?;
        let len = tensor_bytes(info.ggml_dtype, info.shape.elem_count());
        let pages = self
            .content
            .tensor_data_offset
            .checked_add(info.offset)
            .and_then(|start| self.map.pages(start, len))
            .ok_or_else(|| Error::bad_file(&self.path, format!("tensor `{name}` lies outside the file")))?;
        // Checked a slice at a time. A large tensor's slices give their pages
        // back once read, so it never has all its file pages resident at once
        // (the kernels read them again, from the page cache, as they repack).
        // A small one keeps them for the repack, which then reads them from
        // the CPU's caches instead of faulting them in a second time.
        // The slices are checked in parallel: tensors load one after another,
        // so the repacking threads would otherwise wait on this pass.
        let bytes = pages.bytes();
        let unit = info.ggml_dtype.type_size();
        let step = (CHECK_SLICE_BYTES / unit).max(1) * unit;
        let release = bytes.len() > KEEP_MAPPED_BYTES;
        let all_finite = bytes.par_chunks(step).enumerate().all(|(i, slice)| {
            let ok = check_finite(info.ggml_dtype, slice).is_ok();
            if release {
                pages.release(i * step..i * step + slice.len());
            }
            ok
        });
        if !all_finite {
            // Checked whole again for the message's element or block number.
            check_finite(info.ggml_dtype, bytes).map_err(|why| Error::bad_file(&self.path, format!("tensor `{name}`: {why}")))?;
        }
        Ok(StoredTensor::mapped(info.ggml_dtype, info.shape.dims().to_vec(), pages))
    }

    /// Tensor `name`'s bytes kept in the map for as long as the returned
    /// range lives (after the same checks as `stored`), with its type and
    /// transformers-order shape.
    pub fn mapped(&self, name: &str) -> Result<(MappedRange, GgmlDType, Vec<usize>)> {
        let t = self.stored(name)?;
        let info = &self.content.tensor_infos[name];
        let start = self.content.tensor_data_offset + info.offset;
        let range = MappedRange::new(self.map.clone(), start, t.bytes.len())
            .ok_or_else(|| Error::bad_file(&self.path, format!("tensor `{name}` lies outside the file")))?;
        Ok((range, t.dtype, t.dims.clone()))
    }

    /// Tensor `name` as a candle tensor on `device`.
    pub fn qtensor(&self, name: &str, device: &Device) -> Result<QTensor> {
        TensorFile::qtensor(self, name, device)
    }

    /// The ggml types of the file's tensors, counted (for logs and checks).
    pub fn dtype_counts(&self) -> Vec<(GgmlDType, usize)> {
        let mut counts: Vec<(GgmlDType, usize)> = Vec::new();
        for info in self.content.tensor_infos.values() {
            match counts.iter_mut().find(|(d, _)| *d == info.ggml_dtype) {
                Some((_, n)) => *n += 1,
                None => counts.push((info.ggml_dtype, 1)),
            }
        }
        counts
    }
}

pub fn value_as_u64(v: &Value) -> Option<u64> {
    Some(match v {
        Value::U8(x) => *x as u64,
        Value::I8(x) => *x as u64,
        Value::U16(x) => *x as u64,
        Value::I16(x) => *x as u64,
        Value::U32(x) => *x as u64,
        Value::I32(x) => *x as u64,
        Value::U64(x) => *x,
        Value::I64(x) => *x as u64,
        Value::Bool(x) => *x as u64,
        _ => return None,
    })
}

impl TensorFile for GgufFile {
    fn path(&self) -> &Path {
        &self.path
    }
    fn has_tensor(&self, name: &str) -> bool {
        GgufFile::has_tensor(self, name)
    }
    fn stored(&self, name: &str) -> Result<StoredTensor<'_>> {
        GgufFile::stored(self, name)
    }
    fn shared(&self, name: &str) -> Result<(SharedBytes, GgmlDType, Vec<usize>)> {
        let (range, dtype, dims) = self.mapped(name)?;
        Ok((Arc::new(range), dtype, dims))
    }
}
