//! What the device sends the guest: packets without payload (answers,
//! resets, credit updates) and host data, on the receive queue; and the
//! transport reset on the event queue.

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};

use super::packet::{op, HDR_LEN, SHUTDOWN_RCV, SHUTDOWN_SEND};
use super::{Vsock, EVENT_TRANSPORT_RESET, MAX_PAYLOAD, RX_BUDGET};
use crate::hostio::{self, Io};
use crate::virtio::{
    end_fill, next_chain, scatter, DeviceError, GuestMemory, Processed, MAX_DESCRIPTORS,
};

impl Vsock {
    /// A stream with host data the guest has room for, round robin.
    fn next_readable(&mut self) -> Option<usize> {
        let n = self.streams.len();
        (0..n)
            .map(|k| (self.next_stream + k) % n)
            .find(|&i| self.streams[i].readable && self.streams[i].wants_input())
    }

    pub(super) fn receive(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemory,
    ) -> Result<Processed, DeviceError> {
        self.serve_host();
        self.rx_starved = false;
        let mut used = 0usize;
        let mut pending = false;
        queue
            .disable_notification(mem)
            .map_err(DeviceError::Queue)?;
        loop {
            if used >= RX_BUDGET {
                pending = true;
                break;
            }
            let stream = if self.control.is_empty() {
                match self.next_readable() {
                    Some(i) => Some(i),
                    None => break,
                }
            } else {
                None
            };
            let Some(chain) = next_chain(queue, mem)? else {
                self.rx_starved = true;
                break;
            };
            let head = chain.head_index();
            let len = match stream {
                None => self.send_control(chain, mem),
                Some(i) => {
                    self.next_stream = i + 1;
                    match self.send_data(i, chain, mem) {
                        Some(len) => len,
                        None => {
                            // Nothing to read after all: the chain stays.
                            queue.go_to_previous_position();
                            continue;
                        }
                    }
                }
            };
            queue.add_used(mem, head, len).map_err(DeviceError::Queue)?;
            used += 1;
        }
        end_fill(queue, mem, used, self.rx_starved, pending)
    }

    /// Writes `bytes` into `chain`: its used length, 0 if the chain is
    /// malformed or too small.
    fn put(&mut self, chain: DescriptorChain<&GuestMemory>, mem: &GuestMemory, len: usize) -> u32 {
        let bytes = self.rx_buf.get(..len).unwrap_or_default();
        match scatter(chain, mem, bytes) {
            Some(n) if n == len => {
                self.stats.packets_out += 1;
                u32::try_from(n).unwrap_or(0)
            }
            _ => {
                self.stats.bad += 1;
                0
            }
        }
    }

    fn send_control(&mut self, chain: DescriptorChain<&GuestMemory>, mem: &GuestMemory) -> u32 {
        let Some(c) = self.control.pop_front() else {
            return 0;
        };
        let h = self.header(c.op, c.flags, c.local_port, c.peer_port, 0);
        self.rx_buf[..HDR_LEN].copy_from_slice(&h.encode());
        self.put(chain, mem, HDR_LEN)
    }

    /// Host data of stream `i` into `chain`: its used length, or `None`
    /// if there was nothing to read (the chain is not used).
    fn send_data(
        &mut self,
        i: usize,
        chain: DescriptorChain<&GuestMemory>,
        mem: &GuestMemory,
    ) -> Option<u32> {
        let room = writable_room(&chain).saturating_sub(HDR_LEN);
        let s = &mut self.streams[i];
        let fd = s.raw_fd()?;
        let want = room
            .min(MAX_PAYLOAD)
            .min(usize::try_from(s.credit()).unwrap_or(0));
        if want == 0 {
            // A chain too small for any payload: used empty.
            self.stats.bad += 1;
            return Some(0);
        }
        let (l, p) = (s.local_port, s.peer_port);
        let got = hostio::read(fd, &mut self.rx_buf[HDR_LEN..HDR_LEN + want]);
        let h = match got {
            Io::Done(n) => {
                let s = &mut self.streams[i];
                s.rx_cnt += u32::try_from(n).unwrap_or(0);
                self.stats.bytes_to_guest += n as u64;
                self.header(op::RW, 0, l, p, u32::try_from(n).unwrap_or(0))
            }
            Io::Later => {
                s.readable = false;
                return None;
            }
            Io::End => {
                // The host peer sent all it will; gone altogether if it
                // hung up.
                s.host_eof = true;
                s.readable = false;
                let flags = if s.hung_up {
                    SHUTDOWN_SEND | SHUTDOWN_RCV
                } else {
                    SHUTDOWN_SEND
                };
                self.header(op::SHUTDOWN, flags, l, p, 0)
            }
            Io::Failed => {
                self.streams.swap_remove(i);
                self.stats.resets += 1;
                self.header(op::RST, 0, l, p, 0)
            }
        };
        self.rx_buf[..HDR_LEN].copy_from_slice(&h.encode());
        let len = HDR_LEN + usize::try_from(h.len).unwrap_or(0);
        Some(self.put(chain, mem, len))
    }

    /// The event queue: a transport reset, if one is owed.
    pub(super) fn events(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemory,
    ) -> Result<Processed, DeviceError> {
        if !self.reset_event {
            return Ok(Processed::default());
        }
        let Some(chain) = queue.iter(mem).map_err(DeviceError::Queue)?.next() else {
            return Ok(Processed::default());
        };
        let head = chain.head_index();
        let len = match scatter(chain, mem, &EVENT_TRANSPORT_RESET.to_le_bytes()) {
            Some(4) => 4,
            _ => {
                self.stats.bad += 1;
                0
            }
        };
        self.reset_event = false;
        queue.add_used(mem, head, len).map_err(DeviceError::Queue)?;
        let notify = queue.needs_notification(mem).map_err(DeviceError::Queue)?;
        Ok(Processed {
            notify,
            ..Processed::default()
        })
    }
}

/// The bytes the writable descriptors of `chain` hold (as far as
/// [`scatter`] would look).
fn writable_room(chain: &DescriptorChain<&GuestMemory>) -> usize {
    chain
        .clone()
        .take(MAX_DESCRIPTORS)
        .filter(|d| d.is_write_only())
        .map(|d| usize::try_from(d.len()).unwrap_or(0))
        .fold(0usize, usize::saturating_add)
}
