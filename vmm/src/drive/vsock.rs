//! virtio-vsock in the harness (virtio 1.2, 5.10): the device gets a
//! listening unix socket in a scratch directory and a connector channel no
//! one answers. The harness plays both ends of one stream: a host program
//! that connects to the socket and asks for guest port 1234, and the
//! guest's driver, which accepts the device's connection request and then
//! echoes every byte it receives. A request is `size` bytes the host
//! program writes that must come back, byte for byte; its latency is from
//! that write to the last byte read back: the stream's round trip through
//! the device, host to guest and back.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use devices::vsock::packet::{op, Header, HDR_LEN, HOST_CID, TYPE_STREAM};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::queue::{BUFFERS, DESC_F_WRITE, QUEUE0, QUEUE1, STRIDE};
use super::{DriveArgs, Figures};
use crate::kinds::Opened;
use crate::virtio_pci::DeviceEvents;

/// Largest request: one packet's payload.
pub const MAX_SIZE: u32 = 64 << 10;
const _: () = assert!(MAX_SIZE as usize == devices::vsock::MAX_PAYLOAD);
/// The guest's CID.
const CID: u64 = 3;
/// The guest port the host program connects to.
const PORT: u32 = 1234;
/// Receive buffers posted, each a header and 64 KiB.
const RX_BUFFERS: u16 = 16;
const RX_LEN: u32 = 44 + MAX_SIZE;
const _: () = assert!(HDR_LEN == 44);
/// The driver's buffer for the stream, as it tells the device.
const BUF_ALLOC: u32 = 1 << 20;

/// The scratch directory of the device's socket, removed on drop.
pub struct Host {
    dir: PathBuf,
    path: PathBuf,
    /// The connector's end, held so that the device's requests do not fail.
    _connector: OwnedFd,
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The device's backend: a listening socket in a new scratch directory and
/// its end of a connector channel.
pub fn open() -> Result<(Opened, Host)> {
    let dir = std::env::temp_dir().join(format!("skvm-drive-vsock-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join("v.sock");
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).with_context(|| format!("{}", path.display()))?;
    listener.set_nonblocking(true)?;
    let (device_end, connector) = UnixStream::pair().context("socket pair")?;
    device_end.set_nonblocking(true)?;
    let opened = Opened {
        params: crate::kinds::vsock::params(CID),
        fds: vec![listener.into(), device_end.into()],
        ..Opened::default()
    };
    Ok((
        opened,
        Host {
            dir,
            path,
            _connector: connector.into(),
        },
    ))
}

/// The driver's side: receive buffers and the stream's counters.
struct Driver<'a> {
    mem: &'a GuestMemoryMmap,
    events: &'a DeviceEvents,
    rx_avail: u16,
    rx_used: u16,
    tx_avail: u16,
    /// Bytes the driver consumed (its fwd_cnt).
    fwd_cnt: u32,
    /// The device's port for the stream.
    host_port: u32,
}

/// Address of receive buffer `i`; the transmit buffer follows them.
fn rx_addr(i: u16) -> u64 {
    BUFFERS + u64::from(i) * STRIDE
}

const TX_AT: u64 = BUFFERS + RX_BUFFERS as u64 * STRIDE;
/// The transmit chain's descriptor (receive buffers take 0..RX_BUFFERS).
const TX_DESC: u16 = 0;

impl Driver<'_> {
    fn post_rx(&mut self, i: u16) -> Result<()> {
        QUEUE0.offer(self.mem, self.rx_avail, i)?;
        self.rx_avail = self.rx_avail.wrapping_add(1);
        QUEUE0.publish(self.mem, self.events, self.rx_avail)
    }

    /// Waits for packets on the receive queue; each is handed to `take`
    /// and its buffer posted again.
    fn receive(&mut self, mut take: impl FnMut(&mut Self, Header, Vec<u8>)) -> Result<()> {
        QUEUE0.wait_used(self.mem, self.events, self.rx_used)?;
        while self.rx_used != QUEUE0.used_idx(self.mem)? {
            let (id, len) = QUEUE0.used_entry(self.mem, self.rx_used)?;
            self.rx_used = self.rx_used.wrapping_add(1);
            let id = u16::try_from(id).ok().filter(|&i| i < RX_BUFFERS);
            let Some(id) = id else {
                bail!("used entry names descriptor {id:?}");
            };
            let mut b = vec![0u8; usize::try_from(len)?];
            self.mem.read_slice(&mut b, GuestAddress(rx_addr(id)))?;
            let h = Header::parse(&b).context("a packet shorter than its header")?;
            let data = b.get(HDR_LEN..).unwrap_or_default().to_vec();
            ensure!(
                usize::try_from(h.len)? == data.len(),
                "a packet of {} bytes says {}",
                data.len(),
                h.len
            );
            take(self, h, data);
            self.post_rx(id)?;
        }
        Ok(())
    }

    /// Sends a packet from the guest on the stream.
    fn send(&mut self, op: u16, data: &[u8]) -> Result<()> {
        let h = Header {
            src_cid: CID,
            dst_cid: HOST_CID,
            src_port: PORT,
            dst_port: self.host_port,
            len: u32::try_from(data.len())?,
            kind: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: self.fwd_cnt,
        };
        self.mem.write_slice(&h.encode(), GuestAddress(TX_AT))?;
        self.mem
            .write_slice(data, GuestAddress(TX_AT + HDR_LEN as u64))?;
        let len = u32::try_from(HDR_LEN + data.len())?;
        QUEUE1.write_desc(self.mem, TX_DESC, TX_AT, len, 0)?;
        QUEUE1.offer(self.mem, self.tx_avail, TX_DESC)?;
        self.tx_avail = self.tx_avail.wrapping_add(1);
        // The device takes a packet at once: wait for it to be used, so
        // that its buffer can be written again.
        QUEUE1.publish_and_wait(self.mem, self.events, self.tx_avail)
    }
}

/// The byte at offset `i` of request `n`.
fn pattern(n: u32, i: usize) -> u8 {
    let v = usize::try_from(n)
        .unwrap_or(0)
        .wrapping_mul(31)
        .wrapping_add(i);
    u8::try_from(v % 251).unwrap_or(0)
}

/// Sends `args.requests` requests of `args.size()` bytes on `peer`, one at
/// a time, each read back and checked; `echo` runs between the write and
/// the read (the harness's driver, or nothing when a guest echoes).
fn round_trips(
    peer: &mut UnixStream,
    args: &DriveArgs,
    mut echo: impl FnMut(usize) -> Result<()>,
) -> Result<Figures> {
    let size = usize::try_from(args.size())?;
    let mut latencies = Vec::with_capacity(usize::try_from(args.requests).unwrap_or(0));
    let mut out = vec![0u8; size];
    let mut back = vec![0u8; size];
    let start = Instant::now();
    for n in 0..args.requests {
        for (i, b) in out.iter_mut().enumerate() {
            *b = pattern(n, i);
        }
        let sent = Instant::now();
        peer.write_all(&out)?;
        echo(size)?;
        peer.read_exact(&mut back)
            .with_context(|| format!("request {n}: the echo did not come back"))?;
        latencies.push(u64::try_from(sent.elapsed().as_nanos()).unwrap_or(u64::MAX));
        ensure!(
            back == out,
            "request {n}: the echo differs from what was sent"
        );
    }
    Ok(Figures {
        secs: start.elapsed().as_secs_f64(),
        latencies_ns: latencies,
        bytes: u64::from(args.requests) * u64::try_from(size)?,
    })
}

/// A host program's stream to guest port `port` through the vsock socket
/// `path`, once the guest accepted.
fn connect(path: &std::path::Path, port: u32) -> Result<(UnixStream, String)> {
    let mut peer = UnixStream::connect(path)
        .with_context(|| format!("cannot connect to {}", path.display()))?;
    peer.set_read_timeout(Some(Duration::from_secs(30)))?;
    peer.write_all(format!("CONNECT {port}\n").as_bytes())?;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while !line.ends_with(b"\n") && line.len() < 32 {
        let n = peer
            .read(&mut b)
            .with_context(|| format!("no answer to CONNECT {port}"))?;
        ensure!(
            n == 1,
            "the stream ended before an answer to CONNECT {port}"
        );
        line.push(b[0]);
    }
    Ok((peer, String::from_utf8_lossy(&line).into_owned()))
}

/// `--connect PATH`: round trips through a guest that echoes on
/// `args.port`.
pub fn through_guest(path: &std::path::Path, args: &DriveArgs) -> Result<Figures> {
    let (mut peer, answer) = connect(path, args.port)?;
    ensure!(
        answer.starts_with("OK "),
        "CONNECT {} was answered {answer:?} (is a guest program listening there?)",
        args.port
    );
    round_trips(&mut peer, args, |_| Ok(()))
}

/// Connects the host program, has the driver accept, then runs echo round
/// trips one at a time.
pub fn drive(
    mem: &GuestMemoryMmap,
    events: &DeviceEvents,
    host: &Host,
    args: &DriveArgs,
) -> Result<Figures> {
    let mut d = Driver {
        mem,
        events,
        rx_avail: 0,
        rx_used: 0,
        tx_avail: 0,
        fwd_cnt: 0,
        host_port: 0,
    };
    for i in 0..RX_BUFFERS {
        QUEUE0.write_desc(mem, i, rx_addr(i), RX_LEN, DESC_F_WRITE)?;
        d.post_rx(i)?;
    }
    let (mut peer, answer) = {
        // The driver accepts while the host program waits for its answer.
        let path = host.path.clone();
        let waiting = std::thread::spawn(move || connect(&path, PORT));
        let mut requested = None;
        while requested.is_none() {
            d.receive(|_, h, _| {
                if h.op == op::REQUEST && h.dst_port == PORT {
                    requested = Some(h.src_port);
                }
            })?;
        }
        d.host_port = requested.unwrap_or_default();
        d.send(op::RESPONSE, &[])?;
        waiting
            .join()
            .map_err(|_| anyhow::anyhow!("the host program's thread panicked"))??
    };
    ensure!(
        answer == format!("OK {}\n", d.host_port),
        "the host program was answered {answer:?}"
    );
    // The driver echoes what arrives until all of it has.
    round_trips(&mut peer, args, |size| {
        let mut echoed = 0;
        while echoed < size {
            let mut got = Vec::new();
            d.receive(|d, h, data| {
                if h.op == op::RW {
                    d.fwd_cnt = d
                        .fwd_cnt
                        .wrapping_add(u32::try_from(data.len()).unwrap_or(0));
                    got.push(data);
                }
            })?;
            for data in got {
                echoed += data.len();
                d.send(op::RW, &data)?;
            }
        }
        Ok(())
    })
}
