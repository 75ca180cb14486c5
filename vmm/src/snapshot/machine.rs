//! The VM's in-kernel devices: both 8259 PICs and the IO-APIC, the PIT
//! (8254), and the kvmclock's time base.

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_state2, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::VmFd;

use super::format::{Dec, Enc, FormatError};
use super::pod::{from_bytes, Pod};

/// A failed KVM call on the VM.
#[derive(Debug, thiserror::Error)]
#[error("vm {what}: {source}")]
pub struct MachineError {
    /// The call.
    pub what: &'static str,
    /// KVM's error.
    pub source: kvm_ioctls::Error,
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> MachineError {
    move |source| MachineError { what, source }
}

/// The in-kernel devices' state.
#[derive(Clone)]
pub struct MachineState {
    /// Master PIC, slave PIC, IO-APIC, in that order.
    pub irqchips: [kvm_irqchip; 3],
    /// The PIT's channels.
    pub pit: kvm_pit_state2,
    /// The kvmclock's time base when the VM was paused.
    pub clock: kvm_clock_data,
}

const CHIPS: [u32; 3] = [
    KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
    KVM_IRQCHIP_IOAPIC,
];

impl MachineState {
    /// Reads the state of `vm` (its vCPUs paused).
    pub fn capture(vm: &VmFd) -> Result<Self, MachineError> {
        let mut irqchips = [kvm_irqchip::default(); 3];
        for (chip, id) in irqchips.iter_mut().zip(CHIPS) {
            chip.chip_id = id;
            vm.get_irqchip(chip).map_err(kvm("get irqchip"))?;
        }
        let pit = vm.get_pit2().map_err(kvm("get pit2"))?;
        let clock = vm.get_clock().map_err(kvm("get clock"))?;
        Ok(Self {
            irqchips,
            pit,
            clock,
        })
    }

    /// Gives the state to `vm`, created as the saved one was (irqchip and
    /// PIT), before its vCPUs run. The clock carries on from the saved
    /// time: the guest sees no jump however long the snapshot waited.
    pub fn apply(&self, vm: &VmFd) -> Result<(), MachineError> {
        for chip in &self.irqchips {
            vm.set_irqchip(chip).map_err(kvm("set irqchip"))?;
        }
        vm.set_pit2(&self.pit).map_err(kvm("set pit2"))?;
        self.set_clock(vm, 0)
    }

    /// Sets the kvmclock of `vm` to the saved time plus `advance_ns`.
    pub fn set_clock(&self, vm: &VmFd, advance_ns: u64) -> Result<(), MachineError> {
        let clock = kvm_clock_data {
            clock: self.clock.clock.saturating_add(advance_ns),
            // Only the time itself: the flags describe how it was read.
            ..Default::default()
        };
        vm.set_clock(&clock).map_err(kvm("set clock"))
    }

    /// Appends the state to a section body.
    pub fn encode(&self, e: &mut Enc) {
        for chip in &self.irqchips {
            e.raw(chip.as_bytes());
        }
        e.raw(self.pit.as_bytes()).raw(self.clock.as_bytes());
    }

    /// Reads a state [`MachineState::encode`] wrote, checking that the
    /// chips are the three expected, in order.
    pub fn decode(d: &mut Dec<'_>) -> Result<Self, FormatError> {
        let mut irqchips = [kvm_irqchip::default(); 3];
        for (chip, id) in irqchips.iter_mut().zip(CHIPS) {
            *chip = from_bytes(d)?;
            if chip.chip_id != id {
                return Err(FormatError::Bad(
                    "irqchip",
                    format!("chip {} where chip {id} belongs", chip.chip_id),
                ));
            }
        }
        Ok(Self {
            irqchips,
            pit: from_bytes(d)?,
            clock: from_bytes(d)?,
        })
    }
}

// SAFETY: a `#[repr(C)]` structure of KVM's ABI whose fields are
// integers, or arrays and unions of integers, with its padding as explicit
// fields (the sizes are checked in the tests below), so any bytes of its
// size are a valid value. The same holds for the two that follow.
unsafe impl Pod for kvm_irqchip {}
// SAFETY: as above.
unsafe impl Pod for kvm_pit_state2 {}
// SAFETY: as above.
unsafe impl Pod for kvm_clock_data {}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::{kvm_pit_config, KVM_PIT_SPEAKER_DUMMY};
    use kvm_ioctls::Kvm;

    fn vm() -> VmFd {
        let vm = Kvm::new().expect("/dev/kvm").create_vm().expect("vm");
        vm.create_irq_chip().expect("irqchip");
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm.create_pit2(pit).expect("pit");
        vm
    }

    #[test]
    fn the_irqchips_pit_and_clock_survive_capture_encoding_and_apply_on_real_kvm() {
        let a = vm();
        let mut saved = MachineState::capture(&a).unwrap();
        // An IO-APIC redirection entry and a PIT count a guest would set.
        // SAFETY: chip 2 is the IO-APIC (KVM_IRQCHIP_IOAPIC), whose union
        // member is `ioapic`.
        unsafe {
            saved.irqchips[2].chip.ioapic.redirtbl[9].bits = 0x0001_0000_0000_0031;
        }
        saved.pit.channels[0].count = 0x1234;
        saved.apply(&a).unwrap();
        let saved = MachineState::capture(&a).unwrap();

        let mut e = Enc::new();
        saved.encode(&mut e);
        let mut d = Dec::new("machine", e.as_bytes());
        let back = MachineState::decode(&mut d).unwrap();
        d.end().unwrap();
        let b = vm();
        back.apply(&b).unwrap();
        let again = MachineState::capture(&b).unwrap();
        // SAFETY: as above.
        let entry = unsafe { again.irqchips[2].chip.ioapic.redirtbl[9].bits };
        assert_eq!(entry, 0x0001_0000_0000_0031);
        assert_eq!(again.pit.channels[0].count, 0x1234);
        // The clock goes on from the saved time, not from zero.
        assert!(again.clock.clock >= saved.clock.clock);
    }

    #[test]
    fn chips_out_of_order_are_refused() {
        let saved = MachineState::capture(&vm()).unwrap();
        let mut swapped = saved.clone();
        swapped.irqchips.swap(0, 2);
        let mut e = Enc::new();
        swapped.encode(&mut e);
        let mut d = Dec::new("machine", e.as_bytes());
        assert!(matches!(
            MachineState::decode(&mut d),
            Err(FormatError::Bad("irqchip", _))
        ));
    }

    #[test]
    fn pod_structures_have_the_sizes_of_kvms_abi() {
        // No implicit padding: these are the sizes the kernel's headers
        // give, each the sum of its fields.
        assert_eq!(std::mem::size_of::<kvm_irqchip>(), 520);
        assert_eq!(std::mem::size_of::<kvm_pit_state2>(), 112);
        assert_eq!(std::mem::size_of::<kvm_clock_data>(), 48);
        assert_eq!(std::mem::size_of::<kvm_bindings::kvm_sregs>(), 312);
        assert_eq!(std::mem::size_of::<kvm_bindings::kvm_vcpu_events>(), 64);
        assert_eq!(std::mem::size_of::<kvm_bindings::kvm_regs>(), 144);
        assert_eq!(std::mem::size_of::<kvm_bindings::kvm_xcrs>(), 392);
        assert_eq!(std::mem::size_of::<kvm_bindings::kvm_debugregs>(), 128);
        assert_eq!(std::mem::size_of::<kvm_bindings::kvm_lapic_state>(), 1024);
        assert_eq!(std::mem::size_of::<kvm_bindings::kvm_mp_state>(), 4);
    }
}
