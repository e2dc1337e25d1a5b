// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The dirty bitmap of guest memory: one bit per 4K page, a vm-memory
//! [`Bitmap`] so that every write through vm-memory marks it as well.
//!
//! vm-memory's own `AtomicBitmap` sets one bit per page with its own atomic
//! RMW, which makes releasing a write pin of a 1G leaf cost 262,144 atomics.
//! This one marks a range a 64-bit word at a time (and skips words that are
//! already all set), so marking costs one RMW per 64 pages at most.

use std::sync::atomic::{AtomicU64, Ordering};

use vm_memory::bitmap::{Bitmap, NewBitmap, RefSlice, WithBitmapSlice};

const PAGE: usize = 4096;

/// A dirty bitmap with one bit per 4K page.
#[derive(Debug, Default)]
pub struct DirtyBitmap {
    words: Box<[AtomicU64]>,
    pages: usize,
}

impl DirtyBitmap {
    /// A clean bitmap for `bytes` of memory.
    pub fn new(bytes: usize) -> Self {
        let pages = bytes.div_ceil(PAGE);
        DirtyBitmap {
            words: (0..pages.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
            pages,
        }
    }

    /// Mark `[offset, offset + len)` dirty, for a caller that has just
    /// issued a sequentially consistent fence after the writes it records
    /// (a write pin's release does one fence for all its extents).
    ///
    /// Why the fence: a word whose bits already read as set is skipped
    /// without an RMW. A migration thread that clears the word (`take`, an
    /// RMW) and then copies the page must see the writes whenever the skip
    /// saw the old bits: the fence puts the writes before the load in the
    /// global order, and the load saw the word before the clearing RMW, so
    /// the writes are visible to the copy that follows it.
    pub fn mark_after_fence(&self, offset: usize, len: usize) {
        if len == 0 {
            return;
        }
        self.set_pages(offset / PAGE, offset.saturating_add(len - 1) / PAGE);
    }

    /// Mark pages `first..=last` (clipped to the bitmap); see
    /// [`DirtyBitmap::mark_after_fence`] for the fence the caller owes.
    fn set_pages(&self, first: usize, last: usize) {
        if self.pages == 0 || first >= self.pages {
            return;
        }
        let last = last.min(self.pages - 1);
        let (fw, lw) = (first / 64, last / 64);
        for w in fw..=lw {
            let lo = if w == fw { first % 64 } else { 0 };
            let hi = if w == lw { last % 64 } else { 63 };
            let mask = (u64::MAX >> (63 - hi)) & (u64::MAX << lo);
            let word = &self.words[w];
            // Release: whatever was written to the pages happens before a
            // reader that sees the bit (and then copies the page).
            if word.load(Ordering::Relaxed) & mask != mask {
                word.fetch_or(mask, Ordering::Release);
            }
        }
    }

    /// Whether the page at byte `offset` is dirty.
    pub fn is_dirty(&self, offset: usize) -> bool {
        let page = offset / PAGE;
        page < self.pages && self.words[page / 64].load(Ordering::Acquire) & (1 << (page % 64)) != 0
    }

    /// Clear every bit.
    pub fn reset(&self) {
        for w in self.words.iter() {
            w.store(0, Ordering::Release);
        }
    }

    /// Take and clear the bitmap, 64 pages per word (page `64 * i + b` is
    /// bit `b` of word `i`).
    pub fn take(&self) -> Vec<u64> {
        self.words
            .iter()
            .map(|w| w.swap(0, Ordering::AcqRel))
            .collect()
    }

    /// Number of dirty pages.
    pub fn count(&self) -> u64 {
        self.words
            .iter()
            .map(|w| u64::from(w.load(Ordering::Acquire).count_ones()))
            .sum()
    }
}

impl<'a> WithBitmapSlice<'a> for DirtyBitmap {
    type S = RefSlice<'a, Self>;
}

impl Bitmap for DirtyBitmap {
    /// vm-memory calls this after each write it makes; the fence makes the
    /// skip of already-set words safe (see [`DirtyBitmap::mark_after_fence`]).
    fn mark_dirty(&self, offset: usize, len: usize) {
        std::sync::atomic::fence(Ordering::SeqCst);
        self.mark_after_fence(offset, len);
    }

    fn dirty_at(&self, offset: usize) -> bool {
        self.is_dirty(offset)
    }

    fn slice_at(&self, offset: usize) -> <Self as WithBitmapSlice<'_>>::S {
        RefSlice::new(self, offset)
    }
}

impl NewBitmap for DirtyBitmap {
    fn with_len(len: usize) -> Self {
        DirtyBitmap::new(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_set_exactly_their_pages() {
        let b = DirtyBitmap::new(300 * PAGE);
        b.mark_dirty(PAGE * 3 + 5, 1);
        b.mark_dirty(PAGE * 60, PAGE * 70 + 1);
        b.mark_dirty(PAGE * 299, PAGE * 10);
        let want: Vec<usize> = [3].into_iter().chain(60..=130).chain([299]).collect();
        let got: Vec<usize> = (0..300).filter(|&p| b.dirty_at(p * PAGE)).collect();
        assert_eq!(got, want);
        assert_eq!(b.count(), want.len() as u64);
        let words = b.take();
        assert_eq!(words[0], 1 << 3 | u64::MAX << 60);
        assert_eq!(b.count(), 0);
    }
}
