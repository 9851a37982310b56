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
//! as one long prompt does.

use std::cell::RefCell;

use rayon::prelude::*;

use super::out_ptr::OutPtr;
use crate::kv_cache::BLOCK_SIZE;

/// Query tokens per task in a prompt: rows that share each block of keys
/// while it is in L1 (more rows, more reuse; fewer tasks to spread).
const QUERY_TILE: usize = 16;

/// Score-matrix elements below which a step's attention stays on the calling thread.
const PARALLEL_MIN_SCORES: usize = 1 << 14;

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

/// Keys or values of one layer of the pool, (slots, kv_heads, head_dim),
/// as one sequence sees them through its block table: its token `j` is in
/// slot `blocks[j / BLOCK_SIZE] * BLOCK_SIZE + j % BLOCK_SIZE`.
#[derive(Debug, Clone, Copy)]
pub struct KvView<'a> {
    pub data: &'a [f32],
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
    attend_on(shape, q, seqs, out, simd_ok(shape.head_dim))
}

/// `attend`, on the SIMD path or the scalar one.
fn attend_on(shape: &AttnShape, q: &[f32], seqs: &[SeqAttn], out: &mut [f32], simd: bool) {
    let AttnShape { heads, kv_heads, head_dim: dim, .. } = *shape;
    assert!(kv_heads > 0 && heads % kv_heads == 0);
    let row = heads * dim;
    for s in seqs {
        assert!(q.len() >= (s.start + s.len) * row && out.len() >= (s.start + s.len) * row);
        for view in [s.k, s.v] {
            let blocks = (s.past + s.len).div_ceil(BLOCK_SIZE);
            assert!(view.blocks.len() >= blocks, "block table shorter than the sequence");
            let top = view.blocks[..blocks].iter().max().map_or(0, |&b| b as usize + 1);
            assert!(view.data.len() >= top * BLOCK_SIZE * kv_heads * dim, "block outside the pool");
        }
    }
    // Tasks: (sequence, KV head, query tile), flattened.
    let mut tasks: Vec<(usize, usize, usize)> = Vec::new();
    let mut work = 0;
    for (i, s) in seqs.iter().enumerate() {
        for g in 0..kv_heads {
            for tile in 0..s.len.div_ceil(QUERY_TILE) {
                tasks.push((i, g, tile));
            }
        }
        work += heads * s.len * (s.past + s.len);
    }
    let out_ptr = OutPtr(out.as_mut_ptr());
    let task = |&(i, g, tile): &(usize, usize, usize)| {
        let s = &seqs[i];
        let first = tile * QUERY_TILE;
        let tokens = QUERY_TILE.min(s.len - first);
        SCRATCH.with(|sc| {
            // SAFETY: tasks write disjoint (token, head) rows of `out`.
            unsafe { head_tile(shape, q, s, first, tokens, g, out_ptr, &mut sc.borrow_mut(), simd) }
        });
    };
    if work < PARALLEL_MIN_SCORES || tasks.len() == 1 {
        tasks.iter().for_each(task);
    } else {
        tasks.par_iter().for_each(task);
    }
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

/// Element offset of token `j`'s vector for KV head offset `g_off` (in elements).
fn slot(view: &KvView, j: usize, row: usize, g_off: usize) -> usize {
    (view.blocks[j / BLOCK_SIZE] as usize * BLOCK_SIZE + j % BLOCK_SIZE) * row + g_off
}

/// Tokens `first..first + tokens` of sequence `s`'s new ones, for the query
/// heads of KV head `g`, flash-attention style: the keys go by in blocks,
/// and each block is used by every row of the tile (query token × grouped
/// head) while it sits in L1, each row keeping a running maximum, sum and
/// output (online softmax). The scratch is (rows, head_dim) whatever the
/// prompt's length, and the cache is read once per tile, not once per row.
///
/// # Safety
/// `out` points at a (tokens, heads * head_dim) buffer whose rows for these
/// tokens and heads no other thread writes meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn head_tile(
    shape: &AttnShape,
    q: &[f32],
    s: &SeqAttn,
    first: usize,
    tokens: usize,
    g: usize,
    out: OutPtr,
    scratch: &mut Vec<f32>,
    simd: bool,
) {
    let dim = shape.head_dim;
    let group = shape.heads / shape.kv_heads;
    let row = shape.kv_heads * dim;
    let g_off = g * dim;
    let rows = tokens * group;
    if scratch.len() < rows * (dim + 2) + BLOCK_SIZE {
        scratch.resize(rows * (dim + 2) + BLOCK_SIZE, 0.0);
    }
    let (acc, rest) = scratch.split_at_mut(rows * dim);
    let (maxes, rest) = rest.split_at_mut(rows);
    let (sums, p) = rest.split_at_mut(rows);
    maxes[..rows].fill(f32::NEG_INFINITY);
    // Keys any row of the tile sees: from the first token's window start to the last token.
    let (lo_all, _) = visible(s.past + first, shape.window);
    let hi_all = s.past + first + tokens;
    let mut j0 = lo_all;
    while j0 < hi_all {
        // One block's run of keys, contiguous in the pool for both K and V.
        let j1 = hi_all.min((j0 / BLOCK_SIZE + 1) * BLOCK_SIZE);
        let (k_at, v_at) = (slot(&s.k, j0, row, g_off), slot(&s.v, j0, row, g_off));
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
                scores_row(qrow, &s.k.data[k_at + (a - j0) * row..], row, dim, shape.scale, sc, simd);
                if let Some(cap) = shape.softcap {
                    sc.iter_mut().for_each(|x| *x = cap * (*x / cap).tanh());
                }
                let o = &mut acc[x * dim..(x + 1) * dim];
                online_update(sc, &s.v.data[v_at + (a - j0) * row..], row, dim, o, &mut maxes[x], &mut sums[x], simd);
            }
        }
        j0 = j1;
    }
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

/// Folds one run of keys into a row's running softmax: `scores` (consumed)
/// against `values` (value j's `dim` floats at `j * stride`). The output and
/// sum so far were relative to the old maximum; a larger one rescales them.
#[allow(clippy::too_many_arguments)]
fn online_update(scores: &mut [f32], values: &[f32], stride: usize, dim: usize, o: &mut [f32], max: &mut f32, sum: &mut f32, simd: bool) {
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
    weighted_values(scores, values, stride, dim, o, !fresh, simd);
}

fn simd_ok(dim: usize) -> bool {
    dim.is_multiple_of(8) && super::select::avx2()
}

/// `scores[j]` = scale · q · key j (`keys`: key j's `dim` floats at `j * stride`).
fn scores_row(q: &[f32], keys: &[f32], stride: usize, dim: usize, scale: f32, scores: &mut [f32], simd: bool) {
    if scores.is_empty() {
        return;
    }
    assert!(stride >= dim && keys.len() >= (scores.len() - 1) * stride + dim);
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: AVX2+FMA detected, dim a multiple of 8 (`simd_ok`), keys long enough.
        unsafe { avx2::scores_row(q, keys, stride, dim, scale, scores) };
        return;
    }
    let _ = simd;
    for (j, s) in scores.iter_mut().enumerate() {
        *s = scale * q.iter().zip(&keys[j * stride..j * stride + dim]).map(|(a, b)| a * b).sum::<f32>();
    }
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

/// `out` (+)= Σ_j p[j] · value j (`values`: value j's `dim` floats at
/// `j * stride`); `add` keeps what `out` holds, else it is overwritten.
#[allow(clippy::too_many_arguments)]
fn weighted_values(p: &[f32], values: &[f32], stride: usize, dim: usize, out: &mut [f32], add: bool, simd: bool) {
    assert!(!p.is_empty() && stride >= dim && values.len() >= (p.len() - 1) * stride + dim && out.len() == dim);
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: AVX2+FMA detected, dim a multiple of 8, values long enough.
        unsafe { avx2::weighted_values(p, values, stride, dim, out, add) };
        return;
    }
    let _ = simd;
    if !add {
        out.fill(0.0);
    }
    for (j, &pj) in p.iter().enumerate() {
        for (o, x) in out.iter_mut().zip(&values[j * stride..j * stride + dim]) {
            *o += pj * x;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// Sum of the 8 lanes of each of 8 vectors, as one vector.
    #[inline(always)]
    unsafe fn hsum8(a: [__m256; 8]) -> __m256 {
        let t0 = _mm256_hadd_ps(a[0], a[1]);
        let t1 = _mm256_hadd_ps(a[2], a[3]);
        let t2 = _mm256_hadd_ps(a[4], a[5]);
        let t3 = _mm256_hadd_ps(a[6], a[7]);
        let u0 = _mm256_hadd_ps(t0, t1);
        let u1 = _mm256_hadd_ps(t2, t3);
        _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31))
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn scores_row(q: &[f32], keys: &[f32], stride: usize, dim: usize, scale: f32, scores: &mut [f32]) {
        let n = scores.len();
        let base = keys.as_ptr();
        let qp = q.as_ptr();
        let sc = _mm256_set1_ps(scale);
        let mut j = 0;
        // Eight keys at a time: eight dot products reduced into one vector.
        while j + 8 <= n {
            let mut acc = [_mm256_setzero_ps(); 8];
            for c in (0..dim).step_by(8) {
                let qc = _mm256_loadu_ps(qp.add(c));
                for (kk, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(qc, _mm256_loadu_ps(base.add((j + kk) * stride + c)), *a);
                }
            }
            _mm256_storeu_ps(scores.as_mut_ptr().add(j), _mm256_mul_ps(hsum8(acc), sc));
            j += 8;
        }
        for (jj, s) in scores.iter_mut().enumerate().skip(j) {
            let mut a = _mm256_setzero_ps();
            for c in (0..dim).step_by(8) {
                a = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(c)), _mm256_loadu_ps(base.add(jj * stride + c)), a);
            }
            let h = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
            let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
            *s = _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h))) * scale;
        }
    }

    /// e^x for 8 lanes: 2^n · e^r with r = x - n·ln2 in [-ln2/2, ln2/2] and a
    /// degree-6 polynomial (Cephes' expf coefficients, within 2 ulp of expf);
    /// x below -87 gives 0.
    #[inline(always)]
    unsafe fn exp8(x: __m256) -> __m256 {
        let x = _mm256_max_ps(x, _mm256_set1_ps(-87.0));
        let n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm256_set1_ps(1.987_569_1e-4);
        for c in [1.398_2e-3f32, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let r2 = _mm256_mul_ps(r, r);
        let e = _mm256_add_ps(_mm256_fmadd_ps(p, r2, r), _mm256_set1_ps(1.0));
        let pow2 = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
        _mm256_mul_ps(e, _mm256_castsi256_ps(pow2))
    }

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

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn weighted_values(p: &[f32], values: &[f32], stride: usize, dim: usize, out: &mut [f32], add: bool) {
        let base = values.as_ptr();
        // Up to 64 output dims in registers at a time.
        let mut c0 = 0;
        while c0 < dim {
            let width = (dim - c0).min(64) / 8;
            let mut acc = [_mm256_setzero_ps(); 8];
            if add {
                for (c, a) in acc.iter_mut().enumerate().take(width) {
                    *a = _mm256_loadu_ps(out.as_ptr().add(c0 + 8 * c));
                }
            }
            for (j, &pj) in p.iter().enumerate() {
                let w = _mm256_set1_ps(pj);
                let row = base.add(j * stride + c0);
                for (c, a) in acc.iter_mut().enumerate().take(width) {
                    *a = _mm256_fmadd_ps(w, _mm256_loadu_ps(row.add(8 * c)), *a);
                }
            }
            for (c, a) in acc.iter().enumerate().take(width) {
                _mm256_storeu_ps(out.as_mut_ptr().add(c0 + 8 * c), *a);
            }
            c0 += 8 * width;
        }
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
        ] {
            let shape = AttnShape { heads, kv_heads, head_dim: dim, scale: 1.0 / (dim as f32).sqrt(), softcap, window };
            let (n_a, n_b) = ((past + t as usize).div_ceil(BLOCK_SIZE), 20usize.div_ceil(BLOCK_SIZE));
            let total = n_a + n_b + 3;
            // Blocks in a scrambled order, interleaved between the two sequences.
            let order: Vec<u32> = (0..total as u32).map(|i| (i * 7 + 3) % total as u32).collect();
            let (blocks_a, blocks_b) = (order[..n_a].to_vec(), order[n_a..n_a + n_b].to_vec());
            let row = kv_heads * dim;
            let k = data(total * BLOCK_SIZE * row, 2);
            let v = data(total * BLOCK_SIZE * row, 3);
            let at = |blocks: &[u32], g: usize, j: usize| (blocks[j / BLOCK_SIZE] as usize * BLOCK_SIZE + j % BLOCK_SIZE) * row + g * dim;
            // Sequence b decodes its 20th token; sequence a is the case, after it.
            let q = data((1 + t) * heads * dim, 1);
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
                    SeqAttn { start: 0, len: 1, past: 19, k: view(&k, &blocks_b), v: view(&v, &blocks_b) },
                    SeqAttn { start: 1, len: t, past, k: view(&k, &blocks_a), v: view(&v, &blocks_a) },
                ];
                attend_on(&shape, &q, &seqs, &mut got, simd && simd_ok(dim));
                let want: Vec<f32> = want_b.iter().chain(&want_a).copied().collect();
                let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                assert!(err < 2e-5, "{heads}/{kv_heads} heads, dim {dim}, t {t}, past {past}, simd {simd}: {err}");
            }
        }
    }
}
