// Test code: a panic is a failure report.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

use super::*;
use crate::test_queue::{events, raw_chains as raw, used};
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

const CID: u64 = 3;
const MEM_SIZE: usize = 0x100_0000;
const TX_RING: u64 = 0;
const RX_RING: u64 = 0x1_0000;
const TX_BUF: u64 = 0x10_0000;
const RX_BUF: u64 = 0x40_0000;
/// Receive buffers as Linux 6.1 posts them: a header and 4 KiB.
const RX_LEN: u32 = (HDR_LEN + 4096) as u32;

/// A device, its guest memory, the listening socket's path and the
/// connector's end of its channel.
struct Rig {
    m: GuestMemory,
    dev: Vsock,
    dir: PathBuf,
    path: PathBuf,
    connector: OwnedFd,
}

fn seqpacket_pair() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two new fds.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(r, 0);
    // SAFETY: both are new fds.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

impl Rig {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("skvm-vsock-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("v.sock");
        let listener = UnixListener::bind(&path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let (ours, connector) = seqpacket_pair();
        let mut dev = Vsock::new(VsockBackend {
            guest_cid: CID,
            listener: listener.into(),
            connector: ours,
        });
        dev.activate(TRANSPORT_FEATURES).unwrap();
        let m = GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        Self {
            m,
            dev,
            dir,
            path,
            connector,
        }
    }

    /// The guest sends `packets` on the transmit queue; whether the device
    /// asked for the receive queue to run.
    fn send(&mut self, packets: &[(Header, &[u8])]) -> bool {
        let vq = MockSplitQueue::create(&self.m, GuestAddress(TX_RING), 64);
        let mut chains = Vec::new();
        let mut at = TX_BUF;
        for (h, data) in packets {
            self.m.write_slice(&h.encode(), GuestAddress(at)).unwrap();
            let mut chain = vec![(at, HDR_LEN as u32, false)];
            if !data.is_empty() {
                self.m.write_slice(data, GuestAddress(at + 0x100)).unwrap();
                chain.push((at + 0x100, data.len() as u32, false));
            }
            chains.push(chain);
            at += 0x2_0000;
        }
        vq.add_desc_chains(&raw(&chains, 0), 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let p = self.dev.process_queue(TX_QUEUE, &mut q, &self.m).unwrap();
        assert_eq!(used(&vq).len(), packets.len());
        p.wake == Some(RX_QUEUE)
    }

    /// The guest gives `n` receive buffers: the packets it got.
    fn receive(&mut self, n: usize) -> Vec<(Header, Vec<u8>)> {
        let vq = MockSplitQueue::create(&self.m, GuestAddress(RX_RING), 64);
        let chains: Vec<_> = (0..n)
            .map(|i| vec![(RX_BUF + i as u64 * 0x2000, RX_LEN, true)])
            .collect();
        vq.add_desc_chains(&raw(&chains, 0), 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        self.dev.process_queue(RX_QUEUE, &mut q, &self.m).unwrap();
        used(&vq)
            .into_iter()
            .map(|(id, len)| {
                let mut b = vec![0u8; len as usize];
                self.m
                    .read_slice(&mut b, GuestAddress(RX_BUF + u64::from(id) * 0x2000))
                    .unwrap();
                (Header::parse(&b).unwrap(), b[HDR_LEN..].to_vec())
            })
            .collect()
    }

    /// Receives until `what` is among the packets (the host side may need
    /// a moment).
    fn receive_until(&mut self, what: impl Fn(&Header) -> bool) -> Vec<(Header, Vec<u8>)> {
        let mut all = Vec::new();
        for _ in 0..200 {
            let got = self.receive(16);
            let done = got.iter().any(|(h, _)| what(h));
            all.extend(got);
            if done {
                return all;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        panic!("never came: {all:?}");
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A guest packet on the stream (guest port, host port).
fn guest(op: u16, guest_port: u32, host_port: u32, len: usize) -> Header {
    Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port: guest_port,
        dst_port: host_port,
        len: len as u32,
        kind: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: 256 << 10,
        fwd_cnt: 0,
    }
}

/// A host client that connected and asked for guest port `port`, and the
/// host port the device gave it, once the guest accepted.
fn host_connects(rig: &mut Rig, port: u32) -> (UnixStream, u32) {
    let mut c = UnixStream::connect(&rig.path).unwrap();
    c.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
    let got = rig.receive_until(|h| h.op == op::REQUEST);
    let req = got.iter().find(|(h, _)| h.op == op::REQUEST).unwrap().0;
    assert_eq!(
        (req.dst_port, req.dst_cid, req.src_cid),
        (port, CID, HOST_CID)
    );
    assert!(req.src_port >= FIRST_HOST_PORT);
    rig.send(&[(guest(op::RESPONSE, port, req.src_port, 0), &[])]);
    let mut line = [0u8; 64];
    let n = c.read(&mut line).unwrap();
    assert_eq!(
        std::str::from_utf8(&line[..n]).unwrap(),
        format!("OK {}\n", req.src_port)
    );
    (c, req.src_port)
}

#[test]
fn a_host_client_reaches_a_guest_listener_and_data_flows_both_ways() {
    let mut rig = Rig::new("h2g");
    let (mut c, local) = host_connects(&mut rig, 52);
    c.write_all(b"from the host").unwrap();
    let got = rig.receive_until(|h| h.op == op::RW);
    let (h, data) = got.iter().find(|(h, _)| h.op == op::RW).unwrap();
    assert_eq!((h.src_port, h.dst_port), (local, 52));
    assert_eq!(data, b"from the host");
    assert_eq!(h.buf_alloc, STREAM_BUF);

    rig.send(&[(guest(op::RW, 52, local, 14), b"from the guest")]);
    let mut back = [0u8; 14];
    c.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"from the guest");
    assert_eq!(rig.dev.stats().bytes_to_host, 14);
    assert_eq!(rig.dev.stats().streams, 1);

    // The host client goes away: the guest hears the stream end.
    drop(c);
    let got = rig.receive_until(|h| h.op == op::SHUTDOWN);
    let h = got.iter().find(|(h, _)| h.op == op::SHUTDOWN).unwrap().0;
    assert_eq!(h.flags, SHUTDOWN_SEND | SHUTDOWN_RCV);
    // The guest closes its side: reset, and the stream is gone.
    let mut shut = guest(op::SHUTDOWN, 52, local, 0);
    shut.flags = SHUTDOWN_SEND | SHUTDOWN_RCV;
    assert!(rig.send(&[(shut, &[])]));
    assert!(rig.receive(4).iter().any(|(h, _)| h.op == op::RST));
    assert_eq!(rig.dev.streams(), 0);
}

#[test]
fn a_guest_connection_goes_through_the_connector_and_a_refusal_resets_it() {
    let mut rig = Rig::new("g2h");
    rig.send(&[(guest(op::REQUEST, 1000, 7, 0), &[])]);
    let mut b = [0u8; 16];
    // SAFETY: reads into a valid buffer.
    let n = unsafe { libc::read(rig.connector.as_raw_fd(), b.as_mut_ptr().cast(), 16) };
    let req = Request::decode(&b[..n as usize]).unwrap();
    assert_eq!(req.port, 7);
    // The connector connects and hands over the stream.
    let (dev_end, mut peer) = UnixStream::pair().unwrap();
    dev_end.set_nonblocking(true).unwrap();
    let reply = host::Reply {
        id: req.id,
        port: 7,
        errno: 0,
    };
    send_with_fd(&rig.connector, &reply.encode(), dev_end.as_raw_fd());
    drop(dev_end);
    let got = rig.receive_until(|h| h.op == op::RESPONSE);
    let h = got[0].0;
    assert_eq!((h.src_port, h.dst_port, h.op), (7, 1000, op::RESPONSE));
    rig.send(&[(guest(op::RW, 1000, 7, 5), b"hello")]);
    let mut got = [0u8; 5];
    peer.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello");
    peer.write_all(b"world").unwrap();
    let got = rig.receive_until(|h| h.op == op::RW);
    assert_eq!(
        got.iter().find(|(h, _)| h.op == op::RW).unwrap().1,
        b"world"
    );

    // A second connection the connector cannot make is reset.
    rig.send(&[(guest(op::REQUEST, 1001, 8, 0), &[])]);
    // SAFETY: as above.
    let n = unsafe { libc::read(rig.connector.as_raw_fd(), b.as_mut_ptr().cast(), 16) };
    let req = Request::decode(&b[..n as usize]).unwrap();
    let refusal = host::Reply {
        id: req.id,
        port: 8,
        errno: libc::ECONNREFUSED,
    };
    // SAFETY: writes a valid buffer.
    unsafe {
        libc::write(
            rig.connector.as_raw_fd(),
            refusal.encode().as_ptr().cast(),
            12,
        )
    };
    let got = rig.receive_until(|h| h.op == op::RST);
    assert!(got
        .iter()
        .any(|(h, _)| h.op == op::RST && h.dst_port == 1001));
    // The first stream is untouched.
    assert_eq!(rig.dev.streams(), 1);
}

fn send_with_fd(sock: &OwnedFd, bytes: &[u8], fd: RawFd) {
    let mut control = [0u64; 4];
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // SAFETY: a msghdr over local buffers, filled as cmsg(3) says.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(4) as usize;
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(4) as usize;
        libc::CMSG_DATA(c).cast::<RawFd>().write_unaligned(fd);
        assert!(libc::sendmsg(sock.as_raw_fd(), &msg, 0) > 0);
    }
}

#[test]
fn credit_bounds_what_either_side_can_make_the_device_hold() {
    let mut rig = Rig::new("credit");
    let (mut c, local) = host_connects(&mut rig, 60);
    // The guest has room for 100 bytes only: no more is read from the host.
    let mut small = guest(op::CREDIT_UPDATE, 60, local, 0);
    small.buf_alloc = 100;
    rig.send(&[(small, &[])]);
    c.write_all(&[7u8; 4000]).unwrap();
    let got = rig.receive_until(|h| h.op == op::RW);
    let total: usize = got.iter().map(|(_, d)| d.len()).sum();
    assert_eq!(total, 100);
    assert!(rig.receive(4).is_empty());
    // Nor is the host socket polled for input until the guest has room.
    assert!(events(&rig.dev)
        .iter()
        .all(|e| e.fd != c.as_raw_fd() || e.writable));
    let mut more = small;
    more.fwd_cnt = 100;
    assert!(rig.send(&[(more, &[])]));
    let got = rig.receive(4);
    assert_eq!(got.iter().map(|(_, d)| d.len()).sum::<usize>(), 100);

    // A guest sending beyond the device's buffer, with a host peer that
    // does not read, has its stream reset; the held data stays bounded.
    let chunk = vec![1u8; MAX_PAYLOAD];
    let mut sent = 0;
    while rig.dev.streams() == 1 && sent < 64 {
        rig.send(&[(guest(op::RW, 60, local, chunk.len()), &chunk)]);
        assert!(rig.dev.held() <= STREAM_BUF as usize);
        sent += 1;
    }
    assert_eq!(rig.dev.streams(), 0);
    assert_eq!(rig.dev.stats().credit_violations, 1);
    drop(c);
}

#[test]
fn bad_packets_are_counted_and_unknown_streams_reset() {
    let mut rig = Rig::new("bad");
    // Wrong source CID: dropped.
    let mut spoofed = guest(op::REQUEST, 1, 2, 0);
    spoofed.src_cid = 9;
    // A length beyond the chain: dropped.
    let long = guest(op::RW, 1, 2, 500);
    // Data for a stream that does not exist: reset.
    let stray = guest(op::RW, 5, 6, 3);
    rig.send(&[(spoofed, &[]), (long, b"abc"), (stray, b"abc")]);
    assert_eq!(rig.dev.stats().bad, 2);
    let got = rig.receive(4);
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].0.op, got[0].0.dst_port), (op::RST, 5));
    // A host client with a bad line is dropped.
    let mut c = UnixStream::connect(&rig.path).unwrap();
    c.write_all(b"HELLO\n").unwrap();
    rig.receive(1);
    let mut answer = String::new();
    c.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("ERR"), "{answer}");
    assert!(rig.dev.report().is_some());
}

#[test]
fn a_restored_device_owes_the_guest_a_transport_reset() {
    let mut rig = Rig::new("restore");
    rig.dev.stats.packets_in = 5;
    let state = rig.dev.save_state();
    let mut other = Rig::new("restore2");
    other.dev.restore_state(&state).unwrap();
    assert_eq!(other.dev.stats().packets_in, 5);
    let vq = MockSplitQueue::create(&other.m, GuestAddress(RX_RING), 16);
    vq.add_desc_chains(&raw(&[vec![(RX_BUF, 8, true)]], 0), 0)
        .unwrap();
    let mut q: Queue = vq.create_queue().unwrap();
    let p = other
        .dev
        .process_queue(EVENT_QUEUE, &mut q, &other.m)
        .unwrap();
    assert!(p.notify);
    assert_eq!(used(&vq), vec![(0, 4)]);
    // Only once.
    let mut q: Queue = vq.create_queue().unwrap();
    assert!(
        !other
            .dev
            .process_queue(EVENT_QUEUE, &mut q, &other.m)
            .unwrap()
            .notify
    );
    assert!(other.dev.restore_state(&state[1..]).is_err());
}
