//! The VM generation ID: 16 random bytes at [`VMGENID_ADDR`] that change
//! whenever the guest may have been duplicated, here at each restore from
//! a snapshot.
//!
//! Two guests restored from one snapshot start with the same kernel random
//! number generator state, and would hand out the same "random" bytes
//! until each reseeded from its own events. The guest finds the ID through
//! the DSDT's `\_SB_.VGEN` (see `boot::acpi`); Linux's vmgenid driver
//! (`CONFIG_VMGENID`) mixes it into its entropy pool at boot and, on the
//! notification an edge on [`VMGENID_GSI`] raises, mixes the new ID in and
//! reseeds at once ("crng reseeded due to virtual machine fork").
//! User space that keeps randomness of its own (a TLS library's pool, a
//! UUID cache) has to reseed too: Linux tells it through the same event.

use anyhow::{Context, Result};
use kvm_ioctls::VmFd;
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use crate::boot::acpi::{VMGENID_ADDR, VMGENID_GSI};

/// Bytes in a generation ID.
pub const VMGENID_LEN: usize = 16;

/// Writes a new random generation ID into `mem`. The guest sees the change
/// once [`announce`] tells it.
pub fn write_new<M: GuestMemory>(mem: &M) -> Result<[u8; VMGENID_LEN]> {
    let mut id = [0u8; VMGENID_LEN];
    devices::rng::fill_random(&mut id).context("cannot draw a VM generation id")?;
    mem.write_slice(&id, GuestAddress(VMGENID_ADDR))
        .context("cannot write the VM generation id into guest memory")?;
    Ok(id)
}

/// Tells the guest that its generation ID changed: one edge on
/// [`VMGENID_GSI`], which the in-kernel IO-APIC delivers once the guest's
/// interrupt controllers are in place.
pub fn announce(vm: &VmFd) -> Result<()> {
    vm.set_irq_line(VMGENID_GSI, true)
        .and_then(|()| vm.set_irq_line(VMGENID_GSI, false))
        .context("cannot raise the VM generation id's interrupt")
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    #[test]
    fn each_new_id_is_written_where_the_dsdt_says_and_differs() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let first = write_new(&mem).unwrap();
        let mut read = [0u8; VMGENID_LEN];
        mem.read_slice(&mut read, GuestAddress(VMGENID_ADDR))
            .unwrap();
        assert_eq!(read, first);
        let second = write_new(&mem).unwrap();
        assert_ne!(first, second);
        mem.read_slice(&mut read, GuestAddress(VMGENID_ADDR))
            .unwrap();
        assert_eq!(read, second);
    }

    #[test]
    fn guest_memory_without_the_bios_area_is_an_error() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        let e = write_new(&mem).unwrap_err();
        assert!(format!("{e:#}").contains("VM generation id"), "{e:#}");
    }
}
