//! The devices' side of building a VM: binding the sockets devices listen
//! on (before the spawner forks), opening every device's backend (before
//! the VMM gives up its view of the host), handing skvm's terminal to the
//! console that asked for it, and attaching every device to the PCI bus.

use std::sync::Arc;

use anyhow::{bail, Result};

use crate::config::VmConfig;
use crate::console::backend::Console;
use crate::console::TerminalInput;
use crate::ctl::PrivateSocket;
use crate::device_host::spawner::SingleThreaded;
use crate::device_host::DeviceHost;
use crate::irq::{IrqRouter, Routes};
use crate::kinds::OpenContext;
use crate::memory::Memory;
use crate::pci::PciBus;

/// Every device's opened backend, in the configuration's order, and the
/// memory-hotplug region a device reserved.
pub(super) type Backends = (Vec<crate::kinds::Opened>, Option<(u64, u64)>);

/// skvm's terminal, if a device took it (`--console stdio`): one device at
/// most, and only when the 8250 does not have it.
pub(super) fn take_terminal(
    console: &Console,
    backends: &mut [crate::kinds::Opened],
) -> Result<Option<TerminalInput>> {
    let mut sinks = backends.iter_mut().filter_map(|o| o.terminal.take());
    let Some(sink) = sinks.next() else {
        return Ok(None);
    };
    if sinks.next().is_some() {
        bail!("--console stdio: only one console can have skvm's terminal");
    }
    if console.is_stdio() {
        bail!(
            "--console stdio: skvm's terminal is the 8250's (--serial stdio, the default); \
             give --serial another backend (pty, socket=PATH, file=PATH or off)"
        );
    }
    Ok(Some(TerminalInput::new(sink)))
}

/// Binds the socket each configured device listens on, if any, in the
/// configuration's order.
pub(super) fn bind_device_sockets(cfg: &VmConfig) -> Result<Vec<Option<PrivateSocket>>> {
    cfg.devices
        .iter()
        .map(|spec| {
            spec.config
                .socket()
                .map(|p| PrivateSocket::bind(p, &format!("device {}: socket ", spec.name)))
                .transpose()
        })
        .collect()
}

/// Opens every configured device's backend; `sockets` are what
/// [`bind_device_sockets`] bound.
pub(super) fn open_backends(
    cfg: &VmConfig,
    memory: &Memory,
    sockets: Vec<Option<PrivateSocket>>,
    single: &SingleThreaded,
) -> Result<Backends> {
    let helper_seccomp = cfg.sandbox.helper_filter();
    let mut hotplug = None;
    let mut opened = Vec::with_capacity(cfg.devices.len());
    for (spec, socket) in cfg.devices.iter().zip(sockets) {
        let mut ctx = OpenContext {
            vm_name: &cfg.name,
            device: &spec.name,
            ram_top: memory.ram_top(),
            hotplug: None,
            socket,
            single,
            helper_seccomp,
            confined_processes: cfg.device_mode == crate::device_host::DeviceMode::Process,
        };
        opened.push(spec.config.open(&mut ctx)?);
        hotplug = hotplug.or(ctx.hotplug);
    }
    Ok((opened, hotplug))
}

/// Attaches every configured device over its opened backend, in the
/// configuration's order.
pub(super) fn attach_devices(
    cfg: &VmConfig,
    backends: Vec<crate::kinds::Opened>,
    host: &mut DeviceHost,
    memory: &Memory,
    pci: &mut PciBus,
    router: &Arc<IrqRouter>,
) -> Result<()> {
    let routes: Arc<dyn Routes> = router.clone();
    host.set_memory(memory.for_devices());
    for (spec, opened) in cfg.devices.iter().zip(backends) {
        host.add(&spec.name, spec.kind.clone(), opened, pci, &routes)?;
    }
    Ok(())
}
