// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The built-in guest (resources/guest), embedded: build.rs builds it and
//! names the ELF in `VMM_GUEST_IMAGE`.

/// The built-in guest's ELF image (a PVH kernel).
pub static IMAGE: &[u8] = include_bytes!(env!("VMM_GUEST_IMAGE"));

#[cfg(test)]
mod tests {
    #[test]
    fn the_embedded_image_is_an_elf_with_a_pvh_note() {
        assert_eq!(&super::IMAGE[..4], b"\x7fELF");
        // The note's owner "Xen" and type 18 appear in the image.
        let note = [4u8, 0, 0, 0, 8, 0, 0, 0, 18, 0, 0, 0, b'X', b'e', b'n', 0];
        assert!(super::IMAGE.windows(note.len()).any(|w| w == note));
    }
}
