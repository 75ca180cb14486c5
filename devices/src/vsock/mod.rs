//! virtio-vsock (virtio 1.2, section 5.10), stream sockets only: a channel
//! between guest and host with neither a network card nor a tap.
//!
//! The device holds a listening unix socket (`PATH`) and its end of a
//! connector channel (see [`host`]), nothing else:
//!
//! - host to guest: a host program connects to `PATH` and writes
//!   `CONNECT <port>\n`; the device sends the guest a connection request
//!   to that port from a host port of its own (from 2^30 up) and, once the
//!   guest accepts, answers `OK <host port>\n` (as Firecracker does), after
//!   which the stream carries data both ways;
//! - guest to host: a guest connection to CID 2, port P, becomes a request
//!   to the connector, which connects to the unix socket `PATH_P` and
//!   hands the device the connected fd.
//!
//! Three queues: receive (0), packets for the guest; transmit (1), packets
//! from it; event (2), which carries a transport reset after the device was
//! restored into a new process (its streams are gone: the guest resets its
//! connections, new ones work).
//!
//! Flow control is the spec's credit scheme, both ways. The device tells
//! the guest it has [`STREAM_BUF`] bytes per stream and how many it has
//! passed on to the host; a guest that sends more than that (it may not)
//! has its stream reset, so guest data waiting for a host peer that does
//! not read never exceeds [`STREAM_BUF`] per stream. Host data is read only
//! when the guest has said it has room for it, and straight into the
//! guest's buffer: a host peer that writes to a guest that does not read
//! waits in its own socket buffer. At most [`MAX_STREAMS`] streams exist at
//! once; a host peer that goes away resets only its own stream.
//!
//! Guest input is hostile: malformed chains are completed empty, packets
//! with wrong addresses dropped, unexpected operations answered with a
//! reset, and all of it counted.
//!
//! Code map: this module holds the stream table and what comes from the
//! guest (the transmit queue); `from_host` what comes from host programs,
//! the connector and the peers' fds; `to_guest` what goes to the guest
//! (the receive and event queues); `host` the non-blocking calls on host
//! fds and the connector's protocol; `packet` the header.

mod from_host;
pub mod host;
pub mod packet;
mod to_guest;

use std::collections::VecDeque;
use std::num::Wrapping;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use virtio_queue::{DescriptorChain, Queue};

use crate::hostio::{self, Io};
use crate::virtio::{
    check_features, gather, serve_queue, BackendEvent, DeviceError, GuestMemory, Processed,
    VirtioDevice, TRANSPORT_FEATURES,
};
use host::Request;
use packet::{op, Header, HDR_LEN, HOST_CID, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};

/// Device ID of a socket device.
pub const DEVICE_ID_VSOCK: u32 = 19;
/// Queue size offered to the driver.
pub const QUEUE_SIZE: u16 = 256;
/// The receive queue: packets for the guest.
pub const RX_QUEUE: usize = 0;
/// The transmit queue: packets from the guest.
pub const TX_QUEUE: usize = 1;
/// The event queue.
pub const EVENT_QUEUE: usize = 2;
/// Most streams at once.
pub const MAX_STREAMS: usize = 64;
/// The buffer the device offers the guest per stream (its `buf_alloc`):
/// the most guest data it holds for a host peer that does not read.
pub const STREAM_BUF: u32 = 128 << 10;
/// Most payload of one packet either way (Linux sends at most 64 KiB).
pub const MAX_PAYLOAD: usize = 64 << 10;
/// Most packets without payload waiting for receive buffers.
const MAX_CONTROL: usize = 4 * MAX_STREAMS;
/// Longest `CONNECT <port>` line.
const LINE_MAX: usize = 32;
/// The host ports the device gives host-initiated streams start here.
const FIRST_HOST_PORT: u32 = 1 << 30;
/// `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET`.
const EVENT_TRANSPORT_RESET: u32 = 0;
/// Packets the receive queue sends per call before it yields.
const RX_BUDGET: usize = 1024;

/// What the device serves: the guest's CID and its host-side fds.
#[derive(Debug)]
pub struct VsockBackend {
    /// The guest's context ID (3 or more).
    pub guest_cid: u64,
    /// The listening unix socket host programs connect to (non-blocking).
    pub listener: OwnedFd,
    /// The device's end of the connector channel (SOCK_SEQPACKET).
    pub connector: OwnedFd,
}

/// Where a stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// A host client connected; its `CONNECT` line is being read.
    Handshake,
    /// The guest was asked to accept (host to guest).
    Requested,
    /// The connector was asked for a host connection (guest to host).
    Connecting,
    /// Data flows.
    Open,
}

#[derive(Debug)]
struct Stream {
    /// The host side's port (the device's own, or the port the guest
    /// connected to).
    local_port: u32,
    /// The guest side's port.
    peer_port: u32,
    fd: Option<OwnedFd>,
    state: State,
    /// The `CONNECT` line so far.
    line: Vec<u8>,
    /// Guest data the host peer has not taken yet.
    to_host: VecDeque<u8>,
    /// Guest bytes passed on to the host peer.
    fwd_cnt: Wrapping<u32>,
    /// `fwd_cnt` as the guest last heard it.
    fwd_told: Wrapping<u32>,
    /// The guest's buffer and what it has consumed of what it received.
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    /// Bytes sent to the guest.
    rx_cnt: Wrapping<u32>,
    /// The guest will send no more (SHUTDOWN SEND).
    guest_done_sending: bool,
    /// The guest will receive no more (SHUTDOWN RCV).
    guest_done_receiving: bool,
    /// The host peer's input was ended after `guest_done_sending`.
    host_write_shut: bool,
    /// The host peer sent end of file; `hung_up`: it is gone altogether.
    host_eof: bool,
    hung_up: bool,
    /// The last poll saw data (or an end) on the fd.
    readable: bool,
}

impl Stream {
    fn new(local_port: u32, peer_port: u32, fd: Option<OwnedFd>, state: State) -> Self {
        Self {
            local_port,
            peer_port,
            fd,
            state,
            line: Vec::new(),
            to_host: VecDeque::new(),
            fwd_cnt: Wrapping(0),
            fwd_told: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            rx_cnt: Wrapping(0),
            guest_done_sending: false,
            guest_done_receiving: false,
            host_write_shut: false,
            host_eof: false,
            hung_up: false,
            readable: false,
        }
    }

    /// How many more bytes the guest has room for.
    fn credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    fn raw_fd(&self) -> Option<RawFd> {
        self.fd.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// Whether host data may be read for the guest now.
    fn wants_input(&self) -> bool {
        self.state == State::Open
            && !self.host_eof
            && !self.guest_done_receiving
            && self.credit() > 0
    }
}

/// A packet without payload for the guest.
#[derive(Debug, Clone, Copy)]
struct Control {
    op: u16,
    flags: u32,
    local_port: u32,
    peer_port: u32,
}

crate::counters! {
    /// What the device has done, for statistics.
    pub struct VsockStats {
        /// Packets from the guest.
        pub packets_in: u64,
        /// Packets to the guest.
        pub packets_out: u64,
        /// Guest bytes passed on to host peers.
        pub bytes_to_host: u64,
        /// Host bytes delivered to the guest.
        pub bytes_to_guest: u64,
        /// Streams that opened (both ways).
        pub streams: u64,
        /// Resets sent to the guest.
        pub resets: u64,
        /// Chains completed empty and packets dropped because they were
        /// malformed or wrongly addressed.
        pub bad: u64,
        /// Guest packets beyond the credit the device gave (stream reset).
        pub credit_violations: u64,
        /// Connections refused because the table was full or the connector
        /// could not take the request.
        pub refused: u64,
        /// Packets without payload dropped because too many waited.
        pub dropped: u64,
    }
}

/// The virtio-vsock device model.
pub struct Vsock {
    backend: VsockBackend,
    features: u64,
    streams: Vec<Stream>,
    control: VecDeque<Control>,
    /// Connector requests not yet answered: (id, host port, guest port).
    connecting: VecDeque<(u32, u32, u32)>,
    next_request: Wrapping<u32>,
    connector_gone: bool,
    next_port: u32,
    /// Where the receive queue looks for host data first (round robin).
    next_stream: usize,
    /// The driver had no receive buffers for what waits: streams are not
    /// polled for input until it kicks the receive queue.
    rx_starved: bool,
    /// A transport reset is owed to the driver (after a restore).
    reset_event: bool,
    /// Something the receive queue sends became possible while the
    /// transmit queue was served.
    rx_work: bool,
    stats: VsockStats,
    tx_buf: Vec<u8>,
    rx_buf: Vec<u8>,
    polls: Vec<libc::pollfd>,
}

impl Vsock {
    /// A device over `backend`.
    pub fn new(backend: VsockBackend) -> Self {
        // Request ids and host ports start where the clock says, so that
        // an answer meant for a previous instance (before a restart)
        // matches none of ours, and a guest socket that missed the reset of
        // that instance's streams is not taken for a new one.
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        Self {
            backend,
            features: 0,
            streams: Vec::new(),
            control: VecDeque::new(),
            connecting: VecDeque::new(),
            next_request: Wrapping(seed),
            connector_gone: false,
            next_port: FIRST_HOST_PORT + seed % FIRST_HOST_PORT,
            next_stream: 0,
            rx_starved: false,
            reset_event: false,
            rx_work: false,
            stats: VsockStats::default(),
            tx_buf: Vec::new(),
            rx_buf: vec![0; HDR_LEN + MAX_PAYLOAD],
            polls: Vec::new(),
        }
    }

    /// What the device has done so far.
    pub fn stats(&self) -> VsockStats {
        self.stats
    }

    /// How many streams exist.
    pub fn streams(&self) -> usize {
        self.streams.len()
    }

    /// Guest bytes held for host peers that have not taken them.
    pub fn held(&self) -> usize {
        self.streams.iter().map(|s| s.to_host.len()).sum()
    }

    /// The stream (local, peer), once it has ports (a host client still
    /// sending its `CONNECT` line has none).
    fn find(&self, local_port: u32, peer_port: u32) -> Option<usize> {
        self.streams.iter().position(|s| {
            s.state != State::Handshake && s.local_port == local_port && s.peer_port == peer_port
        })
    }

    fn push_control(&mut self, op: u16, flags: u32, local_port: u32, peer_port: u32) {
        if self.control.len() >= MAX_CONTROL {
            self.stats.dropped += 1;
            return;
        }
        if op == op::RST {
            self.stats.resets += 1;
        }
        self.control.push_back(Control {
            op,
            flags,
            local_port,
            peer_port,
        });
        self.rx_work = true;
    }

    /// Resets stream `i`: the guest is told, the host peer's fd closed.
    fn reset(&mut self, i: usize) {
        let s = self.streams.swap_remove(i);
        if matches!(s.state, State::Requested | State::Connecting | State::Open) {
            self.push_control(op::RST, 0, s.local_port, s.peer_port);
        }
    }

    /// A header for the guest on the stream (local, peer), with the
    /// device's credit for it.
    fn header(&mut self, op: u16, flags: u32, local_port: u32, peer_port: u32, len: u32) -> Header {
        let fwd_cnt = match self.find(local_port, peer_port) {
            Some(i) => {
                let s = &mut self.streams[i];
                s.fwd_told = s.fwd_cnt;
                s.fwd_cnt.0
            }
            None => 0,
        };
        Header {
            src_cid: HOST_CID,
            dst_cid: self.backend.guest_cid,
            src_port: local_port,
            dst_port: peer_port,
            len,
            kind: TYPE_STREAM,
            op,
            flags,
            buf_alloc: STREAM_BUF,
            fwd_cnt,
        }
    }

    // ---- From the guest ----------------------------------------------

    /// One transmit chain: a packet from the guest. Used length 0.
    fn transmit(&mut self, chain: DescriptorChain<&GuestMemory>, mem: &GuestMemory) -> u32 {
        let mut buf = std::mem::take(&mut self.tx_buf);
        buf.clear();
        if gather(chain, mem, &mut buf, HDR_LEN + MAX_PAYLOAD) {
            let h = Header::parse(&buf);
            let data = h.and_then(|h| {
                let len = usize::try_from(h.len).ok()?;
                buf.get(HDR_LEN..HDR_LEN.checked_add(len)?)
            });
            match (h, data) {
                (Some(h), Some(data)) => self.guest_packet(h, data),
                _ => self.stats.bad += 1,
            }
        } else {
            self.stats.bad += 1;
        }
        self.tx_buf = buf;
        0
    }

    fn guest_packet(&mut self, h: Header, data: &[u8]) {
        self.stats.packets_in += 1;
        if h.src_cid != self.backend.guest_cid || h.dst_cid != HOST_CID {
            self.stats.bad += 1;
            return;
        }
        let found = self.find(h.dst_port, h.src_port);
        if h.kind != TYPE_STREAM {
            if h.op != op::RST {
                self.push_control(op::RST, 0, h.dst_port, h.src_port);
            }
            return;
        }
        if let Some(i) = found {
            let s = &mut self.streams[i];
            let had = s.credit();
            s.peer_buf_alloc = h.buf_alloc;
            s.peer_fwd_cnt = Wrapping(h.fwd_cnt);
            if had == 0 && s.credit() > 0 {
                self.rx_work = true;
            }
        }
        match (h.op, found) {
            (op::REQUEST, None) => self.guest_connects(h),
            (op::RESPONSE, Some(i)) if self.streams[i].state == State::Requested => {
                self.accepted(i);
            }
            (op::RW, Some(i)) if self.streams[i].state == State::Open => self.guest_data(i, data),
            (op::SHUTDOWN, Some(i)) => self.guest_shuts(i, h.flags),
            (op::RST, Some(i)) => {
                self.streams.swap_remove(i);
            }
            (op::RST, None) => {}
            (op::CREDIT_UPDATE, Some(_)) => {}
            (op::CREDIT_REQUEST, Some(i)) => {
                let s = &self.streams[i];
                let (l, p) = (s.local_port, s.peer_port);
                self.push_control(op::CREDIT_UPDATE, 0, l, p);
            }
            (_, Some(i)) => self.reset(i),
            (_, None) => self.push_control(op::RST, 0, h.dst_port, h.src_port),
        }
    }

    /// A guest connection to host port `h.dst_port`.
    fn guest_connects(&mut self, h: Header) {
        let (local, peer) = (h.dst_port, h.src_port);
        let id = self.next_request;
        let room = self.streams.len() < MAX_STREAMS && self.connecting.len() < MAX_STREAMS;
        let sent = room
            && !self.connector_gone
            && host::send_request(
                self.backend.connector.as_raw_fd(),
                Request {
                    id: id.0,
                    port: local,
                },
            );
        if !sent {
            self.stats.refused += 1;
            self.push_control(op::RST, 0, local, peer);
            return;
        }
        self.next_request += 1;
        self.connecting.push_back((id.0, local, peer));
        let mut s = Stream::new(local, peer, None, State::Connecting);
        s.peer_buf_alloc = h.buf_alloc;
        s.peer_fwd_cnt = Wrapping(h.fwd_cnt);
        self.streams.push(s);
    }

    /// The guest accepted host-initiated stream `i`: the host client hears
    /// `OK <host port>`.
    fn accepted(&mut self, i: usize) {
        let s = &mut self.streams[i];
        s.state = State::Open;
        self.stats.streams += 1;
        let line = format!("OK {}\n", s.local_port);
        let ok = s
            .raw_fd()
            .is_some_and(|fd| hostio::write(fd, line.as_bytes()) == Io::Done(line.len()));
        if !ok {
            self.reset(i);
        }
    }

    /// Guest data for stream `i`'s host peer.
    fn guest_data(&mut self, i: usize, data: &[u8]) {
        let s = &mut self.streams[i];
        let held = s.to_host.len().saturating_add(data.len());
        if s.guest_done_sending || held > STREAM_BUF as usize {
            if !s.guest_done_sending {
                self.stats.credit_violations += 1;
            }
            self.reset(i);
            return;
        }
        s.to_host.extend(data);
        self.flush(i);
    }

    /// Passes what stream `i` holds to its host peer, as far as it takes
    /// it; false if the stream was reset.
    fn flush(&mut self, i: usize) -> bool {
        let s = &mut self.streams[i];
        let Some(fd) = s.raw_fd() else {
            return true;
        };
        while !s.to_host.is_empty() {
            let (a, _) = s.to_host.as_slices();
            match hostio::write(fd, a) {
                Io::Done(0) => break,
                Io::Done(n) => {
                    s.to_host.drain(..n);
                    s.fwd_cnt += u32::try_from(n).unwrap_or(0);
                    self.stats.bytes_to_host += n as u64;
                }
                _ => {
                    self.reset(i);
                    return false;
                }
            }
        }
        if s.to_host.is_empty() && s.guest_done_sending {
            if s.guest_done_receiving {
                // Closed by the guest, and all of it passed on.
                self.reset(i);
                return false;
            }
            if !s.host_write_shut {
                host::shut_write(fd);
                s.host_write_shut = true;
            }
        }
        // Tell the guest once half its credit came back (it waits for it
        // only when all is used, so this always comes in time).
        if (s.fwd_cnt - s.fwd_told).0 >= STREAM_BUF / 2 {
            s.fwd_told = s.fwd_cnt;
            let (l, p) = (s.local_port, s.peer_port);
            self.push_control(op::CREDIT_UPDATE, 0, l, p);
        }
        true
    }

    /// SHUTDOWN from the guest. Once it will neither send nor receive, the
    /// stream ends when its host peer has taken what the guest sent: the
    /// guest gets the reset its close waits for (for at most 8 s, after
    /// which it resets the stream itself).
    fn guest_shuts(&mut self, i: usize, flags: u32) {
        let s = &mut self.streams[i];
        s.guest_done_sending |= flags & SHUTDOWN_SEND != 0;
        s.guest_done_receiving |= flags & SHUTDOWN_RCV != 0;
        if s.state == State::Open {
            self.flush(i);
        } else if s.guest_done_sending && s.guest_done_receiving {
            self.reset(i);
        }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        DEVICE_ID_VSOCK
    }

    fn num_queues(&self) -> usize {
        3
    }

    fn max_queue_size(&self) -> u16 {
        QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        TRANSPORT_FEATURES
    }

    /// `struct virtio_vsock_config`: the guest's CID.
    fn config(&self) -> Vec<u8> {
        self.backend.guest_cid.to_le_bytes().to_vec()
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
        match index {
            RX_QUEUE => self.receive(queue, mem),
            TX_QUEUE => {
                self.rx_work = false;
                let mut p = serve_queue(queue, mem, |chain| self.transmit(chain, mem))?;
                if self.rx_work {
                    p.wake = Some(RX_QUEUE);
                }
                Ok(p)
            }
            EVENT_QUEUE => self.events(queue, mem),
            i => Err(DeviceError::NoQueue(i)),
        }
    }

    fn backend_events(&self, out: &mut Vec<BackendEvent>) {
        out.push(BackendEvent::readable(
            self.backend.listener.as_raw_fd(),
            RX_QUEUE,
        ));
        if !self.connector_gone {
            out.push(BackendEvent::readable(
                self.backend.connector.as_raw_fd(),
                RX_QUEUE,
            ));
        }
        for s in &self.streams {
            let Some(fd) = s.raw_fd() else {
                continue;
            };
            let input = match s.state {
                State::Handshake => true,
                State::Open => !self.rx_starved && s.wants_input(),
                State::Requested | State::Connecting => false,
            };
            if input {
                out.push(BackendEvent::readable(fd, RX_QUEUE));
            }
            if s.state == State::Open && !s.to_host.is_empty() {
                out.push(BackendEvent::writable(fd, RX_QUEUE));
            }
        }
    }

    fn report(&self) -> Option<String> {
        let s = &self.stats;
        (s.bad + s.credit_violations + s.dropped > 0).then(|| {
            format!(
                "dropped {} malformed or misaddressed chains and packets, reset {} streams \
                 that sent beyond their credit, dropped {} replies beyond the {MAX_CONTROL} \
                 that may wait",
                s.bad, s.credit_violations, s.dropped
            )
        })
    }

    /// The counters. Streams are not kept: their host fds stay with this
    /// process, so a new instance owes the guest a transport reset.
    fn save_state(&self) -> Vec<u8> {
        self.stats.save()
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), DeviceError> {
        self.stats = VsockStats::restore(state, "vsock")?;
        self.reset_event = true;
        Ok(())
    }

    /// The dead instance's streams are gone with its fds: the guest is
    /// told to reset its connections.
    fn recovered(&mut self) {
        self.reset_event = true;
    }

    fn reset(&mut self) {
        self.features = 0;
        self.streams.clear();
        self.control.clear();
        self.rx_starved = false;
        self.reset_event = false;
        self.next_stream = 0;
    }
}

#[cfg(test)]
mod tests;
