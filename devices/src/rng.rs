//! virtio-rng, the entropy device (virtio 1.2, section 5.4): one request
//! queue of device-writable buffers that the device fills with random bytes
//! from the host's getrandom(2). No configuration space and no device
//! features.
//!
//! Each request is capped at [`MAX_REQUEST`] bytes and one call serves a
//! bounded number of requests, so a guest cannot make the device do
//! unbounded work per kick. A request with a device-readable buffer, or a
//! buffer outside guest memory, is completed with length 0.

use virtio_queue::{DescriptorChain, Queue};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory as _, Permissions};

use crate::virtio::{
    check_features, serve_queue, DeviceError, GuestMemory, Processed, VirtioDevice, DEVICE_ID_RNG,
    TRANSPORT_FEATURES,
};

/// Most bytes served for one request.
pub const MAX_REQUEST: usize = 64 * 1024;
/// Queue size offered to the driver.
pub const QUEUE_SIZE: u16 = 256;
/// Random bytes are produced this many at a time.
const CHUNK: usize = 4096;

/// What the device has done, for statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RngStats {
    /// Requests completed (including bad ones).
    pub requests: u64,
    /// Random bytes written to the guest.
    pub bytes: u64,
    /// Requests completed with length 0 because they were malformed.
    pub bad_chains: u64,
}

/// The virtio-rng device model.
pub struct Rng {
    features: u64,
    stats: RngStats,
    scratch: Vec<u8>,
    /// A request's buffers, kept for their capacity: a request allocates
    /// nothing.
    buffers: Vec<(GuestAddress, usize)>,
}

impl Default for Rng {
    fn default() -> Self {
        Self::new()
    }
}

/// Fills `buf` from getrandom(2), retrying short reads and EINTR.
pub fn fill_random(buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = buf.get_mut(done..).unwrap_or_default();
        // SAFETY: getrandom writes at most rest.len() bytes into rest.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        match usize::try_from(n) {
            Ok(n) => done += n,
            Err(_) => {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EINTR) {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

impl Rng {
    /// A device before activation.
    pub fn new() -> Self {
        Self {
            features: 0,
            stats: RngStats::default(),
            scratch: vec![0; CHUNK],
            buffers: Vec::new(),
        }
    }

    /// What the device has done so far.
    pub fn stats(&self) -> RngStats {
        self.stats
    }

    /// The writable buffers of `chain`, capped at [`MAX_REQUEST`] bytes in
    /// all, into `out`; false if the chain is malformed.
    fn buffers(
        chain: DescriptorChain<&GuestMemory>,
        mem: &GuestMemory,
        out: &mut Vec<(GuestAddress, usize)>,
    ) -> bool {
        out.clear();
        let mut total = 0usize;
        for desc in chain {
            if !desc.is_write_only() {
                return false;
            }
            let len = usize::try_from(desc.len())
                .unwrap_or(usize::MAX)
                .min(MAX_REQUEST - total);
            if len == 0 {
                continue;
            }
            if !mem.check_range(desc.addr(), len, Permissions::Write) {
                return false;
            }
            out.push((desc.addr(), len));
            total += len;
            if total == MAX_REQUEST {
                break;
            }
        }
        true
    }

    /// Fills `buffers` with random bytes; returns how many were written.
    fn fill(&mut self, buffers: &[(GuestAddress, usize)], mem: &GuestMemory) -> usize {
        let mut written = 0;
        for &(addr, len) in buffers {
            let mut off = 0;
            while off < len {
                let n = (len - off).min(CHUNK);
                let Some(chunk) = self.scratch.get_mut(..n) else {
                    return written;
                };
                let Some(at) = addr.checked_add(off as u64) else {
                    return written;
                };
                if fill_random(chunk).is_err() || mem.write_slice(chunk, at).is_err() {
                    return written;
                }
                off += n;
                written += n;
            }
        }
        written
    }

    /// Serves one request; returns the used length.
    fn serve(&mut self, chain: DescriptorChain<&GuestMemory>, mem: &GuestMemory) -> u32 {
        self.stats.requests += 1;
        let mut buffers = std::mem::take(&mut self.buffers);
        let whole = Self::buffers(chain, mem, &mut buffers);
        let n = if whole { self.fill(&buffers, mem) } else { 0 };
        self.buffers = buffers;
        if !whole {
            self.stats.bad_chains += 1;
            return 0;
        }
        self.stats.bytes += n as u64;
        u32::try_from(n).unwrap_or(0)
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        DEVICE_ID_RNG
    }

    fn num_queues(&self) -> usize {
        1
    }

    fn max_queue_size(&self) -> u16 {
        QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        TRANSPORT_FEATURES
    }

    fn config(&self) -> Vec<u8> {
        Vec::new()
    }

    fn activate(&mut self, features: u64) -> Result<(), DeviceError> {
        check_features(features, self.features())?;
        self.features = features;
        Ok(())
    }

    fn process_queue(
        &mut self,
        index: usize,
        queue: &mut Queue,
        mem: &GuestMemory,
    ) -> Result<Processed, DeviceError> {
        if index != 0 {
            return Err(DeviceError::NoQueue(index));
        }
        serve_queue(queue, mem, |chain| self.serve(chain, mem))
    }

    fn reset(&mut self) {
        self.features = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::QueueT;

    use crate::test_queue::{used, NEXT, WRITE};
    const MEM_SIZE: usize = 0x20_0000;
    const BUF: u64 = 0x10_0000;

    fn mem() -> GuestMemory {
        GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
    }

    fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
    }

    fn activated() -> Rng {
        let mut r = Rng::new();
        r.activate(TRANSPORT_FEATURES).unwrap();
        r
    }

    fn run(descs: &[RawDescriptor]) -> (Vec<(u32, u32)>, GuestMemory, Rng) {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        vq.add_desc_chains(descs, 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let mut rng = activated();
        rng.process_queue(0, &mut q, &m).unwrap();
        let u = used(&vq);
        drop(vq);
        (u, m, rng)
    }

    fn nonzero(m: &GuestMemory, addr: u64, len: usize) -> bool {
        let mut b = vec![0u8; len];
        m.read_slice(&mut b, GuestAddress(addr)).unwrap();
        b.iter().any(|&x| x != 0)
    }

    #[test]
    fn a_request_is_filled_to_its_length() {
        let (u, m, rng) = run(&[desc(BUF, 512, WRITE, 0)]);
        assert_eq!(u, vec![(0, 512)]);
        assert!(nonzero(&m, BUF, 512));
        assert_eq!(rng.stats().bytes, 512);
    }

    #[test]
    fn a_chain_of_buffers_is_filled_in_full() {
        let (u, m, _) = run(&[
            desc(BUF, 100, WRITE | NEXT, 1),
            desc(BUF + 0x1000, 200, WRITE, 0),
        ]);
        assert_eq!(u, vec![(0, 300)]);
        assert!(nonzero(&m, BUF + 0x1000, 200));
    }

    #[test]
    fn a_large_request_is_capped() {
        let (u, _, _) = run(&[desc(BUF, 512 * 1024, WRITE, 0)]);
        assert_eq!(u, vec![(0, u32::try_from(MAX_REQUEST).unwrap())]);
    }

    #[test]
    fn a_huge_length_is_capped_without_allocating() {
        // u32::MAX bytes from BUF run past the end of RAM, but the cap
        // comes first and the capped range fits.
        let (u, _, _) = run(&[desc(BUF, u32::MAX, WRITE, 0)]);
        assert_eq!(u, vec![(0, u32::try_from(MAX_REQUEST).unwrap())]);
    }

    #[test]
    fn a_zero_length_buffer_gets_nothing() {
        let (u, _, _) = run(&[desc(BUF, 0, WRITE, 0)]);
        assert_eq!(u, vec![(0, 0)]);
    }

    #[test]
    fn a_buffer_outside_ram_is_refused_and_the_next_request_served() {
        let outside = MEM_SIZE as u64 - 16;
        let (u, _, rng) = run(&[desc(outside, 64, WRITE, 0), desc(BUF, 64, WRITE, 0)]);
        assert_eq!(u, vec![(0, 0), (1, 64)]);
        assert_eq!(rng.stats().bad_chains, 1);
    }

    #[test]
    fn a_device_readable_buffer_is_refused() {
        let (u, m, _) = run(&[desc(BUF, 64, 0, 0)]);
        assert_eq!(u, vec![(0, 0)]);
        assert!(!nonzero(&m, BUF, 64));
    }

    #[test]
    fn a_descriptor_loop_terminates() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        // Two descriptors pointing at each other.
        vq.desc_table()
            .store(0, desc(BUF, 64, WRITE | NEXT, 1))
            .unwrap();
        vq.desc_table()
            .store(1, desc(BUF + 64, 64, WRITE | NEXT, 0))
            .unwrap();
        vq.avail().ring().ref_at(0).unwrap().store(0);
        vq.avail().idx().store(1);
        let mut q: Queue = vq.create_queue().unwrap();
        let mut rng = activated();
        rng.process_queue(0, &mut q, &m).unwrap();
        let u = used(&vq);
        assert_eq!(u.len(), 1);
        // The walk stops after at most queue-size descriptors.
        assert!(u[0].1 <= 16 * 64);
    }

    #[test]
    fn an_avail_index_far_ahead_makes_the_queue_unusable() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        vq.avail().idx().store(1000);
        let mut q: Queue = vq.create_queue().unwrap();
        let mut rng = activated();
        assert!(matches!(
            rng.process_queue(0, &mut q, &m),
            Err(DeviceError::Queue(_))
        ));
    }

    #[test]
    fn event_idx_suppresses_the_interrupt_until_the_driver_asks() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        vq.add_desc_chains(&[desc(BUF, 8, WRITE, 0)], 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        q.set_event_idx(true);
        // used_event (after the avail ring) = 5: interrupt only after the
        // sixth used entry.
        let used_event = vq.avail_addr().unchecked_add(4 + 2 * 16);
        m.write_obj(5u16, used_event).unwrap();
        let mut rng = activated();
        assert!(!rng.process_queue(0, &mut q, &m).unwrap().notify);
        // Without event indices every completion interrupts.
        let vq2 = MockSplitQueue::create(&m, GuestAddress(0x8000), 16);
        vq2.add_desc_chains(&[desc(BUF, 8, WRITE, 0)], 0).unwrap();
        let mut q2: Queue = vq2.create_queue().unwrap();
        assert!(rng.process_queue(0, &mut q2, &m).unwrap().notify);
    }

    #[test]
    fn an_empty_queue_needs_no_interrupt() {
        let (u, _, _) = run(&[]);
        assert!(u.is_empty());
    }

    #[test]
    fn activation_with_unoffered_features_is_refused() {
        let mut r = Rng::new();
        assert!(r.activate(1 << 5).is_err());
    }

    #[test]
    fn configuration_writes_are_refused() {
        assert!(Rng::new().write_config(0, &[1]).is_err());
        assert!(Rng::new().config().is_empty());
    }

    #[test]
    fn other_queues_do_not_exist() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        let mut q: Queue = vq.create_queue().unwrap();
        assert!(matches!(
            activated().process_queue(1, &mut q, &m),
            Err(DeviceError::NoQueue(1))
        ));
    }
}
