//! virtio-console in the harness (virtio 1.2, 5.3): the device's backend is
//! one end of a stream socket pair, given to it as a pty's master would be;
//! a thread on the other end plays the host's terminal and echoes every
//! byte back. The harness plays the guest's driver: a request is `size`
//! bytes written to the transmit queue (1) that must come back, byte for
//! byte, in receive buffers (queue 0). Its latency is from the transmit
//! kick to the interrupt that completes the echo: the console's round trip
//! through the device, both directions, and a host peer.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::queue::{poll_in, BUFFERS, DESC_F_WRITE, IRQ_TIMEOUT, QUEUE0, QUEUE1, STRIDE};
use super::{DriveArgs, Figures};
use crate::kinds::Opened;
use crate::virtio_pci::DeviceEvents;

/// Largest request: what the device reads from its backend at a time.
pub const MAX_SIZE: u32 = 4096;

/// The device's backend (a socket pair end standing in for a pty master,
/// and a spare end standing in for its slave), with the echoing host side
/// started: a thread that ends when the device's end closes.
pub fn open() -> Result<Opened> {
    let (device, mut host) = UnixStream::pair().context("socket pair")?;
    device.set_nonblocking(true).context("socket pair")?;
    let (held, _) = UnixStream::pair().context("socket pair")?;
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = host.read(&mut buf) {
            if n == 0 || host.write_all(buf.get(..n).unwrap_or_default()).is_err() {
                return;
            }
        }
    });
    Ok(Opened {
        params: crate::kinds::console::pty_params(),
        fds: vec![OwnedFd::from(device), OwnedFd::from(held)],
        file_size: 0,
        root: ipc::Root::Empty,
        status: None,
        terminal: None,
    })
}

/// The byte at offset `i` of request `n`.
fn pattern(n: u32, i: usize) -> u8 {
    let low = |v: usize| v.to_le_bytes()[0];
    low(usize::try_from(n)
        .unwrap_or(0)
        .wrapping_mul(31)
        .wrapping_add(i))
}

/// Echo round trips, one at a time: a receive buffer of `size` bytes is
/// posted, then `size` bytes are transmitted; the request is done when
/// they are all back (in one buffer or several) and the transmit chain is
/// used.
pub fn drive(mem: &GuestMemoryMmap, events: &DeviceEvents, args: &DriveArgs) -> Result<Figures> {
    let size = args.size();
    let len = usize::try_from(size)?;
    let rx_at = BUFFERS;
    let tx_at = BUFFERS + STRIDE;
    let mut latencies = Vec::with_capacity(usize::try_from(args.requests).unwrap_or(0));
    let (mut rx_avail, mut rx_used, mut tx_avail) = (0u16, 0u16, 0u16);
    let mut out = vec![0u8; len];
    let start = Instant::now();
    for n in 0..args.requests {
        for (i, b) in out.iter_mut().enumerate() {
            *b = pattern(n, i);
        }
        mem.write_slice(&out, GuestAddress(tx_at))?;
        QUEUE1.write_desc(mem, 0, tx_at, size, 0)?;
        let mut back: Vec<u8> = Vec::with_capacity(len);
        // A receive buffer for what is still to come.
        let post = |rx_avail: &mut u16, room: u32| -> Result<()> {
            QUEUE0.write_desc(mem, 0, rx_at, room, DESC_F_WRITE)?;
            QUEUE0.offer(mem, *rx_avail, 0)?;
            *rx_avail = rx_avail.wrapping_add(1);
            QUEUE0.publish(mem, events, *rx_avail)
        };
        post(&mut rx_avail, size)?;
        QUEUE1.offer(mem, tx_avail, 0)?;
        tx_avail = tx_avail.wrapping_add(1);
        let kicked = Instant::now();
        QUEUE1.publish(mem, events, tx_avail)?;
        while back.len() < len {
            let irq = &events.irqs[usize::from(QUEUE0.index)];
            ensure!(
                poll_in(std::os::fd::AsRawFd::as_raw_fd(irq), IRQ_TIMEOUT)?,
                "request {n}: {} of {len} bytes came back within {IRQ_TIMEOUT:?}",
                back.len()
            );
            let _ = irq.read();
            while rx_used != QUEUE0.used_idx(mem)? {
                let (id, got) = QUEUE0.used_entry(mem, rx_used)?;
                rx_used = rx_used.wrapping_add(1);
                ensure!(id == 0, "used entry names descriptor {id}");
                let got = usize::try_from(got)?;
                ensure!(
                    back.len() + got <= len,
                    "request {n}: more came back than was sent"
                );
                let mut piece = vec![0u8; got];
                mem.read_slice(&mut piece, GuestAddress(rx_at))?;
                back.extend_from_slice(&piece);
                if back.len() < len {
                    post(&mut rx_avail, u32::try_from(len - back.len())?)?;
                }
            }
        }
        latencies.push(u64::try_from(kicked.elapsed().as_nanos()).unwrap_or(u64::MAX));
        ensure!(
            back == out,
            "request {n}: the echo differs from what was sent"
        );
        // The transmit chain was used before its bytes could come back.
        ensure!(
            QUEUE1.used_idx(mem)? == tx_avail,
            "request {n}: the transmit chain is not used"
        );
        let _ = events.irqs[usize::from(QUEUE1.index)].read();
    }
    Ok(Figures {
        secs: start.elapsed().as_secs_f64(),
        latencies_ns: latencies,
        bytes: u64::from(args.requests) * u64::from(size),
    })
}
