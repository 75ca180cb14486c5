//! virtio-net in the harness (virtio 1.2, 5.1): the device gets a real tap
//! fd, opened as `skvm run --net` opens it, and the harness plays both the
//! guest's driver (receive queue 0, transmit queue 1, in driver memory) and
//! the host's network, through two AF_PACKET sockets bound to the tap's
//! interface: frames the device writes into the tap arrive on one, frames
//! sent on the other leave through the interface into the tap, where the
//! device reads them.
//!
//! The harness's frames carry Ethernet type 0x88b5 (IEEE 802 "local
//! experimental"), which no host stack answers, a sequence number and a
//! pattern; both ends check every byte. Anything else the host sends into
//! the tap (IPv6 neighbour discovery on a fresh interface, say) reaches
//! the receive queue too and is skipped. The driver takes VERSION_1, MAC,
//! STATUS and MRG_RXBUF and no offloads, so frames stay whole, checksummed
//! and one buffer each.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use devices::net::{ETH_HDR_LEN, MAX_FRAME, VNET_HDR_LEN};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::queue::{
    poll_in, BUFFERS, DESC_F_NEXT, DESC_F_WRITE, IRQ_TIMEOUT, QUEUE0, QUEUE1, RAM, SLOTS, STRIDE,
};
use super::{DriveArgs, Figures, Op};
use crate::kinds::net::tap::{self, NetSpec};
use crate::virtio_pci::DeviceEvents;

/// The features the harness's driver takes when the device offers them.
pub const FEATURES: u64 = (1 << devices::net::VIRTIO_NET_F_MAC)
    | (1 << devices::net::VIRTIO_NET_F_STATUS)
    | (1 << devices::net::VIRTIO_NET_F_MRG_RXBUF);
/// The Ethernet type of the harness's frames.
const ETHERTYPE: u16 = 0x88b5;
/// Source address of the frames sent towards the device.
const HOST_MAC: [u8; 6] = [0x02, b's', b'k', b'v', b'm', 0x01];
/// Destination of the frames the device sends.
const BROADCAST: [u8; 6] = [0xff; 6];
/// Where a frame's sequence number (8 bytes, little-endian) sits.
const SEQ_AT: usize = ETH_HDR_LEN;
/// Where the pattern starts.
const PATTERN_AT: usize = SEQ_AT + 8;
/// Shortest frame: Ethernet's minimum without the FCS.
const MIN_FRAME: u32 = 60;
/// The vnet header flag for a partial checksum (not negotiated here).
const HDR_F_NEEDS_CSUM: u8 = 1;
/// AF_PACKET's sll_pkttype of a frame this host sent.
const PACKET_OUTGOING: u8 = 4;
/// setsockopt(SOL_PACKET): do not see our own outgoing frames.
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
/// Receive buffer of the socket that collects the device's frames: a
/// full batch of the largest frames.
const RCVBUF: libc::c_int = 16 << 20;

/// The host's end of the tap.
pub struct Host {
    /// The interface's name, for messages.
    name: String,
    /// Its MTU: frames are at most this plus the Ethernet header.
    mtu: u32,
    /// The device's MAC.
    mac: [u8; 6],
    /// Frame size of a benchmark.
    size: usize,
    /// Receives the frames of [`ETHERTYPE`] that come out of the tap.
    from_device: OwnedFd,
    /// Sends frames out of the interface into the tap.
    to_device: OwnedFd,
    ifindex: u32,
}

/// Opens (or creates) the tap `spec` names and the host's end of it.
/// Returns that end, the device's parameters and its tap fd.
pub fn open(spec: &str, device: &str, size: u32) -> Result<(Host, Vec<u8>, OwnedFd)> {
    let spec = NetSpec::parse(spec)?;
    let tap = tap::open(&spec)?;
    let link = tap::link_info(&tap.name)?;
    if !link.up {
        bail!(
            "tap {0} is down: bring it up first (ip link set {0} up)",
            tap.name
        );
    }
    let largest = link
        .mtu
        .saturating_add(14)
        .min(u32::try_from(MAX_FRAME - VNET_HDR_LEN - 4)?);
    if !(MIN_FRAME..=largest).contains(&size) {
        bail!(
            "--size {size}: frames on tap {} (MTU {}) are {MIN_FRAME} to {largest} bytes",
            tap.name,
            link.mtu
        );
    }
    let from_device = packet_socket(&tap.name, link.index, ETHERTYPE)?;
    let one: libc::c_int = 1;
    // Best effort: without it our own frames are skipped on reading.
    let _ = set_opt(&from_device, libc::SOL_PACKET, PACKET_IGNORE_OUTGOING, one);
    if set_opt(&from_device, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, RCVBUF).is_err() {
        let _ = set_opt(&from_device, libc::SOL_SOCKET, libc::SO_RCVBUF, RCVBUF);
    }
    let to_device = packet_socket(&tap.name, link.index, 0)?;
    let mac = spec
        .mac
        .unwrap_or_else(|| tap::default_mac("drive", device));
    let host = Host {
        name: tap.name,
        mtu: link.mtu,
        mac,
        size: usize::try_from(size)?,
        from_device,
        to_device,
        ifindex: link.index,
    };
    Ok((host, crate::kinds::net::encode(mac), tap.fd))
}

/// An AF_PACKET socket bound to interface `ifindex`, receiving frames of
/// Ethernet type `ethertype` (none for 0).
fn packet_socket(name: &str, ifindex: u32, ethertype: u16) -> Result<OwnedFd> {
    // SAFETY: socket() returns a new fd or -1. Protocol 0: nothing is
    // received until bind names one.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EPERM) {
            bail!("tap {name}: the harness's AF_PACKET socket needs CAP_NET_RAW (run as root)");
        }
        return Err(err).context("cannot create an AF_PACKET socket");
    }
    // SAFETY: fd is a new socket owned by nothing else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let addr = link_addr(ifindex, ethertype, [0; 6]);
    // SAFETY: binds to a sockaddr_ll of the size given.
    let rc = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            std::ptr::from_ref(&addr).cast(),
            sockaddr_ll_len(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("cannot bind an AF_PACKET socket to {name}"));
    }
    Ok(sock)
}

fn sockaddr_ll_len() -> libc::socklen_t {
    libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_ll>()).unwrap_or(0)
}

/// A `sockaddr_ll` for interface `ifindex`.
fn link_addr(ifindex: u32, ethertype: u16, dest: [u8; 6]) -> libc::sockaddr_ll {
    let mut addr = libc::sockaddr_ll {
        sll_family: u16::try_from(libc::AF_PACKET).unwrap_or(0),
        sll_protocol: ethertype.to_be(),
        sll_ifindex: i32::try_from(ifindex).unwrap_or(0),
        sll_hatype: 0,
        sll_pkttype: 0,
        sll_halen: 6,
        sll_addr: [0; 8],
    };
    addr.sll_addr[..6].copy_from_slice(&dest);
    addr
}

fn set_opt(
    sock: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> Result<()> {
    // SAFETY: passes one int of the size given.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            std::ptr::from_ref(&value).cast(),
            libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).unwrap_or(0),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}

impl Host {
    /// Sends `frame` out of the interface, into the tap.
    fn send(&self, frame: &[u8]) -> Result<()> {
        let mut dest = [0u8; 6];
        dest.copy_from_slice(frame.get(..6).context("frame too short")?);
        let addr = link_addr(self.ifindex, ETHERTYPE, dest);
        // SAFETY: sends from a live buffer of the length given, to a
        // sockaddr_ll of the size given.
        let n = unsafe {
            libc::sendto(
                self.to_device.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                std::ptr::from_ref(&addr).cast(),
                sockaddr_ll_len(),
            )
        };
        if usize::try_from(n).ok() != Some(frame.len()) {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("cannot send a frame into tap {}", self.name));
        }
        Ok(())
    }

    /// The next frame that came out of the tap, into `buf`; its length.
    /// Fails after [`IRQ_TIMEOUT`] without one.
    fn recv(&self, buf: &mut [u8]) -> Result<usize> {
        loop {
            if !poll_in(self.from_device.as_raw_fd(), IRQ_TIMEOUT)? {
                bail!(
                    "no frame came out of tap {} within {IRQ_TIMEOUT:?}",
                    self.name
                );
            }
            // SAFETY: an all-zero sockaddr_ll is a valid value.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = sockaddr_ll_len();
            // SAFETY: receives into a live buffer of the length given and a
            // sockaddr_ll of the size given.
            let n = unsafe {
                libc::recvfrom(
                    self.from_device.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                    std::ptr::from_mut(&mut from).cast(),
                    &mut len,
                )
            };
            let Ok(n) = usize::try_from(n) else {
                let err = std::io::Error::last_os_error();
                if matches!(err.raw_os_error(), Some(libc::EAGAIN | libc::EINTR)) {
                    continue;
                }
                return Err(err).context("cannot read the tap's interface");
            };
            if from.sll_pkttype != PACKET_OUTGOING {
                return Ok(n.min(buf.len()));
            }
        }
    }

    /// Bytes of a receive buffer: the vnet header and the largest frame
    /// the interface carries (with a VLAN tag).
    fn rx_buffer_len(&self) -> u32 {
        let frame = u64::from(self.mtu) + 18;
        let len = (VNET_HDR_LEN as u64 + frame).min(STRIDE);
        u32::try_from(len).unwrap_or(u32::MAX)
    }
}

/// One frame of the harness: `size` bytes from `src` to `dst`, the
/// pattern of slot `slot`, sequence number 0 (patched per send).
fn template(dst: [u8; 6], src: [u8; 6], slot: usize, size: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(size);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ETHERTYPE.to_be_bytes());
    f.extend_from_slice(&0u64.to_le_bytes());
    let seed = slot.wrapping_mul(7).wrapping_add(1);
    f.extend((PATTERN_AT..size).map(|i| i.wrapping_mul(31).wrapping_add(seed).to_le_bytes()[0]));
    f
}

/// What a frame that reached its end turned out to be.
#[derive(Debug, PartialEq, Eq)]
enum Arrival {
    /// One of the batch's frames, as it was sent.
    Ours,
    /// Not the harness's (the host's own traffic).
    Foreign,
    /// The harness's, from before the batch.
    Stale,
}

/// The frames of one batch, as the far end must see them.
struct Batch<'a> {
    first: u64,
    templates: &'a [Vec<u8>],
    seen: Vec<bool>,
    got: usize,
}

impl<'a> Batch<'a> {
    /// Frames `first` to `first + count - 1`, frame `first + k` made from
    /// `templates[k]`.
    fn new(first: u64, count: usize, templates: &'a [Vec<u8>]) -> Self {
        Self {
            first,
            templates,
            seen: vec![false; count],
            got: 0,
        }
    }

    fn complete(&self) -> bool {
        self.got == self.seen.len()
    }

    /// Checks a frame that arrived.
    fn accept(&mut self, frame: &[u8]) -> Result<Arrival> {
        let ours = frame.get(12..14) == Some(&ETHERTYPE.to_be_bytes()[..]);
        let Some(seq) = frame.get(SEQ_AT..PATTERN_AT).filter(|_| ours) else {
            return Ok(Arrival::Foreign);
        };
        let seq = u64::from_le_bytes(seq.try_into()?);
        if seq < self.first {
            return Ok(Arrival::Stale);
        }
        let k = usize::try_from(seq - self.first).unwrap_or(usize::MAX);
        let (Some(seen), Some(t)) = (self.seen.get_mut(k), self.templates.get(k)) else {
            bail!("frame {seq} arrived, but it was never sent");
        };
        ensure!(!*seen, "frame {seq} arrived twice");
        ensure!(
            frame.len() == t.len()
                && frame.get(..SEQ_AT) == t.get(..SEQ_AT)
                && frame.get(PATTERN_AT..) == t.get(PATTERN_AT..),
            "frame {seq} arrived changed ({} bytes, {} sent)",
            frame.len(),
            t.len()
        );
        *seen = true;
        self.got += 1;
        Ok(Arrival::Ours)
    }
}

/// Address of slot `slot`'s buffer.
fn buffer(slot: u16) -> u64 {
    BUFFERS + u64::from(slot) * STRIDE
}

/// The driver's receive side: every slot's buffer posted, each put back
/// as soon as the device returns it (as a driver refills its ring).
struct RxRing {
    buffer_len: u32,
    next_avail: u16,
    seen_used: u16,
    scratch: Vec<u8>,
}

impl RxRing {
    /// Posts a buffer of `buffer_len` bytes for every slot, from available
    /// position `start` on, and kicks.
    fn post_all(
        mem: &GuestMemoryMmap,
        events: &DeviceEvents,
        buffer_len: u32,
        start: u16,
    ) -> Result<Self> {
        for slot in 0..SLOTS {
            QUEUE0.write_desc(mem, slot, buffer(slot), buffer_len, DESC_F_WRITE)?;
            QUEUE0.offer(mem, start.wrapping_add(slot), slot)?;
        }
        let next_avail = start.wrapping_add(SLOTS);
        QUEUE0.publish(mem, events, next_avail)?;
        Ok(Self {
            buffer_len,
            next_avail,
            seen_used: start,
            scratch: vec![0u8; usize::try_from(buffer_len)?],
        })
    }

    /// Takes used buffers until every frame of `batch` has arrived.
    fn collect(
        &mut self,
        mem: &GuestMemoryMmap,
        events: &DeviceEvents,
        batch: &mut Batch<'_>,
    ) -> Result<()> {
        while !batch.complete() {
            QUEUE0
                .wait_used(mem, events, self.seen_used)
                .with_context(|| {
                    format!(
                        "{} of the {} frames sent reached the driver",
                        batch.got,
                        batch.seen.len()
                    )
                })?;
            let used = QUEUE0.used_idx(mem)?;
            while self.seen_used != used {
                let (id, len) = QUEUE0.used_entry(mem, self.seen_used)?;
                self.seen_used = self.seen_used.wrapping_add(1);
                let slot = u16::try_from(id)
                    .ok()
                    .filter(|s| *s < SLOTS)
                    .with_context(|| format!("used entry names descriptor {id}"))?;
                self.check(mem, slot, len, batch)?;
                QUEUE0.offer(mem, self.next_avail, slot)?;
                self.next_avail = self.next_avail.wrapping_add(1);
            }
            QUEUE0.publish(mem, events, self.next_avail)?;
        }
        Ok(())
    }

    /// Checks what the device put in `slot`'s buffer.
    fn check(
        &mut self,
        mem: &GuestMemoryMmap,
        slot: u16,
        len: u32,
        batch: &mut Batch<'_>,
    ) -> Result<()> {
        ensure!(
            (VNET_HDR_LEN + ETH_HDR_LEN) as u64 <= u64::from(len) && len <= self.buffer_len,
            "a receive buffer of {} bytes came back with {len}",
            self.buffer_len
        );
        let len = usize::try_from(len)?;
        let data = self.scratch.get_mut(..len).context("receive buffer")?;
        mem.read_slice(data, GuestAddress(buffer(slot)))?;
        let (header, frame) = data.split_at(VNET_HDR_LEN);
        if batch.accept(frame)? == Arrival::Ours {
            let buffers = u16::from_le_bytes([header[10], header[11]]);
            ensure!(
                buffers == 1,
                "num_buffers {buffers} for a frame in one buffer"
            );
            ensure!(
                header[0] & HDR_F_NEEDS_CSUM == 0 && header[1] == 0,
                "offload flags {:#x}, gso type {} without offloads negotiated",
                header[0],
                header[1]
            );
        }
        Ok(())
    }
}

/// The benchmark: `--op tx` or `--op rx`.
pub fn drive(
    mem: &GuestMemoryMmap,
    events: &DeviceEvents,
    host: &Host,
    args: &DriveArgs,
) -> Result<Figures> {
    match args.op() {
        Some(Op::Rx) => receive(mem, events, host, args),
        _ => transmit(mem, events, host, args),
    }
}

/// The driver sends `args.requests` frames, `args.depth` per kick; each is
/// read back from the tap's interface. The latency is kick to interrupt.
fn transmit(
    mem: &GuestMemoryMmap,
    events: &DeviceEvents,
    host: &Host,
    args: &DriveArgs,
) -> Result<Figures> {
    let size = host.size;
    let templates: Vec<Vec<u8>> = (0..usize::from(args.depth))
        .map(|k| template(BROADCAST, host.mac, k, size))
        .collect();
    let chain_len = u32::try_from(VNET_HDR_LEN + size)?;
    for (slot, t) in (0u16..).zip(&templates) {
        mem.write_slice(&[0u8; VNET_HDR_LEN], GuestAddress(buffer(slot)))?;
        mem.write_slice(t, GuestAddress(buffer(slot) + VNET_HDR_LEN as u64))?;
        QUEUE1.write_desc(mem, slot, buffer(slot), chain_len, 0)?;
    }
    let mut frame = vec![0u8; MAX_FRAME];
    let mut latencies = Vec::new();
    let (mut next_avail, mut done) = (0u16, 0u32);
    let start = Instant::now();
    while done < args.requests {
        let batch = u16::try_from((args.requests - done).min(u32::from(args.depth)))?;
        for slot in 0..batch {
            let seq = u64::from(done) + u64::from(slot);
            let at = buffer(slot) + (VNET_HDR_LEN + SEQ_AT) as u64;
            mem.write_slice(&seq.to_le_bytes(), GuestAddress(at))?;
            QUEUE1.offer(mem, next_avail.wrapping_add(slot), slot)?;
        }
        let first_used = next_avail;
        next_avail = next_avail.wrapping_add(batch);
        let kicked = Instant::now();
        QUEUE1.publish_and_wait(mem, events, next_avail)?;
        latencies.push(u64::try_from(kicked.elapsed().as_nanos()).unwrap_or(u64::MAX));
        for i in 0..batch {
            let (id, len) = QUEUE1.used_entry(mem, first_used.wrapping_add(i))?;
            ensure!(id < u32::from(batch), "used entry names descriptor {id}");
            ensure!(len == 0, "transmit used length {len}, expected 0");
        }
        let mut b = Batch::new(u64::from(done), usize::from(batch), &templates);
        while !b.complete() {
            let n = host
                .recv(&mut frame)
                .with_context(|| format!("{} of {batch} frames sent came out of the tap", b.got))?;
            b.accept(frame.get(..n).unwrap_or_default())?;
        }
        done += u32::from(batch);
    }
    Ok(Figures {
        secs: start.elapsed().as_secs_f64(),
        latencies_ns: latencies,
        bytes: u64::from(args.requests) * size as u64,
    })
}

/// The host sends `args.requests` frames into the tap, `args.depth` at a
/// time; the driver keeps every slot's buffer posted. The latency is from
/// the first send of a batch to the interrupt that completes it.
fn receive(
    mem: &GuestMemoryMmap,
    events: &DeviceEvents,
    host: &Host,
    args: &DriveArgs,
) -> Result<Figures> {
    let size = host.size;
    let mut templates: Vec<Vec<u8>> = (0..usize::from(args.depth))
        .map(|k| template(host.mac, HOST_MAC, k, size))
        .collect();
    let mut ring = RxRing::post_all(mem, events, host.rx_buffer_len(), 0)?;
    let mut latencies = Vec::new();
    let mut done = 0u32;
    let start = Instant::now();
    while done < args.requests {
        let batch = usize::try_from((args.requests - done).min(u32::from(args.depth)))?;
        let sent = Instant::now();
        for (k, t) in templates.iter_mut().take(batch).enumerate() {
            let seq = u64::from(done) + k as u64;
            if let Some(s) = t.get_mut(SEQ_AT..PATTERN_AT) {
                s.copy_from_slice(&seq.to_le_bytes());
            }
            host.send(t)?;
        }
        let mut b = Batch::new(u64::from(done), batch, &templates);
        ring.collect(mem, events, &mut b)?;
        latencies.push(u64::try_from(sent.elapsed().as_nanos()).unwrap_or(u64::MAX));
        done += u32::try_from(batch)?;
    }
    Ok(Figures {
        secs: start.elapsed().as_secs_f64(),
        latencies_ns: latencies,
        bytes: u64::from(args.requests) * size as u64,
    })
}

/// `--hostile CASE` for net: posts the hostile chain at descriptor 0 of
/// the queue the case names, checks that the device returned it unused
/// and sent or delivered nothing through it, then that a normal frame
/// still goes through that queue.
pub fn hostile(
    mem: &GuestMemoryMmap,
    events: &DeviceEvents,
    host: &Host,
    case: &str,
) -> Result<String> {
    let got = if case.starts_with("tx-") {
        hostile_tx(mem, events, host, case)?
    } else {
        hostile_rx(mem, events, host, case)?
    };
    Ok(format!(
        "hostile={case} outcome=handled used_len={got} then=served"
    ))
}

fn hostile_tx(
    mem: &GuestMemoryMmap,
    events: &DeviceEvents,
    host: &Host,
    case: &str,
) -> Result<u32> {
    let size = usize::try_from(MIN_FRAME)?;
    let buf = buffer(0);
    let whole = u32::try_from(VNET_HDR_LEN + size)?;
    let hdr = u32::try_from(VNET_HDR_LEN)?;
    // Frame 0 is in place: if the device sent any of it, it shows.
    let templates = [template(BROADCAST, host.mac, 0, size)];
    mem.write_slice(&[0u8; VNET_HDR_LEN], GuestAddress(buf))?;
    mem.write_slice(&templates[0], GuestAddress(buf + u64::from(hdr)))?;
    let q = QUEUE1;
    match case {
        // Shorter than the vnet and Ethernet headers.
        "tx-short" => q.write_desc(mem, 0, buf, 20, 0)?,
        // Longer than any frame.
        "tx-oversized" => q.write_desc(mem, 0, buf, u32::try_from(MAX_FRAME + 1)?, 0)?,
        // The frame in a device-writable descriptor.
        "tx-writable" => {
            q.write_desc(mem, 0, buf, hdr, DESC_F_NEXT)?;
            q.write_desc(mem, 1, buf + u64::from(hdr), whole - hdr, DESC_F_WRITE)?;
        }
        "tx-outside" => q.write_desc(mem, 0, RAM - 16, whole, 0)?,
        "tx-loop" => {
            q.write_desc(mem, 0, buf, hdr, DESC_F_NEXT)?;
            q.write_desc_to(mem, 1, buf + u64::from(hdr), whole - hdr, DESC_F_NEXT, 0)?;
        }
        other => bail!("unknown net hostile case '{other}'"),
    }
    let got = q
        .submit_one(mem, events, 0)
        .context("no answer to the hostile chain")?;
    ensure!(
        got == 0,
        "hostile case {case}: used length {got}, expected 0"
    );
    // A normal frame, number 1; frame 0 must not come before it.
    mem.write_slice(
        &1u64.to_le_bytes(),
        GuestAddress(buf + u64::from(hdr) + SEQ_AT as u64),
    )?;
    q.write_desc(mem, 0, buf, whole, 0)?;
    let len = q
        .submit_one(mem, events, 1)
        .context("no answer after the hostile chain")?;
    ensure!(len == 0, "transmit used length {len}, expected 0");
    let mut b = Batch::new(1, 1, &templates);
    let mut frame = vec![0u8; MAX_FRAME];
    while !b.complete() {
        let n = host
            .recv(&mut frame)
            .context("the frame after the hostile chain did not come out of the tap")?;
        if b.accept(frame.get(..n).unwrap_or_default())? == Arrival::Stale {
            bail!("hostile case {case}: the device sent the hostile chain's frame");
        }
    }
    Ok(got)
}

fn hostile_rx(
    mem: &GuestMemoryMmap,
    events: &DeviceEvents,
    host: &Host,
    case: &str,
) -> Result<u32> {
    let size = usize::try_from(MIN_FRAME)?;
    let buf = buffer(0);
    let len = host.rx_buffer_len();
    let q = QUEUE0;
    match case {
        // A buffer the device may only read.
        "rx-readable" => q.write_desc(mem, 0, buf, len, 0)?,
        "rx-outside" => q.write_desc(mem, 0, RAM - 16, len, DESC_F_WRITE)?,
        "rx-zero-len" => q.write_desc(mem, 0, buf, 0, DESC_F_WRITE)?,
        "rx-loop" => {
            q.write_desc(mem, 0, buf, 64, DESC_F_WRITE | DESC_F_NEXT)?;
            q.write_desc_to(mem, 1, buf + 64, 64, DESC_F_WRITE | DESC_F_NEXT, 0)?;
        }
        other => bail!("unknown net hostile case '{other}'"),
    }
    let mut templates = [template(host.mac, HOST_MAC, 0, size)];
    // The device reads the next frame into the hostile chain, and must
    // drop it and return the chain empty.
    q.offer(mem, 0, 0)?;
    q.publish(mem, events, 1)?;
    host.send(&templates[0])?;
    while q.used_idx(mem)? != 1 {
        q.wait_interrupt(events)
            .context("no answer to the hostile chain")?;
    }
    let (id, got) = q.used_entry(mem, 0)?;
    ensure!(id == 0, "used entry names descriptor {id}");
    ensure!(
        got == 0,
        "hostile case {case}: used length {got}, expected 0"
    );
    // Good buffers, and a normal frame, number 1.
    let mut ring = RxRing::post_all(mem, events, len, 1)?;
    if let Some(s) = templates[0].get_mut(SEQ_AT..PATTERN_AT) {
        s.copy_from_slice(&1u64.to_le_bytes());
    }
    host.send(&templates[0])?;
    let mut b = Batch::new(1, 1, &templates);
    ring.collect(mem, events, &mut b)
        .context("the frame after the hostile chain did not reach the driver")?;
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_takes_its_frames_once_and_skips_others() {
        let t: Vec<Vec<u8>> = (0..2)
            .map(|k| template(BROADCAST, HOST_MAC, k, 100))
            .collect();
        let mut b = Batch::new(10, 2, &t);
        let mut f = t[1].clone();
        f[SEQ_AT..PATTERN_AT].copy_from_slice(&11u64.to_le_bytes());
        assert_eq!(b.accept(&f).unwrap(), Arrival::Ours);
        assert!(b.accept(&f).is_err(), "a duplicate is an error");
        let mut stale = t[0].clone();
        stale[SEQ_AT..PATTERN_AT].copy_from_slice(&3u64.to_le_bytes());
        assert_eq!(b.accept(&stale).unwrap(), Arrival::Stale);
        assert_eq!(b.accept(&[0u8; 40]).unwrap(), Arrival::Foreign);
        let mut changed = t[0].clone();
        changed[SEQ_AT..PATTERN_AT].copy_from_slice(&10u64.to_le_bytes());
        changed[50] ^= 1;
        assert!(b.accept(&changed).is_err());
        changed[50] ^= 1;
        assert!(!b.complete());
        assert_eq!(b.accept(&changed).unwrap(), Arrival::Ours);
        assert!(b.complete());
        let mut future = t[0].clone();
        future[SEQ_AT..PATTERN_AT].copy_from_slice(&12u64.to_le_bytes());
        assert!(b.accept(&future).is_err());
    }

    #[test]
    fn templates_differ_per_slot_and_have_the_size_asked() {
        let a = template(BROADCAST, HOST_MAC, 0, 1514);
        let b = template(BROADCAST, HOST_MAC, 1, 1514);
        assert_eq!(a.len(), 1514);
        assert_ne!(a[PATTERN_AT..], b[PATTERN_AT..]);
        assert_eq!(a[12..14], [0x88, 0xb5]);
    }
}
