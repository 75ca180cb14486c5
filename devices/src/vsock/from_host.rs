//! The host side of the device's streams: host programs connecting to
//! the listener and their `CONNECT` lines, the connector's answers to
//! guest connections, and what the host peers' fds are ready for.

use std::os::fd::{AsRawFd, OwnedFd};

use super::host::{self, Received};
use super::packet::op;
use super::{State, Stream, Vsock, FIRST_HOST_PORT, LINE_MAX, MAX_STREAMS};
use crate::hostio::{self, Io};

impl Vsock {
    /// Takes new host clients, the connector's answers and what the host
    /// peers' fds are ready for.
    pub(super) fn serve_host(&mut self) {
        self.accept_clients();
        self.connector_replies();
        self.poll_streams();
    }

    fn accept_clients(&mut self) {
        while let Some(fd) = hostio::accept(self.backend.listener.as_raw_fd()) {
            if self.streams.len() >= MAX_STREAMS {
                // Closed at once, so the backlog does not keep the
                // listener readable.
                self.stats.refused += 1;
                continue;
            }
            self.streams
                .push(Stream::new(0, 0, Some(fd), State::Handshake));
        }
    }

    fn connector_replies(&mut self) {
        while !self.connector_gone {
            let (reply, fd) = match host::recv_reply(self.backend.connector.as_raw_fd()) {
                Received::Reply(r, fd) => (r, fd),
                Received::Garbage => continue,
                Received::Nothing => return,
                Received::Closed => {
                    self.connector_gone = true;
                    break;
                }
            };
            // An answer to none of ours (a predecessor's) is dropped.
            if !self.connecting.iter().any(|&(id, ..)| id == reply.id) {
                continue;
            }
            // Answers come in order: the requests before this one lost
            // theirs, and are refused.
            let mut fd = fd;
            while let Some((id, local, peer)) = self.connecting.pop_front() {
                let this = id == reply.id;
                let ok = this && local == reply.port && reply.errno == 0;
                self.connected(local, peer, if ok { fd.take() } else { None });
                if this {
                    break;
                }
            }
        }
        // Without a connector no guest connection can be made.
        if self.connector_gone {
            while let Some((_, local, peer)) = self.connecting.pop_front() {
                if let Some(i) = self.find(local, peer) {
                    self.reset(i);
                }
            }
        }
    }

    /// The connector's answer for the guest connection (local, peer), if it
    /// is still waiting: open with `fd`, or refused without.
    fn connected(&mut self, local: u32, peer: u32, fd: Option<OwnedFd>) {
        let Some(i) = self
            .find(local, peer)
            .filter(|&i| self.streams[i].state == State::Connecting)
        else {
            return;
        };
        let Some(fd) = fd else {
            self.stats.refused += 1;
            self.reset(i);
            return;
        };
        let s = &mut self.streams[i];
        s.fd = Some(fd);
        s.state = State::Open;
        self.stats.streams += 1;
        self.push_control(op::RESPONSE, 0, local, peer);
    }

    fn poll_streams(&mut self) {
        let mut polls = std::mem::take(&mut self.polls);
        polls.clear();
        for s in &self.streams {
            let mut events = 0;
            match s.state {
                State::Handshake => events |= libc::POLLIN,
                State::Open => {
                    if s.wants_input() {
                        events |= libc::POLLIN;
                    }
                    if !s.to_host.is_empty() {
                        events |= libc::POLLOUT;
                    }
                }
                State::Requested | State::Connecting => {}
            }
            polls.push(libc::pollfd {
                fd: s.raw_fd().unwrap_or(-1),
                events,
                revents: 0,
            });
        }
        host::poll_now(&mut polls);
        // Backwards, so that removing stream i keeps the indices below it.
        for i in (0..polls.len()).rev() {
            let revents = polls[i].revents;
            if revents == 0 || i >= self.streams.len() {
                continue;
            }
            let s = &mut self.streams[i];
            let ended = revents & (libc::POLLHUP | libc::POLLERR) != 0;
            s.hung_up |= ended;
            match s.state {
                State::Handshake => self.read_line(i),
                State::Open => {
                    if revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                        s.readable = true;
                    }
                    if revents & libc::POLLOUT != 0 || (ended && !s.to_host.is_empty()) {
                        self.flush(i);
                    }
                }
                State::Requested | State::Connecting => {}
            }
        }
        self.polls = polls;
    }

    /// Reads host client `i`'s `CONNECT <port>` line, a byte at a time so
    /// that data after it stays in the socket for the guest.
    fn read_line(&mut self, i: usize) {
        let s = &mut self.streams[i];
        let Some(fd) = s.raw_fd() else {
            return;
        };
        loop {
            let mut b = [0u8; 1];
            match hostio::read(fd, &mut b) {
                Io::Done(_) if b[0] == b'\n' => break,
                Io::Done(_) if s.line.len() < LINE_MAX => s.line.push(b[0]),
                Io::Later => return,
                // Too long, ended or failed: the client is dropped.
                _ => {
                    self.streams.swap_remove(i);
                    return;
                }
            }
        }
        let port = std::str::from_utf8(&s.line)
            .ok()
            .and_then(|l| l.trim_end_matches('\r').strip_prefix("CONNECT "))
            .and_then(|p| p.parse::<u32>().ok());
        let Some(port) = port else {
            let _ = hostio::write(fd, b"ERR expected CONNECT <port>\n");
            self.streams.swap_remove(i);
            return;
        };
        let local = self.free_port(port);
        let s = &mut self.streams[i];
        s.line = Vec::new();
        s.local_port = local;
        s.peer_port = port;
        s.state = State::Requested;
        self.push_control(op::REQUEST, 0, local, port);
    }

    /// A host port of the device's own not used with guest port `peer`.
    fn free_port(&mut self, peer: u32) -> u32 {
        loop {
            let p = self.next_port;
            self.next_port = p.checked_add(1).unwrap_or(FIRST_HOST_PORT);
            if self.find(p, peer).is_none() {
                return p;
            }
        }
    }
}
