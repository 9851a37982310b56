//! Tensor bytes as a weight file stores them, read through a memory map.
//!
//! Every weight but a lookup-only embedding table is copied once at load
//! (into its kernel's layout or candle's storage), so the map only saves the
//! read buffers and the kernel-to-user copy of plain reads. Its pages would otherwise stay resident until the map
//! is dropped and count twice with the copies: a tensor's pages are released
//! as soon as its copy exists, so peak memory stays near the model's size.

use std::borrow::Cow;
use std::fs::File;
use std::sync::Arc;

use candle_core::quantized::GgmlDType;
use memmap2::Mmap;
#[cfg(unix)]
use memmap2::UncheckedAdvice;

/// A read-only map of a whole weight file.
pub struct MappedFile {
    map: Mmap,
}

impl MappedFile {
    pub fn new(file: &File) -> std::io::Result<Self> {
        // SAFETY: the map is read-only. As with llama.cpp's maps, a file that
        // another process truncates while it is mapped faults on access; we
        // accept that in exchange for not copying through read buffers.
        let map = unsafe { Mmap::map(file)? };
        Ok(Self { map })
    }

    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// Bytes `start..start + len`, released from memory when dropped; None
    /// when the range falls outside the file.
    pub fn pages(&self, start: u64, len: usize) -> Option<Pages<'_>> {
        let start = usize::try_from(start).ok()?;
        let end = start.checked_add(len)?;
        (end <= self.map.len()).then_some(Pages {
            map: &self.map,
            start,
            end,
        })
    }
}

/// A range of a mapped file that keeps the map alive: a table read in place
/// for as long as the model lives (an embedding only looked up by row).
/// Its pages are resident while used and reclaimable as page cache. As with
/// llama.cpp's maps, a file truncated in place while its model is loaded
/// faults on the next lookup of a lost page (downloads replace files by
/// renaming, which leaves the mapped one intact).
pub struct MappedRange {
    map: Arc<MappedFile>,
    start: usize,
    end: usize,
}

impl MappedRange {
    /// None when the range falls outside the file.
    pub fn new(map: Arc<MappedFile>, start: u64, len: usize) -> Option<Self> {
        let start = usize::try_from(start).ok()?;
        let end = start.checked_add(len)?;
        (end <= map.map.len()).then_some(Self { map, start, end })
    }
}

impl AsRef<[u8]> for MappedRange {
    fn as_ref(&self) -> &[u8] {
        &self.map.map[self.start..self.end]
    }
}

/// A range of a mapped file whose pages are given back when it is dropped.
pub struct Pages<'a> {
    map: &'a Mmap,
    start: usize,
    end: usize,
}

impl<'a> Pages<'a> {
    pub fn bytes(&self) -> &'a [u8] {
        &self.map[self.start..self.end]
    }

    /// Gives back the pages of `range` (offsets into `bytes()`) already read:
    /// a large tensor read front to back keeps only a window of its file
    /// pages resident. Reading them again faults them back from the page cache.
    pub fn release(&self, range: std::ops::Range<usize>) {
        #[cfg(unix)]
        release_pages(self.map, self.start + range.start, (self.start + range.end).min(self.end));
        #[cfg(not(unix))]
        let _ = range;
    }
}

/// MADV_DONTNEED on the pages wholly inside `start..end` of `map`: a
/// neighbour's bytes stay put (releasing them would only cost a refault).
#[cfg(unix)]
fn release_pages(map: &Mmap, start: usize, end: usize) {
    let page = page_size();
    let first = start.div_ceil(page) * page;
    let last = end / page * page;
    if last > first {
        // SAFETY: the map is a read-only file map, so dropped pages are read
        // back from the file on the next access; nothing is lost.
        let _ = unsafe { map.unchecked_advise_range(UncheckedAdvice::DontNeed, first, last - first) };
    }
}

#[cfg(unix)]
impl Drop for Pages<'_> {
    fn drop(&mut self) {
        release_pages(self.map, self.start, self.end);
    }
}

#[cfg(unix)]
fn page_size() -> usize {
    static PAGE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    // SAFETY: sysconf has no preconditions.
    *PAGE.get_or_init(|| {
        usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .unwrap_or(4096)
            .max(1)
    })
}

/// A tensor as its file stores it: ggml blocks, rows in file order.
pub struct StoredTensor<'a> {
    pub dtype: GgmlDType,
    /// Transformers-order dims (rows first).
    pub dims: Vec<usize>,
    pub bytes: Cow<'a, [u8]>,
    /// The mapped pages behind `bytes`, released when the tensor is dropped.
    _pages: Option<Pages<'a>>,
}

impl<'a> StoredTensor<'a> {
    pub fn mapped(dtype: GgmlDType, dims: Vec<usize>, pages: Pages<'a>) -> Self {
        Self {
            dtype,
            dims,
            bytes: Cow::Borrowed(pages.bytes()),
            _pages: Some(pages),
        }
    }

    pub fn owned(dtype: GgmlDType, dims: Vec<usize>, bytes: Vec<u8>) -> Self {
        Self {
            dtype,
            dims,
            bytes: Cow::Owned(bytes),
            _pages: None,
        }
    }

    /// Gives back the file pages of `range` of `bytes` (see `Pages::release`);
    /// nothing for a tensor read into memory.
    pub fn release(&self, range: std::ops::Range<usize>) {
        if let Some(p) = &self._pages {
            p.release(range);
        }
    }

    /// Bytes in one row (the last dim; 1-D tensors are one row).
    pub fn row_bytes(&self) -> usize {
        let len = self.dims.last().copied().unwrap_or(1);
        len / self.dtype.block_size() * self.dtype.type_size()
    }

    /// Rows `start..start + n` (a 3-D tensor's rows are its last dim's
    /// vectors; a 1-D tensor's are its elements) with dims `dims`. Whole rows
    /// are whole quantization blocks, so this is a byte range.
    pub fn rows(self, start: usize, n: usize, dims: &[usize]) -> std::result::Result<Self, String> {
        let (rows, row_len) = match self.dims.as_slice() {
            [len] => (*len, 1),
            [head @ .., last] => (head.iter().product(), *last),
            [] => return Err("cannot slice a scalar".into()),
        };
        if start.checked_add(n).is_none_or(|end| end > rows) || n * row_len != dims.iter().product::<usize>() {
            return Err(format!(
                "cannot take rows {start}..{} of a {:?} tensor as {dims:?}",
                start + n,
                self.dims
            ));
        }
        let rb = row_len / self.dtype.block_size() * self.dtype.type_size();
        let range = start * rb..(start + n) * rb;
        let bytes = match self.bytes {
            Cow::Borrowed(b) => Cow::Borrowed(&b[range]),
            Cow::Owned(b) => Cow::Owned(b[range].to_vec()),
        };
        Ok(Self {
            dtype: self.dtype,
            dims: dims.to_vec(),
            bytes,
            _pages: self._pages,
        })
    }
}
