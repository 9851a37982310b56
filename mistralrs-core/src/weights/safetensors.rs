//! Dense weights from `model.safetensors` or a sharded index, converted to
//! the compute dtype (f32 on the CPU, the checkpoint's on accelerators). Tensors are read with plain reads, one at a
//! time, rather than through a memory map: mapped pages that were read stay
//! in the process's resident set, so an in-situ quantized load of an f32
//! model would peak at the file's size instead of the quantized size.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::quantized::{GgmlDType, QMatMul};
use candle_core::{DType, Device, Tensor};

use super::finite::check_finite;
use super::WeightSource;
use crate::error::{Error, Result};
use crate::layers::{Embedding, Linear};

/// Where one tensor's bytes are.
struct Entry {
    file: usize,
    dtype: DType,
    shape: Vec<usize>,
    /// Absolute byte range in the file.
    start: u64,
    end: u64,
}

pub struct SafetensorsSource {
    files: Vec<(PathBuf, Mutex<std::fs::File>)>,
    tensors: HashMap<String, Entry>,
    /// Where the weights came from, for error messages.
    origin: PathBuf,
    device: Device,
    dtype: DType,
}

/// A multimodal checkpoint's text decoder under the names of a text-only
/// one: `language_model.model.*` (the hub's Gemma 3 files) and
/// `model.language_model.*` (transformers 5) become `model.*`. The vision
/// tower's tensors keep their names and are never asked for.
fn text_model_name(name: &str) -> String {
    if let Some(rest) = name.strip_prefix("language_model.model.").or_else(|| name.strip_prefix("model.language_model.")) {
        return format!("model.{rest}");
    }
    match name.strip_prefix("language_model.") {
        Some(rest) if rest.starts_with("lm_head.") => rest.to_string(),
        _ => name.to_string(),
    }
}

impl SafetensorsSource {
    /// `dtype`: what every weight is converted to (the compute dtype).
    pub fn open(files: &[PathBuf], device: &Device, dtype: DType) -> Result<Self> {
        let origin = files.first().cloned().unwrap_or_default();
        let mut tensors = HashMap::new();
        let mut opened = Vec::with_capacity(files.len());
        for (i, f) in files.iter().enumerate() {
            let (header, data_start, size) = check_header(f)?;
            let mut spans = Vec::new();
            for (name, info) in header.as_object().into_iter().flatten() {
                if name == "__metadata__" {
                    continue;
                }
                let e = entry(i, info, data_start, size).map_err(|why| Error::bad_file(f, format!("tensor `{name}`: {why}")))?;
                spans.push((e.start, e.end, name.as_str()));
                if tensors.insert(text_model_name(name), e).is_some() {
                    return Err(Error::bad_file(f, format!("duplicate tensor name `{name}` (in two shards)")));
                }
            }
            check_spans(&mut spans, data_start, size).map_err(|why| Error::bad_file(f, why))?;
            let file = std::fs::File::open(f).map_err(|e| Error::not_found(f, e.to_string()))?;
            opened.push((f.clone(), Mutex::new(file)));
        }
        Ok(Self { files: opened, tensors, origin, device: device.clone(), dtype })
    }

    pub fn tensor_count(&self) -> usize {
        self.tensors.len()
    }

    fn load(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let e = self.tensors.get(name).ok_or_else(|| Error::bad_file(&self.origin, format!("tensor `{name}` is missing")))?;
        let (path, file) = &self.files[e.file];
        if e.shape != shape {
            return Err(Error::bad_file(
                path,
                format!("tensor `{name}` has shape {:?}, the config implies {shape:?}", e.shape),
            ));
        }
        let mut bytes = vec![0u8; (e.end - e.start) as usize];
        {
            let mut f = file.lock().map_err(|_| Error::runtime("safetensors reader poisoned"))?;
            f.seek(SeekFrom::Start(e.start))
                .and_then(|_| f.read_exact(&mut bytes))
                .map_err(|err| Error::bad_file(path, format!("cannot read tensor `{name}`: {err}")))?;
        }
        let t = Tensor::from_raw_buffer(&bytes, e.dtype, &e.shape, &self.device)?.to_dtype(self.dtype)?;
        // F64 is checked after its conversion (a value beyond the compute dtype's range becomes infinite there).
        let finite = match e.dtype {
            DType::F16 => check_finite(GgmlDType::F16, &bytes),
            DType::BF16 => check_finite(GgmlDType::BF16, &bytes),
            DType::F32 => check_finite(GgmlDType::F32, &bytes),
            _ => match t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?.iter().position(|x| !x.is_finite()) {
                Some(at) => Err(format!("element {at} is not finite (NaN, infinite or beyond {:?}'s range)", self.dtype)),
                None => Ok(()),
            },
        };
        finite.map_err(|why| Error::bad_file(path, format!("tensor `{name}`: {why}")))?;
        Ok(t)
    }
}

fn entry(file: usize, info: &serde_json::Value, data_start: u64, size: u64) -> std::result::Result<Entry, String> {
    let dtype = match info.get("dtype").and_then(|d| d.as_str()) {
        Some("F32") => DType::F32,
        Some("F16") => DType::F16,
        Some("BF16") => DType::BF16,
        Some("F64") => DType::F64,
        Some(other) => {
            return Err(format!("dtype {other} is not a floating-point weight type (F32, F16, BF16 and F64 are)"))
        }
        None => return Err("no dtype".into()),
    };
    let shape: Vec<usize> = info
        .get("shape")
        .and_then(|s| s.as_array())
        .ok_or("no shape")?
        .iter()
        .map(|d| d.as_u64().map(|d| d as usize).ok_or("bad shape"))
        .collect::<std::result::Result<_, _>>()?;
    let offsets = info.get("data_offsets").and_then(|o| o.as_array()).ok_or("no data_offsets")?;
    let (a, b) = match offsets.as_slice() {
        [a, b] => (a.as_u64().ok_or("bad data_offsets")?, b.as_u64().ok_or("bad data_offsets")?),
        _ => return Err("bad data_offsets".into()),
    };
    let want = shape
        .iter()
        .try_fold(dtype.size_in_bytes() as u64, |acc, &d| acc.checked_mul(d as u64))
        .ok_or_else(|| format!("shape {shape:?} overflows"))?;
    if b < a || b - a != want || data_start.checked_add(b).is_none_or(|end| end > size) {
        return Err(format!("data_offsets [{a}, {b}] do not hold {shape:?} {dtype:?} within the file"));
    }
    Ok(Entry { file, dtype, shape, start: data_start + a, end: data_start + b })
}

/// The safetensors rule (its own loader checks the same): tensor data lies
/// end to end, each tensor's bytes its own, and fills the data section; a
/// gap or an overlap means a header that was edited or cut.
fn check_spans(spans: &mut [(u64, u64, &str)], data_start: u64, size: u64) -> std::result::Result<(), String> {
    spans.sort_unstable();
    let mut at = data_start;
    for &(start, end, name) in spans.iter() {
        if start != at {
            return Err(format!(
                "tensor `{name}`: data starts at byte {} where the tensor before it ends at {} (overlapping or missing data)",
                start - data_start,
                at - data_start
            ));
        }
        at = end;
    }
    if at != size {
        return Err(format!("the tensors' data ends at byte {at} but the file has {size} bytes"));
    }
    Ok(())
}

/// The header is read by hand so that a corrupt file gets a message about
/// the file rather than a parser's internals. Returns the header, where the
/// data starts, and the file's size.
pub(crate) fn check_header(path: &Path) -> Result<(serde_json::Value, u64, u64)> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| Error::not_found(path, e.to_string()))?;
    let size = f.metadata().map_err(|e| Error::not_found(path, e.to_string()))?.len();
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|_| Error::bad_file(path, "not a safetensors file (shorter than its 8-byte header length)"))?;
    let n = u64::from_le_bytes(len);
    if n == 0 || n > size - 8 || n > 100 << 20 {
        return Err(Error::bad_file(path, format!("corrupt safetensors header: declared header length {n} for a {size}-byte file")));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).map_err(|e| Error::bad_file(path, e))?;
    let header = serde_json::from_slice::<serde_json::Value>(&header)
        .map_err(|e| Error::bad_file(path, format!("corrupt safetensors header: {e}")))?;
    Ok((header, 8 + n, size))
}

impl WeightSource for SafetensorsSource {
    fn linear(&self, module: &str, out_dim: usize, in_dim: usize, bias: bool) -> Result<Linear> {
        let w = self.load(&format!("{module}.weight"), &[out_dim, in_dim])?;
        let b = if bias { Some(self.load(&format!("{module}.bias"), &[out_dim])?) } else { None };
        Ok(Linear::new(QMatMul::Tensor(w), b))
    }

    fn vector(&self, name: &str, len: usize) -> Result<Tensor> {
        self.load(name, &[len])
    }

    fn embedding(&self, module: &str, vocab: usize, hidden: usize, _head: bool) -> Result<Embedding> {
        let w = self.load(&format!("{module}.weight"), &[vocab, hidden])?;
        Ok(Embedding::new(QMatMul::Tensor(w)))
    }

    fn has_module(&self, module: &str) -> bool {
        self.has_tensor(&format!("{module}.weight"))
    }

    fn has_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    fn dtype(&self) -> DType {
        self.dtype
    }
}
