//! virtio-fs (`--fs tag=TAG,path=DIR[,ro][,xattr]`): a host directory the guest
//! mounts with `mount -t virtiofs TAG /mnt`. Its model is `devices::fs`.
//!
//! The VMM opens DIR, and the device process makes it the root of its own
//! mount namespace (`Opened::root`, `sandbox::share`): nothing else of the
//! host is there to reach, `..` included. The FUSE server works only
//! relative to fds it holds (`devices::fs::server`), and its allowlist has
//! no call that takes a path from the root's side of a file system: every
//! path-taking call is an `*at` call, `openat` only with `O_NOFOLLOW`,
//! `mknodat` never for device nodes, `linkat` never with `AT_EMPTY_PATH` or
//! a followed symlink, `renameat2` never a whiteout.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use anyhow::Context;
use devices::fs::{Options, DEVICE_ID_FS, TAG_LEN};
use devices::virtio::VirtioDevice;
use ipc::params::{Decoder, Encoder};
use sandbox::seccomp::{Arg, Syscall};

use super::{
    take_fds, Confinement, DeviceConfig, DeviceKind, KindError, KindOption, OpenContext, Opened,
    RootParams,
};
use crate::console::backend::backend_status;
use crate::virtio_pci::PciClass;

const NAME: &str = "fs";
/// Version of its parameters: the tag, whether the share is read-only,
/// whether it serves extended attributes.
const PARAMS_V2: u8 = 2;

/// virtio-fs's own needs beyond the worker's (whose read, write and close
/// are not used on the share's files: those go through pread/pwrite).
const SYSCALLS: &[Syscall] = &[
    Syscall {
        nr: libc::SYS_openat,
        name: "openat",
        why: "look a name up in a directory it holds, open or create a file (O_NOFOLLOW \
              always: a symlink in the share is never followed)",
        rules: &[&[Arg::AllBits(2, libc::O_NOFOLLOW as u64)]],
    },
    Syscall {
        nr: libc::SYS_newfstatat,
        name: "newfstatat",
        why: "a node's attributes, through its fd (AT_EMPTY_PATH, never following a symlink)",
        rules: &[&[Arg::AllBits(
            3,
            (libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW) as u64,
        )]],
    },
    Syscall {
        nr: libc::SYS_fstatfs,
        name: "fstatfs",
        why: "statfs of the share",
        rules: &[],
    },
    Syscall {
        nr: libc::SYS_getdents64,
        name: "getdents64",
        why: "list a directory the guest opened",
        rules: &[],
    },
    Syscall {
        nr: libc::SYS_lseek,
        name: "lseek",
        why: "a directory listing's position; the guest's SEEK_DATA/SEEK_HOLE",
        rules: &[],
    },
    Syscall {
        nr: libc::SYS_pread64,
        name: "pread64",
        why: "the guest's reads of its open files",
        rules: &[],
    },
    Syscall {
        nr: libc::SYS_pwrite64,
        name: "pwrite64",
        why: "the guest's writes to its open files",
        rules: &[],
    },
    Syscall {
        nr: libc::SYS_mkdirat,
        name: "mkdirat",
        why: "the guest's mkdir",
        rules: &[],
    },
    Syscall {
        nr: libc::SYS_mknodat,
        name: "mknodat",
        why: "the guest's mknod of a file, fifo or socket (never a device node)",
        rules: &[&[Arg::NoBits(2, libc::S_IFCHR as u64)]],
    },
    Syscall {
        nr: libc::SYS_symlinkat,
        name: "symlinkat",
        why: "the guest's symlink (stored, never followed)",
        rules: &[],
    },
    Syscall {
        nr: libc::SYS_unlinkat,
        name: "unlinkat",
        why: "the guest's unlink and rmdir",
        rules: &[],
    },
    Syscall {
        nr: libc::SYS_renameat2,
        name: "renameat2",
        why: "the guest's rename (NOREPLACE and EXCHANGE; never a whiteout)",
        rules: &[&[Arg::NoBits(4, libc::RENAME_WHITEOUT as u64)]],
    },
    Syscall {
        nr: libc::SYS_linkat,
        name: "linkat",
        why: "the guest's hard link, name to name (no AT_EMPTY_PATH, no followed symlink)",
        rules: &[&[Arg::Eq(4, 0)]],
    },
    Syscall {
        nr: libc::SYS_readlinkat,
        name: "readlinkat",
        why: "the target of a symlink node, through its fd",
        rules: &[],
    },
    Syscall {
        nr: libc::SYS_fchownat,
        name: "fchownat",
        why: "owner and group of a node the guest made or changed, through its fd",
        rules: &[&[Arg::AllBits(
            4,
            (libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW) as u64,
        )]],
    },
    Syscall {
        nr: libc::SYS_fchmod,
        name: "fchmod",
        why: "the guest's chmod, on the node opened again",
        rules: &[],
    },
    Syscall {
        nr: libc::SYS_ftruncate,
        name: "ftruncate",
        why: "the guest's truncate",
        rules: &[],
    },
    Syscall {
        nr: libc::SYS_utimensat,
        name: "utimensat",
        why: "the guest's timestamps, through the node's fd (AT_EMPTY_PATH)",
        rules: &[&[Arg::AllBits(3, libc::AT_EMPTY_PATH as u64)]],
    },
    Syscall {
        nr: libc::SYS_fsync,
        name: "fsync",
        why: "the guest's fsync",
        rules: &[],
    },
    Syscall {
        nr: libc::SYS_fdatasync,
        name: "fdatasync",
        why: "the guest's fdatasync",
        rules: &[],
    },
    Syscall {
        nr: libc::SYS_fallocate,
        name: "fallocate",
        why: "the guest's fallocate",
        rules: &[],
    },
    Syscall {
        nr: libc::SYS_fgetxattr,
        name: "fgetxattr",
        why: "a user. attribute the guest reads (a share with xattr), on the node opened again",
        rules: &[],
    },
    Syscall {
        nr: libc::SYS_flistxattr,
        name: "flistxattr",
        why: "the attribute names the guest lists (a share with xattr; user. ones passed on)",
        rules: &[],
    },
    Syscall {
        nr: libc::SYS_fsetxattr,
        name: "fsetxattr",
        why: "a user. attribute the guest sets (a share with xattr)",
        rules: &[],
    },
    Syscall {
        nr: libc::SYS_fremovexattr,
        name: "fremovexattr",
        why: "a user. attribute the guest removes (a share with xattr)",
        rules: &[],
    },
    Syscall {
        nr: libc::SYS_memfd_create,
        name: "memfd_create",
        why: "its node and file tables for the next instance (a restart or mem-add), in a \
              memfd it sends the VMM",
        rules: &[],
    },
];

/// Nodes and open files one share may hold (each an fd).
const MAX_INODES: usize = 16 * 1024;
const MAX_HANDLES: usize = 1024;
/// Its process's fd limit: the nodes and files, and the device's own.
const OPEN_FILES: u64 = (MAX_INODES + MAX_HANDLES) as u64 + super::OPEN_FILES;

/// The virtio-fs kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fs;

/// The tag of the share `--root` adds.
pub const ROOT_TAG: &str = "skvm-root";

/// One `--fs`, or `--root`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FsSpec {
    tag: String,
    path: PathBuf,
    read_only: bool,
    /// Serve the guest's `user.` extended attributes.
    xattr: bool,
    /// The guest's root file system (`--root`).
    root: bool,
}

impl FsSpec {
    fn parse(value: &str) -> Result<Self, KindError> {
        let bad = |why: String| KindError::Option(format!("--fs {why}"));
        let (mut tag, mut path, mut read_only, mut xattr) = (None, None, false, false);
        for part in value.split(',') {
            match part.split_once('=') {
                Some(("tag", v)) => {
                    if v.is_empty() || v.len() > TAG_LEN || v.contains('\0') {
                        return Err(bad(format!("tag={v}: a tag is 1 to {TAG_LEN} bytes")));
                    }
                    tag = Some(v.to_owned());
                }
                Some(("path", v)) if !v.is_empty() => path = Some(PathBuf::from(v)),
                None if part == "ro" => read_only = true,
                None if part == "rw" => read_only = false,
                None if part == "xattr" => xattr = true,
                _ => {
                    return Err(bad(format!(
                        "'{part}': expected tag=TAG,path=DIR[,ro][,xattr]"
                    )))
                }
            }
        }
        let (Some(tag), Some(path)) = (tag, path) else {
            return Err(bad(format!("'{value}': needs both tag=TAG and path=DIR")));
        };
        if !path.is_dir() {
            return Err(bad(format!("path={}: not a directory", path.display())));
        }
        Ok(Self {
            tag,
            path,
            read_only,
            xattr,
            root: false,
        })
    }

    /// `--root DIR[,rw]`: DIR shared as the guest's root file system,
    /// read-only unless `rw`.
    fn parse_root(value: &str) -> Result<Self, KindError> {
        let bad = |why: String| KindError::Option(format!("--root {why}"));
        let (dir, read_only) = match value.rsplit_once(',') {
            Some((dir, "rw")) => (dir, false),
            Some((dir, "ro")) => (dir, true),
            Some((_, other)) => {
                return Err(bad(format!(
                    "'{other}': expected DIR[,rw] (read-only by default)"
                )))
            }
            None => (value, true),
        };
        let path = PathBuf::from(dir);
        if dir.is_empty() || !path.is_dir() {
            return Err(bad(format!("{dir}: not a directory")));
        }
        Ok(Self {
            tag: ROOT_TAG.to_owned(),
            path,
            read_only,
            xattr: false,
            root: true,
        })
    }
}

/// `--fs VALUE` for device `name` opened as `skvm run` opens it, for
/// `skvm drive`: what the device gets, the shared directory, and whether it
/// is read-only.
/// `confined`: the device runs in a confined process.
pub fn open_share(
    value: &str,
    name: &str,
    confined: bool,
) -> anyhow::Result<(Opened, PathBuf, bool)> {
    let spec = FsSpec::parse(value)?;
    let opened = spec.opened(name, confined)?;
    Ok((opened, spec.path, spec.read_only))
}

/// The first directory on the way to `dir` (itself included) that a
/// process of user `uid` and group `gid`, with no supplementary groups,
/// may not search by its mode bits. A directory with an access ACL is
/// left to the kernel to judge (the device then says what it met).
fn unsearchable(dir: &Path, uid: u32, gid: u32) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let dir = std::fs::canonicalize(dir).ok()?;
    dir.ancestors()
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .find(|d| {
            let Ok(m) = std::fs::metadata(d) else {
                return false;
            };
            let bit = if m.uid() == uid {
                0o100
            } else if m.gid() == gid {
                0o010
            } else {
                0o001
            };
            m.mode() & bit == 0 && !has_access_acl(d)
        })
        .map(Path::to_path_buf)
}

/// Whether `path` carries an access ACL (which may grant what its mode
/// bits do not).
fn has_access_acl(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: both are valid C strings; a null buffer of size 0 asks for
    // the value's size only.
    let n = unsafe {
        libc::getxattr(
            c.as_ptr(),
            c"system.posix_acl_access".as_ptr(),
            std::ptr::null_mut(),
            0,
        )
    };
    n >= 0
}

impl FsSpec {
    /// The share opened for device `name`; `confined`: its device runs in
    /// a confined process, which reaches the share by its path.
    fn opened(&self, name: &str, confined: bool) -> anyhow::Result<Opened> {
        let shown = self.path.display();
        let dir = std::fs::File::open(&self.path)
            .with_context(|| format!("device {name}: --fs path={shown}"))?;
        // The device process binds the share by its path as skvm's
        // unprivileged user (sandbox::share): say so now rather than let
        // the process fail at its start.
        let (uid, gid) = sandbox::jail::outside_ids();
        if let Some(d) = confined
            .then(|| unsearchable(&self.path, uid, gid))
            .flatten()
        {
            anyhow::bail!(
                "device {name}: --fs path={shown}: {} is not searchable by user {uid} (group \
                 {gid}), as whom the device process reaches the share (`--user`, or nobody \
                 when skvm runs as root): share a directory below directories that user may \
                 enter, or choose another --user",
                d.display()
            );
        }
        crate::log::info(&format!(
            "device {name}: shares {shown} as tag {} ({}); in the guest: mount -t virtiofs {} DIR",
            self.tag,
            if self.read_only {
                "read-only"
            } else {
                "read-write"
            },
            self.tag
        ));
        Ok(Opened {
            params: params(&self.tag, self.read_only, self.xattr),
            fds: vec![dir.into()],
            // The guest's files may grow as large as the host lets them.
            file_size: libc::RLIM_INFINITY,
            root: ipc::Root::Share {
                read_only: self.read_only,
            },
            status: Some(backend_status("directory", Some(&self.path), None)),
            ..Opened::default()
        })
    }
}

impl DeviceConfig for FsSpec {
    fn open(&self, ctx: &mut OpenContext<'_>) -> anyhow::Result<Opened> {
        self.opened(ctx.device, ctx.confined_processes)
    }

    /// skvm's /init mounts the share (`mount -t virtiofs skvm-root`) as
    /// the root and runs the command or shell in it (guest/init).
    fn root_params(&self, _index: usize) -> Option<RootParams> {
        self.root.then(|| {
            let mode = if self.read_only { "ro" } else { "rw" };
            RootParams {
                params: format!("root={} rootfstype=virtiofs {mode}", self.tag),
                by_initramfs: true,
            }
        })
    }
}

/// The parameters of an fs device: its tag, whether the share is
/// read-only, whether it serves extended attributes.
pub fn params(tag: &str, read_only: bool, xattr: bool) -> Vec<u8> {
    Encoder::new(PARAMS_V2)
        .bytes(tag.as_bytes(), u8::try_from(TAG_LEN).unwrap_or(u8::MAX))
        .bool(read_only)
        .bool(xattr)
        .finish()
}

/// What [`params`] made; total over any input.
fn decode(b: &[u8]) -> Result<(String, bool, bool), ipc::IpcError> {
    let mut d = Decoder::new(b, PARAMS_V2)?;
    let tag = d.bytes("tag", u8::try_from(TAG_LEN).unwrap_or(u8::MAX))?;
    let read_only = d.bool("read-only")?;
    let xattr = d.bool("xattr")?;
    d.end()?;
    Ok((String::from_utf8_lossy(&tag).into_owned(), read_only, xattr))
}

impl DeviceKind for Fs {
    fn name(&self) -> &str {
        NAME
    }

    fn virtio_id(&self) -> u32 {
        DEVICE_ID_FS
    }

    fn pci_class(&self) -> PciClass {
        // Mass storage controller, other.
        [0x01, 0x80, 0x00]
    }

    fn option(&self) -> Option<KindOption> {
        Some(KindOption {
            long: "fs",
            value_name: Some("tag=TAG,path=DIR[,ro][,xattr]"),
            repeatable: true,
            help: "Share the host directory DIR with the guest through virtio-fs (fs0, fs1, \
                   ...): `mount -t virtiofs TAG /mnt` in the guest. `ro` refuses every change; \
                   `xattr` serves the guest's user.* extended attributes (off by default: the \
                   guest then asks about attributes on every write, one round trip each). \
                   The device process's root is DIR itself (mounts inside it hidden) and it \
                   resolves nothing outside it: guest names are single components and \
                   symlinks are never followed",
        })
    }

    fn parse(&self, value: Option<&str>) -> Result<Option<Box<dyn DeviceConfig>>, KindError> {
        let spec = FsSpec::parse(value.unwrap_or_default())?;
        Ok(Some(Box::new(spec)))
    }

    fn options(&self) -> Vec<KindOption> {
        let root = KindOption {
            long: "root",
            value_name: Some("DIR[,rw]"),
            repeatable: false,
            help: "Boot with the host directory DIR as the guest's root file system (read-only \
                   unless `rw`), shared as --fs does (tag skvm-root): skvm's initramfs mounts \
                   it and runs the command or shell in it with DIR's own programs, as kvmtool \
                   does without a disk (`skvm run --root / --run 'ls /usr'`); with `--cmdline \
                   init=PATH` it hands over to that init instead",
        };
        self.option().into_iter().chain([root]).collect()
    }

    fn parse_option(
        &self,
        long: &str,
        value: Option<&str>,
    ) -> Result<Option<Box<dyn DeviceConfig>>, KindError> {
        if long == "root" {
            return Ok(Some(Box::new(FsSpec::parse_root(
                value.unwrap_or_default(),
            )?)));
        }
        self.parse(value)
    }

    fn model(&self, params: &[u8], fds: Vec<OwnedFd>) -> Result<Box<dyn VirtioDevice>, KindError> {
        let (tag, read_only, xattr) = decode(params).map_err(KindError::params(NAME))?;
        let [dir] = take_fds::<1>(NAME, fds)?;
        let opts = Options {
            read_only,
            max_inodes: MAX_INODES,
            max_handles: MAX_HANDLES,
            xattr,
        };
        let fs = devices::fs::Fs::new(&tag, std::os::fd::AsFd::as_fd(&dir), opts)
            .map_err(|e| KindError::Model(Box::new(e)))?;
        Ok(Box::new(fs))
    }

    fn confinement(&self) -> Option<Confinement> {
        Some(Confinement {
            syscalls: SYSCALLS,
            writes_files: true,
            open_files: OPEN_FILES,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_and_bad_ones_say_what_is_wrong() {
        let dir = std::env::temp_dir();
        let ok = FsSpec::parse(&format!("tag=share,path={},ro", dir.display())).unwrap();
        assert_eq!(ok.tag, "share");
        assert!(ok.read_only);
        let long = "t".repeat(37);
        for (value, says) in [
            (
                format!("tag=,path={}", dir.display()),
                "tag=: a tag is 1 to 36",
            ),
            (format!("tag={long},path=/tmp"), "a tag is 1 to 36"),
            ("tag=a".to_owned(), "needs both"),
            ("tag=a,path=/no/such/dir".to_owned(), "not a directory"),
            ("tag=a,path=/tmp,mode=x".to_owned(), "'mode=x'"),
        ] {
            let e = FsSpec::parse(&value).unwrap_err().to_string();
            assert!(e.starts_with("--fs "), "{e}");
            assert!(e.contains(says), "{value}: {e}");
        }
    }

    #[test]
    fn a_root_share_is_read_only_by_default_and_says_how_the_guest_mounts_it() {
        let dir = std::env::temp_dir();
        let shown = dir.display().to_string();
        let ro = FsSpec::parse_root(&shown).unwrap();
        assert!(ro.read_only && ro.root);
        assert_eq!(ro.tag, ROOT_TAG);
        assert_eq!(
            ro.root_params(0).map(|r| (r.params, r.by_initramfs)),
            Some(("root=skvm-root rootfstype=virtiofs ro".to_owned(), true))
        );
        let rw = FsSpec::parse_root(&format!("{shown},rw")).unwrap();
        assert!(!rw.read_only);
        assert_eq!(
            rw.root_params(3).map(|r| r.params).as_deref(),
            Some("root=skvm-root rootfstype=virtiofs rw")
        );
        // A plain share is no root.
        let plain = FsSpec::parse(&format!("tag=t,path={shown}")).unwrap();
        assert_eq!(plain.root_params(0), None);
        for (value, says) in [
            ("", "not a directory"),
            ("/no/such/dir", "not a directory"),
            (
                &format!("{shown},exec") as &str,
                "'exec': expected DIR[,rw]",
            ),
        ] {
            let e = FsSpec::parse_root(value).unwrap_err().to_string();
            assert!(e.starts_with("--root "), "{e}");
            assert!(e.contains(says), "{value}: {e}");
        }
    }

    #[test]
    fn parameters_round_trip_and_malformed_ones_are_refused() {
        assert_eq!(
            decode(&params("t", true, false)).unwrap(),
            ("t".to_owned(), true, false)
        );
        assert!(decode(&params("t", false, true)).unwrap().2);
        assert!(decode(&[PARAMS_V2]).is_err());
        let e = Fs
            .model(&params("t", false, false), Vec::new())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("needs 1 backend fds, got 0"), "{e}");
        let dir = std::fs::File::open(std::env::temp_dir()).unwrap();
        assert!(Fs
            .model(&params("t", false, true), vec![dir.into()])
            .is_ok());
    }
}
