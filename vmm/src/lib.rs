//! skvm as a library: everything the `skvm` binary is, so that other
//! programs (the escape suite's `skvm-escape`, fuzz targets) can build on
//! the same pieces. The binary (`src/main.rs`) only hands the command line
//! to [`cli::main`].
//!
//! A map for a newcomer (docs/ARCHITECTURE.md has the process model):
//!
//! - [`cli`]: the subcommands (`run`, `drive`, `ctl`, `sandbox`), exit
//!   statuses and the error chain.
//! - [`config`]: `skvm run`'s options, validated once into a [`config::VmConfig`].
//! - [`vm`]: building and running a VM.
//! - [`vcpu`], [`boot`], [`legacy`], [`pci`], [`irq`], [`memory`]: the
//!   machine itself; [`layout`]: every guest-physical address.
//! - [`virtio_pci`]: the virtio-pci transport (registers and state only).
//! - [`kinds`]: one module per device kind (rng, blk, net, mem): its
//!   option, its backend, its parameters, its model and its confinement.
//! - [`remote`]: the VMM's side of the device protocol.
//! - [`device_host`]: where devices run (processes or threads), the only
//!   process-aware code: spawner, device process, worker loop, supervision.
//! - [`ctl`], [`hotplug`]: the control socket and memory hotplug.
//! - [`drive`]: `skvm drive`, a host-side driver for one device.
//! - [`vmm_sandbox`], [`sandbox_cmd`]: the VMM's own filter and `skvm sandbox`.
//! - [`snapshot`]: whole-VM snapshots (state file format, vCPU and
//!   in-kernel device state).

pub mod boot;
pub mod cli;
pub mod config;
pub mod console;
pub mod ctl;
pub mod device_host;
pub mod drive;
pub mod exit;
pub mod host;
pub mod hotplug;
pub mod irq;
pub mod kinds;
pub mod layout;
pub mod legacy;
pub mod log;
pub mod memory;
pub mod pci;
pub mod remote;
pub mod sandbox_cmd;
pub mod snapshot;
pub mod vcpu;
pub mod virtio_pci;
pub mod vm;
pub mod vmm_sandbox;
