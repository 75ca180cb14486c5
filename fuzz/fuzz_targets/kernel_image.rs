//! A hostile bzImage payload, as `skvm run --kernel` unpacks it
//! (`vmm::boot::unpack::decode`): decompression, the vmlinux's ELF headers,
//! its relocation table and the placement must refuse it or give a kernel
//! whose every segment lies inside the room it was given; never panic.
//! The first byte chooses how the rest is used: as the compressed payload
//! itself (the LZ4 decoder), or as a decompressed image that is stored in a
//! valid LZ4 frame, which random bytes would never make; the next bytes
//! choose the layout.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm::boot::lz4::stored_payload;
use vmm::boot::unpack::{decode, Layout};

fuzz_target!(|data: &[u8]| {
    let [mode, top, r0, r1, rest @ ..] = data else {
        return;
    };
    let payload = if mode & 1 == 0 {
        rest.to_vec()
    } else {
        stored_payload(rest)
    };
    // Up to 1 GiB of room, in 16 MiB steps, so that small hand-made
    // kernels at 16 MiB fit and move.
    let top = u64::from(*top % 64 + 1) << 24;
    let layout = Layout {
        init_size: if mode & 2 == 0 { 64 << 20 } else { 4096 },
        relocatable: mode & 4 == 0,
        align: if mode & 8 == 0 { 0 } else { 1 << (16 + (mode >> 5)) },
        top,
        random: (mode & 16 == 0).then(|| [u64::from(*r0) * 977, u64::from(*r1) * 131]),
    };
    if let Ok(image) = decode(&payload, &layout) {
        assert!(image.end() <= top, "ends at {:#x}, past {top:#x}", image.end());
        for (at, bytes) in image.segments() {
            let end = at + bytes.len() as u64;
            assert!(end <= image.end(), "segment {at:#x}+{} past the end", bytes.len());
        }
        assert!(image.entry() < image.end());
        if let Some(p) = image.placement {
            assert_eq!(p.phys % (2 << 20), 0);
            assert_eq!(p.virt % (2 << 20), 0);
        }
    }
});
