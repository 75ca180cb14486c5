//! Virtio device models for skvm.
//!
//! Device models here know nothing of processes, sockets, PCI or KVM: they see
//! guest memory and virtqueues, and signal the guest through a small trait.
//! The same model runs in a VMM thread or in a sandboxed device process.
