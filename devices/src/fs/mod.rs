//! virtio-fs (virtio 1.2 section 5.11): a host directory shared with the
//! guest through FUSE requests on virtqueues.
//!
//! - [`proto`]: the FUSE wire format, parsed as hostile input.
//! - [`server`]: the FUSE server on the shared directory, which holds
//!   every node as an fd and never resolves a path.
//! - [`sys`]: the host calls it makes, each relative to an fd it holds.
//!
//! The device has one high-priority queue (FORGET, which takes no reply)
//! and one request queue, and no notification queue. Each chain is one
//! request: its device-readable descriptors hold the request (header,
//! arguments, WRITE's data), its device-writable ones take the reply.
//! Requests are answered in order, one at a time.

pub mod proto;
pub mod server;
pub mod sys;

#[cfg(test)]
mod tests;

use std::os::fd::BorrowedFd;

use virtio_queue::{DescriptorChain, Queue};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend as _};

use crate::virtio::{
    check_features, serve_queue, DeviceError, GuestMemory, Processed, VirtioDevice,
    MAX_DESCRIPTORS, TRANSPORT_FEATURES,
};

pub use server::Options;

/// Device ID of a file system device.
pub const DEVICE_ID_FS: u32 = 26;
/// Bytes of the tag in the configuration space.
pub const TAG_LEN: usize = 36;
/// Queue size the device accepts.
pub const QUEUE_SIZE: u16 = 128;
/// The largest request taken (a WRITE of [`server::MAX_WRITE`] with its
/// header and arguments; two names of 255 bytes).
pub const MAX_REQUEST: usize = server::MAX_WRITE as usize + 4096;

crate::counters! {
    /// What the device did, as `skvm ctl status` shows it.
    pub struct Stats {
        /// Requests answered.
        pub requests: u64,
        /// Of them, answered with an error (the guest's ENOENT included).
        pub errors: u64,
        /// Chains dropped as malformed (cut short, outside memory, too big).
        pub bad_chains: u64,
    }
}

/// A virtio-fs device serving one host directory under a tag.
pub struct Fs {
    tag: String,
    server: server::Server,
    features: u64,
    /// Chains dropped as malformed (the server counts the requests).
    bad_chains: u64,
    /// Nodes and open files of the previous instance not found again.
    lost: (usize, usize),
    /// The last chain's split, emptied before the next.
    split: Split,
}

/// A chain split into its request bytes and the guest memory the reply
/// may go to (kept by the device between requests, for its room).
#[derive(Default)]
struct Split {
    request: Vec<u8>,
    reply: Vec<(GuestAddress, usize)>,
    room: usize,
}

impl Fs {
    /// A device for the directory `root` under `tag` (1 to 36 bytes).
    pub fn new(tag: &str, root: BorrowedFd<'_>, opts: Options) -> Result<Self, DeviceError> {
        if tag.is_empty() || tag.len() > TAG_LEN {
            return Err(DeviceError::Refused(format!(
                "tag {tag:?} must be 1 to {TAG_LEN} bytes"
            )));
        }
        let server = server::Server::new(root, opts).map_err(|e| {
            DeviceError::Refused(format!(
                "cannot share that directory: {}",
                std::io::Error::from_raw_os_error(e.0)
            ))
        })?;
        Ok(Fs {
            tag: tag.to_owned(),
            server,
            features: 0,
            bad_chains: 0,
            lost: (0, 0),
            split: Split::default(),
        })
    }

    /// The counters: the server's, and the chains dropped before it.
    pub fn stats(&self) -> Stats {
        Stats {
            requests: self.server.stats.requests,
            errors: self.server.stats.errors,
            bad_chains: self.bad_chains,
        }
    }

    /// The readable bytes of `chain` and its writable buffers; None when
    /// the chain is malformed (a readable descriptor after a writable one,
    /// too many, too big, cut short, outside guest memory).
    fn split(chain: DescriptorChain<&GuestMemory>, mem: &GuestMemory, s: &mut Split) -> Option<()> {
        s.request.clear();
        s.reply.clear();
        s.room = 0;
        let mut cut = false;
        for (i, desc) in chain.enumerate() {
            cut = desc.has_next();
            let n = usize::try_from(desc.len()).ok()?;
            if i >= MAX_DESCRIPTORS {
                return None;
            }
            if desc.is_write_only() {
                // Checked now, so that the reply cannot fail half-written.
                if !mem.check_range(desc.addr(), n) {
                    return None;
                }
                s.reply.push((desc.addr(), n));
                s.room = s.room.checked_add(n)?;
            } else {
                if !s.reply.is_empty() || s.request.len() + n > MAX_REQUEST {
                    return None;
                }
                let start = s.request.len();
                s.request.resize(start + n, 0);
                mem.read_slice(s.request.get_mut(start..)?, desc.addr())
                    .ok()?;
            }
        }
        (!cut).then_some(())
    }

    /// Answers one chain; the bytes written for the used ring.
    fn serve(&mut self, chain: DescriptorChain<&GuestMemory>, mem: &GuestMemory) -> u32 {
        let mut s = std::mem::take(&mut self.split);
        let written = self.answer(chain, mem, &mut s);
        self.split = s;
        written
    }

    /// [`Self::serve`] with the split `s` to fill.
    fn answer(
        &mut self,
        chain: DescriptorChain<&GuestMemory>,
        mem: &GuestMemory,
        s: &mut Split,
    ) -> u32 {
        if Self::split(chain, mem, s).is_none() {
            self.bad_chains += 1;
            return 0;
        }
        let Some(reply) = self.server.handle(&s.request, s.room) else {
            return 0;
        };
        let written = Self::write_reply(&reply, &s.reply, mem);
        proto::give_back(reply);
        if written.is_none() {
            self.bad_chains += 1;
        }
        written.and_then(|n| u32::try_from(n).ok()).unwrap_or(0)
    }

    /// Writes `reply` into the chain's writable parts `into`, in order, as
    /// far as they hold it; the bytes written, or None when a part is
    /// outside guest memory.
    fn write_reply(
        reply: &[u8],
        into: &[(GuestAddress, usize)],
        mem: &GuestMemory,
    ) -> Option<usize> {
        let mut done = 0;
        for &(addr, len) in into {
            let Some(part) = reply.get(done..).filter(|r| !r.is_empty()) else {
                break;
            };
            let n = len.min(part.len());
            mem.write_slice(&part[..n], addr).ok()?;
            done += n;
        }
        Some(done)
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        DEVICE_ID_FS
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

    /// The tag, NUL-padded to 36 bytes, and one request queue.
    fn config(&self) -> Vec<u8> {
        let mut c = vec![0u8; TAG_LEN];
        c[..self.tag.len()].copy_from_slice(self.tag.as_bytes());
        c.extend_from_slice(&1u32.to_le_bytes());
        c
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
        if index > 1 {
            return Err(DeviceError::NoQueue(index));
        }
        serve_queue(queue, mem, |chain| self.serve(chain, mem))
    }

    fn reset(&mut self) {
        self.features = 0;
    }

    /// The counters and the FUSE protocol version the guest agreed on.
    /// The nodes and open files the guest holds are the bulk state
    /// ([`VirtioDevice::save_bulk`]); a snapshot keeps only this, and its
    /// restored device answers ESTALE and EIO for them (the guest's next
    /// lookup from the root finds the files again).
    fn save_state(&self) -> Vec<u8> {
        let mut state = self.stats().save();
        state.extend_from_slice(&self.server.minor().to_le_bytes());
        state
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), DeviceError> {
        let Some((counters, minor)) = state.split_last_chunk::<4>() else {
            return Err(DeviceError::Refused("fs state is too short".into()));
        };
        let stats = Stats::restore(counters, "fs")?;
        self.server
            .resume(u32::from_le_bytes(*minor))
            .map_err(|_| DeviceError::Refused("fs state has a bad protocol version".into()))?;
        self.server.stats = server::Stats {
            requests: stats.requests,
            errors: stats.errors,
        };
        self.bad_chains = stats.bad_chains;
        Ok(())
    }

    /// The nodes and open files the guest holds, for the next instance.
    fn save_bulk(&self) -> Vec<u8> {
        self.server.save_tables()
    }

    /// Finds the previous instance's nodes and open files again; those
    /// that are gone answer ESTALE or EIO, and are counted in the report
    /// when the device stops.
    fn restore_bulk(&mut self, bulk: &[u8]) -> Result<(), DeviceError> {
        self.lost = self
            .server
            .restore_tables(bulk)
            .map_err(|e| DeviceError::Refused(format!("bad fs tables (errno {})", e.0)))?;
        Ok(())
    }

    /// The dead instance's nodes and open files are gone with its fds; the
    /// session goes on with the protocol version this server speaks (a
    /// guest kernel of the last years agreed on it or a newer one), from
    /// the root alone: nodes the guest still names answer ESTALE, which
    /// makes its kernel look their paths up again from the root, and its
    /// open files fail.
    fn recovered(&mut self) {
        let _ = self.server.resume(proto::KERNEL_MINOR_VERSION);
    }

    fn report(&self) -> Option<String> {
        let mut parts = Vec::new();
        if self.bad_chains > 0 {
            parts.push(format!("{} malformed chains dropped", self.bad_chains));
        }
        if self.lost != (0, 0) {
            parts.push(format!(
                "{} nodes and {} open files of the previous instance were gone",
                self.lost.0, self.lost.1
            ));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}
