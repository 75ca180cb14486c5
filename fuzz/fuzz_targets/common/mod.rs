//! Shared by the queue targets: guest memory whose first bytes are the fuzz
//! input (descriptor table, available ring and buffers alike), and a split
//! queue laid out at fixed addresses in it, as a hostile driver could set it
//! up.

use devices::virtio::{GuestMemory, VirtioDevice};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

/// Guest RAM size: small, so that fuzzed addresses often land inside it.
pub const MEM_SIZE: usize = 0x1_0000;
/// Queue size (the device's maximum is at least this).
pub const QUEUE_SIZE: u16 = 16;
const DESC: u64 = 0x0;
const AVAIL: u64 = 0x100;
const USED: u64 = 0x200;
/// How many times a device may ask to be run again (Processed::pending).
const MAX_ROUNDS: usize = 8;

/// Memory holding `data` from address 0, and the queue over it.
pub fn guest(data: &[u8]) -> (GuestMemory, Queue) {
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("guest memory");
    let n = data.len().min(MEM_SIZE);
    mem.write_slice(&data[..n], GuestAddress(0)).expect("fits");
    let mut q = Queue::new(QUEUE_SIZE).expect("queue");
    q.set_size(QUEUE_SIZE);
    q.set_desc_table_address(Some(DESC as u32), Some(0));
    q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
    q.set_used_ring_address(Some(USED as u32), Some(0));
    q.set_ready(true);
    (mem, q)
}

/// Activates `dev` with every feature it offers and lets it serve queue 0
/// until it has nothing pending. Queue errors are allowed (the device then
/// needs a reset); panics are what the fuzzer looks for.
#[allow(dead_code)] // not every target uses both
pub fn serve(dev: &mut dyn VirtioDevice, data: &[u8]) {
    let features = dev.features();
    serve_with(dev, data, 0, features);
}

/// The same with queue `index` (laid out as queue 0 is) and `features`.
pub fn serve_with(dev: &mut dyn VirtioDevice, data: &[u8], index: usize, features: u64) {
    dev.activate(features).expect("offered features are accepted");
    let (mem, mut q) = guest(data);
    for _ in 0..MAX_ROUNDS {
        match dev.process_queue(index, &mut q, &mem) {
            Ok(p) if p.pending => continue,
            _ => break,
        }
    }
}
