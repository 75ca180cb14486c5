//! virtio-fs (virtio 1.2 section 5.11): a host directory shared with the
//! guest through FUSE requests on virtqueues.
//!
//! - [`proto`]: the FUSE wire format, parsed as hostile input.
//! - [`server`]: the FUSE server on the shared directory, which holds
//!   every node as an fd and never resolves a path.
//! - [`sys`]: the host calls it makes, each relative to an fd it holds.

pub mod proto;
pub mod server;
pub mod sys;

#[cfg(test)]
mod tests;
