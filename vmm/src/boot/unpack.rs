//! Unpacking a bzImage in the VMM: decompress its kernel, place the vmlinux
//! inside it in guest memory and, for a kernel built for KASLR, choose its
//! physical and virtual offsets and apply its relocations, as the kernel's
//! own decompressor (arch/x86/boot/compressed) would in the guest.
//!
//! Where guest kernel code is emulated that decompressor is most of a boot:
//! 34 s for skvm's own 18 MB kernel, 134 s for Debian's cloud kernel on the
//! host this was written on, against well under a second here. The kernel
//! is then entered at its vmlinux entry point through the same 64-bit boot
//! protocol, with the bzImage's own setup header in the zero page.
//!
//! The decompressed image is a stripped ELF vmlinux followed, in a kernel
//! built with CONFIG_RANDOMIZE_BASE, by its relocation table: read backwards
//! from the end, 32-bit locations to add the virtual offset to, up to a
//! zero; 32-bit locations to subtract it from, up to a zero; 64-bit
//! locations to add it to, up to a zero. Each entry is the kernel virtual
//! address of the location, sign-extended from 32 bits.
//!
//! The image comes from the host's user, not the guest, but it is parsed as
//! hostile all the same: every length, offset and address is checked, and
//! anything this module does not understand is left to the kernel's own
//! decompressor rather than guessed at.

use std::fs::File;
use std::os::unix::fs::FileExt;

use linux_loader::bootparam::setup_header;
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

use super::lz4;

/// Where the setup header starts in a bzImage.
const SETUP_HEADER_AT: u64 = 0x1f1;
/// payload_offset and payload_length came with boot protocol 2.08.
const PAYLOAD_FIELDS_VERSION: u16 = 0x0208;
/// Where a 64-bit kernel's virtual addresses start (`__START_KERNEL_map`).
const START_KERNEL_MAP: u64 = 0xffff_ffff_8000_0000;
/// How far the kernel image may reach from `__START_KERNEL_map` in a kernel
/// built for KASLR (`KERNEL_IMAGE_SIZE`).
const KERNEL_IMAGE_SIZE: u64 = 1 << 30;
/// A 64-bit kernel is mapped with 2 MiB pages: it must be aligned to them.
const MIN_ALIGN: u64 = 2 << 20;
/// loadflags: the kernel was placed at random (it then randomizes its
/// memory regions too).
pub const KASLR_FLAG: u8 = 0x02;

const PT_LOAD: u32 = 1;
const EM_X86_64: u16 = 62;
const ET_EXEC: u16 = 2;

/// Why skvm does not unpack a bzImage itself; the kernel's own decompressor
/// then runs in the guest.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The image is not a bzImage skvm can unpack (old boot protocol, a
    /// compression skvm does not decode).
    #[error("{0}")]
    Unsupported(String),
    /// The image claims to be one skvm unpacks, but is inconsistent.
    #[error("{0}")]
    Corrupt(String),
    /// Reading the file failed.
    #[error("cannot read it: {0}")]
    Io(#[from] std::io::Error),
}

fn corrupt(why: impl Into<String>) -> UnpackError {
    UnpackError::Corrupt(why.into())
}

/// A bzImage's setup header, if the file has one.
pub fn setup_header_of(file: &File) -> Result<setup_header, UnpackError> {
    let mut hdr = setup_header::default();
    file.read_exact_at(hdr.as_mut_slice(), SETUP_HEADER_AT)?;
    if hdr.header != super::KERNEL_HDR_MAGIC {
        return Err(UnpackError::Unsupported("it has no setup header".into()));
    }
    Ok(hdr)
}

/// The compressed kernel inside a bzImage with header `hdr`.
fn payload(file: &File, hdr: &setup_header) -> Result<Vec<u8>, UnpackError> {
    let version = hdr.version;
    if version < PAYLOAD_FIELDS_VERSION {
        return Err(UnpackError::Unsupported(format!(
            "its boot protocol {version:#x} does not locate the compressed kernel"
        )));
    }
    // A setup_sects of 0 means 4; the protected-mode code follows the
    // setup code and the boot sector.
    let sects = if hdr.setup_sects == 0 {
        4
    } else {
        hdr.setup_sects
    };
    let start = (u64::from(sects) + 1) * 512 + u64::from(hdr.payload_offset);
    let len = u64::from(hdr.payload_length);
    let size = file.metadata()?.len();
    if len < 8 || start.checked_add(len).is_none_or(|end| end > size) {
        return Err(corrupt(format!(
            "its compressed kernel ({len} bytes at {start:#x}) is not inside the file ({size} bytes)"
        )));
    }
    let mut data = vec![0u8; usize::try_from(len).map_err(|_| corrupt("payload too large"))?];
    file.read_exact_at(&mut data, start)?;
    Ok(data)
}

/// The compression a payload's first bytes name.
fn compression_of(payload: &[u8]) -> &'static str {
    const MAGICS: [(&[u8], &str); 7] = [
        (&[0x02, 0x21, 0x4c, 0x18], "lz4"),
        (&[0x1f, 0x8b], "gzip"),
        (&[0x28, 0xb5, 0x2f, 0xfd], "zstd"),
        (&[0xfd, b'7', b'z', b'X', b'Z', 0], "xz"),
        (b"BZh", "bzip2"),
        (&[0x89, b'L', b'Z', b'O'], "lzo"),
        (&[0x5d, 0], "lzma"),
    ];
    MAGICS
        .iter()
        .find(|(m, _)| payload.starts_with(m))
        .map_or("unknown", |(_, name)| name)
}

/// Decompresses a payload: an LZ4 legacy frame followed by its decoded
/// length; the decoded kernel must fit in `init_size`, the room the kernel
/// asks for.
fn decompress(payload: &[u8], init_size: u32) -> Result<Vec<u8>, UnpackError> {
    let format = compression_of(payload);
    if format != "lz4" {
        return Err(UnpackError::Unsupported(format!(
            "its kernel is compressed with {format}; skvm decodes lz4"
        )));
    }
    let (frame, tail) = payload.split_at(payload.len() - 4);
    let want = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]);
    if want > init_size {
        return Err(corrupt(format!(
            "its kernel decodes to {want} bytes, more than its init_size {init_size}"
        )));
    }
    let want = usize::try_from(want).map_err(|_| corrupt("kernel too large"))?;
    let data = lz4::decode_legacy(frame, want).map_err(|e| corrupt(format!("lz4: {e}")))?;
    if data.len() != want {
        return Err(corrupt(format!(
            "its kernel decoded to {} bytes, its trailer says {want}",
            data.len()
        )));
    }
    Ok(data)
}

/// One loadable segment of the vmlinux.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    /// Where its bytes are in the image.
    offset: usize,
    /// How many bytes the image holds.
    filesz: usize,
    /// Its physical (link) address.
    paddr: u64,
    /// Its size in memory (the rest is zero).
    memsz: u64,
}

/// The vmlinux inside a decompressed kernel.
#[derive(Debug)]
struct Vmlinux {
    entry: u64,
    segments: Vec<Segment>,
    /// Where the ELF file ends in the image: what follows is the
    /// relocation table, if any.
    end: usize,
}

impl Vmlinux {
    /// The lowest physical address a segment is linked at.
    fn base(&self) -> u64 {
        self.segments.iter().map(|s| s.paddr).min().unwrap_or(0)
    }

    /// How much memory the kernel spans from its base, in 2 MiB pages.
    fn span(&self) -> Option<u64> {
        let base = self.base();
        let top = self
            .segments
            .iter()
            .map(|s| s.paddr.checked_add(s.memsz))
            .try_fold(0u64, |m, e| Some(m.max(e?)))?;
        (top - base).checked_next_multiple_of(MIN_ALIGN)
    }

    /// The image offset of `len` bytes at physical (link) address `paddr`,
    /// if a segment's file bytes hold them all.
    fn offset_of(&self, paddr: u64, len: u64) -> Option<usize> {
        self.segments.iter().find_map(|s| {
            let within = usize::try_from(paddr.checked_sub(s.paddr)?).ok()?;
            let end = within.checked_add(usize::try_from(len).ok()?)?;
            (end <= s.filesz).then(|| s.offset + within)
        })
    }
}

fn u16_at(d: &[u8], at: usize) -> Option<u16> {
    let b = d.get(at..at.checked_add(2)?)?;
    Some(u16::from_le_bytes([b[0], b[1]]))
}

fn u32_at(d: &[u8], at: usize) -> Option<u32> {
    let b = d.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn u64_at(d: &[u8], at: usize) -> Option<u64> {
    let b = d.get(at..at.checked_add(8)?)?;
    let mut v = [0u8; 8];
    v.copy_from_slice(b);
    Some(u64::from_le_bytes(v))
}

/// Parses the ELF header and program headers of a decompressed kernel.
fn parse_elf(d: &[u8]) -> Result<Vmlinux, UnpackError> {
    const EHDR_LEN: usize = 64;
    const PHDR_LEN: usize = 56;
    const SHDR_LEN: usize = 64;
    if d.len() < EHDR_LEN || !d.starts_with(b"\x7fELF\x02\x01") {
        return Err(corrupt("its kernel is not a 64-bit little-endian ELF"));
    }
    let bad = || corrupt("its kernel's ELF headers are inconsistent");
    if u16_at(d, 16) != Some(ET_EXEC) || u16_at(d, 18) != Some(EM_X86_64) {
        return Err(corrupt("its kernel is not an x86-64 executable"));
    }
    let entry = u64_at(d, 24).ok_or_else(bad)?;
    let phoff = usize::try_from(u64_at(d, 32).ok_or_else(bad)?).map_err(|_| bad())?;
    let shoff = usize::try_from(u64_at(d, 40).ok_or_else(bad)?).map_err(|_| bad())?;
    let phentsize = u16_at(d, 54).ok_or_else(bad)?;
    let phnum = usize::from(u16_at(d, 56).ok_or_else(bad)?);
    let shentsize = u16_at(d, 58).ok_or_else(bad)?;
    let shnum = usize::from(u16_at(d, 60).ok_or_else(bad)?);
    if usize::from(phentsize) != PHDR_LEN || (shnum > 0 && usize::from(shentsize) != SHDR_LEN) {
        return Err(bad());
    }
    let mut end = phoff.checked_add(phnum * PHDR_LEN).ok_or_else(bad)?;
    if shnum > 0 {
        end = end.max(shoff.checked_add(shnum * SHDR_LEN).ok_or_else(bad)?);
    }
    let mut segments = Vec::new();
    for i in 0..phnum {
        let p = phoff + i * PHDR_LEN;
        if u32_at(d, p).ok_or_else(bad)? != PT_LOAD {
            continue;
        }
        let field = |o: usize| u64_at(d, p + o).ok_or_else(bad);
        let (offset, paddr, filesz, memsz, align) =
            (field(8)?, field(24)?, field(32)?, field(40)?, field(48)?);
        if filesz > memsz || !align.is_multiple_of(MIN_ALIGN) {
            return Err(bad());
        }
        let offset = usize::try_from(offset).map_err(|_| bad())?;
        let filesz = usize::try_from(filesz).map_err(|_| bad())?;
        end = end.max(offset.checked_add(filesz).ok_or_else(bad)?);
        paddr.checked_add(memsz).ok_or_else(bad)?;
        segments.push(Segment {
            offset,
            filesz,
            paddr,
            memsz,
        });
    }
    if segments.is_empty() || end > d.len() {
        return Err(bad());
    }
    let elf = Vmlinux {
        entry,
        segments,
        end,
    };
    let base = elf.base();
    let span = elf.span().ok_or_else(bad)?;
    if !base.is_multiple_of(MIN_ALIGN) || entry < base || entry >= base + span {
        return Err(bad());
    }
    Ok(elf)
}

/// A kernel's relocation table: kernel virtual addresses (truncated to 32
/// bits) of the locations the virtual offset is added to or taken from.
#[derive(Debug, Default, PartialEq, Eq)]
struct Relocs {
    add32: Vec<u32>,
    sub32: Vec<u32>,
    add64: Vec<u32>,
}

/// Reads the relocation table after the ELF (`d[elf_end..]`), if there is
/// one. It must fill the tail exactly: anything else is refused.
fn relocs(d: &[u8], elf_end: usize) -> Result<Option<Relocs>, UnpackError> {
    let tail = d.get(elf_end..).unwrap_or_default();
    if tail.is_empty() {
        return Ok(None);
    }
    if tail.len() % 4 != 0 {
        return Err(corrupt(format!(
            "{} bytes follow its vmlinux, not a relocation table",
            tail.len()
        )));
    }
    let mut words = tail
        .chunks_exact(4)
        .rev()
        .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]));
    let mut list = || -> Result<Vec<u32>, UnpackError> {
        let mut v = Vec::new();
        loop {
            match words.next() {
                Some(0) => return Ok(v),
                Some(w) => v.push(w),
                None => return Err(corrupt("its relocation table has no terminator")),
            }
        }
    };
    let r = Relocs {
        add32: list()?,
        sub32: list()?,
        add64: list()?,
    };
    if words.next().is_some() {
        return Err(corrupt(
            "bytes between its vmlinux and its relocation table",
        ));
    }
    if r.add32.is_empty() && r.sub32.is_empty() && r.add64.is_empty() {
        return Ok(None);
    }
    Ok(Some(r))
}

/// Adds `delta` (the virtual offset) to every location the table names,
/// in the image `d`.
fn relocate(d: &mut [u8], elf: &Vmlinux, r: &Relocs, delta: u64) -> Result<(), UnpackError> {
    let at = |entry: u32, len: u64| {
        // Sign-extended, as the kernel reads them.
        let va = i64::from(entry.cast_signed()).cast_unsigned();
        va.checked_sub(START_KERNEL_MAP)
            .and_then(|paddr| elf.offset_of(paddr, len))
            .ok_or_else(|| corrupt(format!("a relocation at {va:#x} is outside the kernel")))
    };
    // Within the kernel's 1 GiB mapping (`place`).
    let delta32 = u32::try_from(delta).map_err(|_| corrupt("virtual offset beyond 4 GiB"))?;
    for (list, sign) in [(&r.add32, 1i8), (&r.sub32, -1)] {
        for &e in list {
            let o = at(e, 4)?;
            let v = u32_at(d, o).unwrap_or_default();
            let v = if sign > 0 {
                v.wrapping_add(delta32)
            } else {
                v.wrapping_sub(delta32)
            };
            d[o..o + 4].copy_from_slice(&v.to_le_bytes());
        }
    }
    for &e in &r.add64 {
        let o = at(e, 8)?;
        let v = u64_at(d, o).unwrap_or_default().wrapping_add(delta);
        d[o..o + 8].copy_from_slice(&v.to_le_bytes());
    }
    Ok(())
}

/// Where the kernel goes: offsets added to its physical and its virtual
/// link addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// Added to every physical address.
    pub phys: u64,
    /// Added to every kernel virtual address.
    pub virt: u64,
}

/// Chooses 2 MiB-aligned (or `align`ed) offsets at random, as the kernel's
/// decompressor does: physically anywhere the `span` bytes from `base` fit
/// below `top`, virtually anywhere the kernel stays inside its 1 GiB
/// mapping. `random` supplies two random numbers.
fn place(base: u64, span: u64, align: u64, top: u64, random: [u64; 2]) -> Placement {
    let slots = |room: u64| room / align + 1;
    let phys = top
        .checked_sub(base)
        .and_then(|room| room.checked_sub(span))
        .map_or(0, |room| random[0] % slots(room) * align);
    let virt = KERNEL_IMAGE_SIZE
        .checked_sub(base)
        .and_then(|room| room.checked_sub(span))
        .map_or(0, |room| random[1] % slots(room) * align);
    Placement { phys, virt }
}

/// A bzImage unpacked into guest memory.
#[derive(Debug)]
pub struct Unpacked {
    /// The bzImage's setup header, KASLR_FLAG set when it was placed at
    /// random.
    pub hdr: setup_header,
    /// The vmlinux's 64-bit entry point.
    pub entry: GuestAddress,
    /// The end of the memory it spans.
    pub end: u64,
    /// Where it was placed, when at random.
    pub kaslr: Option<Placement>,
    /// Its decompressed size.
    pub decoded: usize,
}

/// What the kernel asked of its placement.
#[derive(Debug, Clone, Copy)]
pub struct Room {
    /// The kernel must end below this (the end of low RAM, the identity map
    /// the vCPUs start with, the initrd).
    pub top: u64,
    /// Place it at random, if the kernel allows (no `nokaslr`).
    pub kaslr: bool,
}

/// What a kernel's setup header and skvm ask of its placement.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    /// The most the compressed kernel may decode to (`init_size`).
    pub init_size: u32,
    /// The kernel may be loaded elsewhere than its link address
    /// (`relocatable_kernel`).
    pub relocatable: bool,
    /// Its physical alignment (`kernel_alignment`; at least 2 MiB is used).
    pub align: u32,
    /// It must end below this.
    pub top: u64,
    /// Two random numbers to place it with, or None for its link address.
    pub random: Option<[u64; 2]>,
}

/// A decompressed kernel, relocated for where it goes.
#[derive(Debug)]
pub struct Image {
    data: Vec<u8>,
    elf: Vmlinux,
    /// Where it goes, when at random.
    pub placement: Option<Placement>,
}

impl Image {
    fn phys(&self) -> u64 {
        self.placement.map_or(0, |p| p.phys)
    }

    /// The guest physical address to enter it at.
    pub fn entry(&self) -> u64 {
        self.elf.entry + self.phys()
    }

    /// The end of the memory it spans.
    pub fn end(&self) -> u64 {
        // decode checked that base + span fits below the top.
        self.elf.base() + self.phys() + self.elf.span().unwrap_or(0)
    }

    /// Its decompressed size.
    pub fn decoded(&self) -> usize {
        self.data.len()
    }

    /// Each segment's bytes and the guest physical address they go to.
    pub fn segments(&self) -> impl Iterator<Item = (u64, &[u8])> {
        let phys = self.phys();
        self.elf
            .segments
            .iter()
            .map(move |s| (s.paddr + phys, &self.data[s.offset..s.offset + s.filesz]))
    }
}

/// Decompresses a bzImage's payload and relocates its vmlinux for where
/// `layout` lets it go. Pure: `unpack` reads the file and writes guest
/// memory; the fuzz target `kernel_image` calls this with hostile input.
pub fn decode(payload: &[u8], layout: &Layout) -> Result<Image, UnpackError> {
    let mut data = decompress(payload, layout.init_size)?;
    let elf = parse_elf(&data)?;
    let relocs = relocs(&data, elf.end)?;
    let base = elf.base();
    let span = elf
        .span()
        .ok_or_else(|| corrupt("its kernel spans too much"))?;
    if base.checked_add(span).is_none_or(|end| end > layout.top) {
        return Err(UnpackError::Unsupported(format!(
            "it needs RAM up to {:#x}, below {:#x}",
            base.saturating_add(span),
            layout.top
        )));
    }
    // Only a relocatable kernel with a relocation table may move, and only
    // by whole alignments (at least 2 MiB, the kernel's page size).
    let align = u64::from(layout.align).max(MIN_ALIGN);
    let placement = match (&relocs, layout.random) {
        (Some(r), Some(random)) if layout.relocatable && align.is_power_of_two() => {
            let p = place(base, span, align, layout.top, random);
            relocate(&mut data, &elf, r, p.virt)?;
            Some(p)
        }
        _ => None,
    };
    Ok(Image {
        data,
        elf,
        placement,
    })
}

/// Decompresses the bzImage `file` with header `hdr` and writes its
/// vmlinux into `mem`.
pub fn unpack(
    mem: &GuestMemoryMmap,
    file: &File,
    mut hdr: setup_header,
    room: Room,
) -> Result<Unpacked, UnpackError> {
    let layout = Layout {
        init_size: hdr.init_size,
        relocatable: hdr.relocatable_kernel != 0,
        align: hdr.kernel_alignment,
        top: room.top,
        random: if room.kaslr {
            Some(random_pair()?)
        } else {
            None
        },
    };
    let image = decode(&payload(file, &hdr)?, &layout)?;
    for (at, bytes) in image.segments() {
        mem.write_slice(bytes, GuestAddress(at))
            .map_err(|_| corrupt("a segment does not fit in guest memory"))?;
    }
    if image.placement.is_some() {
        hdr.loadflags |= KASLR_FLAG;
    }
    Ok(Unpacked {
        hdr,
        entry: GuestAddress(image.entry()),
        end: image.end(),
        kaslr: image.placement,
        decoded: image.decoded(),
    })
}

/// Two random numbers from the host's kernel.
fn random_pair() -> Result<[u64; 2], UnpackError> {
    let mut buf = [0u8; 16];
    // SAFETY: getrandom writes at most buf.len() bytes into buf.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if usize::try_from(n).ok() != Some(buf.len()) {
        return Err(UnpackError::Io(std::io::Error::last_os_error()));
    }
    let (a, b) = buf.split_at(8);
    Ok([
        u64::from_le_bytes(a.try_into().unwrap_or_default()),
        u64::from_le_bytes(b.try_into().unwrap_or_default()),
    ])
}

/// Whether the command line turns KASLR off (the kernel's decompressor
/// looks for the word anywhere in it).
pub fn nokaslr(cmdline: &str) -> bool {
    cmdline.split_whitespace().any(|w| w == "nokaslr")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small x86-64 ELF with one 2 MiB-aligned segment at `paddr` holding
    /// `body`, followed by `tail`.
    fn elf(paddr: u64, body: &[u8], memsz: u64, tail: &[u8]) -> Vec<u8> {
        let mut d = vec![0u8; 64 + 56];
        d[..6].copy_from_slice(b"\x7fELF\x02\x01");
        d[16..18].copy_from_slice(&ET_EXEC.to_le_bytes());
        d[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
        d[24..32].copy_from_slice(&paddr.to_le_bytes());
        d[32..40].copy_from_slice(&64u64.to_le_bytes());
        d[54..56].copy_from_slice(&56u16.to_le_bytes());
        d[56..58].copy_from_slice(&1u16.to_le_bytes());
        let p = 64;
        d[p..p + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
        d[p + 8..p + 16].copy_from_slice(&120u64.to_le_bytes());
        d[p + 24..p + 32].copy_from_slice(&paddr.to_le_bytes());
        d[p + 32..p + 40].copy_from_slice(&(body.len() as u64).to_le_bytes());
        d[p + 40..p + 48].copy_from_slice(&memsz.to_le_bytes());
        d[p + 48..p + 56].copy_from_slice(&MIN_ALIGN.to_le_bytes());
        d.extend_from_slice(body);
        d.extend_from_slice(tail);
        d
    }

    fn words(w: &[u32]) -> Vec<u8> {
        w.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    const BASE: u64 = 0x100_0000;

    /// A relocation entry: a kernel address's low 32 bits.
    fn low32(va: u64) -> u32 {
        u32::try_from(va & 0xffff_ffff).unwrap()
    }

    #[test]
    fn a_kernel_without_a_table_has_no_relocations() {
        let d = elf(BASE, &[0x90; 32], 4 << 20, &[]);
        let e = parse_elf(&d).unwrap();
        assert_eq!(e.end, d.len());
        assert_eq!(e.span(), Some(4 << 20));
        assert_eq!(relocs(&d, e.end).unwrap(), None);
        // Three empty lists are no table either.
        let d = elf(BASE, &[0x90; 32], 4 << 20, &words(&[0, 0, 0]));
        assert_eq!(relocs(&d, parse_elf(&d).unwrap().end).unwrap(), None);
    }

    #[test]
    fn relocations_move_each_kind_of_location_by_the_virtual_offset() {
        // Locations: a u64 at +0, a u32 at +8, an inverse u32 at +12.
        let va = |off: u64| low32(START_KERNEL_MAP + BASE + off);
        let mut body = vec![0u8; 16];
        body[..8].copy_from_slice(&0xffff_ffff_8100_0040u64.to_le_bytes());
        body[8..12].copy_from_slice(&0x8100_0080u32.to_le_bytes());
        body[12..16].copy_from_slice(&0x100u32.to_le_bytes());
        // Written forwards: 64-bit list's terminator, its entries, the
        // inverse list's terminator, ..., the 32-bit list last.
        let tail = words(&[0, va(0), 0, va(12), 0, va(8)]);
        let mut d = elf(BASE, &body, 2 << 20, &tail);
        let e = parse_elf(&d).unwrap();
        let r = relocs(&d, e.end).unwrap().unwrap();
        assert_eq!(r.add32, vec![va(8)]);
        assert_eq!(r.sub32, vec![va(12)]);
        assert_eq!(r.add64, vec![va(0)]);
        let delta = 6 << 20;
        relocate(&mut d, &e, &r, delta).unwrap();
        let b = &d[120..136];
        assert_eq!(u64_at(b, 0), Some(0xffff_ffff_8160_0040));
        assert_eq!(u32_at(b, 8), Some(0x8160_0080));
        assert_eq!(u32_at(b, 12), Some(0x100u32.wrapping_sub(6 << 20)));
    }

    #[test]
    fn a_relocation_outside_the_kernel_or_a_broken_table_is_refused() {
        let outside = low32(START_KERNEL_MAP + BASE + 4096);
        let mut d = elf(BASE, &[0; 16], 2 << 20, &words(&[0, outside, 0, 0]));
        let e = parse_elf(&d).unwrap();
        let r = relocs(&d, e.end).unwrap().unwrap();
        assert!(relocate(&mut d, &e, &r, 2 << 20).is_err());
        // A u64 that would run past the segment's bytes.
        let edge = low32(START_KERNEL_MAP + BASE + 12);
        let mut d = elf(BASE, &[0; 16], 2 << 20, &words(&[0, edge, 0, 0]));
        let e = parse_elf(&d).unwrap();
        let r = relocs(&d, e.end).unwrap().unwrap();
        assert!(relocate(&mut d, &e, &r, 2 << 20).is_err());
        // No terminators, stray words, a tail not of whole words.
        for tail in [words(&[5, 6]), words(&[7, 0, 0, 0, 0]), vec![1, 2, 3]] {
            let d = elf(BASE, &[0; 16], 2 << 20, &tail);
            assert!(relocs(&d, parse_elf(&d).unwrap().end).is_err(), "{tail:?}");
        }
    }

    #[test]
    fn bad_elf_headers_are_refused() {
        let good = elf(BASE, &[0; 16], 2 << 20, &[]);
        assert!(parse_elf(&good).is_ok());
        let mut cases = Vec::new();
        let mut c = good.clone();
        c[18] = 3; // i386
        cases.push(c);
        let mut c = good.clone();
        c[64 + 32..64 + 40].copy_from_slice(&u64::MAX.to_le_bytes()); // filesz
        cases.push(c);
        let mut c = good.clone();
        c[64 + 24..64 + 32].copy_from_slice(&(BASE + 4096).to_le_bytes()); // unaligned
        cases.push(c);
        let mut c = good.clone();
        c[56..58].copy_from_slice(&1000u16.to_le_bytes()); // phnum
        cases.push(c);
        let mut c = good.clone();
        c[24..32].copy_from_slice(&0u64.to_le_bytes()); // entry outside
        cases.push(c);
        cases.push(good[..100].to_vec());
        for (i, c) in cases.iter().enumerate() {
            assert!(parse_elf(c).is_err(), "case {i}");
        }
        // Every truncation is an error, never a panic.
        for n in 0..good.len() {
            let _ = parse_elf(&good[..n]);
        }
    }

    #[test]
    fn placement_stays_aligned_inside_ram_and_the_kernel_mapping() {
        let span = 48 << 20;
        let top = 512 << 20;
        for r in [0, 1, 7, 12345, u64::MAX] {
            let p = place(BASE, span, MIN_ALIGN, top, [r, r.wrapping_mul(31)]);
            assert_eq!(p.phys % MIN_ALIGN, 0);
            assert_eq!(p.virt % MIN_ALIGN, 0);
            assert!(BASE + p.phys + span <= top, "{p:?}");
            assert!(BASE + p.virt + span <= KERNEL_IMAGE_SIZE, "{p:?}");
        }
        // The last slot is reachable; with no room the kernel stays put.
        let last = (top - BASE - span) / MIN_ALIGN;
        assert_eq!(
            place(BASE, span, MIN_ALIGN, top, [last, 0]).phys,
            last * MIN_ALIGN
        );
        assert_eq!(place(BASE, span, MIN_ALIGN, BASE + span, [9, 0]).phys, 0);
        assert_eq!(place(BASE, span, MIN_ALIGN, BASE, [9, 0]).phys, 0);
    }

    #[test]
    fn the_compression_is_named_and_only_lz4_is_decoded() {
        assert_eq!(compression_of(&[0x1f, 0x8b, 8, 0]), "gzip");
        assert_eq!(compression_of(&[0x28, 0xb5, 0x2f, 0xfd]), "zstd");
        assert_eq!(compression_of(b"nope"), "unknown");
        let e = decompress(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0], 100).unwrap_err();
        assert!(matches!(e, UnpackError::Unsupported(_)), "{e}");
        // A trailer that claims more than init_size.
        let mut p = lz4::LEGACY_MAGIC.to_le_bytes().to_vec();
        p.extend_from_slice(&[2, 0, 0, 0, 0x10, b'a']);
        p.extend_from_slice(&1000u32.to_le_bytes());
        assert!(matches!(decompress(&p, 999), Err(UnpackError::Corrupt(_))));
        // A trailer that disagrees with what the frame decodes to.
        assert!(matches!(decompress(&p, 1000), Err(UnpackError::Corrupt(_))));
        let n = p.len();
        p[n - 4..].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(decompress(&p, 1000).unwrap(), b"a");
    }

    #[test]
    fn a_payload_decodes_to_a_kernel_placed_at_random_and_relocated() {
        let va = |off: u64| low32(START_KERNEL_MAP + BASE + off);
        let mut body = vec![0u8; 64];
        body[8..16].copy_from_slice(&(START_KERNEL_MAP + BASE + 32).to_le_bytes());
        let kernel = elf(BASE, &body, 6 << 20, &words(&[0, va(8), 0, 0]));
        let payload = lz4::stored_payload(&kernel);
        let layout = Layout {
            init_size: 8 << 20,
            relocatable: true,
            align: 0,
            top: 256 << 20,
            random: Some([3, 5]),
        };
        let image = decode(&payload, &layout).unwrap();
        let p = image.placement.unwrap();
        assert_eq!(
            p,
            Placement {
                phys: 3 * MIN_ALIGN,
                virt: 5 * MIN_ALIGN
            }
        );
        assert_eq!(image.entry(), BASE + p.phys);
        assert_eq!(image.end(), BASE + p.phys + (6 << 20));
        let segs: Vec<(u64, &[u8])> = image.segments().collect();
        assert_eq!(segs.len(), 1);
        assert_eq!(segs[0].0, BASE + p.phys);
        assert_eq!(
            u64_at(segs[0].1, 8),
            Some(START_KERNEL_MAP + BASE + 32 + p.virt)
        );
        // Not relocatable, or no randomness (nokaslr): where it was linked,
        // unrelocated.
        for layout in [
            Layout {
                relocatable: false,
                ..layout
            },
            Layout {
                random: None,
                ..layout
            },
        ] {
            let image = decode(&payload, &layout).unwrap();
            assert_eq!(image.placement, None);
            assert_eq!(image.entry(), BASE);
            let (_, bytes) = image.segments().next().unwrap();
            assert_eq!(u64_at(bytes, 8), Some(START_KERNEL_MAP + BASE + 32));
        }
        // RAM that ends below the kernel: left to the guest.
        let small = Layout {
            top: BASE + (4 << 20),
            ..layout
        };
        assert!(matches!(
            decode(&payload, &small),
            Err(UnpackError::Unsupported(_))
        ));
    }

    #[test]
    fn nokaslr_is_a_whole_word() {
        assert!(nokaslr("console=ttyS0 nokaslr quiet"));
        assert!(!nokaslr("console=ttyS0 nokaslrx"));
        assert!(!nokaslr(""));
    }
}
