//! The plugins' memory allocator: free lists of small blocks in front of std's own
//! allocator (dlmalloc on `wasm32-wasip2`).
//!
//! Why: every hook call allocates and frees a dozen small blocks — relay copies each
//! string of the request into the plugin through the canonical ABI's `cabi_realloc`,
//! the hook builds its answer, and the post-return frees it all. dlmalloc spends
//! ~250 instructions per malloc/free pair on that (~3,400 of the ~26,000 a md5-sign
//! handshake costs, counted with callgrind); a free list pops and pushes in a few.
//!
//! Blocks of up to [`MAX_SMALL`] bytes (alignment up to 16) come in size classes of
//! 16 bytes; a freed block goes on its class's list and serves the next request of
//! that class. Lists are refilled from [`CHUNK`]-byte chunks taken from the backing
//! allocator, and small blocks are never given back to it: a plugin's memory stays at
//! its peak of small blocks (bounded by relay's memory cap like any other). Larger or
//! more aligned requests go straight to the backing allocator.
//!
//! A plugin instance is single-threaded (`wasm32-wasip2` without the atomics
//! feature), which is what makes the unsynchronised state sound; on targets with
//! threads the pool is not installed.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::UnsafeCell;
use std::ptr::{self, NonNull};

/// Largest block served from the free lists.
pub const MAX_SMALL: usize = 256;
/// Size-class granularity (and the blocks' alignment).
const GRAIN: usize = 16;
const CLASSES: usize = MAX_SMALL / GRAIN;
/// Bytes taken from the backing allocator per refill.
pub const CHUNK: usize = 16 << 10;

/// A freed block, linked through its first bytes.
struct Free {
    next: Option<NonNull<Free>>,
}

struct State {
    lists: [Option<NonNull<Free>>; CLASSES],
    /// The unused rest of the last chunk.
    bump: *mut u8,
    bump_end: *mut u8,
}

/// Small blocks from free lists over `A`.
pub struct Pool<A> {
    backing: A,
    state: UnsafeCell<State>,
}

// SAFETY: a `Pool` is only shared where there is one thread: it is installed as the
// global allocator on single-threaded wasm only, and the host tests use it from one
// thread (each test its own pool).
unsafe impl<A: Sync> Sync for Pool<A> {}

/// The size class of `layout`, if it is small.
fn class(layout: Layout) -> Option<usize> {
    if layout.size() <= MAX_SMALL && layout.align() <= GRAIN {
        Some(layout.size().max(1).div_ceil(GRAIN) - 1)
    } else {
        None
    }
}

impl<A> Pool<A> {
    /// A pool with empty lists over `backing`.
    pub const fn new(backing: A) -> Self {
        Pool {
            backing,
            state: UnsafeCell::new(State {
                lists: [None; CLASSES],
                bump: ptr::null_mut(),
                bump_end: ptr::null_mut(),
            }),
        }
    }
}

impl<A: GlobalAlloc> Pool<A> {
    /// A block of class `c`: from its list, else carved from the current chunk.
    ///
    /// # Safety
    /// Not reentrant (one thread, and the backing allocator does not call back).
    unsafe fn small(&self, c: usize) -> *mut u8 {
        let s = &mut *self.state.get();
        if let Some(block) = s.lists[c] {
            s.lists[c] = block.as_ref().next;
            return block.as_ptr().cast();
        }
        let size = (c + 1) * GRAIN;
        if (s.bump_end as usize) - (s.bump as usize) < size {
            // The rest of the old chunk (a multiple of GRAIN) stays unused.
            let chunk = self
                .backing
                .alloc(Layout::from_size_align_unchecked(CHUNK, GRAIN));
            if chunk.is_null() {
                return chunk;
            }
            s.bump = chunk;
            s.bump_end = chunk.add(CHUNK);
        }
        let block = s.bump;
        s.bump = block.add(size);
        block
    }
}

unsafe impl<A: GlobalAlloc> GlobalAlloc for Pool<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match class(layout) {
            Some(c) => self.small(c),
            None => self.backing.alloc(layout),
        }
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        match class(layout) {
            Some(c) => {
                let s = &mut *self.state.get();
                let block = p.cast::<Free>();
                block.write(Free { next: s.lists[c] });
                s.lists[c] = NonNull::new(block);
            }
            None => self.backing.dealloc(p, layout),
        }
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = Layout::from_size_align_unchecked(new_size, layout.align());
        match (class(layout), class(new)) {
            (Some(a), Some(b)) if a == b => p,
            (None, None) => self.backing.realloc(p, layout, new_size),
            _ => {
                let q = self.alloc(new);
                if !q.is_null() {
                    ptr::copy_nonoverlapping(p, q, layout.size().min(new_size));
                    self.dealloc(p, layout);
                }
                q
            }
        }
    }
}

#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
#[global_allocator]
static POOL: Pool<std::alloc::System> = Pool::new(std::alloc::System);

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::System;

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).expect("layout")
    }

    #[test]
    fn classes_cover_sizes_up_to_max_small() {
        assert_eq!(class(layout(0, 1)), Some(0));
        assert_eq!(class(layout(1, 1)), Some(0));
        assert_eq!(class(layout(16, 8)), Some(0));
        assert_eq!(class(layout(17, 1)), Some(1));
        assert_eq!(class(layout(MAX_SMALL, 16)), Some(CLASSES - 1));
        assert_eq!(class(layout(MAX_SMALL + 1, 1)), None);
        assert_eq!(class(layout(8, 32)), None);
    }

    #[test]
    fn blocks_are_distinct_aligned_reused_and_keep_their_bytes() {
        let pool = Pool::new(System);
        unsafe {
            // Many live blocks of every class, across several chunks: none overlaps.
            let mut live = Vec::new();
            for i in 0..4000usize {
                let l = layout(1 + i % MAX_SMALL, 1 << (i % 5));
                let p = pool.alloc(l);
                assert!(!p.is_null());
                assert_eq!(p as usize % l.align(), 0);
                ptr::write_bytes(p, (i % 251) as u8, l.size());
                live.push((p, l, (i % 251) as u8));
            }
            for &(p, l, byte) in &live {
                assert!(
                    (0..l.size()).all(|k| *p.add(k) == byte),
                    "block overwritten"
                );
            }
            // A freed block serves the next request of its class.
            let (p, l, _) = live.swap_remove(10);
            pool.dealloc(p, l);
            assert_eq!(pool.alloc(l), p);
            pool.dealloc(p, l);
            for (p, l, _) in live {
                pool.dealloc(p, l);
            }
            // Large and over-aligned requests go to the backing allocator and come back.
            let big = layout(MAX_SMALL * 4, 8);
            let b = pool.alloc(big);
            assert!(!b.is_null());
            pool.dealloc(b, big);
        }
    }

    #[test]
    fn realloc_keeps_contents_across_classes_and_sizes() {
        let pool = Pool::new(System);
        unsafe {
            let mut l = layout(3, 1);
            let mut p = pool.alloc(l);
            ptr::copy_nonoverlapping(b"abc".as_ptr(), p, 3);
            // Same class: same block. Then up into other classes, then past MAX_SMALL.
            for size in [10, 40, 200, 1000, 5000, 100, 2] {
                let q = pool.realloc(p, l, size);
                assert!(!q.is_null());
                if class(l) == class(layout(size, 1)) {
                    assert_eq!(q, p);
                }
                assert_eq!(std::slice::from_raw_parts(q, 2), b"ab");
                p = q;
                l = layout(size, 1);
            }
            pool.dealloc(p, l);
        }
    }
}
