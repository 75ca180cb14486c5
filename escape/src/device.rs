//! The device side: hostile actions a device process attempts on request,
//! inside exactly the confinement of the kind it stands in for, and the
//! model that attempts them.
//!
//! A request is a configuration write at offset = the action's index with
//! the VMM's pid (4 bytes, little-endian) as data; the answer is `Ack` if
//! the action succeeded (an escape), or an error with the reason it failed.
//! A seccomp kill ends the process instead.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use devices::virtio::{
    check_features, DeviceError, GuestMemory, Processed, VirtioDevice, DEVICE_ID_RNG,
    TRANSPORT_FEATURES,
};
use virtio_queue::Queue;

/// The hostile actions, by index.
pub const ACTIONS: &[&str] = &[
    "read-passwd",
    "open-socket",
    "connect-host",
    "exec-shell",
    "ptrace-vmm",
    "kill-vmm",
    "mmap-exec",
    "mprotect-exec",
    "write-foreign-fd",
    "setuid",
    "mount",
    "unshare",
    "fork",
    "chdir-out",
    "read-proc-environ",
    // From here on no escapes but a hostile device's tricks against the
    // VMM (not in "all"): 1 MiB of log lines with terminal escape
    // sequences, which the spawner must cut and clean; a datagram of no
    // bytes on the control socket, to be taken for end of file and left
    // running unsupervised.
    "flood-stderr",
    "send-empty",
    // Close the control socket and run on: a device beyond supervision.
    "close-control",
    // Answer, then ignore the Shutdown request and run on.
    "ignore-shutdown",
    // Write past the end of its image (blk; others have none): the file
    // would grow without the file-size limit.
    "grow-image",
    // Allocate and touch memory 1 MiB at a time until the allocator
    // fails (std then aborts the process), up to ALLOC_CAP.
    "alloc-unbounded",
    // From here on, a virtio-fs device's ways out of its share, with calls
    // its own filter allows (so that only its root can stop them), from
    // the share's fd: `..` past the root; a relative symlink the host
    // planted ("up" -> "../../../../../../../../etc") followed below the
    // last component; /proc's magic links; a file in a mount inside the
    // share ("m/secret"); a file created in a read-only share; the file
    // "victim" renamed to above the root; a hard link to a file above it.
    "dotdot-out",
    "symlink-out",
    "proc-magic",
    "hidden-mount",
    "write-ro",
    "rename-out",
    "link-out",
];

/// Of [`ACTIONS`], the hostile device's tricks and the share escapes.
const TRICKS: usize = 6;
/// The share escapes, last in [`ACTIONS`].
pub const SHARE_ESCAPES: usize = 7;
/// How many of [`ACTIONS`] are escapes any device attempts (what "all"
/// attempts).
pub const ESCAPES: usize = ACTIONS.len() - TRICKS - SHARE_ESCAPES;

/// Where "alloc-unbounded" stops and reports an escape: far past any
/// device's memory limit (`sandbox::jail::DEVICE_DATA_LIMIT`), so that a
/// missing limit fails the test instead of calling the host's OOM killer.
const ALLOC_CAP: usize = 1 << 30;

/// Set by "ignore-shutdown": the model, dropped when the worker obeys
/// Shutdown, then keeps the process running instead.
static IGNORE_SHUTDOWN: AtomicBool = AtomicBool::new(false);

/// A disk image the escape model was given (escblk with `--disk`).
#[derive(Debug)]
pub struct Image {
    /// The image, open for writing unless the disk is read-only.
    pub fd: OwnedFd,
    /// Its size in bytes, from the disk's parameters.
    pub size: u64,
}

fn last_error() -> io::Error {
    io::Error::last_os_error()
}

fn ok_if(rc: libc::c_long) -> io::Result<()> {
    if rc < 0 {
        Err(last_error())
    } else {
        Ok(())
    }
}

fn open(path: &CStr) -> io::Result<()> {
    // SAFETY: open on a valid C string; the fd is closed at once.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY) };
    ok_if(fd.into())?;
    // SAFETY: closes the fd just opened.
    unsafe { libc::close(fd) };
    Ok(())
}

/// Writes a page at the end of `image`; Ok if the write went through
/// (the file grew).
fn grow(image: Option<&Image>) -> io::Result<()> {
    let image = image.ok_or_else(|| io::Error::other("no image to grow"))?;
    let page = [0x5au8; 4096];
    let iov = libc::iovec {
        iov_base: page.as_ptr().cast_mut().cast(),
        iov_len: page.len(),
    };
    let offset = libc::off_t::try_from(image.size).map_err(io::Error::other)?;
    // SAFETY: pwritev reads one iovec over a live buffer of its length.
    let n = unsafe { libc::pwritev(image.fd.as_raw_fd(), &iov, 1, offset) };
    ok_if(n as libc::c_long)
}

/// Allocates and touches memory 1 MiB at a time, as a leak would, up to
/// [`ALLOC_CAP`] (then Ok: nothing stopped it). The allocator's failure
/// at the limit aborts the process before that.
fn alloc_unbounded() -> io::Result<()> {
    const CHUNK: usize = 1 << 20;
    let mut held: Vec<Vec<u8>> = Vec::with_capacity(ALLOC_CAP / CHUNK);
    while held.len() < ALLOC_CAP / CHUNK {
        // Non-zero, so every page is written (not calloc's fresh zeroes).
        held.push(vec![1u8; CHUNK]);
    }
    let total: usize = held.iter().map(Vec::len).sum();
    eprintln!("alloc-unbounded: holding {} MiB", total / CHUNK);
    Ok(())
}

/// A share escape (the last [`SHARE_ESCAPES`] of [`ACTIONS`]) from the
/// share's root `root`; Ok means it worked.
fn leave_share(name: &str, root: Option<&OwnedFd>) -> io::Result<()> {
    let root = root
        .ok_or_else(|| io::Error::other("no share"))?
        .as_raw_fd();
    let read = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    let open_at = |dir: libc::c_int, path: &CStr, flags: libc::c_int| {
        // SAFETY: openat on a valid C string; the fd is closed at once.
        let fd = unsafe { libc::openat(dir, path.as_ptr(), flags, 0o600) };
        ok_if(fd.into())?;
        // SAFETY: closes the fd just opened.
        unsafe { libc::close(fd) };
        Ok(())
    };
    match name {
        "dotdot-out" => open_at(root, c"../../../../../../../../etc/passwd", read),
        "symlink-out" => open_at(root, c"up/passwd", read),
        "proc-magic" => open_at(libc::AT_FDCWD, c"/proc/self/root/etc/passwd", read),
        "hidden-mount" => open_at(root, c"m/secret", read),
        "write-ro" => open_at(
            root,
            c"written",
            libc::O_WRONLY | libc::O_CREAT | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        ),
        // SAFETY: renameat2 and linkat on valid C strings.
        "rename-out" => ok_if(unsafe {
            libc::syscall(
                libc::SYS_renameat2,
                root,
                c"victim".as_ptr(),
                root,
                c"../../../../../../../../victim".as_ptr(),
                libc::RENAME_NOREPLACE,
            )
        }),
        // SAFETY: as above.
        "link-out" => ok_if(
            unsafe {
                libc::linkat(
                    root,
                    c"../../../../../../../../etc/passwd".as_ptr(),
                    root,
                    c"stolen".as_ptr(),
                    0,
                )
            }
            .into(),
        ),
        _ => Err(io::Error::from_raw_os_error(libc::EINVAL)),
    }
}

/// Attempts action `index` against the VMM `vmm`, with the model's disk
/// `image` or share `root` if it has one; Ok means it worked.
#[allow(clippy::too_many_lines)]
pub fn attempt(
    index: usize,
    vmm: libc::pid_t,
    image: Option<&Image>,
    root: Option<&OwnedFd>,
) -> io::Result<()> {
    let name = ACTIONS.get(index).copied().unwrap_or("");
    if index >= ACTIONS.len() - SHARE_ESCAPES {
        return leave_share(name, root);
    }
    match name {
        "grow-image" => return grow(image),
        "alloc-unbounded" => return alloc_unbounded(),
        "ignore-shutdown" => {
            IGNORE_SHUTDOWN.store(true, Ordering::Relaxed);
            return Err(io::Error::other("will ignore Shutdown"));
        }
        _ => {}
    }
    // SAFETY: each call is a plain syscall on valid arguments; anything it
    // creates is released before returning.
    unsafe {
        match name {
            "read-passwd" => open(c"/etc/passwd"),
            "open-socket" => {
                let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
                ok_if(fd.into())?;
                libc::close(fd);
                Ok(())
            }
            "connect-host" => {
                let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
                ok_if(fd.into())?;
                let addr = libc::sockaddr_in {
                    sin_family: libc::sa_family_t::try_from(libc::AF_INET).unwrap_or(0),
                    sin_port: 22u16.to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_be_bytes([127, 0, 0, 1]).to_be(),
                    },
                    sin_zero: [0; 8],
                };
                let len = libc::socklen_t::try_from(std::mem::size_of_val(&addr)).unwrap_or(0);
                let rc = libc::connect(fd, std::ptr::from_ref(&addr).cast(), len);
                let r = ok_if(rc.into());
                libc::close(fd);
                r
            }
            "exec-shell" => {
                let argv = [c"sh".as_ptr(), std::ptr::null()];
                let envp: [*const libc::c_char; 1] = [std::ptr::null()];
                ok_if(libc::execve(c"/bin/sh".as_ptr(), argv.as_ptr(), envp.as_ptr()).into())
            }
            "ptrace-vmm" => ok_if(libc::ptrace(libc::PTRACE_ATTACH, vmm, 0, 0)),
            "kill-vmm" => ok_if(libc::kill(vmm, libc::SIGKILL).into()),
            "mmap-exec" => {
                let p = libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_EXEC,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                );
                if p == libc::MAP_FAILED {
                    return Err(last_error());
                }
                libc::munmap(p, 4096);
                Ok(())
            }
            "mprotect-exec" => {
                let p = libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                );
                if p == libc::MAP_FAILED {
                    return Err(last_error());
                }
                let r = ok_if(libc::mprotect(p, 4096, libc::PROT_READ | libc::PROT_EXEC).into());
                libc::munmap(p, 4096);
                r
            }
            "write-foreign-fd" => ok_if(libc::write(100, c"x".as_ptr().cast(), 1) as libc::c_long),
            "setuid" => ok_if(libc::setuid(1).into()),
            "mount" => ok_if(
                libc::mount(
                    c"none".as_ptr(),
                    c"/".as_ptr(),
                    c"tmpfs".as_ptr(),
                    0,
                    std::ptr::null(),
                )
                .into(),
            ),
            "unshare" => ok_if(libc::unshare(libc::CLONE_NEWNS).into()),
            "fork" => {
                let pid = libc::fork();
                if pid == 0 {
                    libc::_exit(0);
                }
                ok_if(pid.into())?;
                libc::waitpid(pid, std::ptr::null_mut(), 0);
                Ok(())
            }
            "chdir-out" => {
                ok_if(libc::chdir(c"/..".as_ptr()).into())?;
                ok_if(libc::access(c"etc/passwd".as_ptr(), libc::F_OK).into())
            }
            "read-proc-environ" => open(c"/proc/1/environ"),
            "close-control" => {
                libc::close(3);
                // Runs on, waiting for nothing (poll is allowed).
                libc::poll(std::ptr::null_mut(), 0, -1);
                Ok(())
            }
            "send-empty" => {
                // SAFETY: msghdr is plain data; an all-zero one sends a
                // datagram of no bytes.
                let msg: libc::msghdr = std::mem::zeroed();
                ok_if(libc::sendmsg(3, &msg, 0) as libc::c_long)?;
                Err(io::Error::other("sent an empty message"))
            }
            "flood-stderr" => {
                let line =
                    b"\x1b[2J\x1b[31mFLOOD\x1b[0m \x07 ........................................\n";
                let mut sent = 0usize;
                while sent < 1 << 20 {
                    let n = libc::write(2, line.as_ptr().cast(), line.len());
                    sent += usize::try_from(n).map_err(|_| last_error())?;
                }
                Err(io::Error::other(format!("wrote {sent} bytes to stderr")))
            }
            _ => Err(io::Error::from_raw_os_error(libc::EINVAL)),
        }
    }
}

/// The escape model: an rng-typed device with no queue work.
#[derive(Debug, Default)]
pub struct Escape {
    features: u64,
    image: Option<Image>,
    share: Option<OwnedFd>,
}

impl Escape {
    /// A model that attempts actions with `image` or the root of `share`
    /// at hand.
    pub fn new(image: Option<Image>, share: Option<OwnedFd>) -> Self {
        Self {
            features: 0,
            image,
            share,
        }
    }
}

impl Drop for Escape {
    /// After "ignore-shutdown": the worker returned for Shutdown and the
    /// process would exit; it waits for nothing instead (poll is allowed)
    /// until it is killed.
    fn drop(&mut self) {
        if IGNORE_SHUTDOWN.load(Ordering::Relaxed) {
            loop {
                // SAFETY: poll on no fds: a sleep.
                unsafe { libc::poll(std::ptr::null_mut(), 0, -1) };
            }
        }
    }
}

impl VirtioDevice for Escape {
    fn device_type(&self) -> u32 {
        DEVICE_ID_RNG
    }
    fn num_queues(&self) -> usize {
        1
    }
    fn max_queue_size(&self) -> u16 {
        16
    }
    fn features(&self) -> u64 {
        TRANSPORT_FEATURES
    }
    fn config(&self) -> Vec<u8> {
        Vec::new()
    }
    fn write_config(&mut self, offset: u32, data: &[u8]) -> Result<(), DeviceError> {
        let vmm = data
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .map_or(0, i32::from_le_bytes);
        let index = usize::try_from(offset).unwrap_or(usize::MAX);
        match attempt(index, vmm, self.image.as_ref(), self.share.as_ref()) {
            Ok(()) => Ok(()),
            // The reason travels back as the error text.
            Err(e) => Err(DeviceError::Refused(e.to_string())),
        }
    }
    fn activate(&mut self, features: u64) -> Result<(), DeviceError> {
        check_features(features, self.features())?;
        self.features = features;
        Ok(())
    }
    fn process_queue(
        &mut self,
        _index: usize,
        _queue: &mut Queue,
        _mem: &GuestMemory,
    ) -> Result<Processed, DeviceError> {
        Ok(Processed::default())
    }
    fn reset(&mut self) {
        self.features = 0;
    }
}
