//! Causal self-attention of a step's new tokens against the paged KV
//! cache, on the CPU, for every sequence of the step in one call, reading
//! the cache's blocks in place.
//!
//! Why not tensor ops: per layer they cost a score matmul, a scale, a mask
//! add, a softmax and a second matmul, each a pass over memory with its own
//! thread-pool round trip, and a mask tensor rebuilt per step; at decode the
//! products are a few rows long, where general matmul code is at its worst.
//! Here each task takes one sequence, one KV head and a tile of its query
//! tokens: the query heads that share that KV head (grouped-query attention)
//! are its rows, the causal and sliding-window limits are index ranges, and
//! the keys go by one cache block at a time, each block serving every row of
//! the tile with an online softmax (flash attention's tiling). So the scratch
//! is (rows, head_dim) however long the prompt, and a long prompt reads its
//! cache once per tile instead of once per query row. All sequences' tasks
//! share one parallel loop, so a step of many short decodes fills the threads
//! as one long prompt does. The cache's storage type (f32, f16, bf16, Q8_0)
//! is one type parameter of the whole loop (`kv_formats.rs` reads each).

use std::cell::RefCell;

use rayon::prelude::*;

use half::{bf16, f16};

use super::kv_formats::{Bf16s, F16s, F32s, KvFormat, Q8s};
use super::kv_rows::{self, Run};
use super::out_ptr::OutPtr;
use crate::kv_cache::BLOCK_SIZE;

/// Query tokens per task in a prompt: rows that share each block of keys
/// while it is in L1 (more rows, more reuse; fewer tasks to spread).
const QUERY_TILE: usize = 16;

/// Rows of a tile from which a narrow cache's run of keys and values is
/// widened to f32 once and read from there (below, each row widens as it reads).
const WIDEN_MIN_ROWS: usize = 4;

/// Score-matrix elements below which a step's attention stays on the calling thread.
const PARALLEL_MIN_SCORES: usize = 1 << 14;

/// A step with fewer tiles than this many per thread splits its tiles' keys
/// into parts (flash-decoding), each at least `SPLIT_MIN_KEYS` long.
const SPLIT_TASKS_PER_THREAD: usize = 8;
const SPLIT_MIN_KEYS: usize = 256;

/// How many cache blocks ahead a decode task asks for its keys and values
/// (`prefetch_block`).
const PREFETCH_BLOCKS: usize = 2;

/// Head layout and masking of one attention layer.
#[derive(Debug, Clone, Copy)]
pub struct AttnShape {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub scale: f32,
    /// Scaled scores become `cap · tanh(score / cap)` (Gemma 2's soft-capping).
    pub softcap: Option<f32>,
    /// Keys older than this many positions are hidden (Mistral's sliding window).
    pub window: Option<usize>,
}

/// One layer's keys or values as the pool stores them, (slots, kv_heads,
/// units): floats, or the bytes of Q8_0 blocks.
#[derive(Debug, Clone, Copy)]
pub enum KvData<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    Bf16(&'a [bf16]),
    Q8_0(&'a [u8]),
}

impl KvData<'_> {
    fn len(&self) -> usize {
        match self {
            Self::F32(d) => d.len(),
            Self::F16(d) => d.len(),
            Self::Bf16(d) => d.len(),
            Self::Q8_0(d) => d.len(),
        }
    }

    /// Storage units per head vector of `dim` values.
    fn units(&self, dim: usize) -> usize {
        match self {
            Self::Q8_0(_) => crate::kv_cache::KvDtype::Q8_0.units(dim),
            _ => dim,
        }
    }

    fn same_kind(&self, other: &Self) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
    }
}

/// The typed slice of a `KvData` of format `F`, if it is of that format.
trait Typed: KvFormat {
    fn slice<'a>(d: &KvData<'a>) -> Option<&'a [Self::Unit]>;
}

macro_rules! typed {
    ($f:ty, $variant:ident) => {
        impl Typed for $f {
            fn slice<'a>(d: &KvData<'a>) -> Option<&'a [Self::Unit]> {
                match d {
                    KvData::$variant(x) => Some(x),
                    _ => None,
                }
            }
        }
    };
}
typed!(F32s, F32);
typed!(F16s, F16);
typed!(Bf16s, Bf16);
typed!(Q8s, Q8_0);

/// Keys or values of one layer of the pool, as one sequence sees them
/// through its block table: its token `j` is in slot
/// `blocks[j / BLOCK_SIZE] * BLOCK_SIZE + j % BLOCK_SIZE`.
#[derive(Debug, Clone, Copy)]
pub struct KvView<'a> {
    pub data: KvData<'a>,
    pub blocks: &'a [u32],
}

/// One sequence's share of a step: its new tokens are rows
/// `start..start + len` of the step's queries and outputs, after `past`
/// cached ones; `k`, `v` hold `past + len` tokens (the new ones included).
#[derive(Debug, Clone, Copy)]
pub struct SeqAttn<'a> {
    pub start: usize,
    pub len: usize,
    pub past: usize,
    pub k: KvView<'a>,
    pub v: KvView<'a>,
}

/// `q`: (tokens, heads, head_dim) of the step; `out`: (tokens, heads *
/// head_dim), each sequence's rows written.
pub fn attend(shape: &AttnShape, q: &[f32], seqs: &[SeqAttn], out: &mut [f32]) {
    attend_on(shape, q, seqs, out, super::select::avx2())
}

/// `attend`, on the SIMD path (where the CPU and the head size allow) or the scalar one.
fn attend_on(shape: &AttnShape, q: &[f32], seqs: &[SeqAttn], out: &mut [f32], simd: bool) {
    let AttnShape { heads, kv_heads, head_dim: dim, .. } = *shape;
    assert!(kv_heads > 0 && heads % kv_heads == 0);
    let Some(first) = seqs.first() else { return };
    let kind = first.k.data;
    let row = heads * dim;
    for s in seqs {
        assert!(q.len() >= (s.start + s.len) * row && out.len() >= (s.start + s.len) * row);
        for view in [s.k, s.v] {
            assert!(view.data.same_kind(&kind), "keys and values of one step in one storage type");
            let blocks = (s.past + s.len).div_ceil(BLOCK_SIZE);
            assert!(view.blocks.len() >= blocks, "block table shorter than the sequence");
            let top = view.blocks[..blocks].iter().max().map_or(0, |&b| b as usize + 1);
            assert!(view.data.len() >= top * BLOCK_SIZE * kv_heads * view.data.units(dim), "block outside the pool");
        }
    }
    match kind {
        KvData::F32(_) => attend_in::<F32s>(shape, q, seqs, out, simd),
        KvData::F16(_) => attend_in::<F16s>(shape, q, seqs, out, simd),
        KvData::Bf16(_) => attend_in::<Bf16s>(shape, q, seqs, out, simd),
        KvData::Q8_0(_) => attend_in::<Q8s>(shape, q, seqs, out, simd),
    }
}

fn attend_in<F: Typed>(shape: &AttnShape, q: &[f32], seqs: &[SeqAttn], out: &mut [f32], simd: bool) {
    let simd = simd && F::simd_dim(shape.head_dim);
    // Every view is of format F (asserted in `attend_on`).
    let Some(data) = seqs.iter().map(|s| Some((F::slice(&s.k.data)?, F::slice(&s.v.data)?))).collect::<Option<Vec<_>>>() else {
        return;
    };
    let kv_heads = shape.kv_heads;
    let heads = shape.heads;
    let dim = shape.head_dim;
    let group = heads / kv_heads;
    // Tasks: (sequence, KV head, query tile), flattened.
    let mut tiles: Vec<(usize, usize, usize)> = Vec::new();
    let mut work = 0;
    for (i, s) in seqs.iter().enumerate() {
        for g in 0..kv_heads {
            for tile in 0..s.len.div_ceil(QUERY_TILE) {
                tiles.push((i, g, tile));
            }
        }
        work += heads * s.len * (s.past + s.len);
    }
    let parallel = work >= PARALLEL_MIN_SCORES && tiles.len() > 1;
    // Few tiles over long histories (decoding a long context: one tile per
    // KV head) would leave threads idle: each such tile's keys are split into
    // parts that run as tasks of their own, each keeping its own softmax
    // state, merged afterwards (flash-decoding).
    let threads = rayon::current_num_threads();
    let want = if parallel && tiles.len() < SPLIT_TASKS_PER_THREAD * threads {
        (SPLIT_TASKS_PER_THREAD * threads).div_ceil(tiles.len())
    } else {
        1
    };
    let mut tasks: Vec<Task> = Vec::with_capacity(tiles.len() * want);
    let mut merges: Vec<Merge> = Vec::new();
    let mut partial_len = 0;
    for &(i, g, tile) in &tiles {
        let s = &seqs[i];
        let first = tile * QUERY_TILE;
        let tokens = QUERY_TILE.min(s.len - first);
        let (lo, _) = visible(s.past + first, shape.window);
        let hi = s.past + first + tokens;
        let parts = want.min((hi - lo) / SPLIT_MIN_KEYS).max(1);
        if parts == 1 {
            tasks.push(Task { i, g, first, tokens, keys: (lo, hi), partial: None });
            continue;
        }
        // Parts of whole cache blocks, the first one from the window's start.
        let step = (hi - lo).div_ceil(parts).next_multiple_of(BLOCK_SIZE);
        let stride = tokens * group * (dim + 2);
        let at = partial_len;
        let mut k0 = lo;
        let mut n = 0;
        while k0 < hi {
            let k1 = hi.min((k0 / BLOCK_SIZE) * BLOCK_SIZE + step);
            tasks.push(Task { i, g, first, tokens, keys: (k0, k1), partial: Some(at + n * stride) });
            k0 = k1;
            n += 1;
        }
        partial_len += n * stride;
        merges.push(Merge { i, g, first, tokens, at, parts: n });
    }
    let mut partials = vec![0f32; partial_len];
    let out_ptr = OutPtr(out.as_mut_ptr());
    let part_ptr = OutPtr(partials.as_mut_ptr());
    let run = |t: &Task| {
        let sink = match t.partial {
            Some(at) => Sink::Partial(part_ptr, at),
            None => Sink::Out(out_ptr),
        };
        SCRATCH.with(|sc| {
            // A decode token's query heads of one KV head all see the same
            // keys (`decode_rows`); without grouped heads there is one row.
            // SAFETY: tasks write disjoint (token, head) rows of `out`, or
            // disjoint stretches of `partials`.
            unsafe {
                if t.tokens == 1 && group > 1 {
                    decode_rows::<F>(shape, q, &seqs[t.i], data[t.i], t, sink, &mut sc.borrow_mut(), simd)
                } else {
                    head_tile::<F>(shape, q, &seqs[t.i], data[t.i], t, sink, &mut sc.borrow_mut(), simd)
                }
            }
        });
    };
    if parallel {
        tasks.par_iter().for_each(run);
    } else {
        tasks.iter().for_each(run);
    }
    for m in &merges {
        let s = &seqs[m.i];
        let rows = m.tokens * group;
        let stride = rows * (dim + 2);
        for x in 0..rows {
            let (t, hh) = (x / group, x % group);
            let o = ((s.start + m.first + t) * heads + m.g * group + hh) * dim;
            let parts = (0..m.parts).map(|p| {
                let base = m.at + p * stride;
                (&partials[base + x * dim..base + (x + 1) * dim], partials[base + rows * dim + x], partials[base + rows * (dim + 1) + x])
            });
            merge_rows(parts, &mut out[o..o + dim]);
        }
    }
}

/// Folds the softmax states (unnormalized output, maximum, sum) of the parts
/// of one row's keys into its output.
fn merge_rows<'a>(parts: impl Iterator<Item = (&'a [f32], f32, f32)> + Clone, out: &mut [f32]) {
    let m = parts.clone().fold(f32::NEG_INFINITY, |m, (_, pm, _)| m.max(pm));
    out.fill(0.0);
    let mut sum = 0.0;
    // A part none of whose keys the row sees has no state (max -inf): it adds nothing.
    for (acc, pm, ps) in parts.filter(|p| p.1 > f32::NEG_INFINITY) {
        let w = (pm - m).exp();
        sum += ps * w;
        for (o, a) in out.iter_mut().zip(acc) {
            *o += a * w;
        }
    }
    let inv = 1.0 / sum;
    out.iter_mut().for_each(|o| *o *= inv);
}

/// A tile whose keys were split: its `parts` softmax states from `at` in the partials.
#[derive(Debug, Clone, Copy)]
struct Merge {
    i: usize,
    g: usize,
    first: usize,
    tokens: usize,
    at: usize,
    parts: usize,
}

/// Where a task's rows go: the step's output, or (a split tile's part) its
/// softmax state at an offset of the partials: (rows, dim) unnormalized
/// outputs, then the rows' maxima, then their sums.
#[derive(Clone, Copy)]
enum Sink {
    Out(OutPtr),
    Partial(OutPtr, usize),
}

/// One task of a step's attention: a tile of sequence `i`'s query tokens
/// (`first..first + tokens` of its new ones) against KV head `g`'s keys in
/// `keys`; with `partial`, its softmax state goes to that offset of the
/// partials instead of to the output.
#[derive(Debug, Clone, Copy)]
struct Task {
    i: usize,
    g: usize,
    first: usize,
    tokens: usize,
    keys: (usize, usize),
    partial: Option<usize>,
}

thread_local! {
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Visible keys of the token at position `pos`: [lo, pos].
fn visible(pos: usize, window: Option<usize>) -> (usize, usize) {
    let lo = match window {
        Some(w) if pos >= w => pos - w + 1,
        _ => 0,
    };
    (lo, pos + 1)
}

/// Unit offset of token `j`'s vector for KV head offset `g_off` (in units).
fn slot(blocks: &[u32], j: usize, row: usize, g_off: usize) -> usize {
    (blocks[j / BLOCK_SIZE] as usize * BLOCK_SIZE + j % BLOCK_SIZE) * row + g_off
}

/// Asks for the stored vectors of KV head offset `g_off` in the block that
/// holds token `j`, up to token `hi` (exclusive), to be brought into L2: a
/// hint that reads nothing and waits for nothing.
///
/// Why: a decode step's cache comes from DRAM (every layer's weights pass
/// through the caches between two reads of it), and each block of one KV
/// head is 16 short runs a row apart, with its keys and values in two
/// separate tensors; left to the hardware prefetcher, the loop waited on
/// those loads. Qwen2.5-Coder-1.5B decoding after 4,096 tokens spent 15.2 ms
/// a token in attention without this and 12.3 ms with it (the same process,
/// alternating). Into L1 instead (`_MM_HINT_T0`) it gained nothing: a
/// block's 128 lines of keys and values outnumber L1's outstanding misses.
fn prefetch_block<T>(data: &[T], blocks: &[u32], j: usize, hi: usize, row: usize, g_off: usize, units: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
        let first = j / BLOCK_SIZE * BLOCK_SIZE;
        let bytes = units * std::mem::size_of::<T>();
        for t in first..hi.min(first + BLOCK_SIZE) {
            // `wrapping_add`: the address is only a hint, never dereferenced.
            let start = data.as_ptr().wrapping_add(slot(blocks, t, row, g_off)) as usize;
            for line in (start & !63..start + bytes).step_by(64) {
                // SAFETY: a prefetch reads no memory and cannot fault; SSE is in every x86-64.
                unsafe { _mm_prefetch::<_MM_HINT_T1>(line as *const i8) };
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (data, blocks, j, hi, row, g_off, units);
}

/// Tokens `first..first + tokens` of sequence `s`'s new ones, for the query
/// heads of KV head `g`, flash-attention style: the keys go by in blocks,
/// and each block is used by every row of the tile (query token × grouped
/// head) while it sits in L1, each row keeping a running maximum, sum and
/// output (online softmax). The scratch is (rows, head_dim) whatever the
/// prompt's length, and the cache is read once per tile, not once per row.
///
/// # Safety
/// `sink` points at the step's (tokens, heads * head_dim) output, whose rows
/// for these tokens and heads no other thread writes meanwhile, or at
/// partials with room for this task's state that no other thread writes.
#[allow(clippy::too_many_arguments)]
unsafe fn head_tile<F: Typed>(
    shape: &AttnShape,
    q: &[f32],
    s: &SeqAttn,
    (k_data, v_data): (&[F::Unit], &[F::Unit]),
    task: &Task,
    sink: Sink,
    scratch: &mut Vec<f32>,
    simd: bool,
) {
    let Task { first, tokens, g, keys, .. } = *task;
    let dim = shape.head_dim;
    let group = shape.heads / shape.kv_heads;
    // Strides in storage units (a Q8_0 head vector is dim / 32 blocks of 34 bytes).
    let units = s.k.data.units(dim);
    let row = shape.kv_heads * units;
    let g_off = g * units;
    let rows = tokens * group;
    // A narrow cache read by many rows (a prompt's tile) is widened to f32
    // once per run of keys, instead of once per row.
    let widen = F::NARROW && rows >= WIDEN_MIN_ROWS;
    let wide = if widen { 2 * BLOCK_SIZE * dim } else { 0 };
    if scratch.len() < rows * (dim + 2) + BLOCK_SIZE + wide {
        scratch.resize(rows * (dim + 2) + BLOCK_SIZE + wide, 0.0);
    }
    let (acc, rest) = scratch.split_at_mut(rows * dim);
    let (maxes, rest) = rest.split_at_mut(rows);
    let (sums, rest) = rest.split_at_mut(rows);
    let (p, rest) = rest.split_at_mut(BLOCK_SIZE);
    let (k_wide, v_wide) = rest[..wide].split_at_mut(wide / 2);
    maxes[..rows].fill(f32::NEG_INFINITY);
    // Keys any row of the tile sees (from the first token's window start to
    // the last token), of the task's part of them.
    let (lo_all, _) = visible(s.past + first, shape.window);
    let hi_all = (s.past + first + tokens).min(keys.1);
    let mut j0 = lo_all.max(keys.0);
    while j0 < hi_all {
        // One block's run of keys, contiguous in the pool for both K and V.
        let j1 = hi_all.min((j0 / BLOCK_SIZE + 1) * BLOCK_SIZE);
        let (k_at, v_at) = (slot(s.k.blocks, j0, row, g_off), slot(s.v.blocks, j0, row, g_off));
        if widen {
            F::widen(&k_data[k_at..], row, dim, j1 - j0, k_wide, simd);
            F::widen(&v_data[v_at..], row, dim, j1 - j0, v_wide, simd);
        }
        for t in 0..tokens {
            let (lo, hi) = visible(s.past + first + t, shape.window);
            let (a, b) = (lo.max(j0), hi.min(j1));
            if a >= b {
                continue;
            }
            let r = s.start + first + t;
            for hh in 0..group {
                let x = t * group + hh;
                let qrow = &q[(r * shape.heads + g * group + hh) * dim..][..dim];
                let sc = &mut p[..b - a];
                if widen {
                    F32s::scores_row(qrow, &k_wide[(a - j0) * dim..], dim, dim, shape.scale, sc, simd);
                } else {
                    F::scores_row(qrow, &k_data[k_at + (a - j0) * row..], row, dim, shape.scale, sc, simd);
                }
                if let Some(cap) = shape.softcap {
                    sc.iter_mut().for_each(|x| *x = cap * (*x / cap).tanh());
                }
                let (o, m, z) = (&mut acc[x * dim..(x + 1) * dim], &mut maxes[x], &mut sums[x]);
                if widen {
                    online_update::<F32s>(sc, &v_wide[(a - j0) * dim..], dim, dim, o, m, z, simd);
                } else {
                    online_update::<F>(sc, &v_data[v_at + (a - j0) * row..], row, dim, o, m, z, simd);
                }
            }
        }
        j0 = j1;
    }
    finish(shape, s, task, sink, &acc[..rows * dim], &maxes[..rows], &sums[..rows]);
}

/// A task's rows out: normalized into the step's output, or its softmax
/// state (unnormalized rows, maxima, sums) into the partials.
///
/// # Safety
/// As for `head_tile`.
unsafe fn finish(shape: &AttnShape, s: &SeqAttn, task: &Task, sink: Sink, acc: &[f32], maxes: &[f32], sums: &[f32]) {
    let Task { first, tokens, g, .. } = *task;
    let dim = shape.head_dim;
    let group = shape.heads / shape.kv_heads;
    let rows = tokens * group;
    match sink {
        Sink::Partial(to, at) => {
            let to = std::slice::from_raw_parts_mut(to.at(at), rows * (dim + 2));
            to[..rows * dim].copy_from_slice(acc);
            to[rows * dim..rows * (dim + 1)].copy_from_slice(maxes);
            to[rows * (dim + 1)..].copy_from_slice(sums);
        }
        Sink::Out(out) => {
            for t in 0..tokens {
                let r = s.start + first + t;
                for hh in 0..group {
                    let x = t * group + hh;
                    let inv = 1.0 / sums[x];
                    let o = std::slice::from_raw_parts_mut(out.at((r * shape.heads + g * group + hh) * dim), dim);
                    for (o, a) in o.iter_mut().zip(&acc[x * dim..(x + 1) * dim]) {
                        *o = a * inv;
                    }
                }
            }
        }
    }
}

/// One decode token's task (`tokens == 1`): the query heads of KV head `g`
/// all see the same keys, so each cache block's run of them is taken for
/// every row at once (`kv_rows.rs`: each stored key and value widened once
/// for all rows, where a row at a time widened it once per row). Each row's
/// arithmetic is `head_tile`'s, operation for operation (the same runs, the
/// same products, the same online softmax), so its output is bit for bit
/// what the prompt path gives the same token: a sequence preempted and
/// recomputed as a prompt continues exactly as it would have.
///
/// # Safety
/// As for `head_tile`.
#[allow(clippy::too_many_arguments)]
unsafe fn decode_rows<F: Typed>(
    shape: &AttnShape,
    q: &[f32],
    s: &SeqAttn,
    (k_data, v_data): (&[F::Unit], &[F::Unit]),
    task: &Task,
    sink: Sink,
    scratch: &mut Vec<f32>,
    simd: bool,
) {
    let Task { first, g, keys, .. } = *task;
    debug_assert_eq!(task.tokens, 1);
    let dim = shape.head_dim;
    let rows = shape.heads / shape.kv_heads;
    let units = s.k.data.units(dim);
    let row = shape.kv_heads * units;
    let g_off = g * units;
    if scratch.len() < rows * (dim + 2 + BLOCK_SIZE) {
        scratch.resize(rows * (dim + 2 + BLOCK_SIZE), 0.0);
    }
    let (acc, rest) = scratch.split_at_mut(rows * dim);
    let (maxes, rest) = rest.split_at_mut(rows);
    let (sums, rest) = rest.split_at_mut(rows);
    let scores = &mut rest[..rows * BLOCK_SIZE];
    acc.fill(0.0);
    maxes.fill(f32::NEG_INFINITY);
    sums.fill(0.0);
    let r = s.start + first;
    // The group's query heads are consecutive rows of the token's queries.
    let qrows = &q[(r * shape.heads + g * rows) * dim..][..rows * dim];
    let (lo, hi) = visible(s.past + first, shape.window);
    let (lo, hi) = (lo.max(keys.0), hi.min(keys.1));
    // The loop below asks for the block PREFETCH_BLOCKS ahead of the one it
    // computes; the task's first blocks are asked for here. At 2,048 tokens
    // a decode task has 16 blocks, and the first two came cold from DRAM:
    // Qwen2.5-Coder-1.5B's attention took 5.5 ms a token with this, against
    // 6.0 without (medians of 6 alternating runs in one process).
    for b in 0..PREFETCH_BLOCKS {
        let j = (lo / BLOCK_SIZE + b) * BLOCK_SIZE;
        if j < hi {
            prefetch_block(k_data, s.k.blocks, j, hi, row, g_off, units);
            prefetch_block(v_data, s.v.blocks, j, hi, row, g_off, units);
        }
    }
    let mut j0 = lo;
    while j0 < hi {
        // One block's run of keys, contiguous in the pool for both K and V.
        let j1 = hi.min((j0 / BLOCK_SIZE + 1) * BLOCK_SIZE);
        let n = j1 - j0;
        let k_run = Run { at: slot(s.k.blocks, j0, row, g_off), len: n };
        let v_run = Run { at: slot(s.v.blocks, j0, row, g_off), len: n };
        let ahead = (j0 / BLOCK_SIZE + PREFETCH_BLOCKS) * BLOCK_SIZE;
        if ahead < hi {
            prefetch_block(k_data, s.k.blocks, ahead, hi, row, g_off, units);
            prefetch_block(v_data, s.v.blocks, ahead, hi, row, g_off, units);
        }
        kv_rows::scores_rows::<F>(qrows, rows, k_data, k_run, row, dim, shape.scale, scores, BLOCK_SIZE, simd);
        for x in 0..rows {
            let sc = &mut scores[x * BLOCK_SIZE..x * BLOCK_SIZE + n];
            if let Some(cap) = shape.softcap {
                sc.iter_mut().for_each(|v| *v = cap * (*v / cap).tanh());
            }
            // `online_update`'s steps, the values' product left for all rows together.
            let m = sc.iter().fold(maxes[x], |m, &v| m.max(v));
            if m > maxes[x] && maxes[x] > f32::NEG_INFINITY {
                let c = (maxes[x] - m).exp();
                acc[x * dim..(x + 1) * dim].iter_mut().for_each(|v| *v *= c);
                sums[x] *= c;
            }
            let fresh = maxes[x] == f32::NEG_INFINITY;
            maxes[x] = m;
            let block_sum = exp_shifted(sc, m, simd);
            sums[x] = if fresh { block_sum } else { sums[x] + block_sum };
        }
        kv_rows::weighted_rows::<F>(scores, BLOCK_SIZE, rows, v_data, v_run, row, dim, acc, simd);
        j0 = j1;
    }
    finish(shape, s, task, sink, acc, maxes, sums);
}

/// Folds one run of keys into a row's running softmax: `scores` (consumed)
/// against `values` (value j's `dim` floats at `j * stride`). The output and
/// sum so far were relative to the old maximum; a larger one rescales them.
#[allow(clippy::too_many_arguments)]
fn online_update<F: KvFormat>(scores: &mut [f32], values: &[F::Unit], stride: usize, dim: usize, o: &mut [f32], max: &mut f32, sum: &mut f32, simd: bool) {
    let fresh = *max == f32::NEG_INFINITY;
    let m = scores.iter().fold(*max, |m, &x| m.max(x));
    if !fresh && m > *max {
        let c = (*max - m).exp();
        o.iter_mut().for_each(|x| *x *= c);
        *sum *= c;
    }
    *max = m;
    let block_sum = exp_shifted(scores, m, simd);
    *sum = if fresh { block_sum } else { *sum + block_sum };
    F::weighted_values(scores, values, stride, dim, o, !fresh, simd);
}

/// In place s = exp(s - max); returns Σ s.
fn exp_shifted(s: &mut [f32], max: f32, simd: bool) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: AVX2+FMA detected.
        return unsafe { avx2::exp_shifted(s, max) };
    }
    let _ = simd;
    let mut sum = 0.0;
    for x in s.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    sum
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::super::vec_math::exp8;

    /// In place s = exp(s - max); returns Σ s.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp_shifted(s: &mut [f32], max: f32) -> f32 {
        let m = _mm256_set1_ps(max);
        let mut sum = _mm256_setzero_ps();
        let mut chunks = s.chunks_exact_mut(8);
        for c in &mut chunks {
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(c.as_ptr()), m));
            _mm256_storeu_ps(c.as_mut_ptr(), e);
            sum = _mm256_add_ps(sum, e);
        }
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), sum);
        let mut total: f32 = lanes.iter().sum();
        for x in chunks.into_remainder() {
            *x = (*x - max).exp();
            total += *x;
        }
        total
    }

}

#[cfg(test)]
mod tests {
    use super::*;

    /// Softmax attention written out in f64, straight from the definition
    /// (transformers' eager attention with repeat_kv and the causal /
    /// sliding-window mask). `kv(g, j)`: key and value of head g, token j.
    fn reference<'a>(s: &AttnShape, q: &[f32], t: usize, past: usize, kv: impl Fn(usize, usize) -> (&'a [f32], &'a [f32])) -> Vec<f32> {
        let dim = s.head_dim;
        let group = s.heads / s.kv_heads;
        let mut out = vec![0f32; t * s.heads * dim];
        for i in 0..t {
            let pos = past + i;
            for h in 0..s.heads {
                let g = h / group;
                let qr = &q[(i * s.heads + h) * dim..][..dim];
                let keys: Vec<usize> = (0..=pos).filter(|&j| s.window.is_none_or(|w| pos < w || j > pos - w)).collect();
                let sc: Vec<f64> = keys
                    .iter()
                    .map(|&j| s.scale as f64 * qr.iter().zip(kv(g, j).0).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>())
                    .map(|x| s.softcap.map_or(x, |c| c as f64 * (x / c as f64).tanh()))
                    .collect();
                let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = sc.iter().map(|x| (x - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for d in 0..dim {
                    let acc: f64 = keys.iter().zip(&e).map(|(&j, w)| w / z * kv(g, j).1[d] as f64).sum();
                    out[(i * s.heads + h) * dim + d] = acc as f32;
                }
            }
        }
        out
    }

    fn data(n: usize, seed: u32) -> Vec<f32> {
        (0..n).map(|i| (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) % 2000) as f32 / 500.0 - 2.0).collect()
    }

    /// A token's attention as a decode step (`decode_rows`) is bit for bit
    /// its row in a prompt's tile (`head_tile`), for every storage type and
    /// grouped heads, so a preempted sequence recomputed as a prompt goes on
    /// as it would have. (Below 512 keys neither is split into parts.)
    #[test]
    fn decode_rows_equal_prompt_rows_bit_for_bit() {
        for (heads, kv_heads, dim, past, window, softcap) in [
            (9usize, 3usize, 64usize, 300usize, None, None),
            (14, 2, 64, 77, None, None),
            (4, 1, 256, 200, Some(64), None),
            (8, 4, 32, 45, None, Some(2.0)),
            (16, 1, 32, 130, None, None),
        ] {
            let shape = AttnShape { heads, kv_heads, head_dim: dim, scale: 1.0 / (dim as f32).sqrt(), softcap, window };
            let t = 5; // the prompt's last 5 tokens, the decode token the last of them
            let n = (past + 1).div_ceil(BLOCK_SIZE);
            let blocks: Vec<u32> = (0..n as u32).rev().collect();
            let row = kv_heads * dim;
            let (k_raw, v_raw) = (data(n * BLOCK_SIZE * row, 2), data(n * BLOCK_SIZE * row, 3));
            let q = data(t * heads * dim, 1);
            let (k16, v16) = (k_raw.iter().map(|&x| f16::from_f32(x)).collect::<Vec<_>>(), v_raw.iter().map(|&x| f16::from_f32(x)).collect::<Vec<_>>());
            let q8 = |x: &[f32]| {
                let mut b = vec![0u8; x.len() / 32 * 34];
                crate::kv_cache::quantize_q8_0(x, &mut b);
                b
            };
            let (k8, v8) = (q8(&k_raw), q8(&v_raw));
            let (kb, vb) = (k_raw.iter().map(|&x| bf16::from_f32(x)).collect::<Vec<_>>(), v_raw.iter().map(|&x| bf16::from_f32(x)).collect::<Vec<_>>());
            let formats = [
                ("f32", KvData::F32(&k_raw), KvData::F32(&v_raw)),
                ("f16", KvData::F16(&k16), KvData::F16(&v16)),
                ("bf16", KvData::Bf16(&kb), KvData::Bf16(&vb)),
                ("q8_0", KvData::Q8_0(&k8), KvData::Q8_0(&v8)),
            ];
            for (name, kd, vd) in formats {
                for simd in [false, crate::kernels::select::avx2()] {
                    let view = |d| KvView { data: d, blocks: &blocks };
                    let mut prompt = vec![0f32; t * heads * dim];
                    attend_on(&shape, &q, &[SeqAttn { start: 0, len: t, past: past + 1 - t, k: view(kd), v: view(vd) }], &mut prompt, simd);
                    let mut decode = vec![0f32; heads * dim];
                    let last = &q[(t - 1) * heads * dim..];
                    attend_on(&shape, last, &[SeqAttn { start: 0, len: 1, past, k: view(kd), v: view(vd) }], &mut decode, simd);
                    assert_eq!(decode, prompt[(t - 1) * heads * dim..], "{heads}/{kv_heads} heads, dim {dim}, {name}, simd {simd}");
                }
            }
        }
    }

    /// Decode and prompt tiles, grouped heads, head sizes that do and do not
    /// fill SIMD registers, a sliding window, and a step large enough to run
    /// on the thread pool; each case runs as one sequence of a step together
    /// with a decoding neighbour, over scattered blocks of a shared pool.
    #[test]
    fn matches_softmax_attention_definition() {
        for (heads, kv_heads, dim, t, past, window, softcap) in [
            (4usize, 2usize, 64usize, 1usize, 37usize, None, None),
            (9, 3, 64, 21, 0, None, None),
            (6, 6, 80, 5, 9, None, Some(1.5)), // soft-capped: scores reach ±8
            (2, 1, 12, 3, 4, None, None),
            (4, 1, 128, 19, 30, Some(8), Some(3.0)),
            (8, 2, 96, 1, 300, Some(64), None),
            (14, 2, 64, 40, 100, None, None), // split across threads
            (4, 2, 64, 70, 5, Some(20), None), // several query tiles, each window starting mid-block
            (9, 3, 64, 1, 2000, None, None),    // a long decode: its keys split into parts, merged
            (4, 2, 64, 3, 3000, Some(1000), Some(4.0)), // split parts of a window
            (14, 2, 64, 1, 600, None, None),             // decode: 7 rows per KV head
            (16, 1, 32, 1, 300, Some(100), Some(2.0)),   // decode: 16 rows, two passes of the 8-row bodies
            (12, 2, 128, 1, 5000, None, None),           // decode: split parts of several passes each
        ] {
            let shape = AttnShape { heads, kv_heads, head_dim: dim, scale: 1.0 / (dim as f32).sqrt(), softcap, window };
            let (n_a, n_b) = ((past + t as usize).div_ceil(BLOCK_SIZE), 20usize.div_ceil(BLOCK_SIZE));
            let total = n_a + n_b + 3;
            // Blocks in a scrambled order, interleaved between the two sequences.
            let order: Vec<u32> = (0..total as u32).map(|i| (i * 7 + 3) % total as u32).collect();
            let (blocks_a, blocks_b) = (order[..n_a].to_vec(), order[n_a..n_a + n_b].to_vec());
            let row = kv_heads * dim;
            let (k_raw, v_raw) = (data(total * BLOCK_SIZE * row, 2), data(total * BLOCK_SIZE * row, 3));
            let at = |blocks: &[u32], g: usize, j: usize| (blocks[j / BLOCK_SIZE] as usize * BLOCK_SIZE + j % BLOCK_SIZE) * row + g * dim;
            let q = data((1 + t) * heads * dim, 1);
            // Every storage type: the kernel against the definition over the values it stores.
            let (k16, v16) = (k_raw.iter().map(|&x| f16::from_f32(x)).collect::<Vec<_>>(), v_raw.iter().map(|&x| f16::from_f32(x)).collect::<Vec<_>>());
            let (kb, vb) = (k_raw.iter().map(|&x| bf16::from_f32(x)).collect::<Vec<_>>(), v_raw.iter().map(|&x| bf16::from_f32(x)).collect::<Vec<_>>());
            let q8 = |x: &[f32]| {
                let mut b = vec![0u8; x.len() / 32 * 34];
                crate::kv_cache::quantize_q8_0(x, &mut b);
                b
            };
            let (k8, v8) = if dim % 32 == 0 { (q8(&k_raw), q8(&v_raw)) } else { (Vec::new(), Vec::new()) };
            let widened = |d: &KvData| -> Vec<f32> {
                match d {
                    KvData::F32(x) => x.to_vec(),
                    KvData::F16(x) => x.iter().map(|v| v.to_f32()).collect(),
                    KvData::Bf16(x) => x.iter().map(|v| v.to_f32()).collect(),
                    KvData::Q8_0(x) => {
                        let mut w = vec![0f32; x.len() / 34 * 32];
                        crate::kv_cache::dequantize_q8_0(x, &mut w);
                        w
                    }
                }
            };
            let mut formats = vec![
                ("f32", KvData::F32(&k_raw), KvData::F32(&v_raw)),
                ("f16", KvData::F16(&k16), KvData::F16(&v16)),
                ("bf16", KvData::Bf16(&kb), KvData::Bf16(&vb)),
            ];
            if dim % 32 == 0 {
                formats.push(("q8_0", KvData::Q8_0(&k8), KvData::Q8_0(&v8)));
            }
            for (name, kd, vd) in formats {
            let (k, v) = (widened(&kd), widened(&vd));
            // Sequence b decodes its 20th token; sequence a is the case, after it.
            let want_b = reference(&shape, &q[..heads * dim], 1, 19, |g, j| {
                let o = at(&blocks_b, g, j);
                (&k[o..o + dim], &v[o..o + dim])
            });
            let want_a = reference(&shape, &q[heads * dim..], t, past, |g, j| {
                let o = at(&blocks_a, g, j);
                (&k[o..o + dim], &v[o..o + dim])
            });
            for simd in [false, true] {
                let mut got = vec![0f32; (1 + t) * heads * dim];
                let view = |d, b| KvView { data: d, blocks: b };
                let seqs = [
                    SeqAttn { start: 0, len: 1, past: 19, k: view(kd, &blocks_b), v: view(vd, &blocks_b) },
                    SeqAttn { start: 1, len: t, past, k: view(kd, &blocks_a), v: view(vd, &blocks_a) },
                ];
                attend_on(&shape, &q, &seqs, &mut got, simd && crate::kernels::select::avx2());
                let want: Vec<f32> = want_b.iter().chain(&want_a).copied().collect();
                let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                assert!(err < 2e-5, "{heads}/{kv_heads} heads, dim {dim}, t {t}, past {past}, simd {simd}, {name}: {err}");
            }
            }
        }
    }
}

