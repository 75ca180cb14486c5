//! Guest memory: memfd-backed, mapped `MAP_SHARED` so device processes can
//! map the same pages, laid out around the 32-bit MMIO hole; and its one
//! owner, [`Memory`].
//!
//! RAM below 3 GiB is one region at guest address 0; anything above goes to a
//! second region at 4 GiB. Both regions are windows into a single memfd whose
//! size is sealed, so no peer holding the fd can shrink it under the VMM.
//! Memory added later (hotplug) is a memfd of its own per region.
//!
//! With `--hugepages` every memfd is a hugetlbfs one (`MFD_HUGETLB`, 2 MiB
//! pages from the host's pool, /proc/sys/vm/nr_hugepages): the VMM's mapping
//! reserves the pages when it is made, so a pool too small fails there,
//! named, not with a SIGBUS when the guest first touches a page. Such a
//! memfd cannot be written with write(2) or splice(2), only through a
//! mapping (the boot loader and a snapshot's restore do that).
//!
//! [`Memory`] creates every region, registers each as a KVM memslot (one
//! function, for boot RAM and added regions alike), and hands out the two
//! views others need: the immutable map devices receive at activation and
//! restore ([`DeviceMemory`]), and the vCPUs' view, which an added region
//! replaces without a lock on the vCPUs' path ([`GuestMemoryAtomic`]).

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::Arc;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryAtomic, GuestMemoryBackend, GuestMemoryMmap,
    GuestRegionMmap,
};

use crate::layout::{MMIO_HOLE_END, MMIO_HOLE_START};

/// Smallest guest RAM skvm accepts.
pub const MIN_MEM: u64 = 32 << 20;

/// Errors while creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// memfd_create failed.
    #[error("memfd_create failed")]
    Memfd(#[source] std::io::Error),
    /// Sizing or sealing the memfd failed.
    #[error("cannot size guest memory to {size} bytes")]
    Truncate {
        /// Requested size.
        size: u64,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Sealing the memfd failed.
    #[error("cannot seal guest memory")]
    Seal(#[source] std::io::Error),
    /// Mapping a region failed.
    #[error("cannot map guest memory")]
    Mmap(#[source] vm_memory::mmap::MmapRegionError),
    /// Huge-page RAM of a size that is not a whole number of huge pages.
    #[error("--hugepages: {size} bytes of memory is not a whole number of 2 MiB pages")]
    HugeSize {
        /// The size asked for.
        size: u64,
    },
    /// The host's pool of huge pages cannot hold the region.
    #[error(
        "--hugepages: the host's pool of 2 MiB pages cannot hold the {needed} pages this \
         memory needs{free} (root sizes it: /proc/sys/vm/nr_hugepages; or run without --hugepages)"
    )]
    HugePool {
        /// Pages the region needs.
        needed: u64,
        /// ", only N are free", when the host says.
        free: String,
    },
    /// Building the region collection failed.
    #[error("invalid guest memory layout")]
    Layout,
    /// KVM refused a memslot.
    #[error("cannot add memslot {slot}")]
    Memslot {
        /// The slot.
        slot: u32,
        /// KVM's error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// More regions than the device protocol carries.
    #[error("at most {0} memory regions")]
    TooManyRegions(usize),
    /// A region added before the memory was registered with a VM.
    #[error("guest memory is not registered with a VM yet")]
    NoVm,
}

/// Guest memory as a device maps it: each region with its memfd.
pub type DeviceMemory = Vec<(RamRange, Arc<File>)>;

/// The one owner of guest memory: its memfds, the VMM's mappings, the
/// memslots, and the views handed out.
pub struct Memory {
    /// Every region with its file, boot RAM first.
    regions: DeviceMemory,
    /// The VMM's mappings; memslots point into them, so they live as long
    /// as this (which the VM must not outlive).
    mappings: Vec<GuestMemoryMmap>,
    /// What the vCPUs read guest memory through.
    vcpus: GuestMemoryAtomic<GuestMemoryMmap>,
    /// The VM the regions are registered with, and its next free slot.
    vm: Option<(Arc<VmFd>, u32)>,
    /// Whether every region is in huge pages (`--hugepages`).
    huge: bool,
}

impl Memory {
    /// `ram` as guest memory (nothing registered with KVM yet).
    pub fn new(ram: GuestRam) -> Self {
        let regions = ram.ranges.iter().map(|r| (*r, ram.memfd.clone())).collect();
        Self {
            regions,
            vcpus: GuestMemoryAtomic::new(ram.mem.clone()),
            mappings: vec![ram.mem],
            vm: None,
            huge: ram.huge,
        }
    }

    /// Whether guest memory is in huge pages (`--hugepages`).
    pub fn huge(&self) -> bool {
        self.huge
    }

    /// Writes `bytes` at `offset` of `file` (one of guest memory's memfds)
    /// through the VMM's mapping: how a restore fills a huge-page memfd,
    /// which takes no write(2).
    pub fn write_file_at(&self, file: &File, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
        let len = bytes.len() as u64;
        let range = self
            .regions
            .iter()
            .find(|(r, f)| {
                std::ptr::eq(f.as_ref(), file)
                    && offset >= r.file_offset
                    && offset.saturating_add(len) <= r.file_offset + r.size
            })
            .map(|(r, _)| r)
            .ok_or_else(|| std::io::Error::other("outside guest memory"))?;
        let addr = GuestAddress(range.guest_addr + (offset - range.file_offset));
        let mem = self
            .mappings
            .iter()
            .find(|m| m.address_in_range(addr))
            .ok_or_else(|| std::io::Error::other("outside guest memory"))?;
        mem.write_slice(bytes, addr)
            .map_err(|e| std::io::Error::other(e.to_string()))
    }

    /// The VMM's mapping of boot RAM (where the kernel is loaded).
    pub fn boot(&self) -> Option<&GuestMemoryMmap> {
        self.mappings.first()
    }

    /// The first guest address past boot RAM.
    pub fn ram_top(&self) -> u64 {
        self.regions
            .iter()
            .map(|(r, _)| r.guest_addr + r.size)
            .max()
            .unwrap_or(0)
    }

    /// Each memfd once, with its size, boot RAM first: what a snapshot
    /// writes.
    pub fn files(&self) -> Vec<(Arc<File>, u64)> {
        let mut out: Vec<(Arc<File>, u64)> = Vec::new();
        for (range, file) in &self.regions {
            match out.iter_mut().find(|(f, _)| Arc::ptr_eq(f, file)) {
                Some((_, size)) => *size = (*size).max(range.file_offset + range.size),
                None => out.push((file.clone(), range.file_offset + range.size)),
            }
        }
        out
    }

    /// The regions added after boot RAM (mem-add): guest address and size.
    pub fn hotplugged(&self) -> Vec<(u64, u64)> {
        let boot = self.regions.first().map(|(_, f)| f.clone());
        self.regions
            .iter()
            .filter(|(_, f)| !boot.as_ref().is_some_and(|b| Arc::ptr_eq(b, f)))
            .map(|(r, _)| (r.guest_addr, r.size))
            .collect()
    }

    /// The map devices receive: every region and its memfd.
    pub fn for_devices(&self) -> DeviceMemory {
        self.regions.clone()
    }

    /// The vCPUs' view, which follows added regions.
    pub fn for_vcpus(&self) -> GuestMemoryAtomic<GuestMemoryMmap> {
        self.vcpus.clone()
    }

    /// Registers every region as a memslot of `vm`, once; regions added
    /// later are registered as they come.
    pub fn register(&mut self, vm: Arc<VmFd>) -> Result<(), MemoryError> {
        let mut slot = 0u32;
        for (range, _) in &self.regions {
            add_memslot(&vm, slot, range, &self.mappings)?;
            slot += 1;
        }
        self.vm = Some((vm, slot));
        Ok(())
    }

    /// Adds a region of `size` bytes at `guest_addr` in a memfd of its own:
    /// mapped, registered, in the vCPUs' view and in the devices' map from
    /// now on. At most `ipc::MAX_REGIONS` regions in all.
    pub fn add_region(&mut self, guest_addr: u64, size: u64) -> Result<RamRange, MemoryError> {
        if self.regions.len() >= ipc::MAX_REGIONS {
            return Err(MemoryError::TooManyRegions(ipc::MAX_REGIONS));
        }
        let (vm, slot) = self.vm.clone().ok_or(MemoryError::NoVm)?;
        let range = RamRange {
            guest_addr,
            size,
            file_offset: 0,
        };
        let file = Arc::new(create_memfd(size, Some(guest_addr), self.huge)?);
        let mapping = map_vmm(&[(range, file.clone())], self.huge)?;
        add_memslot(&vm, slot, &range, std::slice::from_ref(&mapping))?;
        self.vm = Some((vm, slot + 1));
        self.mappings.push(mapping);
        self.regions.push((range, file));
        let all = map_vmm(&self.regions, self.huge)?;
        self.vcpus
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .replace(all);
        Ok(range)
    }
}

/// Registers `range` as memslot `slot` of `vm`, at the host address one of
/// `mappings` maps it at.
fn add_memslot(
    vm: &VmFd,
    slot: u32,
    range: &RamRange,
    mappings: &[GuestMemoryMmap],
) -> Result<(), MemoryError> {
    let host = mappings
        .iter()
        .find_map(|m| m.get_host_address(GuestAddress(range.guest_addr)).ok())
        .ok_or(MemoryError::Layout)?;
    let region = kvm_userspace_memory_region {
        slot,
        guest_phys_addr: range.guest_addr,
        memory_size: range.size,
        userspace_addr: host as u64,
        flags: 0,
    };
    // SAFETY: the region is a live mapping of guest memory owned by the
    // `Memory` that holds `mappings`, which outlives the VM (the VM is
    // dropped first).
    unsafe { vm.set_user_memory_region(region) }
        .map_err(|source| MemoryError::Memslot { slot, source })
}

/// Parses "512M", "4G", "1048576", "2k" (binary units).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return None,
            };
            (s.get(..i)?, m)
        }
        _ => (s, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

/// One RAM region: where it sits in the guest and where in the memfd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamRange {
    /// Guest physical address of the first byte.
    pub guest_addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// Offset of the first byte in the memfd.
    pub file_offset: u64,
}

/// The RAM ranges for `size` bytes of guest RAM, split around the MMIO hole.
pub fn ram_ranges(size: u64) -> Vec<RamRange> {
    let low = size.min(MMIO_HOLE_START);
    let mut ranges = vec![RamRange {
        guest_addr: 0,
        size: low,
        file_offset: 0,
    }];
    if size > low {
        ranges.push(RamRange {
            guest_addr: MMIO_HOLE_END,
            size: size - low,
            file_offset: low,
        });
    }
    ranges
}

/// Guest RAM: the memfd and the VMM's mapping of it.
pub struct GuestRam {
    /// The memfd backing all of guest RAM (shared with device processes).
    pub memfd: Arc<File>,
    /// The ranges in guest physical address order.
    pub ranges: Vec<RamRange>,
    /// The VMM's mapping.
    pub mem: GuestMemoryMmap,
    /// Whether the memfd is in huge pages.
    pub huge: bool,
}

impl GuestRam {
    /// Creates `size` bytes of guest RAM in a sealed memfd, in the host's
    /// 2 MiB pages when `huge`.
    pub fn new(size: u64, huge: bool) -> Result<Self, MemoryError> {
        let memfd = Arc::new(create_memfd(size, None, huge)?);
        let ranges = ram_ranges(size);
        let with_files: Vec<(RamRange, Arc<File>)> =
            ranges.iter().map(|r| (*r, memfd.clone())).collect();
        let mem = map_vmm(&with_files, huge).map_err(|e| match e {
            // Before the VMM's filter: the pool's figures can be read.
            MemoryError::HugePool { needed, .. } => MemoryError::HugePool {
                needed,
                free: free_huge_pages(),
            },
            e => e,
        })?;
        Ok(Self {
            memfd,
            ranges,
            mem,
            huge,
        })
    }
}

/// Size of a huge page of guest memory (`--hugepages`).
pub const HUGE_PAGE: u64 = 2 << 20;

/// Maps each range of its file `MAP_SHARED` at its guest address: how a
/// device process maps the memfds it is given. Nothing is reserved: the
/// VMM's own mapping ([`map_vmm`]) did that for huge pages.
pub fn map_ranges(ranges: &[(RamRange, Arc<File>)]) -> Result<GuestMemoryMmap, MemoryError> {
    map_with(ranges, libc::MAP_SHARED | libc::MAP_NORESERVE, false)
}

/// The VMM's mapping of `ranges`: as [`map_ranges`], except that huge
/// pages are reserved from the host's pool when it is made (no
/// `MAP_NORESERVE`), so that a pool too small fails here and not at the
/// guest's first touch of a page.
fn map_vmm(ranges: &[(RamRange, Arc<File>)], huge: bool) -> Result<GuestMemoryMmap, MemoryError> {
    if !huge {
        return map_ranges(ranges);
    }
    map_with(ranges, libc::MAP_SHARED, true).map_err(|e| match e {
        MemoryError::Mmap(vm_memory::mmap::MmapRegionError::Mmap(io))
            if io.raw_os_error() == Some(libc::ENOMEM) =>
        {
            let needed = ranges.iter().map(|(r, _)| r.size / HUGE_PAGE).sum();
            MemoryError::HugePool {
                needed,
                free: String::new(),
            }
        }
        e => e,
    })
}

fn map_with(
    ranges: &[(RamRange, Arc<File>)],
    flags: libc::c_int,
    huge: bool,
) -> Result<GuestMemoryMmap, MemoryError> {
    let mut regions = Vec::with_capacity(ranges.len());
    for (r, file) in ranges {
        let len = usize::try_from(r.size).map_err(|_| MemoryError::Layout)?;
        let mapping = MmapRegionBuilder::new(len)
            .with_file_offset(FileOffset::from_arc(file.clone(), r.file_offset))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(flags)
            .with_hugetlbfs(huge)
            .build()
            .map_err(MemoryError::Mmap)?;
        let region =
            GuestRegionMmap::new(mapping, GuestAddress(r.guest_addr)).ok_or(MemoryError::Layout)?;
        regions.push(region);
    }
    GuestMemoryMmap::from_regions(regions).map_err(|_| MemoryError::Layout)
}

/// ", only N are free" for the host's free 2 MiB pages not yet promised to
/// a mapping, or nothing when /sys cannot be read. Not for a VMM under its
/// filter (mem-add), which opens no file.
fn free_huge_pages() -> String {
    let read = |name: &str| -> Option<u64> {
        std::fs::read_to_string(format!("/sys/kernel/mm/hugepages/hugepages-2048kB/{name}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    match (read("free_hugepages"), read("resv_hugepages")) {
        (Some(free), Some(resv)) => format!(", only {} are free", free.saturating_sub(resv)),
        _ => String::new(),
    }
}

/// Name of boot RAM's memfd (as /proc/PID/maps and /proc/PID/fd show it).
pub const RAM_MEMFD: &str = "skvm-guest-ram";

/// A sealed memfd of `size` bytes named [`RAM_MEMFD`], followed by
/// `@ADDRESS` when `guest_addr` says where its first byte sits in the guest
/// (hotplugged regions), so a memory mapping names its guest address; in
/// the host's 2 MiB pages when `huge` (`size` a multiple of [`HUGE_PAGE`]).
pub fn create_memfd(size: u64, guest_addr: Option<u64>, huge: bool) -> Result<File, MemoryError> {
    if huge && !size.is_multiple_of(HUGE_PAGE) {
        return Err(MemoryError::HugeSize { size });
    }
    let name = match guest_addr {
        Some(a) => format!("{RAM_MEMFD}@{a:#x}"),
        None => RAM_MEMFD.to_owned(),
    };
    let name = std::ffi::CString::new(name).map_err(|_| MemoryError::Layout)?;
    let mut flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    if huge {
        flags |= libc::MFD_HUGETLB | libc::MFD_HUGE_2MB;
    }
    // SAFETY: `name` is a valid NUL-terminated string; the flags are valid.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), flags) };
    if fd < 0 {
        return Err(MemoryError::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: memfd_create returned a new fd that nothing else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size)
        .map_err(|source| MemoryError::Truncate { size, source })?;
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    // SAFETY: fcntl on an fd we own with a valid command and argument.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
        return Err(MemoryError::Seal(std::io::Error::last_os_error()));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend};

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("512M"), Some(512 << 20));
        assert_eq!(parse_size("4g"), Some(4 << 30));
        assert_eq!(parse_size("1048576"), Some(1 << 20));
        assert_eq!(parse_size("2K"), Some(2048));
    }

    #[test]
    fn bad_sizes_are_rejected() {
        for s in ["", "M", "12Q", "-1G", "1.5G", "99999999999999999999T"] {
            assert_eq!(parse_size(s), None, "{s}");
        }
    }

    #[test]
    fn small_ram_is_one_region_at_zero() {
        let r = ram_ranges(128 << 20);
        assert_eq!(
            r,
            vec![RamRange {
                guest_addr: 0,
                size: 128 << 20,
                file_offset: 0
            }]
        );
    }

    #[test]
    fn large_ram_skips_the_mmio_hole() {
        let r = ram_ranges(4 << 30);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].size, MMIO_HOLE_START);
        assert_eq!(r[1].guest_addr, MMIO_HOLE_END);
        assert_eq!(r[1].size, (4 << 30) - MMIO_HOLE_START);
        assert_eq!(r[1].file_offset, MMIO_HOLE_START);
    }

    #[test]
    fn guest_ram_is_shared_with_the_memfd() {
        use std::os::unix::fs::FileExt;
        let ram = GuestRam::new(2 << 20, false).unwrap();
        ram.mem
            .write_obj(0xdead_beef_u32, GuestAddress(0x1000))
            .unwrap();
        let mut buf = [0u8; 4];
        ram.memfd.read_exact_at(&mut buf, 0x1000).unwrap();
        assert_eq!(u32::from_le_bytes(buf), 0xdead_beef);
        assert_eq!(ram.mem.last_addr(), GuestAddress((2 << 20) - 1));
    }

    #[test]
    fn a_hotplugged_memfd_is_named_with_its_guest_address() {
        let f = create_memfd(4096, Some(0x1_0000_0000), false).unwrap();
        let link = std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd())).unwrap();
        assert!(
            link.to_string_lossy()
                .starts_with("/memfd:skvm-guest-ram@0x100000000"),
            "{link:?}"
        );
        let f = create_memfd(4096, None, false).unwrap();
        let link = std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd())).unwrap();
        assert_eq!(link.to_string_lossy(), "/memfd:skvm-guest-ram (deleted)");
    }

    #[test]
    fn huge_page_memory_must_be_whole_pages() {
        for size in [HUGE_PAGE + 4096, HUGE_PAGE / 2] {
            let e = create_memfd(size, None, true).unwrap_err();
            assert!(
                matches!(e, MemoryError::HugeSize { size: s } if s == size),
                "{e}"
            );
        }
    }

    #[test]
    fn memfd_size_is_sealed() {
        let ram = GuestRam::new(1 << 20, false).unwrap();
        assert!(ram.memfd.set_len(4096).is_err());
    }
}
