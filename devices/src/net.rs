//! virtio-net, the network card (virtio 1.2, section 5.1), over a tap fd the
//! VMM opened: the device holds that one fd and no other network
//! capability.
//!
//! Two queues: receive (0) and transmit (1); no control queue. The tap was
//! set up by the VMM with IFF_VNET_HDR and a 12-byte vnet header, the same
//! header the driver puts before every frame under VIRTIO_F_VERSION_1, so
//! frames pass through unchanged in both directions: checksum and
//! segmentation offloads are the tap's business. At activation the device
//! tells the tap which offloads the driver accepts on receive
//! (TUNSETOFFLOAD).
//!
//! Transmit gathers a chain's readable bytes straight from guest memory into
//! one writev. Receive reads a frame from the tap into a bounce buffer and
//! copies it into the driver's buffers: one chain, or several with
//! MRG_RXBUF (the header's `num_buffers` says how many). A frame that
//! arrives when the driver has no buffers waits in the device, and the tap
//! is not polled until the driver adds buffers (its kick).
//!
//! Guest input is hostile: transmit chains shorter than a header and an
//! Ethernet header, longer than the largest frame, with device-writable
//! descriptors, cut short or outside memory are dropped and counted, as are
//! receive chains with readable descriptors or outside memory (their
//! frame is dropped, the buffers returned empty, which Linux counts as a
//! length error).

use std::os::fd::{AsRawFd, OwnedFd};

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, ByteValued, Bytes, GuestAddress, GuestMemoryBackend as _, Le16};

use crate::hostio::IoVecs;
use crate::virtio::{
    check_features, end_fill, serve_queue, BackendEvent, DeviceError, GuestMemory, Processed,
    VirtioDevice, DEVICE_ID_NET, TRANSPORT_FEATURES,
};

/// Queue size offered to the driver.
pub const QUEUE_SIZE: u16 = 256;
/// The receive queue.
pub const RX_QUEUE: usize = 0;
/// The transmit queue.
pub const TX_QUEUE: usize = 1;
/// Bytes of the vnet header before every frame (virtio 1.x).
pub const VNET_HDR_LEN: usize = 12;
/// Bytes of an Ethernet header, the shortest frame worth sending.
pub const ETH_HDR_LEN: usize = 14;
/// Largest frame with its header, in either direction: a 64 KiB GSO
/// packet plus Ethernet and VLAN headers.
pub const MAX_FRAME: usize = VNET_HDR_LEN + 65535 + ETH_HDR_LEN + 4;
/// Most descriptors of one chain that the device looks at.
pub const MAX_DESCRIPTORS: usize = 512;
/// Most frames moved per queue and call, so that a busy link cannot keep
/// the device from its control channel.
const BUDGET: usize = 256;

/// Feature bits of virtio-net (5.1.3).
pub const VIRTIO_NET_F_CSUM: u32 = 0;
/// The driver accepts frames with partial checksums.
pub const VIRTIO_NET_F_GUEST_CSUM: u32 = 1;
/// `mac` is valid.
pub const VIRTIO_NET_F_MAC: u32 = 5;
/// The driver accepts TCPv4 segmentation offload.
pub const VIRTIO_NET_F_GUEST_TSO4: u32 = 7;
/// The driver accepts TCPv6 segmentation offload.
pub const VIRTIO_NET_F_GUEST_TSO6: u32 = 8;
/// The device accepts TCPv4 segmentation offload.
pub const VIRTIO_NET_F_HOST_TSO4: u32 = 11;
/// The device accepts TCPv6 segmentation offload.
pub const VIRTIO_NET_F_HOST_TSO6: u32 = 12;
/// Receive buffers may be merged.
pub const VIRTIO_NET_F_MRG_RXBUF: u32 = 15;
/// `status` is valid.
pub const VIRTIO_NET_F_STATUS: u32 = 16;

/// Link up, in `status`.
pub const VIRTIO_NET_S_LINK_UP: u16 = 1;
/// Length of the configuration space we describe: mac, status,
/// max_virtqueue_pairs.
const CONFIG_LEN: usize = 10;
const _: () = assert!(std::mem::size_of::<NetConfig>() == CONFIG_LEN);

/// `struct virtio_net_config` (5.1.4) up to `max_virtqueue_pairs`; `mtu`
/// and what follows are not offered.
#[repr(C)]
#[derive(Clone, Copy)]
struct NetConfig {
    mac: [u8; 6],
    status: Le16,
    max_virtqueue_pairs: Le16,
}

// SAFETY: NetConfig is repr(C) with a byte array then two 2-byte
// little-endian integers at even offsets: no padding, and every bit
// pattern is a valid value.
unsafe impl ByteValued for NetConfig {}

/// TUNSETOFFLOAD and its flags (linux/if_tun.h).
pub const TUNSETOFFLOAD: u64 = 0x4004_54d0;
const TUN_F_CSUM: libc::c_uint = 0x01;
const TUN_F_TSO4: libc::c_uint = 0x02;
const TUN_F_TSO6: libc::c_uint = 0x04;

/// What the network card is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetParams {
    /// The MAC address the driver reads.
    pub mac: [u8; 6],
}

crate::counters! {
    /// What the device has done, for statistics.
    pub struct NetStats {
        /// Frames sent to the tap.
        pub tx_frames: u64,
        /// Bytes of those frames (headers included).
        pub tx_bytes: u64,
        /// Transmit chains dropped as malformed (too short, too long,
        /// writable, cut short, outside memory).
        pub tx_dropped: u64,
        /// Frames the tap refused (link down, bad vnet header).
        pub tx_errors: u64,
        /// Frames delivered to the driver.
        pub rx_frames: u64,
        /// Bytes of those frames (headers included).
        pub rx_bytes: u64,
        /// Frames dropped: no chain could hold them, or a chain was bad.
        pub rx_dropped: u64,
    }
}

/// The virtio-net device model.
pub struct Net {
    tap: OwnedFd,
    params: NetParams,
    features: u64,
    stats: NetStats,
    /// A frame read from the tap and not yet delivered: `rx_len` bytes of
    /// `rx_buf`.
    rx_buf: Vec<u8>,
    rx_len: usize,
    /// The driver had no receive buffers for the pending frame: the tap
    /// is not polled until the driver kicks the receive queue.
    rx_starved: bool,
    /// Reading the tap failed for good.
    tap_failed: bool,
    /// A frame's iovecs, the heads of the chains a received frame took and
    /// where its header went: kept for their capacity, so that a frame
    /// allocates nothing.
    tx_iov: IoVecs,
    rx_heads: Vec<(u16, u32)>,
    rx_header_at: Vec<(GuestAddress, usize)>,
}

/// Outcome of placing one frame in the receive queue.
enum Placed {
    /// Delivered (used entries added).
    Done,
    /// Not enough buffers (all this many available chains together are
    /// too small); nothing consumed.
    Starved(u16),
    /// The frame was dropped (bad chain, or too big without MRG_RXBUF).
    Dropped,
}

impl Net {
    /// A device over `tap`, an fd set up with IFF_TAP, IFF_NO_PI,
    /// IFF_VNET_HDR, a 12-byte vnet header and O_NONBLOCK (any fd that
    /// reads and writes whole frames does, e.g. a datagram socket in
    /// tests).
    pub fn new(tap: OwnedFd, params: NetParams) -> Self {
        Self {
            tap,
            params,
            features: 0,
            stats: NetStats::default(),
            rx_buf: Vec::new(),
            rx_len: 0,
            rx_starved: false,
            tap_failed: false,
            tx_iov: IoVecs::default(),
            rx_heads: Vec::new(),
            rx_header_at: Vec::new(),
        }
    }

    /// What the device has done so far.
    pub fn stats(&self) -> NetStats {
        self.stats
    }

    fn negotiated(&self, bit: u32) -> bool {
        self.features & (1 << bit) != 0
    }

    /// Tells the tap which offloads it may use towards the driver. Best
    /// effort: a tap that refuses sends whole, checksummed frames, which
    /// every driver accepts.
    fn set_offloads(&self) {
        let mut flags = 0;
        if self.negotiated(VIRTIO_NET_F_GUEST_CSUM) {
            flags |= TUN_F_CSUM;
            if self.negotiated(VIRTIO_NET_F_GUEST_TSO4) {
                flags |= TUN_F_TSO4;
            }
            if self.negotiated(VIRTIO_NET_F_GUEST_TSO6) {
                flags |= TUN_F_TSO6;
            }
        }
        // SAFETY: TUNSETOFFLOAD takes its flags by value; no memory is
        // passed. On a fd that is not a tap it fails with ENOTTY.
        unsafe {
            libc::ioctl(
                self.tap.as_raw_fd(),
                TUNSETOFFLOAD as _,
                libc::c_ulong::from(flags),
            )
        };
    }

    /// Sends one transmit chain to the tap; the used length is always 0.
    fn transmit(&mut self, chain: DescriptorChain<&GuestMemory>, mem: &GuestMemory) -> u32 {
        let tap = self.tap.as_raw_fd();
        // (length, what writev returned), or None: dropped.
        let sent = self.tx_iov.with(|iov| {
            let len = gather_readable(chain, mem, iov)
                .filter(|len| (VNET_HDR_LEN + ETH_HDR_LEN..=MAX_FRAME).contains(len))?;
            let n = libc::c_int::try_from(iov.len()).unwrap_or(0);
            // SAFETY: every iovec points into mapped guest memory that
            // vm-memory checked for this length; writev only reads it.
            Some((len, unsafe { libc::writev(tap, iov.as_ptr(), n) }))
        });
        match sent {
            Some((len, sent)) => {
                if usize::try_from(sent).ok() == Some(len) {
                    self.stats.tx_frames += 1;
                    self.stats.tx_bytes += len as u64;
                } else {
                    self.stats.tx_errors += 1;
                }
            }
            None => self.stats.tx_dropped += 1,
        }
        0
    }

    /// Reads the next frame from the tap into the bounce buffer unless one
    /// is pending; false when the tap has none.
    fn fill(&mut self) -> bool {
        if self.rx_len > 0 {
            return true;
        }
        if self.rx_buf.len() < MAX_FRAME {
            self.rx_buf.resize(MAX_FRAME, 0);
        }
        loop {
            // SAFETY: reads at most rx_buf.len() bytes into rx_buf.
            let n = unsafe {
                libc::read(
                    self.tap.as_raw_fd(),
                    self.rx_buf.as_mut_ptr().cast(),
                    self.rx_buf.len(),
                )
            };
            match usize::try_from(n) {
                // A frame without a header is not a frame; read on.
                Ok(len) if len < VNET_HDR_LEN + ETH_HDR_LEN => continue,
                Ok(len) => {
                    self.rx_len = len;
                    return true;
                }
                Err(_) => {
                    let err = std::io::Error::last_os_error();
                    match err.raw_os_error() {
                        Some(libc::EINTR) => continue,
                        Some(libc::EAGAIN) => {}
                        // The tap is gone (its interface deleted): stop
                        // polling it rather than spin on its error.
                        _ => self.tap_failed = true,
                    }
                    return false;
                }
            }
        }
    }

    /// Delivers the pending frame into the receive queue.
    fn place(&mut self, queue: &mut Queue, mem: &GuestMemory) -> Result<Placed, DeviceError> {
        let (mut heads, mut header_at) = (
            std::mem::take(&mut self.rx_heads),
            std::mem::take(&mut self.rx_header_at),
        );
        heads.clear();
        header_at.clear();
        let placed = self.place_in(queue, mem, &mut heads, &mut header_at);
        (self.rx_heads, self.rx_header_at) = (heads, header_at);
        placed
    }

    fn place_in(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemory,
        heads: &mut Vec<(u16, u32)>,
        header_at: &mut Vec<(GuestAddress, usize)>,
    ) -> Result<Placed, DeviceError> {
        let merge = self.negotiated(VIRTIO_NET_F_MRG_RXBUF);
        let frame = self.rx_buf.get(..self.rx_len).unwrap_or_default();
        let mut off = 0usize;
        let mut bad = false;
        while off < frame.len() {
            let chain = queue.iter(mem).map_err(DeviceError::Queue)?.next();
            let Some(chain) = chain else {
                // Too few buffers: give back what was taken, wait.
                for _ in 0..heads.len() {
                    queue.go_to_previous_position();
                }
                return Ok(Placed::Starved(
                    u16::try_from(heads.len()).unwrap_or(u16::MAX),
                ));
            };
            let head = chain.head_index();
            let rest = frame.get(off..).unwrap_or_default();
            let first = heads.is_empty();
            let put = scatter_writable(chain, mem, rest, first.then_some(&mut *header_at));
            heads.push((head, 0));
            let Some(n) = put else {
                bad = true;
                break;
            };
            if let Some(h) = heads.last_mut() {
                h.1 = u32::try_from(n).unwrap_or(0);
            }
            off += n;
            if n == 0 || (!merge && off < frame.len()) {
                // Empty chains make no progress; without MRG_RXBUF the
                // frame must fit one chain.
                bad = true;
                break;
            }
        }
        if bad {
            for (head, _) in heads.iter() {
                queue.add_used(mem, *head, 0).map_err(DeviceError::Queue)?;
            }
            return Ok(Placed::Dropped);
        }
        // num_buffers, the header's last field.
        let count = u16::try_from(heads.len()).unwrap_or(u16::MAX);
        let mut header = [0u8; VNET_HDR_LEN];
        if let Some(h) = frame.get(..VNET_HDR_LEN) {
            header.copy_from_slice(h);
        }
        header[10..12].copy_from_slice(&count.to_le_bytes());
        write_segments(mem, header_at, &header);
        for (head, len) in heads.iter() {
            queue
                .add_used(mem, *head, *len)
                .map_err(DeviceError::Queue)?;
        }
        Ok(Placed::Done)
    }

    fn receive(&mut self, queue: &mut Queue, mem: &GuestMemory) -> Result<Processed, DeviceError> {
        self.rx_starved = false;
        let mut delivered = 0usize;
        let mut pending = false;
        queue
            .disable_notification(mem)
            .map_err(DeviceError::Queue)?;
        while self.fill() {
            if delivered >= BUDGET {
                pending = true;
                break;
            }
            match self.place(queue, mem)? {
                Placed::Done => {
                    self.stats.rx_frames += 1;
                    self.stats.rx_bytes += self.rx_len as u64;
                    self.rx_len = 0;
                    delivered += 1;
                }
                Placed::Dropped => {
                    self.stats.rx_dropped += 1;
                    self.rx_len = 0;
                    delivered += 1;
                }
                Placed::Starved(tried) => {
                    // Ask for a kick when buffers come; if more came
                    // meanwhile, go on.
                    queue.enable_notification(mem).map_err(DeviceError::Queue)?;
                    let avail = queue
                        .avail_idx(mem, std::sync::atomic::Ordering::Acquire)
                        .map_err(DeviceError::Queue)?;
                    if avail.0.wrapping_sub(queue.next_avail()) > tried {
                        queue
                            .disable_notification(mem)
                            .map_err(DeviceError::Queue)?;
                        continue;
                    }
                    self.rx_starved = true;
                    break;
                }
            }
        }
        end_fill(queue, mem, delivered, self.rx_starved, pending)
    }
}

/// The readable descriptors of `chain` as host iovecs, appended to `iov`,
/// and their total length; `None` if the chain is cut short, too long, has
/// a writable descriptor or leaves guest memory.
fn gather_readable(
    chain: DescriptorChain<&GuestMemory>,
    mem: &GuestMemory,
    iov: &mut Vec<libc::iovec>,
) -> Option<usize> {
    let mut len = 0usize;
    let mut cut = false;
    for (i, desc) in chain.enumerate() {
        cut = desc.has_next();
        if i >= MAX_DESCRIPTORS || desc.is_write_only() {
            return None;
        }
        let n = usize::try_from(desc.len()).ok()?;
        if n == 0 {
            continue;
        }
        len = len.checked_add(n).filter(|l| *l <= MAX_FRAME)?;
        let slice = mem.get_slice(desc.addr(), n).ok()?;
        iov.push(libc::iovec {
            iov_base: slice.ptr_guard_mut().as_ptr().cast(),
            iov_len: n,
        });
    }
    (!cut).then_some(len)
}

/// Copies the start of `data` into the writable descriptors of `chain`;
/// returns how many bytes went in, or `None` if the chain is cut short,
/// too long, has a readable descriptor or leaves guest memory. Records in
/// `header_at` where the first [`VNET_HDR_LEN`] bytes went.
fn scatter_writable(
    chain: DescriptorChain<&GuestMemory>,
    mem: &GuestMemory,
    data: &[u8],
    mut header_at: Option<&mut Vec<(GuestAddress, usize)>>,
) -> Option<usize> {
    let mut done = 0usize;
    let mut cut = false;
    for (i, desc) in chain.enumerate() {
        cut = desc.has_next();
        if i >= MAX_DESCRIPTORS || !desc.is_write_only() {
            return None;
        }
        let room = usize::try_from(desc.len()).ok()?;
        desc.addr().checked_add(u64::from(desc.len()))?;
        let n = room.min(data.len() - done);
        if n == 0 {
            continue;
        }
        let src = data.get(done..done + n)?;
        mem.write_slice(src, desc.addr()).ok()?;
        if let Some(h) = header_at.as_deref_mut() {
            if done < VNET_HDR_LEN {
                h.push((desc.addr(), n.min(VNET_HDR_LEN - done)));
            }
        }
        done += n;
    }
    (!cut).then_some(done)
}

/// Writes `data` over the guest ranges `at`, in order.
fn write_segments(mem: &GuestMemory, at: &[(GuestAddress, usize)], data: &[u8]) {
    let mut done = 0usize;
    for (addr, len) in at {
        let Some(src) = data.get(done..done + len) else {
            return;
        };
        // The ranges were written a moment ago; a failure cannot happen.
        let _ = mem.write_slice(src, *addr);
        done += len;
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        DEVICE_ID_NET
    }

    fn num_queues(&self) -> usize {
        2
    }

    fn max_queue_size(&self) -> u16 {
        QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        TRANSPORT_FEATURES
            | 1 << VIRTIO_NET_F_CSUM
            | 1 << VIRTIO_NET_F_GUEST_CSUM
            | 1 << VIRTIO_NET_F_MAC
            | 1 << VIRTIO_NET_F_GUEST_TSO4
            | 1 << VIRTIO_NET_F_GUEST_TSO6
            | 1 << VIRTIO_NET_F_HOST_TSO4
            | 1 << VIRTIO_NET_F_HOST_TSO6
            | 1 << VIRTIO_NET_F_MRG_RXBUF
            | 1 << VIRTIO_NET_F_STATUS
    }

    fn config(&self) -> Vec<u8> {
        let config = NetConfig {
            mac: self.params.mac,
            status: VIRTIO_NET_S_LINK_UP.into(),
            max_virtqueue_pairs: 1.into(),
        };
        config.as_slice().to_vec()
    }

    fn activate(&mut self, features: u64) -> Result<(), DeviceError> {
        check_features(features, self.features())?;
        self.features = features;
        self.set_offloads();
        Ok(())
    }

    fn process_queue(
        &mut self,
        index: usize,
        queue: &mut Queue,
        mem: &GuestMemory,
    ) -> Result<Processed, DeviceError> {
        match index {
            RX_QUEUE => self.receive(queue, mem),
            TX_QUEUE => serve_queue(queue, mem, |chain| self.transmit(chain, mem)),
            i => Err(DeviceError::NoQueue(i)),
        }
    }

    fn backend_events(&self, out: &mut Vec<BackendEvent>) {
        if !self.rx_starved && !self.tap_failed {
            out.push(BackendEvent::readable(self.tap.as_raw_fd(), RX_QUEUE));
        }
    }

    fn report(&self) -> Option<String> {
        let s = &self.stats;
        (s.tx_dropped + s.rx_dropped + s.tx_errors > 0).then(|| {
            format!(
                "dropped {} malformed transmit chains and {} received frames (bad or too few \
                 buffers); the tap refused {} frames",
                s.tx_dropped, s.rx_dropped, s.tx_errors
            )
        })
    }

    /// The counters, so that what a restarted device reports covers its
    /// predecessors. A frame read from the tap and not yet delivered is
    /// not kept: it is lost like any frame on a busy link.
    fn save_state(&self) -> Vec<u8> {
        self.stats.save()
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), DeviceError> {
        let stats = NetStats::restore(state, "net")?;
        if stats.tx_bytes < stats.tx_frames || stats.rx_bytes < stats.rx_frames {
            return Err(DeviceError::Refused(
                "net state counts more frames than bytes".into(),
            ));
        }
        self.stats = stats;
        Ok(())
    }

    fn reset(&mut self) {
        self.features = 0;
        self.rx_len = 0;
        self.rx_starved = false;
        self.set_offloads();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_queue::{events, raw_chains as raw, used, NEXT};
    use std::os::unix::net::UnixDatagram;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;

    const MEM_SIZE: usize = 0x40_0000;
    /// Buffers, one per 64 KiB.
    const BUF: u64 = 0x10_0000;

    fn mem() -> GuestMemory {
        GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
    }

    /// A device over one end of a datagram socket pair (frames in, frames
    /// out, like a tap), and the other end.
    fn device(features: u64) -> (Net, UnixDatagram) {
        let (ours, theirs) = UnixDatagram::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        theirs.set_nonblocking(true).unwrap();
        let mut n = Net::new(
            OwnedFd::from(ours),
            NetParams {
                mac: [2, 0, 0, 0, 0, 1],
            },
        );
        n.activate(features).unwrap();
        (n, theirs)
    }

    /// A frame with its vnet header: `len` bytes in all, a counting
    /// pattern after the header.
    fn frame(len: usize) -> Vec<u8> {
        let mut f = vec![0u8; len];
        for (i, b) in f.iter_mut().enumerate().skip(VNET_HDR_LEN) {
            *b = u8::try_from(i % 251).unwrap();
        }
        f
    }

    fn recv_all(peer: &UnixDatagram) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; MAX_FRAME + 16];
        while let Ok(n) = peer.recv(&mut buf) {
            out.push(buf[..n].to_vec());
        }
        out
    }

    #[test]
    fn transmitted_frames_reach_the_tap_whole() {
        let m = mem();
        let (mut n, peer) = device(n_features());
        let f = frame(1514);
        m.write_slice(&f[..VNET_HDR_LEN], GuestAddress(BUF))
            .unwrap();
        m.write_slice(&f[VNET_HDR_LEN..], GuestAddress(BUF + 0x1_0000))
            .unwrap();
        // Header and frame in two descriptors, then in one.
        m.write_slice(&f, GuestAddress(BUF + 0x2_0000)).unwrap();
        let vq = MockSplitQueue::new(&m, 16);
        let chains = vec![
            vec![(BUF, 12, false), (BUF + 0x1_0000, 1502, false)],
            vec![(BUF + 0x2_0000, 1514, false)],
        ];
        vq.add_desc_chains(&raw(&chains, 0), 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        n.process_queue(TX_QUEUE, &mut q, &m).unwrap();
        assert_eq!(used(&vq), vec![(0, 0), (2, 0)]);
        assert_eq!(recv_all(&peer), vec![f.clone(), f]);
        assert_eq!(n.stats().tx_frames, 2);
    }

    #[test]
    fn hostile_transmit_chains_are_dropped_and_the_device_keeps_serving() {
        let m = mem();
        let (mut n, peer) = device(n_features());
        m.write_slice(&frame(4096), GuestAddress(BUF)).unwrap();
        let vq = MockSplitQueue::new(&m, 16);
        let big = u32::try_from(MAX_FRAME).unwrap();
        let chains = vec![
            // Shorter than the two headers.
            vec![(BUF, 20, false)],
            // A device-writable descriptor.
            vec![(BUF, 12, false), (BUF + 0x100, 100, true)],
            // Longer than any frame, over two descriptors.
            vec![(BUF, big, false), (BUF, 1, false)],
            // Outside guest memory.
            vec![(MEM_SIZE as u64 - 8, 100, false)],
            // Wrapping the address space.
            vec![(u64::MAX - 4, 100, false)],
            // A good one.
            vec![(BUF, 100, false)],
        ];
        vq.add_desc_chains(&raw(&chains, 0), 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        n.process_queue(TX_QUEUE, &mut q, &m).unwrap();
        assert_eq!(used(&vq).len(), 6);
        assert!(used(&vq).iter().all(|(_, len)| *len == 0));
        let sent = recv_all(&peer);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].len(), 100);
        assert_eq!(n.stats().tx_dropped, 5);
        let report = n.report().unwrap();
        assert!(
            report.starts_with("dropped 5 malformed transmit chains"),
            "{report}"
        );
    }

    #[test]
    fn a_transmit_descriptor_loop_is_dropped() {
        let m = mem();
        let (mut n, peer) = device(n_features());
        let vq = MockSplitQueue::new(&m, 16);
        // Descriptor 0 points at itself.
        let d = RawDescriptor::from(SplitDescriptor::new(BUF, 64, NEXT, 0));
        vq.add_desc_chains(&[d], 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        n.process_queue(TX_QUEUE, &mut q, &m).unwrap();
        assert_eq!(used(&vq), vec![(0, 0)]);
        assert!(recv_all(&peer).is_empty());
        assert_eq!(n.stats().tx_dropped, 1);
    }

    fn n_features() -> u64 {
        TRANSPORT_FEATURES | 1 << VIRTIO_NET_F_CSUM | 1 << VIRTIO_NET_F_STATUS
    }

    fn mrg_features() -> u64 {
        n_features() | 1 << VIRTIO_NET_F_MRG_RXBUF
    }

    fn num_buffers(m: &GuestMemory, at: u64) -> u16 {
        let mut b = [0u8; 2];
        m.read_slice(&mut b, GuestAddress(at + 10)).unwrap();
        u16::from_le_bytes(b)
    }

    #[test]
    fn a_received_frame_fills_one_chain() {
        let m = mem();
        let (mut n, peer) = device(n_features());
        let f = frame(1000);
        peer.send(&f).unwrap();
        let vq = MockSplitQueue::new(&m, 16);
        vq.add_desc_chains(&raw(&[vec![(BUF, 2048, true)]], 0), 0)
            .unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let done = n.process_queue(RX_QUEUE, &mut q, &m).unwrap();
        assert!(done.notify);
        assert_eq!(used(&vq), vec![(0, 1000)]);
        let mut back = vec![0u8; 1000];
        m.read_slice(&mut back, GuestAddress(BUF)).unwrap();
        assert_eq!(back[VNET_HDR_LEN..], f[VNET_HDR_LEN..]);
        assert_eq!(num_buffers(&m, BUF), 1);
        assert_eq!(n.stats().rx_frames, 1);
    }

    #[test]
    fn merged_buffers_carry_a_large_frame_and_say_how_many() {
        let m = mem();
        let (mut n, peer) = device(mrg_features());
        let f = frame(3000);
        peer.send(&f).unwrap();
        let vq = MockSplitQueue::new(&m, 16);
        // The first chain splits the header over two descriptors.
        let chains = vec![
            vec![(BUF, 6, true), (BUF + 6, 1018, true)],
            vec![(BUF + 0x1_0000, 1024, true)],
            vec![(BUF + 0x2_0000, 1024, true)],
            vec![(BUF + 0x3_0000, 1024, true)],
        ];
        vq.add_desc_chains(&raw(&chains, 0), 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        n.process_queue(RX_QUEUE, &mut q, &m).unwrap();
        assert_eq!(used(&vq), vec![(0, 1024), (2, 1024), (3, 952)]);
        assert_eq!(num_buffers(&m, BUF), 3);
        let mut back = vec![0u8; 3000];
        m.read_slice(&mut back[..1024], GuestAddress(BUF)).unwrap();
        m.read_slice(&mut back[1024..2048], GuestAddress(BUF + 0x1_0000))
            .unwrap();
        m.read_slice(&mut back[2048..], GuestAddress(BUF + 0x2_0000))
            .unwrap();
        assert_eq!(back[VNET_HDR_LEN..], f[VNET_HDR_LEN..]);
    }

    #[test]
    fn without_buffers_the_frame_waits_and_the_tap_is_not_polled() {
        let m = mem();
        let (mut n, peer) = device(mrg_features());
        let f = frame(3000);
        peer.send(&f).unwrap();
        let vq = MockSplitQueue::new(&m, 16);
        // Not enough room: one 1 KiB chain.
        vq.add_desc_chains(&raw(&[vec![(BUF, 1024, true)]], 0), 0)
            .unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let done = n.process_queue(RX_QUEUE, &mut q, &m).unwrap();
        assert!(!done.notify);
        assert!(used(&vq).is_empty());
        assert!(events(&n).is_empty());
        // The driver adds buffers and kicks.
        let more = vec![
            vec![(BUF + 0x1_0000, 1024, true)],
            vec![(BUF + 0x2_0000, 1024, true)],
        ];
        vq.add_desc_chains(&raw(&more, 1), 1).unwrap();
        n.process_queue(RX_QUEUE, &mut q, &m).unwrap();
        assert_eq!(used(&vq), vec![(0, 1024), (1, 1024), (2, 952)]);
        assert_eq!(events(&n).len(), 1);
        assert_eq!(n.stats().rx_frames, 1);
    }

    #[test]
    fn without_merging_a_frame_too_big_for_its_chain_is_dropped() {
        let m = mem();
        let (mut n, peer) = device(n_features());
        peer.send(&frame(3000)).unwrap();
        peer.send(&frame(500)).unwrap();
        let vq = MockSplitQueue::new(&m, 16);
        let chains = vec![vec![(BUF, 1024, true)], vec![(BUF + 0x1_0000, 1024, true)]];
        vq.add_desc_chains(&raw(&chains, 0), 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        n.process_queue(RX_QUEUE, &mut q, &m).unwrap();
        assert_eq!(used(&vq), vec![(0, 0), (1, 500)]);
        assert_eq!(n.stats().rx_dropped, 1);
        assert_eq!(n.stats().rx_frames, 1);
    }

    #[test]
    fn hostile_receive_chains_drop_their_frame_and_are_returned_empty() {
        let m = mem();
        let (mut n, peer) = device(mrg_features());
        for _ in 0..4 {
            peer.send(&frame(200)).unwrap();
        }
        let vq = MockSplitQueue::new(&m, 16);
        let chains = vec![
            // Device-readable.
            vec![(BUF, 1024, false)],
            // Outside guest memory.
            vec![(MEM_SIZE as u64 - 8, 1024, true)],
            // Empty.
            vec![(BUF, 0, true)],
            // Good.
            vec![(BUF + 0x1_0000, 1024, true)],
        ];
        vq.add_desc_chains(&raw(&chains, 0), 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        n.process_queue(RX_QUEUE, &mut q, &m).unwrap();
        assert_eq!(used(&vq), vec![(0, 0), (1, 0), (2, 0), (3, 200)]);
        assert_eq!(n.stats().rx_dropped, 3);
    }

    #[test]
    fn the_configuration_has_the_mac_and_link_up() {
        let (n, _peer) = device(n_features());
        let c = n.config();
        assert_eq!(c[..6], [2, 0, 0, 0, 0, 1]);
        assert_eq!(u16::from_le_bytes([c[6], c[7]]), VIRTIO_NET_S_LINK_UP);
        assert!(n.features() & (1 << VIRTIO_NET_F_MAC) != 0);
        // Nothing dropped, nothing to report.
        assert!(n.report().is_none());
    }

    #[test]
    fn config_bytes_are_pinned() {
        let (ours, _theirs) = UnixDatagram::pair().unwrap();
        let mac = [0x52, 0x54, 0x00, 0x12, 0x34, 0xfe];
        let n = Net::new(OwnedFd::from(ours), NetParams { mac });
        let c = n.config();
        // mac, status (link up), max_virtqueue_pairs (1).
        assert_eq!(c, [0x52, 0x54, 0x00, 0x12, 0x34, 0xfe, 1, 0, 1, 0]);
    }

    #[test]
    fn saved_counters_carry_over_and_impossible_ones_are_refused() {
        let (mut a, _pa) = device(n_features());
        a.stats.tx_frames = 3;
        a.stats.tx_bytes = 300;
        a.stats.rx_dropped = 2;
        let saved = a.save_state();
        let (mut b, _pb) = device(n_features());
        b.restore_state(&saved).unwrap();
        assert_eq!(b.stats(), a.stats());
        assert!(b.report().unwrap().contains("and 2 received frames"));
        assert!(b.restore_state(&saved[1..]).is_err());
        assert!(b.restore_state(&[]).is_err());
        let mut more_frames_than_bytes = saved;
        more_frames_than_bytes[7] = 0xff;
        assert!(b.restore_state(&more_frames_than_bytes).is_err());
    }
}
