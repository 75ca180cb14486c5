//! Whole-VM snapshots (`skvm ctl SOCKET snapshot DIR`, `skvm run --restore
//! DIR`): the state file's format ([`format`]), a vCPU's state
//! ([`vcpu`]) and the machine's in-kernel devices ([`machine`]), and guest RAM
//! as sparse files ([`ram`]).

pub mod files;
pub mod format;
pub mod machine;
pub mod pod;
pub mod ram;
pub mod restore;
pub mod state;
pub mod take;
pub mod vcpu;
