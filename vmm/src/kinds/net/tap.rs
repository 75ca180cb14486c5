//! Tap devices for virtio-net: the `--net` option's syntax, and opening
//! the tap in the VMM so that the device process gets one fd and no other network
//! capability.
//!
//! `--net tap=NAME` attaches to an existing tap; `--net tap` creates one
//! (the kernel names it skvmtapN), brings it up and leaves it
//! non-persistent: the kernel removes it when the last fd closes, that is
//! when skvm and its device process are gone, however skvm ends. The fd is
//! set up with IFF_TAP, IFF_NO_PI and IFF_VNET_HDR, a 12-byte vnet header
//! (virtio 1.x's) and O_NONBLOCK; the device sets the offloads at
//! activation.

use std::ffi::CStr;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use anyhow::{bail, Context, Result};

use crate::kinds::KindError;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const IFF_UP: libc::c_short = 0x1;
/// Longest interface name (IFNAMSIZ less the NUL).
pub const MAX_IFNAME: usize = 15;
/// The name template of taps skvm creates.
const CREATED_NAME: &str = "skvmtap%d";

/// `struct ifreq` with the name and the flags member of its union.
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl IfReq {
    fn new(name: &str, flags: libc::c_short) -> Self {
        let mut r = IfReq {
            name: [0; 16],
            flags,
            _pad: [0; 22],
        };
        let n = name.len().min(MAX_IFNAME);
        if let (Some(dst), Some(src)) = (r.name.get_mut(..n), name.as_bytes().get(..n)) {
            dst.copy_from_slice(src);
        }
        r
    }

    fn name(&self) -> String {
        CStr::from_bytes_until_nul(&self.name)
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// One `--net` option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetSpec {
    /// An existing tap to attach to; `None` creates one.
    pub tap: Option<String>,
    /// The guest's MAC; `None` derives one from the VM and device names.
    pub mac: Option<[u8; 6]>,
}

impl NetSpec {
    /// Parses `tap[=NAME][,mac=MAC]`.
    pub fn parse(s: &str) -> Result<Self, KindError> {
        let mut parts = s.split(',');
        let tap = match parts.next().unwrap_or_default().split_once('=') {
            None if s.split(',').next() == Some("tap") => None,
            Some(("tap", name)) => {
                if name.is_empty()
                    || name.len() > MAX_IFNAME
                    || name.contains('%')
                    || !name.bytes().all(|b| b.is_ascii_graphic() && b != b'/')
                {
                    return Err(KindError::Option(format!(
                        "--net '{s}': the tap name must be 1 to {MAX_IFNAME} printable characters \
                         without '/' or '%'"
                    )));
                }
                Some(name.to_owned())
            }
            _ => {
                return Err(KindError::Option(format!(
                    "--net '{s}': expected tap or tap=NAME first (the only backend)"
                )))
            }
        };
        let mut spec = Self { tap, mac: None };
        for opt in parts {
            match opt.split_once('=') {
                Some(("mac", m)) => {
                    spec.mac = Some(
                        parse_mac(m).map_err(|e| KindError::Option(format!("--net '{s}': {e}")))?,
                    );
                }
                _ => {
                    return Err(KindError::Option(format!(
                        "--net '{s}': unknown option '{opt}' (expected mac=MAC)"
                    )))
                }
            }
        }
        Ok(spec)
    }
}

/// Parses `aa:bb:cc:dd:ee:ff`; refuses multicast and all-zero addresses.
pub fn parse_mac(s: &str) -> Result<[u8; 6], KindError> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts.next().unwrap_or_default();
        if p.len() != 2 {
            return Err(KindError::Option(format!(
                "bad MAC address '{s}' (expected aa:bb:cc:dd:ee:ff)"
            )));
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| {
            KindError::Option(format!(
                "bad MAC address '{s}' (expected aa:bb:cc:dd:ee:ff)"
            ))
        })?;
    }
    if parts.next().is_some() {
        return Err(KindError::Option(format!(
            "bad MAC address '{s}' (expected aa:bb:cc:dd:ee:ff)"
        )));
    }
    if mac[0] & 1 != 0 || mac == [0; 6] {
        return Err(KindError::Option(format!(
            "MAC address '{s}' is multicast or zero, not a card's"
        )));
    }
    Ok(mac)
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A locally administered unicast MAC that depends only on the VM's name
/// and the device's: the same VM gets the same address every boot.
pub fn default_mac(vm_name: &str, device: &str) -> [u8; 6] {
    // FNV-1a over "vm/device".
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in vm_name.bytes().chain([b'/']).chain(device.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let b = h.to_le_bytes();
    // 0x02: locally administered, unicast.
    [(b[0] & 0xfc) | 0x02, b[1], b[2], b[3], b[4], b[5]]
}

/// A tap opened for a device.
#[derive(Debug)]
pub struct OpenTap {
    /// The tap fd for the device.
    pub fd: OwnedFd,
    /// The interface's name.
    pub name: String,
    /// skvm created it (it goes away with skvm).
    pub created: bool,
}

/// Opens the tap `spec` names, or creates one.
pub fn open(spec: &NetSpec) -> Result<OpenTap> {
    if let Some(name) = &spec.tap {
        let c = std::ffi::CString::new(name.as_str()).context("bad tap name")?;
        // SAFETY: if_nametoindex reads a NUL-terminated string.
        if unsafe { libc::if_nametoindex(c.as_ptr()) } == 0 {
            bail!(
                "tap {name} does not exist (create it with `ip tuntap add {name} mode tap`, \
                 or use --net tap to have skvm create one)"
            );
        }
    }
    let file: File = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .context("cannot open /dev/net/tun (is the tun module loaded?)")?;
    let wanted = spec.tap.as_deref().unwrap_or(CREATED_NAME);
    let mut req = IfReq::new(wanted, IFF_TAP | IFF_NO_PI | IFF_VNET_HDR);
    // SAFETY: TUNSETIFF reads and writes one struct ifreq, which req is
    // (name, flags, padding to its 40 bytes).
    if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut req) } < 0 {
        let err = std::io::Error::last_os_error();
        match (spec.tap.as_deref(), err.raw_os_error()) {
            (None, Some(libc::EPERM)) => bail!(
                "cannot create a tap device: permission denied (needs CAP_NET_ADMIN; or create \
                 one for your user with `ip tuntap add NAME mode tap user $USER` and use --net tap=NAME)"
            ),
            (Some(n), Some(libc::EPERM)) => bail!(
                "cannot attach to tap {n}: permission denied (it is not yours: create it with \
                 `ip tuntap add {n} mode tap user $USER`, or run with CAP_NET_ADMIN)"
            ),
            (Some(n), Some(libc::EBUSY)) => bail!("tap {n} is in use by another process"),
            (Some(n), Some(libc::EINVAL)) => {
                bail!("{n} is not a tap device (a tun, or another kind of interface?)")
            }
            (Some(n), _) => return Err(err).with_context(|| format!("cannot attach to tap {n}")),
            (None, _) => return Err(err).context("cannot create a tap device"),
        }
    }
    let name = req.name();
    let hdr: libc::c_int = 12;
    // SAFETY: TUNSETVNETHDRSZ reads one int.
    if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETVNETHDRSZ as _, &hdr) } < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("tap {name}: cannot set the vnet header size"));
    }
    let created = spec.tap.is_none();
    if created {
        set_up(&name).with_context(|| format!("tap {name}: cannot bring it up"))?;
    }
    Ok(OpenTap {
        fd: file.into(),
        name,
        created,
    })
}

/// A socket for interface ioctls.
fn ioctl_socket() -> Result<OwnedFd> {
    // SAFETY: socket() returns a new fd or -1.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return Err(std::io::Error::last_os_error()).context("socket");
    }
    // SAFETY: sock is a new fd owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(sock) })
}

/// What `skvm drive` needs to know of a tap's interface.
#[derive(Debug, Clone, Copy)]
pub struct LinkInfo {
    /// Its interface index.
    pub index: u32,
    /// Its MTU.
    pub mtu: u32,
    /// IFF_UP is set.
    pub up: bool,
}

/// The index, MTU and state of interface `name` (in this thread's network
/// namespace).
pub fn link_info(name: &str) -> Result<LinkInfo> {
    let c = std::ffi::CString::new(name).context("bad interface name")?;
    // SAFETY: if_nametoindex reads a NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        bail!("interface {name} does not exist");
    }
    let sock = ioctl_socket()?;
    let mut req = IfReq::new(name, 0);
    // SAFETY: SIOCGIFFLAGS writes the flags of one struct ifreq.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) } < 0 {
        return Err(std::io::Error::last_os_error()).context("SIOCGIFFLAGS");
    }
    let up = req.flags & IFF_UP != 0;
    // The MTU is an int where the flags were (a union in struct ifreq).
    let mut m = IfReqInt {
        name: req.name,
        value: 0,
        _pad: [0; 20],
    };
    // SAFETY: SIOCGIFMTU writes the MTU of one struct ifreq, which m is
    // (name, the int member of the union, padding to 40 bytes).
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFMTU as _, &mut m) } < 0 {
        return Err(std::io::Error::last_os_error()).context("SIOCGIFMTU");
    }
    Ok(LinkInfo {
        index,
        mtu: u32::try_from(m.value).unwrap_or(0),
        up,
    })
}

/// `struct ifreq` with the int member of its union (ifr_mtu).
#[repr(C)]
struct IfReqInt {
    name: [u8; 16],
    value: libc::c_int,
    _pad: [u8; 20],
}

/// Sets IFF_UP on interface `name`.
fn set_up(name: &str) -> Result<()> {
    let sock = ioctl_socket()?;
    let mut req = IfReq::new(name, 0);
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write one struct ifreq.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) < 0 {
            return Err(std::io::Error::last_os_error()).context("SIOCGIFFLAGS");
        }
        req.flags |= IFF_UP;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &req) < 0 {
            return Err(std::io::Error::last_os_error()).context("SIOCSIFFLAGS");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_options_parse() {
        assert_eq!(
            NetSpec::parse("tap").unwrap(),
            NetSpec {
                tap: None,
                mac: None
            }
        );
        assert_eq!(
            NetSpec::parse("tap=tap0,mac=52:54:00:12:34:56").unwrap(),
            NetSpec {
                tap: Some("tap0".into()),
                mac: Some([0x52, 0x54, 0, 0x12, 0x34, 0x56])
            }
        );
        for bad in [
            "",
            "user",
            "tap=",
            "tap=a/b",
            "tap=sixteen-chars-xx",
            "tap,mac=01:00:00:00:00:01",
            "tap,mac=00:00:00:00:00:00",
            "tap,mac=52:54:00:12:34",
            "tap,mac=52:54:00:12:34:56:78",
            "tap,mac=zz:54:00:12:34:56",
            "tap,speed=10",
        ] {
            assert!(NetSpec::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn default_macs_are_stable_local_and_unicast() {
        let a = default_mac("skvm", "net0");
        assert_eq!(a, default_mac("skvm", "net0"));
        assert_ne!(a, default_mac("skvm", "net1"));
        assert_ne!(a, default_mac("other", "net0"));
        assert_eq!(a[0] & 0x03, 0x02);
    }
}
