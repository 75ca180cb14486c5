//! virtio-console (virtio 1.2, section 5.3), one port and no multiport:
//! hvc0 in a Linux guest, over the backend fds the VMM opened. The device
//! holds those fds and nothing else: a pseudo-terminal's master (and its
//! slave, kept open so that the pty serves while no one has it open), a
//! file it appends to, a listening unix socket whose clients it accepts
//! one at a time, or skvm's standard output and a pipe the VMM forwards
//! its terminal's input into.
//!
//! Two queues: receive (0), host input for the guest, and transmit (1),
//! guest output. Output never waits for the host: what a pty, a file or a
//! client cannot take now is dropped and counted, so a host side that does
//! not read cannot stop the guest (as with the 8250). A socket keeps the
//! last [`HISTORY`] bytes of output for the next client, who gets them
//! first. Input is read from the backend only while the driver has receive
//! buffers: a host that types faster than the guest reads waits in its own
//! socket or pty buffer, never in the device's memory.
//!
//! Guest input is hostile: transmit chains with device-writable
//! descriptors, longer than [`MAX_CHAIN`], cut short or outside memory,
//! and receive chains with readable descriptors or outside memory are
//! completed empty and counted.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use virtio_queue::{DescriptorChain, Queue, QueueT};

use crate::hostio::{self, Io};
use crate::virtio::{
    check_features, end_fill, gather, next_chain, scatter, serve_queue, BackendEvent, DeviceError,
    GuestMemory, Processed, VirtioDevice, DEVICE_ID_CONSOLE, TRANSPORT_FEATURES,
};

/// Queue size offered to the driver.
pub const QUEUE_SIZE: u16 = 256;
/// The receive queue (port 0's input).
pub const RX_QUEUE: usize = 0;
/// The transmit queue (port 0's output).
pub const TX_QUEUE: usize = 1;
/// Most bytes of one transmit chain (Linux sends at most a page).
pub const MAX_CHAIN: usize = 64 << 10;
/// How much output a socket console keeps for the next client.
pub const HISTORY: usize = 64 << 10;
/// Bytes read from the backend at a time.
const INPUT_CHUNK: usize = 4096;
/// Most reads from the backend per call.
const INPUT_BUDGET: usize = 64;
/// What a second client is told before it is closed.
pub const BUSY: &[u8] = b"skvm: another client has this console\r\n";
/// `struct virtio_console_config` (5.3.4): cols, rows, max_nr_ports,
/// emerg_wr. No feature makes any field meaningful; the driver reads none.
const CONFIG_LEN: usize = 12;

/// The last output, for a client that attaches later.
#[derive(Debug, Default)]
pub struct History {
    bytes: VecDeque<u8>,
}

impl History {
    /// Keeps `buf`, dropping the oldest bytes beyond [`HISTORY`].
    pub fn keep(&mut self, buf: &[u8]) {
        let tail = buf.get(buf.len().saturating_sub(HISTORY)..).unwrap_or(buf);
        let over = (self.bytes.len() + tail.len()).saturating_sub(HISTORY);
        self.bytes.drain(..over.min(self.bytes.len()));
        self.bytes.extend(tail);
    }

    /// What is kept, oldest first, in two parts.
    pub fn as_slices(&self) -> (&[u8], &[u8]) {
        self.bytes.as_slices()
    }

    /// How many bytes are kept.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// Where the console's output goes and its input comes from.
#[derive(Debug)]
pub enum ConsoleBackend {
    /// A pty master (non-blocking), read and written; the slave, held.
    Pty {
        /// The master.
        master: OwnedFd,
        /// The slave, never used: held so that the pty serves while no
        /// one else has it open.
        slave: OwnedFd,
    },
    /// A file output is appended to; no input.
    File(OwnedFd),
    /// skvm's terminal: input from a pipe the VMM writes what the user
    /// types into (after its escape key), output to skvm's standard output
    /// (blocking, as the 8250's on a terminal is).
    Stdio {
        /// The pipe's read end (non-blocking).
        input: OwnedFd,
        /// skvm's standard output.
        output: OwnedFd,
    },
    /// A listening unix socket (non-blocking): one client at a time.
    Socket {
        /// The listener.
        listener: OwnedFd,
        /// The client attached, if any.
        client: Option<OwnedFd>,
        /// The last output.
        history: History,
    },
}

crate::counters! {
    /// What the device has done, for statistics.
    pub struct ConsoleStats {
        /// Output bytes the backend took.
        pub tx_bytes: u64,
        /// Output bytes the backend could not take now (dropped).
        pub tx_dropped: u64,
        /// Input bytes delivered to the driver.
        pub rx_bytes: u64,
        /// Chains completed empty because they were malformed.
        pub bad_chains: u64,
        /// Clients attached (socket).
        pub clients: u64,
    }
}

/// The virtio-console device model.
pub struct Console {
    backend: ConsoleBackend,
    features: u64,
    stats: ConsoleStats,
    /// Input read from the backend and not yet delivered:
    /// `rx_buf[rx_off..rx_len]`.
    rx_buf: Vec<u8>,
    rx_off: usize,
    rx_len: usize,
    /// The driver had no receive buffers for pending input: the input fd
    /// is not polled until the driver kicks the receive queue.
    rx_starved: bool,
    /// The input ended for good (a pty whose reads fail).
    input_failed: bool,
    /// Bounce buffer for output.
    tx_buf: Vec<u8>,
}

impl Console {
    /// A device over `backend`.
    pub fn new(backend: ConsoleBackend) -> Self {
        Self {
            backend,
            features: 0,
            stats: ConsoleStats::default(),
            rx_buf: vec![0; INPUT_CHUNK],
            rx_off: 0,
            rx_len: 0,
            rx_starved: false,
            input_failed: false,
            tx_buf: Vec::new(),
        }
    }

    /// What the device has done so far.
    pub fn stats(&self) -> ConsoleStats {
        self.stats
    }

    /// Sends guest output to the backend; what it cannot take is dropped.
    fn output(&mut self, data: &[u8]) {
        let (fd, history, client) = match &mut self.backend {
            ConsoleBackend::Pty { master, .. } => (Some(master.as_raw_fd()), None, None),
            ConsoleBackend::File(f) => (Some(f.as_raw_fd()), None, None),
            ConsoleBackend::Stdio { output, .. } => (Some(output.as_raw_fd()), None, None),
            ConsoleBackend::Socket {
                client, history, ..
            } => (
                client.as_ref().map(AsRawFd::as_raw_fd),
                Some(history),
                Some(client),
            ),
        };
        if let Some(h) = history {
            h.keep(data);
        }
        let sent = match fd.map(|fd| hostio::write(fd, data)) {
            Some(Io::Done(n)) => n,
            Some(_) => {
                // A client that went away is detached; a pty or file that
                // fails drops this output.
                if let Some(c) = client {
                    *c = None;
                }
                0
            }
            None => 0,
        };
        self.stats.tx_bytes += sent as u64;
        self.stats.tx_dropped += (data.len() - sent) as u64;
    }

    /// One transmit chain to the backend; the used length is always 0.
    fn transmit(&mut self, chain: DescriptorChain<&GuestMemory>, mem: &GuestMemory) -> u32 {
        let mut buf = std::mem::take(&mut self.tx_buf);
        buf.clear();
        if gather(chain, mem, &mut buf, MAX_CHAIN) {
            self.output(&buf);
        } else {
            self.stats.bad_chains += 1;
        }
        self.tx_buf = buf;
        0
    }

    /// Takes waiting clients (socket): the first gets the history, then
    /// the output from now on; any other is told the console is taken.
    fn accept(&mut self) {
        let ConsoleBackend::Socket {
            listener,
            client,
            history,
        } = &mut self.backend
        else {
            return;
        };
        while let Some(stream) = hostio::accept(listener.as_raw_fd()) {
            let fd = stream.as_raw_fd();
            if client.is_some() {
                let _ = hostio::write(fd, BUSY);
                continue;
            }
            // What the socket buffer cannot take of the history is lost
            // (a unix socket's default buffer holds all of it).
            let (a, b) = history.as_slices();
            let sent = |part| matches!(hostio::write(fd, part), Io::Done(_));
            if sent(a) && sent(b) {
                *client = Some(stream);
                self.stats.clients += 1;
            }
        }
    }

    /// The fd input comes from, if any.
    fn input_fd(&self) -> Option<RawFd> {
        match &self.backend {
            ConsoleBackend::Pty { master, .. } => Some(master.as_raw_fd()),
            ConsoleBackend::File(_) => None,
            ConsoleBackend::Stdio { input, .. } => Some(input.as_raw_fd()),
            ConsoleBackend::Socket { client, .. } => client.as_ref().map(AsRawFd::as_raw_fd),
        }
    }

    /// Reads more input unless some is pending; false when there is none.
    fn fill(&mut self) -> bool {
        if self.rx_off < self.rx_len {
            return true;
        }
        self.rx_off = 0;
        self.rx_len = 0;
        let Some(fd) = self.input_fd().filter(|_| !self.input_failed) else {
            return false;
        };
        match hostio::read(fd, &mut self.rx_buf) {
            Io::Done(n) => {
                self.rx_len = n;
                return true;
            }
            Io::Later => return false,
            Io::End | Io::Failed => {}
        }
        // End of input, or an error: a client is detached; a pty that
        // fails is not polled again.
        match &mut self.backend {
            ConsoleBackend::Socket { client, .. } => *client = None,
            _ => self.input_failed = true,
        }
        false
    }

    fn receive(&mut self, queue: &mut Queue, mem: &GuestMemory) -> Result<Processed, DeviceError> {
        self.accept();
        self.rx_starved = false;
        let mut used = 0usize;
        let mut reads = 0usize;
        let mut pending = false;
        queue
            .disable_notification(mem)
            .map_err(DeviceError::Queue)?;
        loop {
            if self.rx_off >= self.rx_len {
                if reads >= INPUT_BUDGET {
                    pending = true;
                    break;
                }
                reads += 1;
                if !self.fill() {
                    break;
                }
            }
            let Some(chain) = next_chain(queue, mem)? else {
                self.rx_starved = true;
                break;
            };
            let head = chain.head_index();
            let data = self
                .rx_buf
                .get(self.rx_off..self.rx_len)
                .unwrap_or_default();
            let len = match scatter(chain, mem, data) {
                Some(n) => {
                    self.rx_off += n;
                    self.stats.rx_bytes += n as u64;
                    n
                }
                None => {
                    self.stats.bad_chains += 1;
                    0
                }
            };
            queue
                .add_used(mem, head, u32::try_from(len).unwrap_or(0))
                .map_err(DeviceError::Queue)?;
            used += 1;
        }
        end_fill(queue, mem, used, self.rx_starved, pending)
    }
}

impl VirtioDevice for Console {
    fn device_type(&self) -> u32 {
        DEVICE_ID_CONSOLE
    }

    fn num_queues(&self) -> usize {
        2
    }

    fn max_queue_size(&self) -> u16 {
        QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        TRANSPORT_FEATURES
    }

    fn config(&self) -> Vec<u8> {
        vec![0; CONFIG_LEN]
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
            TX_QUEUE => serve_queue(queue, mem, |chain| self.transmit(chain, mem)),
            i => Err(DeviceError::NoQueue(i)),
        }
    }

    fn backend_events(&self, out: &mut Vec<BackendEvent>) {
        if let ConsoleBackend::Socket { listener, .. } = &self.backend {
            out.push(BackendEvent::readable(listener.as_raw_fd(), RX_QUEUE));
        }
        if let Some(fd) = self
            .input_fd()
            .filter(|_| !self.rx_starved && !self.input_failed)
        {
            out.push(BackendEvent::readable(fd, RX_QUEUE));
        }
    }

    fn report(&self) -> Option<String> {
        let s = &self.stats;
        (s.bad_chains > 0).then(|| format!("completed {} malformed chains empty", s.bad_chains))
    }

    /// The counters, so that what a restarted device reports covers its
    /// predecessors. Input read and not yet delivered, the history and the
    /// attached client are not kept: a client attaches again.
    fn save_state(&self) -> Vec<u8> {
        self.stats.save()
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), DeviceError> {
        self.stats = ConsoleStats::restore(state, "console")?;
        Ok(())
    }

    fn reset(&mut self) {
        self.features = 0;
        self.rx_off = 0;
        self.rx_len = 0;
        self.rx_starved = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_queue::{events, raw_chains as raw, used};
    use std::io::{Read, Write};
    use std::os::unix::net::{UnixListener, UnixStream};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    const MEM_SIZE: usize = 0x40_0000;
    const BUF: u64 = 0x10_0000;

    fn mem() -> GuestMemory {
        GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
    }

    /// A console over one end of a stream pair (as over a pty master),
    /// and the other end.
    fn over_stream() -> (Console, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let (spare, _) = UnixStream::pair().unwrap();
        let mut c = Console::new(ConsoleBackend::Pty {
            master: ours.into(),
            slave: spare.into(),
        });
        c.activate(TRANSPORT_FEATURES).unwrap();
        (c, theirs)
    }

    #[test]
    fn output_goes_to_the_backend_and_bad_chains_are_completed_empty() {
        let m = mem();
        let (mut c, mut peer) = over_stream();
        m.write_slice(b"hello, ", GuestAddress(BUF)).unwrap();
        m.write_slice(b"host\n", GuestAddress(BUF + 0x100)).unwrap();
        let vq = MockSplitQueue::new(&m, 16);
        let chains = vec![
            vec![(BUF, 7, false), (BUF + 0x100, 5, false)],
            // Device-writable: bad.
            vec![(BUF, 7, true)],
            // Outside memory: bad.
            vec![(MEM_SIZE as u64 - 2, 7, false)],
            // Longer than a chain may be: bad.
            vec![(BUF, u32::try_from(MAX_CHAIN).unwrap() + 1, false)],
        ];
        vq.add_desc_chains(&raw(&chains, 0), 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        c.process_queue(TX_QUEUE, &mut q, &m).unwrap();
        assert_eq!(used(&vq).len(), 4);
        let mut got = [0u8; 12];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello, host\n");
        assert_eq!(c.stats().tx_bytes, 12);
        assert_eq!(c.stats().bad_chains, 3);
        assert!(c.report().unwrap().contains("3 malformed"));
    }

    #[test]
    fn input_fills_receive_buffers_and_waits_for_more_when_there_are_none() {
        let m = mem();
        let (mut c, mut peer) = over_stream();
        peer.write_all(b"typed input").unwrap();
        let vq = MockSplitQueue::new(&m, 16);
        // Two buffers of 5 bytes: "typed", " inpu"; the rest waits.
        let chains = vec![vec![(BUF, 5, true)], vec![(BUF + 0x100, 5, true)]];
        vq.add_desc_chains(&raw(&chains, 0), 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let p = c.process_queue(RX_QUEUE, &mut q, &m).unwrap();
        assert!(p.notify);
        assert_eq!(used(&vq), vec![(0, 5), (1, 5)]);
        let mut got = [0u8; 10];
        m.read_slice(&mut got[..5], GuestAddress(BUF)).unwrap();
        m.read_slice(&mut got[5..], GuestAddress(BUF + 0x100))
            .unwrap();
        assert_eq!(&got, b"typed inpu");
        // Starved: the input fd is not polled until the driver kicks.
        assert!(events(&c).is_empty());
        assert_eq!(c.stats().rx_bytes, 10);
    }

    #[test]
    fn a_socket_takes_one_client_who_gets_the_history_and_input_goes_both_ways() {
        let dir = std::env::temp_dir().join(format!("skvm-vcon-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.sock");
        let listener = UnixListener::bind(&path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let mut c = Console::new(ConsoleBackend::Socket {
            listener: listener.into(),
            client: None,
            history: History::default(),
        });
        c.activate(TRANSPORT_FEATURES).unwrap();
        let m = mem();
        // Output before any client is kept.
        m.write_slice(b"boot log\n", GuestAddress(BUF)).unwrap();
        let vq = MockSplitQueue::new(&m, 16);
        vq.add_desc_chains(&raw(&[vec![(BUF, 9, false)]], 0), 0)
            .unwrap();
        let mut tx: Queue = vq.create_queue().unwrap();
        c.process_queue(TX_QUEUE, &mut tx, &m).unwrap();
        assert_eq!(c.stats().tx_dropped, 9);

        let mut first = UnixStream::connect(&path).unwrap();
        let mut second = UnixStream::connect(&path).unwrap();
        first.write_all(b"ls\n").unwrap();
        let rxq = MockSplitQueue::new(&m, 16);
        rxq.add_desc_chains(&raw(&[vec![(BUF + 0x1000, 64, true)]], 0), 0)
            .unwrap();
        let mut rx: Queue = rxq.create_queue().unwrap();
        c.process_queue(RX_QUEUE, &mut rx, &m).unwrap();
        let mut got = [0u8; 9];
        first.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"boot log\n");
        let mut busy = Vec::new();
        second.read_to_end(&mut busy).unwrap();
        assert_eq!(busy, BUSY);
        assert_eq!(used(&rxq), vec![(0, 3)]);
        let mut typed = [0u8; 3];
        m.read_slice(&mut typed, GuestAddress(BUF + 0x1000))
            .unwrap();
        assert_eq!(&typed, b"ls\n");
        assert_eq!(c.stats().clients, 1);
        // Both the listener and the client are waited on.
        assert_eq!(events(&c).len(), 2);
        // The client hangs up: detached, and the next one is taken.
        drop(first);
        c.process_queue(RX_QUEUE, &mut rx, &m).unwrap();
        assert_eq!(events(&c).len(), 1);
        let mut third = UnixStream::connect(&path).unwrap();
        c.process_queue(RX_QUEUE, &mut rx, &m).unwrap();
        let mut got = [0u8; 9];
        third.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"boot log\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_history_keeps_the_last_64_kib() {
        let mut h = History::default();
        h.keep(b"boot log\n");
        h.keep(&vec![b'x'; HISTORY - 4]);
        assert_eq!(h.len(), HISTORY);
        let (a, b) = h.as_slices();
        assert!([a, b].concat().starts_with(b"log\n"));
        h.keep(&vec![b'y'; HISTORY + 10]);
        let (a, b) = h.as_slices();
        assert!([a, b].concat().iter().all(|&b| b == b'y'));
    }

    #[test]
    fn saved_counters_restore_and_other_lengths_are_refused() {
        let (mut c, _peer) = over_stream();
        c.stats.tx_bytes = 7;
        let state = c.save_state();
        let (mut d, _p) = over_stream();
        d.restore_state(&state).unwrap();
        assert_eq!(d.stats().tx_bytes, 7);
        assert!(d.restore_state(&state[1..]).is_err());
        assert!(d.restore_state(&[]).is_err());
    }
}
