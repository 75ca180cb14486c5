//! virtio-net frame handling on arbitrary queue contents and guest memory,
//! over one end of a datagram socket pair standing in for the tap (it
//! moves whole frames, as a tap does). The first byte picks the queue
//! (receive, with frames of several sizes waiting, or transmit) and whether
//! MRG_RXBUF is negotiated; the rest is guest memory.
#![no_main]

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;

use devices::net::{Net, NetParams, RX_QUEUE, TX_QUEUE, VIRTIO_NET_F_MRG_RXBUF};
use devices::virtio::VirtioDevice;
use libfuzzer_sys::fuzz_target;

#[path = "common/mod.rs"]
mod common;

/// Frame sizes waiting on the receive side (with their vnet header).
const FRAMES: [usize; 4] = [60, 1526, 9026, 65_000];

fuzz_target!(|data: &[u8]| {
    let (shape, mem) = data.split_first().unwrap_or((&0, &[]));
    let (ours, theirs) = UnixDatagram::pair().expect("socket pair");
    ours.set_nonblocking(true).expect("non-blocking");
    theirs.set_nonblocking(true).expect("non-blocking");
    let mut net = Net::new(
        OwnedFd::from(ours),
        NetParams {
            mac: [2, 0, 0, 0, 0, 1],
        },
    );
    let mut features = net.features();
    if shape & 2 != 0 {
        features &= !(1 << VIRTIO_NET_F_MRG_RXBUF);
    }
    if shape & 1 == 0 {
        let count = usize::from(shape >> 2 & 3) + 1;
        for (i, len) in FRAMES.iter().take(count).enumerate() {
            let fill = u8::try_from(i).unwrap_or(0);
            let _ = theirs.send(&vec![fill; *len]);
        }
        common::serve_with(&mut net, mem, RX_QUEUE, features);
    } else {
        common::serve_with(&mut net, mem, TX_QUEUE, features);
    }
});
