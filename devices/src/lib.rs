//! Virtio device models for skvm.
//!
//! Device models here know nothing of processes, sockets, PCI or KVM: they see
//! guest memory and virtqueues, and tell their caller when the guest needs an
//! interrupt. The same model runs in a VMM thread or in a sandboxed device
//! process; the runtime that owns the eventfds is in the `vmm` crate.
//!
//! - [`virtio`]: the [`virtio::VirtioDevice`] trait every model implements,
//!   and the virtio constants they share.
//! - [`rng`]: virtio-rng (entropy device, virtio 1.2 section 5.4).
//! - [`block`]: virtio-blk over a raw image fd (section 5.2).
//! - [`net`]: virtio-net over a tap fd (section 5.1).
//! - [`console`]: virtio-console over a pty, a file or a unix socket
//!   (section 5.3).
//! - [`fs`]: virtio-fs, a host directory served over FUSE (section 5.11).
//! - [`vsock`]: virtio-vsock, stream sockets to host unix sockets
//!   (section 5.10).
//! - [`hostio`]: the non-blocking calls on host fds that console and
//!   vsock share.
//! - [`mem`]: virtio-mem, guest memory plugged by blocks (section 5.15).
//!
//! Guest memory and every queue field are written by a hostile guest: models
//! check every address through vm-memory, cap every length, bound the work
//! of one call, and never panic on guest data.

pub mod block;
pub mod console;
pub mod fs;
pub mod hostio;
pub mod mem;
pub mod net;
pub mod rng;
#[cfg(test)]
mod test_queue;
pub mod virtio;
pub mod vsock;
