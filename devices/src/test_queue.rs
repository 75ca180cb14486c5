//! Test helpers shared by the device models' unit tests: descriptor chains
//! for virtio-queue's MockSplitQueue, and what the device put in the used
//! ring.

// Test code: a panic is a failure report.
#![allow(clippy::unwrap_used)]

use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;

use crate::virtio::{BackendEvent, GuestMemory, VirtioDevice};

/// VIRTQ_DESC_F_NEXT.
pub const NEXT: u16 = 1;
/// VIRTQ_DESC_F_WRITE.
pub const WRITE: u16 = 2;

/// A descriptor as (address, length, device-writable).
pub type D = (u64, u32, bool);

/// The descriptors of `chains`, laid out from table index `first` on, each
/// chain linked through NEXT.
pub fn raw_chains(chains: &[Vec<D>], first: u16) -> Vec<RawDescriptor> {
    let mut raw = Vec::new();
    for c in chains {
        for (i, &(addr, len, w)) in c.iter().enumerate() {
            let idx = first + u16::try_from(raw.len()).unwrap();
            let mut flags = if w { WRITE } else { 0 };
            if i + 1 < c.len() {
                flags |= NEXT;
            }
            raw.push(RawDescriptor::from(SplitDescriptor::new(
                addr,
                len,
                flags,
                idx + 1,
            )));
        }
    }
    raw
}

/// The used entries as (id, len).
pub fn used(vq: &MockSplitQueue<'_, GuestMemory>) -> Vec<(u32, u32)> {
    let n = vq.used().idx().load();
    (0..n)
        .map(|i| {
            let e = vq.used().ring().ref_at(usize::from(i)).unwrap().load();
            (e.id(), e.len())
        })
        .collect()
}

/// The backend events `device` waits on now.
pub fn events(device: &dyn VirtioDevice) -> Vec<BackendEvent> {
    let mut out = Vec::new();
    device.backend_events(&mut out);
    out
}
