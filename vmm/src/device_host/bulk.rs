//! A device's bulk state ([`VirtioDevice::save_bulk`]) between two
//! instances: the old one writes it into a memfd it sends with `Saved`, the
//! VMM passes that fd on unread with `Restore`, and the new one reads it
//! back from the start, at most [`MAX_BULK_STATE`] bytes (more is refused:
//! the old instance may have been compromised).
//!
//! [`VirtioDevice::save_bulk`]: devices::virtio::VirtioDevice::save_bulk

use std::io::{self, Write};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};

use devices::virtio::{DeviceError, VirtioDevice, MAX_BULK_STATE};

/// `bulk` in a new memfd.
pub fn to_memfd(bulk: &[u8]) -> io::Result<OwnedFd> {
    if bulk.len() > MAX_BULK_STATE {
        return Err(io::Error::other(format!(
            "{} bytes of bulk state, more than {MAX_BULK_STATE}",
            bulk.len()
        )));
    }
    // SAFETY: memfd_create on a valid C string; the fd is checked and
    // owned once.
    let fd = unsafe { libc::memfd_create(c"skvm-bulk-state".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd we own.
    let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    file.write_all(bulk)?;
    Ok(file.into())
}

/// The memfd to send with `Saved`: none for an empty bulk state, nor when
/// it cannot be made (logged: the next instance then carries on as after a
/// crash, virtio-fs from its root).
pub fn saved(bulk: &[u8]) -> Option<OwnedFd> {
    if bulk.is_empty() {
        return None;
    }
    to_memfd(bulk)
        .inspect_err(|e| {
            crate::log::warn(&format!(
                "cannot save the bulk state ({e}): the next instance goes on without it"
            ));
        })
        .ok()
}

/// What [`to_memfd`] wrote into `fd`, read from offset 0 whatever the fd's
/// position, at most [`MAX_BULK_STATE`] bytes.
pub fn read_back(fd: &OwnedFd) -> io::Result<Vec<u8>> {
    sandbox::process::read_whole(fd.as_fd(), MAX_BULK_STATE)
}

/// Hands `device` the bulk state in `fd` (after its small state).
pub fn restore(device: &mut dyn VirtioDevice, fd: &OwnedFd) -> Result<(), DeviceError> {
    let bytes = read_back(fd).map_err(|e| DeviceError::Refused(e.to_string()))?;
    device.restore_bulk(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bulk_state_comes_back_whole_and_too_much_is_refused() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let fd = to_memfd(&data).unwrap();
        assert_eq!(read_back(&fd).unwrap(), data);
        // Twice: the position after writing does not matter.
        assert_eq!(read_back(&fd).unwrap(), data);
        assert!(to_memfd(&vec![0; MAX_BULK_STATE + 1]).is_err());
        let big = std::fs::File::from(to_memfd(&[]).unwrap());
        big.set_len(MAX_BULK_STATE as u64 + 1).unwrap();
        assert!(read_back(&big.into()).is_err());
    }
}
