//! The virtio-pci transport as a hostile guest drives it: any sequence of
//! BAR and PCI-configuration reads and writes, of any width at any offset,
//! with the device failing and coming back in between. The transport must
//! never panic, and what it hands the device must respect the rules it
//! enforces: activation only with queues the device has, sizes powers of
//! two up to its maximum, features it offered.
#![no_main]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vmm::irq::{IrqError, MsiMessage, Routes};
use vmm::pci::PciFunction;
use vmm::virtio_pci::{
    Backend, BackendError, DeviceDescription, DeviceEvents, QueueLayout, VirtioPci,
};
use vmm_sys_util::eventfd::EventFd;

const QUEUES: u16 = 2;
const MAX_QUEUE: u16 = 64;
const FEATURES: u64 = (1 << 32) | (1 << 29) | (1 << 28);

/// A device that checks what the transport asks of it.
struct Device {
    info: DeviceDescription,
}

impl Backend for Device {
    fn name(&self) -> &str {
        "fuzz0"
    }
    fn description(&self) -> &DeviceDescription {
        &self.info
    }
    fn write_config(&mut self, _: u32, data: &[u8]) -> Result<(), BackendError> {
        assert!(data.len() <= 8);
        Err("read-only".into())
    }
    fn activate(
        &mut self,
        features: u64,
        queues: &[QueueLayout],
        events: &DeviceEvents,
    ) -> Result<(), BackendError> {
        assert_eq!(features & !FEATURES, 0, "unoffered features {features:#x}");
        assert!(queues.len() <= usize::from(QUEUES));
        for q in queues {
            assert!(q.index < QUEUES);
            assert!(q.size.is_power_of_two() && q.size <= MAX_QUEUE, "size {}", q.size);
            assert!(events.kicks.get(usize::from(q.index)).is_some());
        }
        Ok(())
    }
    fn reset(&mut self) -> Result<(), BackendError> {
        Ok(())
    }
}

/// Routes that only count.
#[derive(Default)]
struct NoRoutes {
    next: AtomicU32,
}

impl Routes for NoRoutes {
    fn allocate(&self) -> Result<u32, IrqError> {
        Ok(24 + self.next.fetch_add(1, Ordering::Relaxed))
    }
    fn update(&self, _: u32, _: &EventFd, _: Option<MsiMessage>) -> Result<(), IrqError> {
        Ok(())
    }
    fn add_notify(&self, _: &EventFd, _: u64) -> Result<(), IrqError> {
        Ok(())
    }
    fn remove_notify(&self, _: &EventFd, _: u64) {}
}

fn device() -> Device {
    Device {
        info: DeviceDescription {
            device_type: 4,
            num_queues: QUEUES,
            max_queue_size: MAX_QUEUE,
            features: FEATURES,
            config: vec![7; 8],
        },
    }
}

fuzz_target!(|data: &[u8]| {
    let routes: Arc<dyn Routes> = Arc::new(NoRoutes::default());
    let Ok(mut pci) = VirtioPci::new(device(), [0xff, 0, 0], 0xc000_0000, routes) else {
        return;
    };
    // Each operation: kind, offset (2 bytes), width, value (8 bytes).
    for op in data.chunks_exact(12) {
        let offset = u64::from(u16::from_le_bytes([op[1], op[2]]));
        let len = [1usize, 2, 4, 8, 3][usize::from(op[3] % 5)];
        let mut value = [0u8; 8];
        value.copy_from_slice(&op[4..12]);
        match op[0] % 8 {
            0 | 1 => pci.bar_write(0, offset % 0x8000, &value[..len]),
            2 => pci.bar_read(0, offset % 0x8000, &mut value[..len]),
            3 => pci.config_write(usize::from(op[1]), &value[..len.min(4)]),
            4 => pci.config_read(usize::from(op[1]), &mut value[..len.min(4)]),
            5 => pci.device_failed(),
            6 => pci.bar_moved(0, None, Some(u64::from(op[2]) << 16)),
            _ => {
                let _ = pci.swap_backend(device());
            }
        }
        if let Some(state) = pci.driver_state() {
            assert_eq!(state.features & !FEATURES, 0);
        }
    }
});
