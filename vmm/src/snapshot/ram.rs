//! Guest RAM in a snapshot: one file holding every memory region (boot RAM,
//! then each region mem-add added) one after the other, each as long as
//! the region, with only the pages that hold data. Pages the guest never
//! touched (holes in the region's memfd) and pages of zeros are holes in
//! the file, so a 4 GiB guest that used 200 MiB writes about 200 MiB, and
//! restoring it populates only those pages of the new memfds.
//!
//! Neither side maps guest memory: the memfd is read and written with
//! pread/pwrite, and its populated ranges come from lseek(SEEK_DATA /
//! SEEK_HOLE), which shmem answers without populating anything.

use std::borrow::Borrow;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

/// Guest page size, the unit of zero detection.
pub const PAGE: usize = 4096;
/// Bytes copied per read.
const CHUNK: usize = 1 << 20;

/// The next range of data in `f` at or after `from`, before `end`: (start,
/// end), or None if only holes are left.
fn next_data(f: &File, from: u64, end: u64) -> io::Result<Option<(u64, u64)>> {
    if from >= end {
        return Ok(None);
    }
    let seek = |off: u64, whence| -> io::Result<Option<u64>> {
        let off = i64::try_from(off).map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))?;
        // SAFETY: lseek on a descriptor this function borrows; no memory
        // is passed.
        let r = unsafe { libc::lseek(f.as_raw_fd(), off, whence) };
        if r < 0 {
            let e = io::Error::last_os_error();
            // ENXIO: no data (or hole) at or after `off`.
            return if e.raw_os_error() == Some(libc::ENXIO) {
                Ok(None)
            } else {
                Err(e)
            };
        }
        Ok(u64::try_from(r).ok())
    };
    let Some(start) = seek(from, libc::SEEK_DATA)?.filter(|s| *s < end) else {
        return Ok(None);
    };
    let stop = seek(start, libc::SEEK_HOLE)?.unwrap_or(end).min(end);
    Ok(Some((start, stop)))
}

/// Copies the pages of `src[from..from + size]` that hold data through
/// `write(page, offset)`, the offset relative to `from`, skipping holes and
/// pages of zeros. Returns the bytes written.
fn copy_sparse(
    src: &File,
    from: u64,
    size: u64,
    write: &mut dyn FnMut(&[u8], u64) -> io::Result<()>,
) -> io::Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut written = 0u64;
    let end = from + size;
    let mut at = from;
    while let Some((start, stop)) = next_data(src, at, end)? {
        // Whole pages: SEEK_DATA/SEEK_HOLE work in pages (or blocks).
        let mut off = from + (start - from) / PAGE as u64 * PAGE as u64;
        while off < stop {
            let n = usize::try_from((stop - off).min(CHUNK as u64)).unwrap_or(CHUNK);
            let n = n.div_ceil(PAGE) * PAGE;
            let n = n.min(usize::try_from(end - off).unwrap_or(n));
            let chunk = &mut buf[..n];
            src.read_exact_at(chunk, off)?;
            for (i, page) in chunk.chunks(PAGE).enumerate() {
                if page.iter().any(|&b| b != 0) {
                    write(page, (off - from) + (i * PAGE) as u64)?;
                    written += page.len() as u64;
                }
            }
            off += n as u64;
        }
        at = stop.max(off);
    }
    Ok(written)
}

/// Writes guest memory `regions` (each memfd with its size), one after
/// the other, to `out`, an empty file, which ends up as long as all of
/// them. Returns the bytes of data written.
pub fn save_regions<F: Borrow<File>>(regions: &[(F, u64)], out: &File) -> io::Result<u64> {
    let mut written = 0;
    let mut at = 0;
    for (memfd, size) in regions {
        written += copy_sparse(memfd.borrow(), 0, *size, &mut |page, rel| {
            out.write_all_at(page, at + rel)
        })?;
        at += size;
    }
    out.set_len(at)?;
    Ok(written)
}

/// Fills `regions` (new, empty memfds with their sizes) from `file`, laid
/// out as [`save_regions`] writes it; `file` must be exactly as long as
/// all of them. Returns the bytes of data read.
pub fn restore_regions<F: Borrow<File>>(file: &File, regions: &[(F, u64)]) -> io::Result<u64> {
    restore_regions_with(file, regions, |memfd, offset, page| {
        memfd.write_all_at(page, offset)
    })
}

/// [`restore_regions`] writing each page with `write(memfd, offset,
/// page)`: through a mapping, for memfds that take no write(2) (huge
/// pages).
pub fn restore_regions_with<F: Borrow<File>>(
    file: &File,
    regions: &[(F, u64)],
    mut write: impl FnMut(&File, u64, &[u8]) -> io::Result<()>,
) -> io::Result<u64> {
    let total: u64 = regions.iter().map(|(_, s)| s).sum();
    let len = file.metadata()?.len();
    if len != total {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the memory file is {len} bytes, guest memory {total}"),
        ));
    }
    let mut read = 0;
    let mut at = 0;
    for (memfd, size) in regions {
        let memfd = memfd.borrow();
        read += copy_sparse(file, at, *size, &mut |page, rel| write(memfd, rel, page))?;
        at += size;
    }
    Ok(read)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn memfd(size: u64) -> File {
        crate::memory::create_memfd(size, None, false).expect("memfd")
    }

    /// An unnamed file in the temp directory (O_TMPFILE: nothing to
    /// clean up).
    fn scratch() -> File {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_TMPFILE)
            .open(std::env::temp_dir())
            .expect("O_TMPFILE in the temp directory")
    }

    #[test]
    fn only_pages_with_data_are_written_and_they_come_back_in_place() {
        let size = 64 << 20;
        let ram = memfd(size);
        // Data in three places, a touched page of zeros, untouched rest.
        ram.write_all_at(b"first page", 0).unwrap();
        ram.write_all_at(&[0xab; 3 * PAGE], 5 << 20).unwrap();
        ram.write_all_at(&[0u8; PAGE], 9 << 20).unwrap();
        ram.write_all_at(b"last", size - 4).unwrap();
        let file = scratch();
        let written = save_regions(&[(&ram, size)], &file).unwrap();
        assert_eq!(written, 5 * PAGE as u64);
        let meta = file.metadata().unwrap();
        assert_eq!(meta.len(), size);
        // Sparse on disk: a few pages' blocks, not 64 MiB.
        assert!(meta.blocks() * 512 < 1 << 20, "{} blocks", meta.blocks());

        let back = memfd(size);
        assert_eq!(restore_regions(&file, &[(&back, size)]).unwrap(), written);
        let mut page = vec![0u8; PAGE];
        back.read_exact_at(&mut page, 0).unwrap();
        assert_eq!(&page[..10], b"first page");
        assert!(page[10..].iter().all(|&b| b == 0));
        back.read_exact_at(&mut page, (5 << 20) + 2 * PAGE as u64)
            .unwrap();
        assert!(page.iter().all(|&b| b == 0xab));
        let mut tail = [0u8; 4];
        back.read_exact_at(&mut tail, size - 4).unwrap();
        assert_eq!(&tail, b"last");
        // The restored region holds only the data pages too.
        assert!(back.metadata().unwrap().blocks() * 512 < 1 << 20);
    }

    #[test]
    fn regions_follow_each_other_in_the_file_and_come_back_to_their_own_memfds() {
        let (a, b) = (memfd(8 << 20), memfd(4 << 20));
        a.write_all_at(b"boot ram", 4096).unwrap();
        b.write_all_at(b"hotplugged", 8192).unwrap();
        let file = scratch();
        save_regions(&[(&a, 8 << 20), (&b, 4 << 20)], &file).unwrap();
        assert_eq!(file.metadata().unwrap().len(), 12 << 20);
        let mut got = [0u8; 10];
        file.read_exact_at(&mut got, (8 << 20) + 8192).unwrap();
        assert_eq!(&got, b"hotplugged");
        let (a2, b2) = (memfd(8 << 20), memfd(4 << 20));
        restore_regions(&file, &[(&a2, 8 << 20), (&b2, 4 << 20)]).unwrap();
        b2.read_exact_at(&mut got, 8192).unwrap();
        assert_eq!(&got, b"hotplugged");
        let mut boot = [0u8; 8];
        a2.read_exact_at(&mut boot, 4096).unwrap();
        assert_eq!(&boot, b"boot ram");
        b2.read_exact_at(&mut boot, 4096).unwrap();
        assert_eq!(boot, [0; 8]);
    }

    #[test]
    fn a_memory_file_of_the_wrong_size_is_refused() {
        let file = scratch();
        file.set_len(4 << 20).unwrap();
        let err = restore_regions(&file, &[(&memfd(8 << 20), 8 << 20)]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("4194304 bytes"), "{err}");
    }

    #[test]
    fn an_untouched_region_writes_nothing() {
        let size = 16 << 20;
        let file = scratch();
        assert_eq!(save_regions(&[(&memfd(size), size)], &file).unwrap(), 0);
        assert_eq!(file.metadata().unwrap().len(), size);
    }
}
