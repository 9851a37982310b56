//! A global allocator that keeps the large blocks freed during a model step
//! for the rest of that step, and gives them all back when it ends.
//!
//! Why: each layer of a prompt's forward pass allocates its activations
//! (a 512-token chunk of Qwen2.5-1.5B: an 18 MB MLP intermediate, several
//! of 3 MB) and frees them before the next layer allocates the same sizes
//! again. glibc serves such blocks from fresh memory maps, or trims its heap
//! once they are freed, so every layer faulted in and zeroed its
//! activations' pages anew: about 7% of a 2,048-token prompt's time in
//! kernel page faults. llama.cpp plans one compute buffer per graph instead.
//! Here a block freed mid-step waits for the next request of about its size;
//! between steps nothing is kept, so memory still follows use.
//!
//! The binding declares it (`#[global_allocator]`); the engine brackets each
//! step with `during_step`. Without either, blocks go straight to `System`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Blocks at least this large are kept (smaller ones are glibc's cheap case).
const MIN_BLOCK: usize = 1 << 20;
/// Larger blocks (weights dropped while a step runs) go back at once.
const MAX_BLOCK: usize = 256 << 20;
/// At most this many bytes are kept at once, in at most `SLOTS` blocks.
const MAX_KEPT: usize = 512 << 20;
const SLOTS: usize = 64;

/// A kept block: address, size as last allocated, alignment.
#[derive(Clone, Copy)]
struct Block {
    at: usize,
    size: usize,
    align: usize,
}

struct Kept {
    blocks: [Block; SLOTS],
    n: usize,
    bytes: usize,
}

// A std Mutex never allocates, so the allocator can take it.
static KEPT: Mutex<Kept> = Mutex::new(Kept { blocks: [Block { at: 0, size: 0, align: 0 }; SLOTS], n: 0, bytes: 0 });
/// Steps running (each engine brackets its own).
static STEPS: AtomicUsize = AtomicUsize::new(0);

fn kept() -> std::sync::MutexGuard<'static, Kept> {
    // Nothing panics while holding the lock; a poisoned one is still sound.
    KEPT.lock().unwrap_or_else(|e| e.into_inner())
}

/// `System`, keeping large blocks freed during a step for that step.
pub struct StepAllocator;

/// A kept block that fits `layout` without wasting more than a quarter of
/// it, the smallest such, taken out of the kept set.
fn take(layout: Layout) -> Option<*mut u8> {
    let need = layout.size();
    let mut k = kept();
    let best = (0..k.n)
        .filter(|&i| {
            let b = k.blocks[i];
            b.size >= need && b.size - need <= b.size / 4 && b.at % layout.align() == 0
        })
        .min_by_key(|&i| k.blocks[i].size)?;
    let b = k.blocks[best];
    let last = k.n - 1;
    k.blocks[best] = k.blocks[last];
    k.n = last;
    k.bytes -= b.size;
    Some(b.at as *mut u8)
}

/// Keeps the block if a step runs and there is room; false: free it.
fn keep(ptr: *mut u8, layout: Layout) -> bool {
    let size = layout.size();
    if !(MIN_BLOCK..=MAX_BLOCK).contains(&size) || STEPS.load(Ordering::Acquire) == 0 {
        return false;
    }
    let mut k = kept();
    if k.n == SLOTS || k.bytes + size > MAX_KEPT {
        return false;
    }
    let n = k.n;
    k.blocks[n] = Block { at: ptr as usize, size, align: layout.align() };
    k.n += 1;
    k.bytes += size;
    true
}

/// Frees every kept block.
fn release() {
    let (blocks, n) = {
        let mut k = kept();
        let n = k.n;
        k.n = 0;
        k.bytes = 0;
        (k.blocks, n)
    };
    for b in &blocks[..n] {
        // SAFETY: each kept block came from `System` with this size (or a
        // smaller use of it; glibc frees by address) and alignment, and was
        // handed to no one since it was kept.
        unsafe { System.dealloc(b.at as *mut u8, Layout::from_size_align_unchecked(b.size, b.align)) };
    }
}

// SAFETY: every block comes from `System`; a kept block is handed out at
// most once, only for a layout it satisfies (size, alignment), and returns
// to `System` by address, as glibc's free needs.
unsafe impl GlobalAlloc for StepAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() >= MIN_BLOCK {
            if let Some(p) = take(layout) {
                return p;
            }
        }
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() >= MIN_BLOCK {
            if let Some(p) = take(layout) {
                std::ptr::write_bytes(p, 0, layout.size());
                return p;
            }
        }
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if !keep(ptr, layout) {
            System.dealloc(ptr, layout)
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Any live block is a `System` block, whichever path allocated it.
        System.realloc(ptr, layout, new_size)
    }
}

/// Runs one model step with large freed blocks kept for its own reuse, and
/// frees what is still kept when the last running step ends (also on panic).
pub fn during_step<R>(f: impl FnOnce() -> R) -> R {
    struct Step;
    impl Drop for Step {
        fn drop(&mut self) {
            if STEPS.fetch_sub(1, Ordering::AcqRel) == 1 {
                release();
            }
        }
    }
    STEPS.fetch_add(1, Ordering::AcqRel);
    let _step = Step;
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_freed_in_a_step_are_reused_in_it_and_freed_after() {
        let a = StepAllocator;
        let layout = Layout::from_size_align(3 << 20, 16).unwrap();
        let smaller = Layout::from_size_align((3 << 20) - 4096, 16).unwrap();
        let much_smaller = Layout::from_size_align(1 << 20, 16).unwrap();
        // SAFETY: each block is freed once, with the layout it was asked with.
        unsafe {
            // Outside a step nothing is kept.
            let p = a.alloc(layout);
            a.dealloc(p, layout);
            assert_eq!(kept().n, 0);
            during_step(|| {
                let p = a.alloc(layout);
                p.write(7);
                a.dealloc(p, layout);
                // A request a little smaller gets the same block, zeroed when asked.
                let q = a.alloc_zeroed(smaller);
                assert_eq!(q, p);
                assert_eq!(*q, 0);
                a.dealloc(q, smaller);
                // One far smaller does not take it.
                let r = a.alloc(much_smaller);
                assert_ne!(r, p);
                a.dealloc(r, much_smaller);
                assert!(kept().n >= 1);
            });
            assert_eq!(kept().n, 0);
            assert_eq!(kept().bytes, 0);
        }
    }
}
