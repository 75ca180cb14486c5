//! virtio-vsock on arbitrary queue contents and guest memory: the guest's
//! packets (transmit queue) and then the device's answers (receive and
//! event queues), over a listening unix socket and a connector channel of
//! its own. The first byte says whether a host client has connected (and
//! asked for guest port 5, with data after its line) and whether the
//! connector has an answer waiting; the rest is guest memory.
#![no_main]

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};

use devices::virtio::VirtioDevice;
use devices::vsock::host::Reply;
use devices::vsock::{Vsock, VsockBackend, EVENT_QUEUE, RX_QUEUE, TX_QUEUE};
use libfuzzer_sys::fuzz_target;

#[path = "common/mod.rs"]
mod common;

fn seqpacket_pair() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two new fds.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(r, 0, "socketpair");
    // SAFETY: both are new fds.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

fuzz_target!(|data: &[u8]| {
    let (shape, mem) = data.split_first().unwrap_or((&0, &[]));
    let path = std::env::temp_dir().join(format!("skvm-fuzz-vsock-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).expect("bind");
    listener.set_nonblocking(true).expect("non-blocking");
    let (ours, connector) = seqpacket_pair();
    let mut dev = Vsock::new(VsockBackend {
        guest_cid: 3,
        listener: OwnedFd::from(listener),
        connector: ours,
    });
    let _client = (shape & 1 != 0).then(|| {
        let mut c = UnixStream::connect(&path).expect("connect");
        let _ = c.write_all(b"CONNECT 5\nhost data");
        c
    });
    if shape & 2 != 0 {
        let reply = Reply {
            id: u32::from(*shape),
            port: 5,
            errno: 0,
        }
        .encode();
        // SAFETY: writes a valid buffer (an answer without its fd).
        unsafe { libc::write(connector.as_raw_fd(), reply.as_ptr().cast(), reply.len()) };
    }
    let features = dev.features();
    common::serve_with(&mut dev, mem, TX_QUEUE, features);
    common::serve_with(&mut dev, mem, RX_QUEUE, features);
    let _ = dev.restore_state(&dev.save_state());
    common::serve_with(&mut dev, mem, EVENT_QUEUE, features);
    let _ = std::fs::remove_file(&path);
});
