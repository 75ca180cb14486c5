//! Loading Linux: kernel (ELF vmlinux or bzImage through the 64-bit boot
//! protocol, Documentation/arch/x86/boot.rst), initrd, command line, the zero
//! page with its e820 map, and the ACPI tables.

pub mod acpi;
mod into_ram;
pub mod lz4;
pub mod unpack;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::{bzimage::BzImage, elf::Elf, KernelLoader};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

pub use crate::layout::{CMDLINE_ADDR, EBDA_START, HIMEM_START, ZERO_PAGE};
use crate::layout::{IDENTITY_MAP_END, MMIO_HOLE_END};
use crate::log;
use crate::memory::RamRange;

/// Largest command line skvm passes (the kernel's COMMAND_LINE_SIZE on x86).
pub const CMDLINE_MAX: usize = 2048;

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x100_0000;
/// bzImage: offset of the 64-bit entry point from the protected-mode code.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// loadflags: the protected-mode code is loaded at 0x100000.
const LOADED_HIGH: u8 = 0x01;
/// loadflags: the kernel may use the heap (we give it none, but set it).
const CAN_USE_HEAP: u8 = 0x80;

/// Errors while loading the guest's boot images.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel file cannot be opened or read.
    #[error("cannot read kernel {path}")]
    KernelOpen {
        /// The path given.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is neither an ELF vmlinux nor a bzImage.
    #[error("{path} is not a Linux kernel (neither an x86-64 ELF vmlinux nor a bzImage)")]
    NotAKernel {
        /// The path given.
        path: PathBuf,
    },
    /// The kernel is a valid image but does not fit in guest RAM.
    #[error("kernel {path} does not fit in guest memory ({detail})")]
    KernelFit {
        /// The path given.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// The initrd file cannot be opened or read.
    #[error("cannot read initrd {path}")]
    InitrdOpen {
        /// The path given.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The initrd does not fit below the kernel's limit.
    #[error("initrd {path} ({size} bytes) does not fit in guest memory below {limit:#x} next to the kernel; give the guest more memory")]
    InitrdFit {
        /// The path given.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// Highest address the kernel accepts.
        limit: u64,
    },
    /// The command line is too long.
    #[error("kernel command line is {len} bytes, the limit is {max}")]
    CmdlineTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Writing boot data into guest memory failed.
    #[error("cannot write {what} into guest memory")]
    GuestWrite {
        /// What was being written.
        what: &'static str,
    },
    /// ACPI table construction failed.
    #[error("cannot build ACPI tables")]
    Acpi(#[from] acpi::AcpiError),
}

/// Which boot protocol the kernel image uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelKind {
    /// An ELF vmlinux: entered at its ELF entry point.
    Elf,
    /// A bzImage: its protected-mode part is loaded at 1 MiB and entered at
    /// the 64-bit entry point.
    BzImage,
    /// A bzImage skvm decompressed (`unpack`): its vmlinux is entered at
    /// its ELF entry point.
    Unpacked,
}

/// Everything the vCPU needs to start the kernel.
#[derive(Debug, Clone, Copy)]
pub struct BootInfo {
    /// The 64-bit entry point.
    pub entry: GuestAddress,
    /// The zero page (goes to RSI).
    pub zero_page: GuestAddress,
}

/// A boot file, opened before the VMM gives up its view of the host's
/// files (the loader reads it later, in a thread).
#[derive(Debug)]
pub struct BootFile {
    /// The path given, for messages.
    pub path: PathBuf,
    file: File,
}

impl BootFile {
    /// Opens the kernel image at `path`.
    pub fn kernel(path: &Path) -> Result<Self, BootError> {
        Self::open(path).map_err(|source| BootError::KernelOpen {
            path: path.to_owned(),
            source,
        })
    }

    /// Opens the initrd at `path`.
    pub fn initrd(path: &Path) -> Result<Self, BootError> {
        Self::open(path).map_err(|source| BootError::InitrdOpen {
            path: path.to_owned(),
            source,
        })
    }

    fn open(path: &Path) -> std::io::Result<Self> {
        Ok(Self {
            path: path.to_owned(),
            file: File::open(path)?,
        })
    }
}

/// What to boot.
#[derive(Debug)]
pub struct BootSpec {
    /// The kernel image.
    pub kernel: BootFile,
    /// An optional initrd.
    pub initrd: Option<BootFile>,
    /// The full command line.
    pub cmdline: String,
    /// Number of vCPUs, for ACPI.
    pub cpus: u8,
    /// skvm decompresses a bzImage's kernel when it can (`unpack`).
    pub unpack: bool,
}

/// Loads the kernel, initrd and command line, and writes the zero page and
/// ACPI tables.
pub fn load(
    mem: &GuestMemoryMmap,
    ranges: &[RamRange],
    spec: BootSpec,
) -> Result<BootInfo, BootError> {
    let BootSpec {
        kernel,
        initrd,
        cmdline,
        cpus,
        unpack,
    } = spec;
    if cmdline.len() >= CMDLINE_MAX {
        return Err(BootError::CmdlineTooLong {
            len: cmdline.len(),
            max: CMDLINE_MAX - 1,
        });
    }
    let low_top = ranges.first().map_or(0, |r| r.size);
    // The initrd goes at the top of low RAM, below the kernel's limit (read
    // from its header first), so it is read in a second thread while this
    // one loads the kernel: both are mostly fresh-page allocation.
    let limit = initrd_limit(peek_initrd_addr_max(&kernel.file), low_top);
    let initrd_path = initrd.as_ref().map(|i| i.path.clone());
    let room = unpack.then(|| unpack::Room {
        top: kernel_top(initrd.as_ref(), limit, low_top),
        kaslr: !unpack::nokaslr(&cmdline),
    });
    let (loaded_kernel, loaded_initrd) = load_images(mem, kernel, initrd, room, limit);
    let (kind, mut hdr, entry, kernel_end) = loaded_kernel?;
    log::debug(&format!(
        "kernel is {kind:?}, entry {:#x}",
        entry.raw_value()
    ));

    let mut cmdline = cmdline.into_bytes();
    cmdline.push(0);
    mem.write_slice(&cmdline, GuestAddress(CMDLINE_ADDR))
        .map_err(|_| BootError::GuestWrite {
            what: "command line",
        })?;
    fill_header(&mut hdr, cmdline.len());

    if let (Some(path), Some(loaded)) = (initrd_path.as_deref(), loaded_initrd) {
        let (addr, size) = loaded?;
        // Loaded concurrently: only now can the overlap be checked.
        if addr < kernel_end.max(HIMEM_START) {
            return Err(initrd_fit(path, size, limit));
        }
        // load_initrd keeps the initrd below 4 GiB.
        hdr.ramdisk_image = u32::try_from(addr).map_err(|_| initrd_fit(path, size, limit))?;
        hdr.ramdisk_size = u32::try_from(size).map_err(|_| initrd_fit(path, size, limit))?;
    }

    let rsdp = acpi::setup_acpi(
        mem,
        &acpi::AcpiLayout {
            num_cpus: cpus,
            pci_mmio32: Some((
                u64::from(crate::layout::BAR_WINDOW_BASE),
                u64::from(crate::layout::BAR_WINDOW_SIZE),
            )),
        },
    )?;
    write_zero_page(mem, hdr, rsdp, ranges)?;
    Ok(BootInfo {
        entry,
        zero_page: GuestAddress(ZERO_PAGE),
    })
}

/// Where a kernel skvm places must end: below the initrd (load_initrd puts
/// it at the top of `limit`), low RAM and the boot page tables' reach.
fn kernel_top(initrd: Option<&BootFile>, limit: u64, low_top: u64) -> u64 {
    initrd
        .and_then(|i| i.file.metadata().ok())
        .and_then(|m| initrd_addr(m.len(), limit))
        .unwrap_or(low_top)
        .min(low_top)
        .min(IDENTITY_MAP_END)
}

/// What the initrd's loading gives: its address and size.
type LoadedInitrd = Result<(u64, u64), BootError>;

/// Loads the kernel on this thread and the initrd, if any, on a second one
/// at the same time.
fn load_images(
    mem: &GuestMemoryMmap,
    kernel: BootFile,
    initrd: Option<BootFile>,
    room: Option<unpack::Room>,
    limit: u64,
) -> (Result<Loaded, BootError>, Option<LoadedInitrd>) {
    std::thread::scope(|s| {
        let initrd = initrd.map(|i| {
            let path = i.path.clone();
            (path, s.spawn(move || load_initrd(mem, i, limit)))
        });
        let kernel = load_kernel(mem, kernel, room);
        let initrd = initrd.map(|(path, h)| {
            h.join().unwrap_or_else(|_| {
                Err(BootError::InitrdOpen {
                    path,
                    source: std::io::Error::other("loader thread panicked"),
                })
            })
        });
        (kernel, initrd)
    })
}

/// The setup header's fields a boot loader fills in (boot protocol 2.x),
/// for a command line of `cmdline_len` bytes with its NUL at
/// [`CMDLINE_ADDR`].
fn fill_header(hdr: &mut setup_header, cmdline_len: usize) {
    hdr.type_of_loader = KERNEL_LOADER_OTHER;
    hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    hdr.header = KERNEL_HDR_MAGIC;
    hdr.loadflags |= LOADED_HIGH | CAN_USE_HEAP;
    hdr.heap_end_ptr = 0xfe00;
    hdr.cmd_line_ptr = u32::try_from(CMDLINE_ADDR).unwrap_or(0);
    // Bounded by CMDLINE_MAX.
    hdr.cmdline_size = u32::try_from(cmdline_len).unwrap_or(u32::MAX);
    if hdr.kernel_alignment == 0 {
        hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    }
}

/// Writes the zero page: `hdr`, the ACPI RSDP's address and the e820 map.
fn write_zero_page(
    mem: &GuestMemoryMmap,
    hdr: setup_header,
    rsdp: GuestAddress,
    ranges: &[RamRange],
) -> Result<(), BootError> {
    let mut params = boot_params {
        hdr,
        acpi_rsdp_addr: rsdp.raw_value(),
        ..Default::default()
    };
    let e820 = e820_map(ranges);
    for (slot, entry) in params.e820_table.iter_mut().zip(e820.iter()) {
        *slot = *entry;
    }
    // At most two fixed entries plus one per RAM range.
    params.e820_entries = u8::try_from(e820.len()).unwrap_or(u8::MAX);
    mem.write_obj(params, GuestAddress(ZERO_PAGE))
        .map_err(|_| BootError::GuestWrite { what: "zero page" })
}

/// The e820 map: low RAM up to the EBDA, the BIOS area reserved (ACPI tables
/// live there), then every RAM range from 1 MiB up.
pub fn e820_map(ranges: &[RamRange]) -> Vec<boot_e820_entry> {
    let mut map = vec![
        boot_e820_entry {
            addr: 0,
            size: EBDA_START,
            r#type: E820_RAM,
        },
        boot_e820_entry {
            addr: EBDA_START,
            size: HIMEM_START - EBDA_START,
            r#type: E820_RESERVED,
        },
    ];
    for r in ranges {
        let start = r.guest_addr.max(HIMEM_START);
        let end = r.guest_addr + r.size;
        if end > start {
            map.push(boot_e820_entry {
                addr: start,
                size: end - start,
                r#type: E820_RAM,
            });
        }
    }
    map
}

type Loaded = (KernelKind, setup_header, GuestAddress, u64);

fn load_kernel(
    mem: &GuestMemoryMmap,
    kernel: BootFile,
    room: Option<unpack::Room>,
) -> Result<Loaded, BootError> {
    let BootFile {
        path: ref path_buf,
        mut file,
    } = kernel;
    let path = path_buf.as_path();
    let open_err = |source| BootError::KernelOpen {
        path: path.to_owned(),
        source,
    };
    let meta = file.metadata().map_err(open_err)?;
    if !meta.is_file() {
        return Err(BootError::NotAKernel {
            path: path.to_owned(),
        });
    }
    let mut magic = [0u8; 4];
    let n = file.read(&mut magic).map_err(open_err)?;
    file.seek(SeekFrom::Start(0)).map_err(open_err)?;
    let fit = |detail: String| BootError::KernelFit {
        path: path.to_owned(),
        detail,
    };
    if n == 4 && magic == *b"\x7fELF" {
        let mut image = into_ram::IntoRam::new(&mut file, mem);
        let r = Elf::load(mem, None, &mut image, Some(GuestAddress(HIMEM_START)))
            .map_err(|e| classify_load_error(path, &e.to_string()))?;
        let hdr = setup_header {
            kernel_alignment: KERNEL_MIN_ALIGNMENT,
            initrd_addr_max: 0x7fff_ffff,
            ..Default::default()
        };
        return Ok((KernelKind::Elf, hdr, r.kernel_load, r.kernel_end));
    }
    if let Some(room) = room {
        if let Some(unpacked) = unpack_bzimage(mem, path, &file, room) {
            return Ok(unpacked);
        }
    }
    let mut image = into_ram::IntoRam::new(&mut file, mem);
    let r = BzImage::load(mem, None, &mut image, Some(GuestAddress(HIMEM_START)))
        .map_err(|e| classify_load_error(path, &e.to_string()))?;
    let hdr = r.setup_header.ok_or_else(|| BootError::NotAKernel {
        path: path.to_owned(),
    })?;
    if hdr.version < 0x020c || hdr.xloadflags & 0x1 == 0 {
        return Err(fit(
            "bzImage has no 64-bit entry point (boot protocol < 2.12)".into(),
        ));
    }
    // The decompressor needs init_size bytes from the load address.
    let need = r.kernel_load.raw_value() + u64::from(hdr.init_size);
    if mem.last_addr().raw_value() < need {
        return Err(fit(format!(
            "it needs {need:#x} bytes of RAM to decompress"
        )));
    }
    let entry = GuestAddress(r.kernel_load.raw_value() + BZIMAGE_64BIT_ENTRY_OFFSET);
    Ok((KernelKind::BzImage, hdr, entry, need))
}

/// Decompresses the bzImage `file` in skvm (`unpack`), or says why the
/// kernel must do it itself in the guest and returns None.
fn unpack_bzimage(
    mem: &GuestMemoryMmap,
    path: &Path,
    file: &File,
    room: unpack::Room,
) -> Option<Loaded> {
    let start = std::time::Instant::now();
    let done = unpack::setup_header_of(file).and_then(|hdr| unpack::unpack(mem, file, hdr, room));
    match done {
        Ok(u) => {
            let placed = match u.kaslr {
                Some(p) => format!(
                    "KASLR: physical offset {:#x}, virtual offset {:#x}",
                    p.phys, p.virt
                ),
                None if !room.kaslr => "KASLR off (nokaslr)".into(),
                None => "at its link address (not built for KASLR)".into(),
            };
            log::debug(&format!(
                "kernel {}: skvm decompressed it ({} bytes) in {:.0} ms, {placed}",
                path.display(),
                u.decoded,
                start.elapsed().as_secs_f64() * 1000.0
            ));
            Some((KernelKind::Unpacked, u.hdr, u.entry, u.end))
        }
        Err(unpack::UnpackError::Unsupported(why)) => {
            log::debug(&format!(
                "kernel {}: decompressing in the guest: {why}",
                path.display()
            ));
            None
        }
        Err(e) => {
            log::warn(&format!(
                "kernel {}: skvm cannot decompress it ({e}); the kernel decompresses itself in the guest",
                path.display()
            ));
            None
        }
    }
}

/// Maps a loader error to ours: memory errors mean "does not fit", anything
/// else means the file is not a kernel we can boot.
fn classify_load_error(path: &Path, msg: &str) -> BootError {
    let lower = msg.to_ascii_lowercase();
    if lower.contains("memory") || lower.contains("overflow") || lower.contains("address") {
        BootError::KernelFit {
            path: path.to_owned(),
            detail: msg.to_owned(),
        }
    } else {
        BootError::NotAKernel {
            path: path.to_owned(),
        }
    }
}

fn initrd_fit(path: &Path, size: u64, limit: u64) -> BootError {
    BootError::InitrdFit {
        path: path.to_owned(),
        size,
        limit,
    }
}

/// The highest address the kernel in `file` accepts for its initrd, from
/// its header: 0x7fffffff for an ELF vmlinux, the setup header's
/// `initrd_addr_max` for a bzImage of boot protocol 2.03 or later, else 0
/// (the protocol's default). The kernel load reports unreadable files.
fn peek_initrd_addr_max(file: &File) -> u32 {
    use std::os::unix::fs::FileExt;
    let mut magic = [0u8; 4];
    if file.read_exact_at(&mut magic, 0).is_ok() && magic == *b"\x7fELF" {
        return 0x7fff_ffff;
    }
    match unpack::setup_header_of(file) {
        Ok(h) if { h.version } >= 0x0203 => h.initrd_addr_max,
        _ => 0,
    }
}

fn initrd_limit(initrd_addr_max: u32, low_top: u64) -> u64 {
    let max = if initrd_addr_max == 0 {
        0x37ff_ffff
    } else {
        u64::from(initrd_addr_max)
    };
    // The 32-bit ramdisk_image field and the kernel's limit both apply.
    (max + 1).min(low_top).min(MMIO_HOLE_END - 1)
}

/// Where an initrd of `size` bytes goes: the highest page-aligned address
/// that keeps it below `limit`.
fn initrd_addr(size: u64, limit: u64) -> Option<u64> {
    limit.checked_sub(size).map(|at| at & !0xfff)
}

/// Reads the initrd to the highest page-aligned address that keeps it
/// below `limit` (the caller checks it clears the kernel).
fn load_initrd(
    mem: &GuestMemoryMmap,
    initrd: BootFile,
    limit: u64,
) -> Result<(u64, u64), BootError> {
    let BootFile {
        path: ref path_buf,
        mut file,
    } = initrd;
    let path = path_buf.as_path();
    let open_err = |source| BootError::InitrdOpen {
        path: path.to_owned(),
        source,
    };
    let meta = file.metadata().map_err(open_err)?;
    if !meta.is_file() {
        return Err(open_err(std::io::Error::other("not a regular file")));
    }
    let size = meta.len();
    let too_big = || initrd_fit(path, size, limit);
    let addr = initrd_addr(size, limit).ok_or_else(too_big)?;
    if addr < HIMEM_START {
        return Err(too_big());
    }
    let len = usize::try_from(size).map_err(|_| too_big())?;
    let mut image = into_ram::IntoRam::new(&mut file, mem);
    mem.read_exact_volatile_from(GuestAddress(addr), &mut image, len)
        .map_err(|e| open_err(std::io::Error::other(e.to_string())))?;
    Ok((addr, size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::ram_ranges;

    #[test]
    fn e820_reserves_the_bios_area_and_skips_the_hole() {
        let map = e820_map(&ram_ranges(4 << 30));
        let types: Vec<(u64, u64, u32)> = map.iter().map(|e| (e.addr, e.size, e.r#type)).collect();
        assert_eq!(
            types,
            vec![
                (0, EBDA_START, E820_RAM),
                (EBDA_START, HIMEM_START - EBDA_START, E820_RESERVED),
                (HIMEM_START, 0xC000_0000 - HIMEM_START, E820_RAM),
                (MMIO_HOLE_END, (4 << 30) - 0xC000_0000, E820_RAM),
            ]
        );
    }

    #[test]
    fn initrd_limit_respects_ram_and_kernel_max() {
        assert_eq!(initrd_limit(0x7fff_ffff, 128 << 20), 128 << 20);
        assert_eq!(initrd_limit(0x7fff_ffff, 0xC000_0000), 0x8000_0000);
        assert_eq!(initrd_limit(0, 0xC000_0000), 0x3800_0000);
    }
}
