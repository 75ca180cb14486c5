//! virtio-blk request handling on arbitrary queue contents and guest memory,
//! over a 64 KiB image in a memfd (reads, writes, flush, discard, write
//! zeroes and GET_ID all reach it).
#![no_main]

use std::fs::File;
use std::os::fd::FromRawFd;

use devices::block::{Block, DiskParams};
use libfuzzer_sys::fuzz_target;

#[path = "common/mod.rs"]
mod common;

const DISK: u64 = 0x1_0000;

fn image() -> File {
    // SAFETY: memfd_create with a valid name; the fd is owned at once.
    let fd = unsafe { libc::memfd_create(c"skvm-fuzz-disk".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create");
    // SAFETY: fd is a new descriptor nobody else owns.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(DISK).expect("size the image");
    f
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks the disk's shape; the rest is guest memory.
    let (shape, mem) = data.split_first().unwrap_or((&0, &[]));
    let params = DiskParams {
        sectors: DISK / 512,
        read_only: shape & 1 != 0,
        direct: false,
        serial: b"fuzz".to_vec(),
    };
    let mut blk = Block::new(image(), params);
    common::serve(&mut blk, mem);
});
