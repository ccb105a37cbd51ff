//! The process's allocator: mimalloc, asked the way its fast paths expect.
//!
//! The `mimalloc` crate hands every allocation to `mi_malloc_aligned`, whatever its
//! alignment. mimalloc 3 serves that from its small free lists only up to 1 KiB; above
//! that it over-allocates by the alignment and marks the page as holding interior
//! pointers, which every later free of that page pays for. A request allocates a few
//! such blocks (a header map's table, the boxed pipeline, the bodies), and under
//! callgrind they came to a tenth of the gateway's instructions spent in the allocator.
//!
//! Every block `mi_malloc` returns is a whole number of machine words at a word-aligned
//! address, so a layout aligned to a word or less (nearly all of them) takes the plain
//! calls, and only larger alignments take the aligned ones. Not 16, as the standard
//! library's `System` assumes of malloc: mimalloc hands out 8-byte blocks for the
//! smallest sizes (the test below caught a 1-byte layout aligned to 16 at 8).
//!
//! Built with `no_thp`: mimalloc asks for transparent huge pages, and each 2 MiB page a
//! few small allocations touch is resident whole (an idle daemon held 130 MB, not 23).

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// What every block from `mi_malloc` is aligned to: a machine word.
const PLAIN_ALIGN: usize = std::mem::size_of::<usize>();

/// mimalloc as the global allocator (`#[global_allocator]` in `main.rs`).
pub struct MiMalloc;

// SAFETY: each method hands mimalloc a layout's size and, where the plain calls would
// not meet it, its alignment; blocks are freed with `mi_free`, which takes any block
// mimalloc returned, aligned or not.
unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: mimalloc's calls take any size and a power-of-two alignment.
        unsafe {
            if layout.align() <= PLAIN_ALIGN {
                mi::mi_malloc(layout.size()).cast()
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        unsafe {
            if layout.align() <= PLAIN_ALIGN {
                mi::mi_zalloc(layout.size()).cast()
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: the caller gives back a block this allocator returned.
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller gives back a block this allocator returned with `layout`;
        // the new block keeps its alignment by the same rule as `alloc`.
        unsafe {
            if layout.align() <= PLAIN_ALIGN {
                mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every size from a byte to past mimalloc's large blocks, at every alignment from 1
    /// to 4 KiB: the block is aligned, holds what was written to all of it, keeps it
    /// through a realloc that grows it, and is zeroed when asked.
    #[test]
    fn blocks_are_aligned_and_hold_what_is_written_across_sizes_and_alignments() {
        let sizes = [
            1,
            7,
            8,
            15,
            16,
            24,
            40,
            100,
            1000,
            1024,
            1025,
            1500,
            4096,
            5000,
            70_000,
            300_000,
            5 << 20,
        ];
        for align in (0..=12).map(|shift| 1usize << shift) {
            for &size in &sizes {
                let Ok(layout) = Layout::from_size_align(size, align) else {
                    panic!("no layout for {size} bytes at {align}");
                };
                // SAFETY: the layouts are non-zero in size; every block is written within
                // its size and freed once, with the layout it was made with.
                unsafe {
                    let block = MiMalloc.alloc(layout);
                    assert!(!block.is_null(), "{size} bytes at {align}");
                    assert_eq!(block as usize % align, 0, "{size} bytes at {align}");
                    block.write_bytes(0xa5, size);

                    let grown = MiMalloc.realloc(block, layout, size * 3);
                    assert!(!grown.is_null(), "{size} bytes at {align} grown");
                    assert_eq!(grown as usize % align, 0, "{size} bytes at {align} grown");
                    let kept = std::slice::from_raw_parts(grown, size);
                    assert!(kept.iter().all(|&b| b == 0xa5), "{size} at {align} grown");
                    let Ok(grown_layout) = Layout::from_size_align(size * 3, align) else {
                        panic!("no layout for {} bytes at {align}", size * 3);
                    };
                    MiMalloc.dealloc(grown, grown_layout);

                    let zeroed = MiMalloc.alloc_zeroed(layout);
                    assert_eq!(zeroed as usize % align, 0, "{size} zeroed at {align}");
                    let all = std::slice::from_raw_parts(zeroed, size);
                    assert!(all.iter().all(|&b| b == 0), "{size} zeroed at {align}");
                    MiMalloc.dealloc(zeroed, layout);
                }
            }
        }
    }
}
