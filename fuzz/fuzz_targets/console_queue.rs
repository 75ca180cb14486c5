//! virtio-console on arbitrary queue contents and guest memory, over one
//! end of a stream socket pair standing in for a pty master. The first
//! byte picks the queue (receive, with input of several sizes waiting, or
//! transmit); the rest is guest memory.
#![no_main]

use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;

use devices::console::{Console, ConsoleBackend, RX_QUEUE, TX_QUEUE};
use devices::virtio::VirtioDevice;
use libfuzzer_sys::fuzz_target;

#[path = "common/mod.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let (shape, mem) = data.split_first().unwrap_or((&0, &[]));
    let (ours, mut theirs) = UnixStream::pair().expect("socket pair");
    ours.set_nonblocking(true).expect("non-blocking");
    theirs.set_nonblocking(true).expect("non-blocking");
    let (slave, _) = UnixStream::pair().expect("socket pair");
    let mut console = Console::new(ConsoleBackend::Pty {
        master: OwnedFd::from(ours),
        slave: OwnedFd::from(slave),
    });
    let features = console.features();
    if shape & 1 == 0 {
        let len = [1usize, 100, 4096, 70_000][usize::from(shape >> 1 & 3)];
        let _ = theirs.write(&vec![b'x'; len]);
        common::serve_with(&mut console, mem, RX_QUEUE, features);
    } else {
        common::serve_with(&mut console, mem, TX_QUEUE, features);
    }
});
