//! KVM interrupt routing: the in-kernel PIC and IO-APIC pins plus one MSI
//! route per device interrupt eventfd (KVM_SET_GSI_ROUTING, KVM_IRQFD).
//!
//! A device signals an eventfd; KVM turns it into the MSI message the guest
//! programmed, without the VMM. While the guest masks a vector, the irqfd is
//! detached and the eventfd keeps counting; attaching it again makes KVM
//! deliver the pending interrupt (KVM checks the count on KVM_IRQFD).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use vmm_sys_util::eventfd::EventFd;

/// IO-APIC pins; MSI routes use the GSIs above them.
const IOAPIC_PINS: u32 = 24;

/// An MSI message as the guest wrote it in an MSI-X table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiMessage {
    /// Message address (low and high dwords).
    pub address: u64,
    /// Message data.
    pub data: u32,
}

/// Errors from KVM routing calls.
#[derive(Debug, thiserror::Error)]
pub enum IrqError {
    /// No GSIs left.
    #[error("out of interrupt routes")]
    Exhausted,
    /// KVM refused the routing table.
    #[error("cannot set interrupt routing: {0}")]
    Routing(kvm_ioctls::Error),
    /// An eventfd could not be created.
    #[error("cannot create an eventfd")]
    Eventfd(#[source] std::io::Error),
    /// KVM refused an ioeventfd.
    #[error("cannot register an ioeventfd at {addr:#x}: {err}")]
    Ioevent {
        /// The guest address.
        addr: u64,
        /// KVM's error.
        err: kvm_ioctls::Error,
    },
    /// KVM refused an irqfd change.
    #[error("cannot {action} irqfd for gsi {gsi}: {err}")]
    Irqfd {
        /// "attach" or "detach".
        action: &'static str,
        /// The GSI.
        gsi: u32,
        /// KVM's error.
        err: kvm_ioctls::Error,
    },
}

struct Route {
    msg: Option<MsiMessage>,
    attached: bool,
}

struct State {
    next_gsi: u32,
    routes: BTreeMap<u32, Route>,
}

/// Interrupt routes and queue notifications as the transport sets them up
/// (KVM MSI routes with irqfds, and ioeventfds: [`IrqRouter`]; unit tests
/// and fuzz targets give the transport a fake).
pub trait Routes: Send + Sync {
    /// A new GSI for an MSI route, with no message yet.
    fn allocate(&self) -> Result<u32, IrqError>;
    /// Points `gsi` at `msg` with `evt` attached, or detaches `evt` when
    /// `msg` is `None` (vector masked or unassigned).
    fn update(&self, gsi: u32, evt: &EventFd, msg: Option<MsiMessage>) -> Result<(), IrqError>;
    /// Makes a guest write to `addr` signal `evt`.
    fn add_notify(&self, evt: &EventFd, addr: u64) -> Result<(), IrqError>;
    /// Undoes [`Routes::add_notify`].
    fn remove_notify(&self, evt: &EventFd, addr: u64);
}

/// The VM's routing table.
pub struct IrqRouter {
    vm: Arc<VmFd>,
    state: Mutex<State>,
}

fn irqchip(gsi: u32, chip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        ..Default::default()
    };
    e.u.irqchip.irqchip = chip;
    e.u.irqchip.pin = pin;
    e
}

fn msi(gsi: u32, m: MsiMessage) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_MSI,
        ..Default::default()
    };
    e.u.msi.address_lo = u32::try_from(m.address & 0xffff_ffff).unwrap_or(0);
    e.u.msi.address_hi = u32::try_from(m.address >> 32).unwrap_or(0);
    e.u.msi.data = m.data;
    e
}

impl IrqRouter {
    /// A router for `vm`, whose in-kernel irqchip exists already.
    pub fn new(vm: Arc<VmFd>) -> Self {
        Self {
            vm,
            state: Mutex::new(State {
                next_gsi: IOAPIC_PINS,
                routes: BTreeMap::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new GSI for an MSI route, with no message yet.
    fn allocate_gsi(&self) -> Result<u32, IrqError> {
        let mut s = self.lock();
        let gsi = s.next_gsi;
        if usize::try_from(gsi).map_or(true, |g| g >= kvm_bindings::KVM_MAX_IRQ_ROUTES) {
            return Err(IrqError::Exhausted);
        }
        s.next_gsi += 1;
        s.routes.insert(
            gsi,
            Route {
                msg: None,
                attached: false,
            },
        );
        Ok(gsi)
    }

    /// Points `gsi` at `msg` and attaches `evt` to it, or detaches `evt`
    /// when `msg` is `None` (vector masked or unassigned). KVM applies a
    /// new table to attached irqfds by itself.
    fn update_route(
        &self,
        gsi: u32,
        evt: &EventFd,
        msg: Option<MsiMessage>,
    ) -> Result<(), IrqError> {
        let mut s = self.lock();
        let Some(route) = s.routes.get_mut(&gsi) else {
            return Ok(());
        };
        let changed = route.msg != msg;
        let attached = route.attached;
        route.msg = msg;
        if msg.is_none() && attached {
            self.vm
                .unregister_irqfd(evt, gsi)
                .map_err(|err| IrqError::Irqfd {
                    action: "detach",
                    gsi,
                    err,
                })?;
            route.attached = false;
        }
        if changed {
            self.commit(&s)?;
        }
        if msg.is_some() && !attached {
            self.vm
                .register_irqfd(evt, gsi)
                .map_err(|err| IrqError::Irqfd {
                    action: "attach",
                    gsi,
                    err,
                })?;
            if let Some(r) = s.routes.get_mut(&gsi) {
                r.attached = true;
            }
        }
        Ok(())
    }

    /// Hands KVM the whole table: the PIC and IO-APIC pins as KVM sets them
    /// up by default, then every MSI route with a message.
    fn commit(&self, s: &State) -> Result<(), IrqError> {
        let mut entries = Vec::new();
        for pin in 0..IOAPIC_PINS {
            entries.push(irqchip(pin, KVM_IRQCHIP_IOAPIC, pin));
            if pin < 8 {
                entries.push(irqchip(pin, KVM_IRQCHIP_PIC_MASTER, pin));
            } else if pin < 16 {
                entries.push(irqchip(pin, KVM_IRQCHIP_PIC_SLAVE, pin - 8));
            }
        }
        for (gsi, r) in &s.routes {
            if let Some(m) = r.msg {
                entries.push(msi(*gsi, m));
            }
        }
        let mut table = KvmIrqRouting::new(entries.len()).map_err(|_| IrqError::Exhausted)?;
        let slice = table.as_mut_slice();
        slice.copy_from_slice(&entries);
        self.vm.set_gsi_routing(&table).map_err(IrqError::Routing)
    }
}

impl Routes for IrqRouter {
    fn allocate(&self) -> Result<u32, IrqError> {
        self.allocate_gsi()
    }

    fn update(&self, gsi: u32, evt: &EventFd, msg: Option<MsiMessage>) -> Result<(), IrqError> {
        self.update_route(gsi, evt, msg)
    }

    fn add_notify(&self, evt: &EventFd, addr: u64) -> Result<(), IrqError> {
        self.vm
            .register_ioevent(evt, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(|err| IrqError::Ioevent { addr, err })
    }

    fn remove_notify(&self, evt: &EventFd, addr: u64) {
        let _ = self
            .vm
            .unregister_ioevent(evt, &IoEventAddress::Mmio(addr), NoDatamatch);
    }
}
