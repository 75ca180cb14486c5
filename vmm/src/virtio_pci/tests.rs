//! The transport driven through its PCI face as a guest would, with a
//! recording device and recording routes in place of a device process and
//! KVM (the register rules themselves are tested in `common`).

use std::sync::Mutex;

use super::*;
use crate::irq::MsiMessage;
use crate::pci::PciFunction;

/// What the transport asked of the device.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    Config(u32, Vec<u8>),
    Activate(u64, Vec<QueueLayout>),
    Reset,
}

struct FakeDevice {
    info: DeviceDescription,
    calls: Arc<Mutex<Vec<Call>>>,
    refuse_activation: bool,
}

impl Backend for FakeDevice {
    fn name(&self) -> &str {
        "fake0"
    }
    fn description(&self) -> &DeviceDescription {
        &self.info
    }
    fn write_config(&mut self, offset: u32, data: &[u8]) -> Result<(), BackendError> {
        self.calls
            .lock()
            .unwrap()
            .push(Call::Config(offset, data.to_vec()));
        Ok(())
    }
    fn activate(
        &mut self,
        features: u64,
        queues: &[QueueLayout],
        _: &DeviceEvents,
    ) -> Result<(), BackendError> {
        self.calls
            .lock()
            .unwrap()
            .push(Call::Activate(features, queues.to_vec()));
        if self.refuse_activation {
            return Err("refused".into());
        }
        Ok(())
    }
    fn reset(&mut self) -> Result<(), BackendError> {
        self.calls.lock().unwrap().push(Call::Reset);
        Ok(())
    }
}

/// Routes that record the last message of each GSI and the notify
/// addresses in place.
#[derive(Default)]
struct FakeRoutes {
    next: Mutex<u32>,
    messages: Mutex<Vec<(u32, Option<MsiMessage>)>>,
    notify: Mutex<Vec<u64>>,
}

impl Routes for FakeRoutes {
    fn allocate(&self) -> Result<u32, IrqError> {
        let mut n = self.next.lock().unwrap();
        *n += 1;
        Ok(23 + *n)
    }
    fn update(&self, gsi: u32, _: &EventFd, msg: Option<MsiMessage>) -> Result<(), IrqError> {
        let mut m = self.messages.lock().unwrap();
        m.retain(|(g, _)| *g != gsi);
        m.push((gsi, msg));
        Ok(())
    }
    fn add_notify(&self, _: &EventFd, addr: u64) -> Result<(), IrqError> {
        self.notify.lock().unwrap().push(addr);
        Ok(())
    }
    fn remove_notify(&self, _: &EventFd, addr: u64) {
        self.notify.lock().unwrap().retain(|a| *a != addr);
    }
}

impl FakeRoutes {
    fn message(&self, gsi: u32) -> Option<MsiMessage> {
        let m = self.messages.lock().unwrap();
        m.iter().find(|(g, _)| *g == gsi).and_then(|(_, msg)| *msg)
    }
}

const FEATURES: u64 = 1 << 32;
const BAR: u32 = 0xc000_0000;

struct Rig {
    pci: VirtioPci<FakeDevice>,
    calls: Arc<Mutex<Vec<Call>>>,
    routes: Arc<FakeRoutes>,
}

fn rig_with(refuse_activation: bool) -> Rig {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let routes = Arc::new(FakeRoutes::default());
    let device = FakeDevice {
        info: DeviceDescription {
            device_type: 4,
            num_queues: 2,
            max_queue_size: 256,
            features: FEATURES,
            config: vec![1, 2, 3, 4],
        },
        calls: calls.clone(),
        refuse_activation,
    };
    let pci = VirtioPci::new(device, [0xff, 0, 0], BAR, routes.clone()).unwrap();
    Rig { pci, calls, routes }
}

fn rig() -> Rig {
    rig_with(false)
}

fn w(r: &mut Rig, offset: u64, v: u64, len: usize) {
    r.pci.bar_write(0, offset, &v.to_le_bytes()[..len]);
}

fn rd(r: &mut Rig, offset: u64, len: usize) -> u64 {
    let mut b = [0u8; 8];
    r.pci.bar_read(0, offset, &mut b[..len]);
    u64::from_le_bytes(b)
}

const STATUS: u64 = 0x14;
const GENERATION: u64 = 0x15;
const QSELECT: u64 = 0x16;
const QSIZE: u64 = 0x18;
const QVECTOR: u64 = 0x1a;
const QENABLE: u64 = 0x1c;
const QDESC: u64 = 0x20;
const MSIX_CONFIG: u64 = 0x10;

/// Features, one queue at 0x1000.., DRIVER_OK.
fn bring_up(r: &mut Rig) {
    w(r, STATUS, 3, 1);
    w(r, 0x08, 1, 4);
    w(r, 0x0c, 1, 4);
    w(r, STATUS, 0xb, 1);
    w(r, QSELECT, 0, 2);
    w(r, QSIZE, 64, 2);
    w(r, QDESC, 0x1000, 8);
    w(r, 0x28, 0x2000, 8);
    w(r, 0x30, 0x3000, 8);
    w(r, QENABLE, 1, 2);
    w(r, STATUS, 0xf, 1);
}

#[test]
fn driver_ok_activates_the_device_with_what_the_driver_set_up() {
    let mut r = rig();
    bring_up(&mut r);
    let layout = QueueLayout {
        index: 0,
        size: 64,
        desc: 0x1000,
        avail: 0x2000,
        used: 0x3000,
    };
    assert_eq!(
        *r.calls.lock().unwrap(),
        vec![Call::Activate(FEATURES, vec![layout])]
    );
    assert!(r.pci.is_active());
    let state = r.pci.driver_state().unwrap();
    assert_eq!(state.features, FEATURES);
    assert_eq!(state.queues, vec![layout]);
}

#[test]
fn a_refused_activation_marks_the_device_as_needing_a_reset() {
    let mut r = rig_with(true);
    bring_up(&mut r);
    assert_eq!(rd(&mut r, STATUS, 1), 0x4f);
    assert!(!r.pci.is_active());
    assert_eq!(r.pci.events().config_irq.read().unwrap(), 1);
}

#[test]
fn a_reset_of_a_started_device_reaches_it_and_clears_the_driver_state() {
    let mut r = rig();
    bring_up(&mut r);
    w(&mut r, STATUS, 0, 1);
    assert_eq!(r.calls.lock().unwrap().last(), Some(&Call::Reset));
    assert_eq!(rd(&mut r, STATUS, 1), 0);
    assert!(r.pci.driver_state().is_none());
    // A second reset of a device never started again does not reach it.
    let before = r.calls.lock().unwrap().len();
    w(&mut r, STATUS, 0, 1);
    assert_eq!(r.calls.lock().unwrap().len(), before);
}

#[test]
fn a_failed_device_tells_the_driver_unless_it_is_reset() {
    let mut r = rig();
    r.pci.device_failed();
    assert_eq!(rd(&mut r, STATUS, 1), 0);
    assert!(r.pci.events().config_irq.read().is_err());
    bring_up(&mut r);
    r.pci.device_failed();
    assert_eq!(rd(&mut r, STATUS, 1) & 0x40, 0x40);
    assert_eq!(rd(&mut r, GENERATION, 1), 1);
    assert_eq!(r.pci.events().config_irq.read().unwrap(), 1);
}

#[test]
fn device_configuration_reads_come_from_the_cache_and_writes_reach_the_device() {
    let mut r = rig();
    assert_eq!(rd(&mut r, DEVICE_CFG + 1, 2), 0x0302);
    assert_eq!(rd(&mut r, DEVICE_CFG + 3, 4), 4);
    w(&mut r, DEVICE_CFG + 2, 0xab, 1);
    assert_eq!(*r.calls.lock().unwrap(), vec![Call::Config(2, vec![0xab])]);
    r.pci.config_changed(vec![9]);
    assert_eq!(rd(&mut r, DEVICE_CFG, 1), 9);
    assert_eq!(rd(&mut r, GENERATION, 1), 1);
}

#[test]
fn vectors_become_routes_only_when_msix_is_on_and_unmasked() {
    let mut r = rig();
    // Vector 1: address and data, unmasked.
    w(&mut r, MSIX_TABLE + 16, 0xfee0_0000, 4);
    w(&mut r, MSIX_TABLE + 24, 0x41, 4);
    w(&mut r, MSIX_TABLE + 28, 0, 4);
    w(&mut r, QSELECT, 0, 2);
    w(&mut r, QVECTOR, 1, 2);
    let queue0_gsi = 24;
    assert_eq!(r.routes.message(queue0_gsi), None, "MSI-X is off");
    // Enable MSI-X in the capability's message control.
    let cap = r.pci.msix_cap;
    r.pci.config_write(cap + 2, &0x8000u16.to_le_bytes());
    let want = MsiMessage {
        address: 0xfee0_0000,
        data: 0x41,
    };
    assert_eq!(r.routes.message(queue0_gsi), Some(want));
    // Masking the vector detaches it.
    w(&mut r, MSIX_TABLE + 28, 1, 4);
    assert_eq!(r.routes.message(queue0_gsi), None);
    // A vector past the table reads back as NO_VECTOR.
    w(&mut r, MSIX_CONFIG, 7, 2);
    assert_eq!(rd(&mut r, MSIX_CONFIG, 2), u64::from(NO_VECTOR));
}

#[test]
fn notify_addresses_follow_the_bar() {
    let mut r = rig();
    r.pci.bar_moved(0, None, Some(0xc000_0000));
    assert_eq!(
        *r.routes.notify.lock().unwrap(),
        vec![0xc000_3000, 0xc000_3004]
    );
    r.pci.bar_moved(0, Some(0xc000_0000), Some(0xd000_0000));
    assert_eq!(
        *r.routes.notify.lock().unwrap(),
        vec![0xd000_3000, 0xd000_3004]
    );
    r.pci.bar_moved(0, Some(0xd000_0000), None);
    assert!(r.routes.notify.lock().unwrap().is_empty());
}

#[test]
fn a_notify_write_before_the_ioeventfd_kicks_the_queue() {
    let mut r = rig();
    w(&mut r, NOTIFY + 4, 1, 2);
    assert_eq!(r.pci.events().kicks[1].read().unwrap(), 1);
    w(&mut r, NOTIFY + 400, 1, 2);
}

#[test]
fn the_pci_config_window_reaches_the_bar() {
    let mut r = rig();
    let cap = r.pci.pci_cfg_cap;
    // bar 0, offset 0x14 (device status), length 1.
    r.pci.config_write(cap + 4, &[0]);
    r.pci.config_write(cap + 8, &0x14u32.to_le_bytes());
    r.pci.config_write(cap + 12, &1u32.to_le_bytes());
    r.pci.config_write(cap + 16, &[3]);
    assert_eq!(rd(&mut r, STATUS, 1), 3);
    let mut b = [0u8; 1];
    r.pci.config_read(cap + 16, &mut b);
    assert_eq!(b, [3]);
}

#[test]
fn the_capability_list_is_what_virtio_drivers_parse() {
    let r = rig();
    let c = r.pci.config();
    // Vendor, device and class.
    assert_eq!(c.read_u16(0), 0x1af4);
    assert_eq!(c.read_u16(2), 0x1044);
    let mut caps = Vec::new();
    let mut at = usize::from(c.read_u16(0x34) & 0xff);
    while at != 0 && caps.len() < 8 {
        let mut b = [0u8; 20];
        c.read(at, &mut b);
        caps.push(b);
        at = usize::from(b[1]);
    }
    assert_eq!(caps.len(), 6);
    // common, isr, device, notify, pci cfg: cfg_type, bar, offset, length.
    for (cap, (cfg_type, offset, length)) in caps.iter().zip([
        (1u8, 0u32, 0x38u32),
        (3, 0x1000, 1),
        (4, 0x2000, 0x1000),
        (2, 0x3000, 0x1000),
        (5, 0, 0),
    ]) {
        assert_eq!(cap[0], 0x09);
        assert_eq!(cap[3], cfg_type);
        assert_eq!(u32::from_le_bytes(cap[8..12].try_into().unwrap()), offset);
        assert_eq!(u32::from_le_bytes(cap[12..16].try_into().unwrap()), length);
    }
    assert_eq!(caps[3][2], 20);
    assert_eq!(u32::from_le_bytes(caps[3][16..20].try_into().unwrap()), 4);
    // MSI-X: 3 vectors (2 queues and the config), table and PBA in BAR 0.
    assert_eq!(caps[5][0], 0x11);
    assert_eq!(u16::from_le_bytes([caps[5][2], caps[5][3]]), 2);
    assert_eq!(
        u32::from_le_bytes(caps[5][4..8].try_into().unwrap()),
        0x4000
    );
    assert_eq!(
        u32::from_le_bytes(caps[5][8..12].try_into().unwrap()),
        0x6000
    );
}

#[test]
fn a_new_instance_of_another_device_is_refused() {
    let mut r = rig();
    bring_up(&mut r);
    let original = r.pci.backend().info.clone();
    let other = FakeDevice {
        info: DeviceDescription {
            device_type: 2,
            num_queues: 2,
            max_queue_size: 256,
            features: FEATURES,
            config: Vec::new(),
        },
        calls: r.calls.clone(),
        refuse_activation: false,
    };
    assert!(r.pci.swap_backend(other).is_err());
    assert!(!r.pci.is_active());
    let same = FakeDevice {
        info: original,
        calls: r.calls.clone(),
        refuse_activation: false,
    };
    assert!(r.pci.swap_backend(same).is_ok());
}

#[test]
fn any_access_anywhere_never_panics() {
    let mut r = rig();
    bring_up(&mut r);
    let mut seed = 7u64;
    for _ in 0..20_000 {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let offset = (seed >> 33) % 0x8100;
        let len = [1usize, 2, 3, 4, 8][usize::try_from(seed % 5).unwrap()];
        let mut b = (seed >> 7).to_le_bytes();
        if seed & 1 == 0 {
            r.pci.bar_write(0, offset, &b[..len]);
        } else {
            r.pci.bar_read(0, offset, &mut b[..len]);
        }
        let cfg = usize::try_from((seed >> 40) % 260).unwrap();
        r.pci.config_write(cfg, &b[..len.min(4)]);
    }
}

#[test]
fn a_saved_transport_restores_routes_and_registers_without_activating() {
    let mut r = rig();
    w(&mut r, MSIX_TABLE + 16, 0xfee0_0000, 4);
    w(&mut r, MSIX_TABLE + 24, 0x41, 4);
    w(&mut r, MSIX_TABLE + 28, 0, 4);
    bring_up(&mut r);
    w(&mut r, QSELECT, 0, 2);
    w(&mut r, QVECTOR, 1, 2);
    let cap = r.pci.msix_cap;
    r.pci.config_write(cap + 2, &0x8000u16.to_le_bytes());
    let saved = r.pci.save_transport();
    let header = r.pci.config().clone_bytes();

    let mut fresh = rig();
    fresh.pci.config_mut().write(0, &header);
    fresh.pci.restore_transport(&saved).unwrap();
    assert_eq!(fresh.pci.save_transport(), saved);
    assert!(fresh.pci.is_active());
    assert_eq!(fresh.pci.driver_state(), r.pci.driver_state());
    // Routed as before, and the device was told nothing: restoring it is
    // its host's business.
    assert_eq!(
        fresh.routes.message(24),
        Some(MsiMessage {
            address: 0xfee0_0000,
            data: 0x41
        })
    );
    assert!(fresh.calls.lock().unwrap().is_empty());
}

#[test]
fn a_saved_transport_of_another_shape_is_refused_and_changes_nothing() {
    let mut r = rig();
    bring_up(&mut r);
    let good = r.pci.save_transport();
    let mut fewer = good.clone();
    fewer.msix.pop();
    let mut longer = good.clone();
    longer.device_config.push(0);
    let mut bad_size = good.clone();
    bad_size.common.queues[0].size = 3;
    for bad in [fewer, longer, bad_size] {
        let mut fresh = rig();
        let before = fresh.pci.save_transport();
        assert!(fresh.pci.restore_transport(&bad).is_err());
        assert_eq!(fresh.pci.save_transport(), before);
    }
}
