//! Guest RAM in a snapshot: one file per memory region, as long as the
//! region, holding only the pages that hold data. Pages the guest never
//! touched (holes in the region's memfd) and pages of zeros are holes in
//! the file, so a 4 GiB guest that used 200 MiB writes about 200 MiB, and
//! restoring it populates only those pages of the new memfd.
//!
//! Neither side maps guest memory: the memfd is read and written with
//! pread/pwrite, and its populated ranges come from lseek(SEEK_DATA /
//! SEEK_HOLE), which shmem answers without populating anything.

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

/// Copies the pages of `src[0..size]` that hold data to the same offsets
/// of `dst`, skipping holes and pages of zeros; `dst` is then exactly
/// `size` bytes long (its tail a hole if need be). Returns the bytes
/// written.
fn copy_sparse(src: &File, dst: &File, size: u64) -> io::Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut written = 0u64;
    let mut at = 0u64;
    while let Some((start, stop)) = next_data(src, at, size)? {
        // Whole pages: SEEK_DATA/SEEK_HOLE work in pages (or blocks).
        let mut off = start - start % PAGE as u64;
        while off < stop {
            let n = usize::try_from((stop - off).min(CHUNK as u64)).unwrap_or(CHUNK);
            let n = n.div_ceil(PAGE) * PAGE;
            let n = n.min(usize::try_from(size - off).unwrap_or(n));
            let chunk = &mut buf[..n];
            src.read_exact_at(chunk, off)?;
            for (i, page) in chunk.chunks(PAGE).enumerate() {
                if page.iter().any(|&b| b != 0) {
                    dst.write_all_at(page, off + (i * PAGE) as u64)?;
                    written += page.len() as u64;
                }
            }
            off += n as u64;
        }
        at = stop.max(off);
    }
    dst.set_len(size)?;
    Ok(written)
}

/// Writes guest memory region `memfd` (`size` bytes) to `out`, an empty
/// file. Returns the bytes of data written.
pub fn save_region(memfd: &File, size: u64, out: &File) -> io::Result<u64> {
    copy_sparse(memfd, out, size)
}

/// Fills `memfd` (a new, empty region of `size` bytes) from `file`, which
/// must be exactly `size` bytes long. Returns the bytes of data read.
pub fn restore_region(file: &File, memfd: &File, size: u64) -> io::Result<u64> {
    let len = file.metadata()?.len();
    if len != size {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("memory file is {len} bytes, the region {size}"),
        ));
    }
    copy_sparse(file, memfd, size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn memfd(size: u64) -> File {
        crate::memory::create_memfd(size, None).expect("memfd")
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
        let written = save_region(&ram, size, &file).unwrap();
        assert_eq!(written, 5 * PAGE as u64);
        let meta = file.metadata().unwrap();
        assert_eq!(meta.len(), size);
        // Sparse on disk: a few pages' blocks, not 64 MiB.
        assert!(meta.blocks() * 512 < 1 << 20, "{} blocks", meta.blocks());

        let back = memfd(size);
        assert_eq!(restore_region(&file, &back, size).unwrap(), written);
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
    fn a_memory_file_of_the_wrong_size_is_refused() {
        let file = scratch();
        file.set_len(4 << 20).unwrap();
        let err = restore_region(&file, &memfd(8 << 20), 8 << 20).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("4194304 bytes"), "{err}");
    }

    #[test]
    fn an_untouched_region_writes_nothing() {
        let size = 16 << 20;
        let file = scratch();
        assert_eq!(save_region(&memfd(size), size, &file).unwrap(), 0);
        assert_eq!(file.metadata().unwrap().len(), size);
    }
}
