//! What a snapshot's state file holds, as one value ([`VmSnapshot`]), and
//! its sections: the machine's shape, each vCPU, the in-kernel devices,
//! the legacy devices, the PCI headers and each virtio device (its
//! transport and its own saved state). Decoding checks every count and
//! length; whether the values fit the machine being restored is checked
//! where they are applied (the transport, the devices, KVM).

use ipc::{DeviceState, QueueLayout, QueueState};
use vm_superio::serial::SerialState;

use super::format::{Dec, Enc, FormatError, Sections, StateWriter};
use super::machine::MachineState;
use super::vcpu::VcpuState;
use crate::device_host::SavedDevice;
use crate::legacy::LegacyState;
use crate::virtio_pci::{CommonState, QueueRegs, TransportState};

const INFO: u32 = 1;
const VCPU: u32 = 2;
const MACHINE: u32 = 3;
const LEGACY: u32 = 4;
const PCI: u32 = 5;
const DEVICE: u32 = 6;

/// Most vCPUs (skvm numbers them with a u8).
pub const MAX_VCPUS: usize = 255;
/// Most devices on PCI bus 0.
pub const MAX_DEVICES: usize = 32;
/// Most bytes of a PCI header.
const PCI_HEADER: usize = crate::pci::config::CONFIG_SIZE;
/// Most MSI-X vectors of one device (a queue each and the configuration).
const MAX_VECTORS: usize = ipc::MAX_QUEUES + 1;
/// Most bytes of unread console input (the 8250's FIFO is 64).
const MAX_SERIAL_INPUT: usize = 64;
/// Most bytes of a device's name, kind or parameters.
const MAX_NAME: usize = 64;

/// The machine's shape: what a restore rebuilds before it applies state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineInfo {
    /// vCPUs.
    pub cpus: u8,
    /// Boot RAM, bytes.
    pub mem: u64,
    /// Whether the host quirks were on (emulating host): the restored VM
    /// must complete the same instructions.
    pub quirks: bool,
    /// The vCPU state size KVM reported (KVM_CAP_XSAVE2; 0 without it): a
    /// host whose differs cannot take the XSAVE areas.
    pub xsave_size: u32,
    /// Regions added by mem-add: guest address and size, in order.
    pub hotplugged: Vec<(u64, u64)>,
}

/// A whole VM's state but its RAM.
#[derive(Clone)]
pub struct VmSnapshot {
    /// The machine's shape.
    pub info: MachineInfo,
    /// Each vCPU, by index.
    pub vcpus: Vec<VcpuState>,
    /// The irqchips, PIT and clock.
    pub machine: MachineState,
    /// The UART and the RTC.
    pub legacy: LegacyState,
    /// Every PCI function's header, by device number.
    pub pci: Vec<(usize, Vec<u8>)>,
    /// Every virtio device, in the configuration's order.
    pub devices: Vec<SavedDevice>,
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl VmSnapshot {
    /// The state file's bytes.
    pub fn encode(&self) -> Result<Vec<u8>, FormatError> {
        let mut w = StateWriter::new();
        let mut e = Enc::new();
        let i = &self.info;
        e.u8(i.cpus)
            .u64(i.mem)
            .u8(u8::from(i.quirks))
            .u32(i.xsave_size);
        e.u32(count(i.hotplugged.len()));
        for (addr, size) in &i.hotplugged {
            e.u64(*addr).u64(*size);
        }
        w.section(INFO, &e)?;
        for v in &self.vcpus {
            let mut e = Enc::new();
            v.encode(&mut e);
            w.section(VCPU, &e)?;
        }
        let mut e = Enc::new();
        self.machine.encode(&mut e);
        w.section(MACHINE, &e)?;
        let mut e = Enc::new();
        encode_legacy(&mut e, &self.legacy);
        w.section(LEGACY, &e)?;
        for (slot, header) in &self.pci {
            let mut e = Enc::new();
            e.u32(count(*slot)).bytes(header);
            w.section(PCI, &e)?;
        }
        for d in &self.devices {
            let mut e = Enc::new();
            encode_device(&mut e, d);
            w.section(DEVICE, &e)?;
        }
        w.finish()
    }

    /// Reads a state file: the header and checksum first, then every
    /// section, each consumed exactly.
    pub fn decode(file: &[u8]) -> Result<Self, FormatError> {
        let s = Sections::parse(file)?;
        let info = decode_info(s.one(INFO, "machine info")?)?;
        let vcpu_sections = s.all(VCPU, "vcpu");
        if vcpu_sections.len() != usize::from(info.cpus) {
            return Err(FormatError::Bad(
                "vcpus",
                format!("{} saved for {} vCPUs", vcpu_sections.len(), info.cpus),
            ));
        }
        let mut vcpus = Vec::with_capacity(vcpu_sections.len());
        for mut d in vcpu_sections {
            vcpus.push(VcpuState::decode(&mut d)?);
            d.end()?;
        }
        let mut d = s.one(MACHINE, "irqchip")?;
        let machine = MachineState::decode(&mut d)?;
        d.end()?;
        let mut d = s.one(LEGACY, "legacy devices")?;
        let legacy = decode_legacy(&mut d)?;
        d.end()?;
        let pci_sections = s.all(PCI, "pci header");
        if pci_sections.len() > MAX_DEVICES {
            return Err(FormatError::TooLarge {
                what: "pci functions",
                value: pci_sections.len() as u64,
                max: MAX_DEVICES as u64,
            });
        }
        let mut pci = Vec::with_capacity(pci_sections.len());
        for mut d in pci_sections {
            let slot = d.u32()? as usize;
            let header = d.bytes(PCI_HEADER)?.to_vec();
            d.end()?;
            if slot >= MAX_DEVICES || header.len() != PCI_HEADER {
                return Err(FormatError::Bad(
                    "pci header",
                    format!("slot {slot}, {} bytes", header.len()),
                ));
            }
            pci.push((slot, header));
        }
        let device_sections = s.all(DEVICE, "device");
        if device_sections.len() > MAX_DEVICES {
            return Err(FormatError::TooLarge {
                what: "devices",
                value: device_sections.len() as u64,
                max: MAX_DEVICES as u64,
            });
        }
        let mut devices = Vec::with_capacity(device_sections.len());
        for mut d in device_sections {
            devices.push(decode_device(&mut d)?);
            d.end()?;
        }
        if let Some(t) = s
            .tags()
            .find(|t| !matches!(*t, INFO | VCPU | MACHINE | LEGACY | PCI | DEVICE))
        {
            return Err(FormatError::Bad("sections", format!("unknown tag {t}")));
        }
        Ok(Self {
            info,
            vcpus,
            machine,
            legacy,
            pci,
            devices,
        })
    }
}

fn decode_info(mut d: Dec<'_>) -> Result<MachineInfo, FormatError> {
    let cpus = d.u8()?;
    let mem = d.u64()?;
    let quirks = d.flag()?;
    let xsave_size = d.u32()?;
    let n = d.count(ipc::MAX_REGIONS, 16)?;
    let mut hotplugged = Vec::with_capacity(n);
    for _ in 0..n {
        hotplugged.push((d.u64()?, d.u64()?));
    }
    d.end()?;
    if cpus == 0 {
        return Err(FormatError::Bad("machine info", "no vCPU".into()));
    }
    Ok(MachineInfo {
        cpus,
        mem,
        quirks,
        xsave_size,
        hotplugged,
    })
}

fn encode_legacy(e: &mut Enc, l: &LegacyState) {
    let s = &l.serial;
    e.u8(s.baud_divisor_low)
        .u8(s.baud_divisor_high)
        .u8(s.interrupt_enable)
        .u8(s.interrupt_identification)
        .u8(s.line_control)
        .u8(s.line_status)
        .u8(s.modem_control)
        .u8(s.modem_status)
        .u8(s.scratch)
        .bytes(&s.in_buffer)
        .u8(l.cmos_index);
}

fn decode_legacy(d: &mut Dec<'_>) -> Result<LegacyState, FormatError> {
    let serial = SerialState {
        baud_divisor_low: d.u8()?,
        baud_divisor_high: d.u8()?,
        interrupt_enable: d.u8()?,
        interrupt_identification: d.u8()?,
        line_control: d.u8()?,
        line_status: d.u8()?,
        modem_control: d.u8()?,
        modem_status: d.u8()?,
        scratch: d.u8()?,
        in_buffer: d.bytes(MAX_SERIAL_INPUT)?.to_vec(),
    };
    Ok(LegacyState {
        serial,
        cmos_index: d.u8()?,
    })
}

fn text(d: &mut Dec<'_>, what: &'static str) -> Result<String, FormatError> {
    String::from_utf8(d.bytes(MAX_NAME)?.to_vec())
        .map_err(|_| FormatError::Bad(what, "not UTF-8".into()))
}

fn encode_device(e: &mut Enc, d: &SavedDevice) {
    e.bytes(d.name.as_bytes())
        .bytes(d.kind.as_bytes())
        .bytes(&d.params)
        .u64(d.file_size)
        .u32(count(d.slot))
        .u8(u8::from(d.failed));
    let c = &d.transport.common;
    e.u32(c.device_feature_select)
        .u32(c.driver_feature_select)
        .u64(c.driver_features)
        .u8(c.status)
        .u8(c.generation)
        .u16(c.msix_config)
        .u16(c.queue_select)
        .u32(count(c.queues.len()));
    for q in &c.queues {
        e.u16(q.size)
            .u8(u8::from(q.enabled))
            .u16(q.vector)
            .u64(q.desc)
            .u64(q.avail)
            .u64(q.used);
    }
    e.u32(count(d.transport.msix.len()));
    for entry in &d.transport.msix {
        for w in entry {
            e.u32(*w);
        }
    }
    e.bytes(&d.transport.device_config);
    match &d.state {
        None => {
            e.u8(0);
        }
        Some(s) => {
            e.u8(1).u64(s.features).u32(count(s.queues.len()));
            for q in &s.queues {
                let l = &q.layout;
                e.u16(l.index)
                    .u16(l.size)
                    .u64(l.desc)
                    .u64(l.avail)
                    .u64(l.used)
                    .u8(u8::from(q.event_idx))
                    .u16(q.next_avail)
                    .u16(q.next_used);
            }
            e.bytes(&s.device);
        }
    }
}

fn decode_device(d: &mut Dec<'_>) -> Result<SavedDevice, FormatError> {
    let name = text(d, "device name")?;
    let kind = text(d, "device kind")?;
    let params = d.bytes(ipc::wire::MAX_PARAMS)?.to_vec();
    let file_size = d.u64()?;
    let slot = d.u32()? as usize;
    if slot >= MAX_DEVICES {
        return Err(FormatError::Bad("device", format!("PCI slot {slot}")));
    }
    let failed = d.flag()?;
    let mut common = CommonState {
        device_feature_select: d.u32()?,
        driver_feature_select: d.u32()?,
        driver_features: d.u64()?,
        status: d.u8()?,
        generation: d.u8()?,
        msix_config: d.u16()?,
        queue_select: d.u16()?,
        queues: Vec::new(),
    };
    let n = d.count(ipc::MAX_QUEUES, 31)?;
    for _ in 0..n {
        common.queues.push(QueueRegs {
            size: d.u16()?,
            enabled: d.flag()?,
            vector: d.u16()?,
            desc: d.u64()?,
            avail: d.u64()?,
            used: d.u64()?,
        });
    }
    let n = d.count(MAX_VECTORS, 16)?;
    let mut msix = Vec::with_capacity(n);
    for _ in 0..n {
        msix.push([d.u32()?, d.u32()?, d.u32()?, d.u32()?]);
    }
    let device_config = d.bytes(ipc::MAX_CONFIG)?.to_vec();
    let state = if d.flag()? {
        let features = d.u64()?;
        let n = d.count(ipc::MAX_QUEUES, 33)?;
        let mut queues = Vec::with_capacity(n);
        for _ in 0..n {
            let layout = QueueLayout {
                index: d.u16()?,
                size: d.u16()?,
                desc: d.u64()?,
                avail: d.u64()?,
                used: d.u64()?,
            };
            queues.push(QueueState {
                layout,
                event_idx: d.flag()?,
                next_avail: d.u16()?,
                next_used: d.u16()?,
            });
        }
        Some(DeviceState {
            features,
            queues,
            device: d.bytes(ipc::MAX_DEVICE_STATE)?.to_vec(),
        })
    } else {
        None
    };
    Ok(SavedDevice {
        name,
        kind,
        params,
        file_size,
        slot,
        failed,
        transport: TransportState {
            common,
            msix,
            device_config,
        },
        state,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_ioctls::Kvm;

    fn sample() -> VmSnapshot {
        let kvm = Kvm::new().expect("/dev/kvm");
        let vm = kvm.create_vm().unwrap();
        vm.create_irq_chip().unwrap();
        vm.create_pit2(kvm_bindings::kvm_pit_config::default())
            .unwrap();
        let fd = vm.create_vcpu(0).unwrap();
        let msrs = kvm.get_msr_index_list().unwrap().as_slice().to_vec();
        let vcpu = VcpuState::capture(&fd, &msrs).unwrap();
        let device = SavedDevice {
            name: "blk0".into(),
            kind: "blk".into(),
            params: vec![1, 2, 3],
            file_size: 1 << 30,
            slot: 1,
            failed: false,
            transport: TransportState {
                common: CommonState {
                    device_feature_select: 1,
                    driver_feature_select: 0,
                    driver_features: 1 << 32,
                    status: 0xf,
                    generation: 2,
                    msix_config: 0,
                    queue_select: 0,
                    queues: vec![QueueRegs {
                        size: 256,
                        enabled: true,
                        vector: 1,
                        desc: 0x1000,
                        avail: 0x2000,
                        used: 0x3000,
                    }],
                },
                msix: vec![[0xfee0_0000, 0, 0x41, 0], [0, 0, 0, 1]],
                device_config: vec![0; 60],
            },
            state: Some(DeviceState {
                features: 1 << 32,
                queues: vec![QueueState {
                    layout: QueueLayout {
                        index: 0,
                        size: 256,
                        desc: 0x1000,
                        avail: 0x2000,
                        used: 0x3000,
                    },
                    event_idx: true,
                    next_avail: 7,
                    next_used: 7,
                }],
                device: vec![9; 16],
            }),
        };
        let idle = SavedDevice {
            name: "rng0".into(),
            kind: "rng".into(),
            state: None,
            slot: 2,
            ..device.clone()
        };
        VmSnapshot {
            info: MachineInfo {
                cpus: 1,
                mem: 256 << 20,
                quirks: true,
                xsave_size: 2696,
                hotplugged: vec![(0x1_0000_0000, 128 << 20)],
            },
            vcpus: vec![vcpu],
            machine: MachineState::capture(&vm).unwrap(),
            legacy: LegacyState {
                serial: SerialState {
                    in_buffer: b"ls\r".to_vec(),
                    ..SerialState::default()
                },
                cmos_index: 0x0b,
            },
            pci: vec![(0, vec![0x36; 256]), (1, vec![0xf4; 256])],
            devices: vec![device, idle],
        }
    }

    #[test]
    fn a_whole_vm_state_round_trips() {
        let s = sample();
        let bytes = s.encode().unwrap();
        let back = VmSnapshot::decode(&bytes).unwrap();
        assert_eq!(back.info, s.info);
        assert_eq!(back.vcpus.len(), 1);
        assert_eq!(back.vcpus[0].regs.rip, s.vcpus[0].regs.rip);
        assert_eq!(back.vcpus[0].msrs, s.vcpus[0].msrs);
        assert_eq!(back.legacy, s.legacy);
        assert_eq!(back.pci, s.pci);
        assert_eq!(back.devices, s.devices);
        // Encoding is deterministic: the same state, the same bytes.
        assert_eq!(back.encode().unwrap(), bytes);
    }

    #[test]
    fn a_state_file_with_a_vcpu_missing_or_an_unknown_section_is_refused() {
        let mut s = sample();
        s.info.cpus = 2;
        let bytes = s.encode().unwrap();
        assert!(matches!(
            VmSnapshot::decode(&bytes),
            Err(FormatError::Bad("vcpus", _))
        ));
        // Every truncation of a good file is refused, none panics.
        let good = sample().encode().unwrap();
        for cut in (0..good.len()).step_by(97) {
            assert!(VmSnapshot::decode(&good[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn oversized_device_fields_are_refused_before_allocation() {
        let mut s = sample();
        s.devices[0].params = vec![0; ipc::wire::MAX_PARAMS + 1];
        let bytes = s.encode().unwrap();
        assert!(matches!(
            VmSnapshot::decode(&bytes),
            Err(FormatError::TooLarge { .. })
        ));
        let mut s = sample();
        s.devices[0].transport.msix = vec![[0; 4]; MAX_VECTORS + 1];
        assert!(VmSnapshot::decode(&s.encode().unwrap()).is_err());
        let mut s = sample();
        s.legacy.serial.in_buffer = vec![b'x'; MAX_SERIAL_INPUT + 1];
        assert!(VmSnapshot::decode(&s.encode().unwrap()).is_err());
    }
}
