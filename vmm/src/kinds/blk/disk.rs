//! Disk images for virtio-blk: the `--disk` option's syntax, and opening
//! and locking an image in the VMM so that the device process gets one fd
//! and nothing else.
//!
//! A writable image is locked exclusively and a read-only one shared
//! (flock on the open file description, which the device's copy of the fd
//! shares), so a second skvm cannot write an image another one uses, nor
//! read one another one writes.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::kinds::KindError;

use devices::block::{ID_BYTES, SECTOR};

/// One `--disk` option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec {
    /// The image (a raw file or a block device).
    pub path: PathBuf,
    /// The guest may not write.
    pub read_only: bool,
    /// The serial the guest sees (/sys/block/vdX/serial), up to 20 bytes.
    pub serial: Option<String>,
    /// Bypass the host page cache (O_DIRECT).
    pub direct: bool,
    /// The guest's root file system: the kernel mounts it (`root=`).
    pub root: bool,
}

impl DiskSpec {
    /// Parses `PATH[,ro][,root][,serial=ID][,direct=on|off]`.
    pub fn parse(s: &str) -> Result<Self, KindError> {
        const MAX_SERIAL: usize = ID_BYTES;
        let mut parts = s.split(',');
        let path = parts.next().unwrap_or_default();
        if path.is_empty() {
            return Err(KindError::Option(format!("--disk '{s}': no path")));
        }
        let mut spec = Self {
            path: PathBuf::from(path),
            read_only: false,
            serial: None,
            direct: false,
            root: false,
        };
        for opt in parts {
            match opt.split_once('=') {
                None if opt == "ro" => spec.read_only = true,
                None if opt == "rw" => spec.read_only = false,
                None if opt == "root" => spec.root = true,
                Some(("serial", id)) => {
                    if id.is_empty()
                        || id.len() > MAX_SERIAL
                        || !id.bytes().all(|b| b.is_ascii_graphic())
                    {
                        return Err(KindError::Option(format!(
                            "--disk '{s}': serial must be 1 to {MAX_SERIAL} printable ASCII characters"
                        )));
                    }
                    spec.serial = Some(id.to_owned());
                }
                Some(("direct", "on")) => spec.direct = true,
                Some(("direct", "off")) => spec.direct = false,
                _ => {
                    return Err(KindError::Option(format!(
                        "--disk '{s}': unknown option '{opt}' (expected ro, root, serial=ID or direct=on|off)"
                    )))
                }
            }
        }
        Ok(spec)
    }

    /// The kernel parameters that make this disk, the guest's `index`th
    /// virtio disk, its root file system; `None` unless it is the root.
    pub fn root_params(&self, index: usize) -> Option<String> {
        self.root.then(|| {
            let mode = if self.read_only { "ro" } else { "rw" };
            format!("root=/dev/{} {mode}", guest_disk_name(index))
        })
    }
}

/// The name Linux's virtio-blk driver gives its `index`th disk: vda to vdz,
/// then vdaa, vdab, ... (the driver numbers disks in probe order, which is
/// the PCI slot order skvm attaches them in).
pub fn guest_disk_name(index: usize) -> String {
    // Bijective base 26, as the driver's virtblk_name_format writes it.
    const LETTERS: &[u8; 26] = b"abcdefghijklmnopqrstuvwxyz";
    let mut name = Vec::new();
    let mut n = index + 1;
    while n > 0 {
        n -= 1;
        name.push(LETTERS[n % 26]);
        n /= 26;
    }
    name.reverse();
    format!("vd{}", String::from_utf8_lossy(&name))
}

/// An image opened and locked for a device.
#[derive(Debug)]
pub struct OpenDisk {
    /// The open image; its lock lasts while any copy of the fd is open.
    pub fd: OwnedFd,
    /// Capacity in sectors.
    pub sectors: u64,
    /// Size in bytes, as found when it was opened.
    pub size: u64,
}

/// Opens and locks the image of `spec`. Errors are one line naming the
/// path and the reason. The type is checked on the open file, not the path
/// (fstat after open), so a path swapped for a FIFO or a device between a
/// check and the open cannot slip in; O_NONBLOCK keeps the open of a FIFO
/// from waiting for a writer, and is cleared again for the image.
pub fn open(spec: &DiskSpec) -> Result<OpenDisk> {
    let path = &spec.path;
    let shown = path.display();
    let mut flags = libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK;
    if spec.direct {
        flags |= libc::O_DIRECT;
    }
    let opened = OpenOptions::new()
        .read(true)
        .write(!spec.read_only)
        .custom_flags(flags)
        .open(path);
    let mut file: File = match opened {
        Err(e) if e.raw_os_error() == Some(libc::EISDIR) => {
            bail!("disk {shown}: is a directory, not an image")
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("disk {shown}"))
        }
        other => other.with_context(|| {
            format!(
                "disk {shown}: cannot open{}",
                if spec.read_only { "" } else { " for writing" }
            )
        })?,
    };
    let ft = file
        .metadata()
        .with_context(|| format!("disk {shown}: cannot stat"))?
        .file_type();
    if ft.is_dir() {
        bail!("disk {shown}: is a directory, not an image");
    }
    if !ft.is_file() && !ft.is_block_device() {
        bail!("disk {shown}: not a regular file or block device");
    }
    // SAFETY: fcntl on an fd we own with valid commands.
    unsafe {
        let fl = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
        if fl < 0 || libc::fcntl(file.as_raw_fd(), libc::F_SETFL, fl & !libc::O_NONBLOCK) < 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("disk {shown}: cannot set blocking mode"));
        }
    }
    let size = file
        .seek(SeekFrom::End(0))
        .with_context(|| format!("disk {shown}: cannot find its size"))?;
    if size == 0 {
        bail!("disk {shown}: the image is empty");
    }
    if size % SECTOR != 0 {
        bail!("disk {shown}: size {size} is not a multiple of {SECTOR} bytes");
    }
    let op = if spec.read_only {
        libc::LOCK_SH
    } else {
        libc::LOCK_EX
    };
    // SAFETY: flock has no memory effects; the fd is open.
    if unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            bail!("disk {shown}: in use by another process (is another skvm using it?)");
        }
        return Err(e).with_context(|| format!("disk {shown}: cannot lock"));
    }
    Ok(OpenDisk {
        fd: OwnedFd::from(file),
        sectors: size / SECTOR,
        size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse() {
        let d = DiskSpec::parse("/tmp/a.img,ro,serial=abc-1,direct=on").unwrap();
        assert_eq!(d.path, PathBuf::from("/tmp/a.img"));
        assert!(d.read_only && d.direct);
        assert_eq!(d.serial.as_deref(), Some("abc-1"));
        let d = DiskSpec::parse("x.img").unwrap();
        assert!(!d.read_only && !d.direct && d.serial.is_none() && !d.root);
        assert_eq!(d.root_params(0), None);
        let d = DiskSpec::parse("x.img,root").unwrap();
        assert_eq!(d.root_params(0).as_deref(), Some("root=/dev/vda rw"));
        let d = DiskSpec::parse("x.img,ro,root").unwrap();
        assert_eq!(d.root_params(2).as_deref(), Some("root=/dev/vdc ro"));
    }

    #[test]
    fn guest_disk_names_follow_the_driver() {
        let names: Vec<String> = [0, 1, 25, 26, 27, 51, 52, 701, 702]
            .into_iter()
            .map(guest_disk_name)
            .collect();
        assert_eq!(
            names,
            ["vda", "vdb", "vdz", "vdaa", "vdab", "vdaz", "vdba", "vdzz", "vdaaa"]
        );
    }

    #[test]
    fn bad_options_are_refused() {
        for s in [
            "",
            ",ro",
            "a.img,rw=1",
            "a.img,direct=maybe",
            "a.img,serial=",
            "a.img,serial=123456789012345678901",
            "a.img,serial=a b",
            "a.img,cache=none",
            "a.img,root=vda",
        ] {
            assert!(DiskSpec::parse(s).is_err(), "{s}");
        }
    }

    fn temp(name: &str, len: u64) -> PathBuf {
        let p = std::env::temp_dir().join(format!("skvm-disk-{}-{name}", std::process::id()));
        let f = File::create(&p).unwrap();
        f.set_len(len).unwrap();
        p
    }

    fn spec(path: &std::path::Path, read_only: bool) -> DiskSpec {
        DiskSpec {
            path: path.to_owned(),
            read_only,
            serial: None,
            direct: false,
            root: false,
        }
    }

    #[test]
    fn images_open_with_their_capacity() {
        let p = temp("ok", 1 << 20);
        let d = open(&spec(&p, false)).unwrap();
        assert_eq!(d.sectors, 2048);
        drop(d);
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn bad_images_are_refused_with_the_reason() {
        let odd = temp("odd", 1000);
        let empty = temp("empty", 0);
        // A FIFO is refused at once, not waited on for a writer.
        let fifo = std::env::temp_dir().join(format!("skvm-disk-{}-fifo", std::process::id()));
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo with a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let cases = [
            (PathBuf::from("/nonexistent/x.img"), "No such file"),
            (std::env::temp_dir(), "directory"),
            (PathBuf::from("/dev/null"), "not a regular file"),
            (fifo.clone(), "not a regular file"),
            (odd.clone(), "not a multiple of 512"),
            (empty.clone(), "empty"),
        ];
        for (p, why) in cases {
            let e = format!("{:#}", open(&spec(&p, false)).unwrap_err());
            assert!(e.contains(why), "{}: {e}", p.display());
        }
        for ro in [true, false] {
            let e = format!("{:#}", open(&spec(&fifo, ro)).unwrap_err());
            assert!(e.contains("not a regular file"), "{e}");
        }
        std::fs::remove_file(odd).unwrap();
        std::fs::remove_file(empty).unwrap();
        std::fs::remove_file(fifo).unwrap();
    }

    #[test]
    fn a_writable_image_is_locked() {
        let p = temp("lock", 4096);
        let first = open(&spec(&p, false)).unwrap();
        let e = format!("{:#}", open(&spec(&p, false)).unwrap_err());
        assert!(e.contains("in use"), "{e}");
        assert!(open(&spec(&p, true)).is_err());
        drop(first);
        // Read-only users share.
        let a = open(&spec(&p, true)).unwrap();
        let b = open(&spec(&p, true)).unwrap();
        assert!(open(&spec(&p, false)).is_err());
        drop((a, b));
        std::fs::remove_file(p).unwrap();
    }
}
