//! A hostile device answering the VMM: any sequence of messages (well
//! formed or not, solicited or not) on its control socket, then a hang-up.
//! The VMM's side ([`vmm::remote::RemoteDevice`]: hello checks, the answer
//! each call expects, the flood limit) must never panic, and a device it
//! gave up on must stay given up on.
#![no_main]

use std::os::fd::AsFd;

use libfuzzer_sys::fuzz_target;
use vmm::remote::{Expected, RemoteDevice};
use vmm::virtio_pci::{DeviceEvents, QueueLayout};

/// Splits the input into messages, each a 2-byte length and its bytes.
fn messages(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while data.len() >= 2 && out.len() < 64 {
        let n = usize::from(u16::from_le_bytes([data[0], data[1]])) % 4200;
        let rest = &data[2..];
        let n = n.min(rest.len());
        out.push(&rest[..n]);
        data = &rest[n..];
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Ok((vmm_end, device_end)) = ipc::Channel::pair() else {
        return;
    };
    for m in messages(data) {
        if ipc::fdpass::send(device_end.as_fd(), m, &[]).is_err() {
            break;
        }
    }
    // Everything said: the device hangs up, so no call waits for a timeout.
    drop(device_end);
    let backend = ipc::Backend {
        kind: "rng".into(),
        params: vec![1],
        fds: 0,
    };
    let expected = Expected { device_type: 4 };
    let Ok(mut dev) = RemoteDevice::connect(
        "fuzz0",
        (vmm_end, None),
        expected,
        (&backend, &[]),
        Vec::new(),
        0,
    ) else {
        return;
    };
    let Ok(events) = DeviceEvents::new(1) else {
        return;
    };
    let queue = QueueLayout {
        index: 0,
        size: 16,
        desc: 0,
        avail: 0x100,
        used: 0x200,
    };
    let _ = dev.poll_events();
    let _ = dev.config_write(0, &[1]);
    let _ = dev.start(1 << 32, &[queue], &events);
    let state = dev.pause();
    let _ = dev.resume();
    if let Ok((s, bulk)) = &state {
        let bulk = bulk.as_ref().map(std::os::fd::AsFd::as_fd);
        let _ = dev.restore((s, bulk), false, &events);
    }
    let _ = dev.poll_events();
    let _ = dev.stop();
    if dev.is_dead() {
        assert!(dev.stop().is_err(), "a device given up on was used again");
    }
    dev.shutdown();
});
