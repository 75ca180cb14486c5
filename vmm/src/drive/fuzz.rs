//! `skvm drive --fuzz-stdin`: the end-to-end fuzzing mode. Each input is
//! written over driver memory and the device is kicked; the device must
//! still answer on its control channel afterwards.

use std::os::fd::AsRawFd;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use ipc::wait::wait_one;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::remote::RemoteDevice;
use crate::virtio_pci::{DeviceEvents, QueueLayout};

/// Largest fuzz input: the part of driver memory it overwrites.
const FUZZ_MAX: usize = 0x1_0000;
/// The fuzz queue: small, at the same addresses as the in-process fuzz
/// targets (fuzz/fuzz_targets/common), so corpora carry over.
const FUZZ_QUEUE: QueueLayout = QueueLayout {
    index: 0,
    size: 16,
    desc: 0x0,
    avail: 0x100,
    used: 0x200,
};
/// How long to wait for an interrupt after a fuzz input's kick: many
/// inputs make the device answer nothing.
const FUZZ_IRQ_WAIT: Duration = Duration::from_millis(5);

/// `--fuzz-stdin`: serves fuzz inputs until stdin ends. An error means the
/// device died (or stopped answering the control channel).
pub fn fuzz_stdin(
    dev: &mut RemoteDevice,
    mem: &GuestMemoryMmap,
    events: &DeviceEvents,
    features: u64,
) -> Result<()> {
    use std::io::{Read, Write};
    let mut stdin = std::io::stdin().lock();
    let mut stdout = std::io::stdout().lock();
    let zeros = vec![0u8; FUZZ_MAX];
    let mut input = vec![0u8; FUZZ_MAX];
    loop {
        let mut len = [0u8; 4];
        if stdin.read_exact(&mut len).is_err() {
            return Ok(());
        }
        let n = usize::try_from(u32::from_le_bytes(len)).unwrap_or(usize::MAX);
        ensure!(
            n <= FUZZ_MAX,
            "fuzz input of {n} bytes (at most {FUZZ_MAX})"
        );
        let data = input.get_mut(..n).context("input buffer")?;
        stdin.read_exact(data).context("truncated fuzz input")?;
        dev.stop().context("reset before the input")?;
        mem.write_slice(&zeros, GuestAddress(0))?;
        mem.write_slice(data, GuestAddress(0))?;
        let _ = events.irqs[0].read();
        if let Err(e) = dev.start(features, &[FUZZ_QUEUE], events) {
            // Refusing a queue it cannot use is a right answer.
            if dev.is_dead() {
                return Err(anyhow::Error::new(e).context("activation"));
            }
            stdout.write_all(b"0")?;
            stdout.flush()?;
            continue;
        }
        events.kicks[0].write(1)?;
        // An interrupt, a timeout or a signal: each is fine here.
        let _ = wait_one(events.irqs[0].as_raw_fd(), Some(FUZZ_IRQ_WAIT));
        // Alive if it still answers on its control channel.
        dev.stop().context("reset after the input")?;
        stdout.write_all(b"0")?;
        stdout.flush()?;
    }
}
