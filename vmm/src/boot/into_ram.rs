//! Reads a boot image into guest RAM through the kernel: the file's pages go
//! through a pipe into the RAM's memfd (splice), not through skvm's mapping
//! of it. Every fresh page written through the mapping costs a page fault
//! besides its allocation and copy. On this nested kvm_pvm host a 17.6 MiB
//! file took 8.5 ms read through a mapping and 5.0 ms spliced (median of 10);
//! in `skvm run` the loader's CPU time fell from 9.8 to 7.0 ms (median of 12,
//! runs interleaved). Loading the boot images is most of the time from exec
//! to the first KVM_RUN (scripts/bench-boot.sh).
//!
//! Anything that is not a whole piece of one memfd-backed region (the ELF and
//! bzImage headers the loader reads into its own buffers) is read as usual.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use vm_memory::bitmap::BitmapSlice;
use vm_memory::{
    GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, ReadVolatile, VolatileMemoryError,
    VolatileSlice,
};

/// What one splice moves at most: the pipe's size, asked for and not
/// always granted (an unprivileged process may not pass
/// /proc/sys/fs/pipe-max-size, 1 MiB by default).
const CHUNK: usize = 1 << 20;
/// [`CHUNK`] as fcntl takes it.
const CHUNK_C: libc::c_int = 1 << 20;

/// A file that reads into guest RAM by splicing (see the module).
pub struct IntoRam<'a> {
    file: &'a mut File,
    mem: &'a GuestMemoryMmap,
    /// The pipe's read and write ends; None when it could not be made or a
    /// splice into RAM failed once (plain reads from then on).
    pipe: Option<(OwnedFd, OwnedFd)>,
}

impl<'a> IntoRam<'a> {
    pub fn new(file: &'a mut File, mem: &'a GuestMemoryMmap) -> Self {
        IntoRam {
            file,
            mem,
            pipe: make_pipe(),
        }
    }

    /// The memfd and its offset that back the host range [ptr, ptr + len),
    /// when one region holds all of it and its memfd takes a splice (a
    /// huge-page one does not: it is read into through the mapping).
    fn backing(&self, ptr: usize, len: usize) -> Option<(RawFd, u64)> {
        self.mem.iter().find_map(|region| {
            if region.is_hugetlbfs() == Some(true) {
                return None;
            }
            let base = region.as_ptr() as usize;
            let size = usize::try_from(region.len()).ok()?;
            let inside = ptr >= base && ptr.checked_add(len)? <= base.checked_add(size)?;
            let offset = region.file_offset().filter(|_| inside)?;
            Some((
                offset.file().as_raw_fd(),
                offset.start() + u64::try_from(ptr - base).ok()?,
            ))
        })
    }

    /// Moves up to `len` bytes from the file's position to `fd` at `at`;
    /// how many. An error after the file's bytes entered the pipe is
    /// returned as is: the pipe is then dropped (its contents with it) and
    /// the caller's read fails, as a short device read would.
    fn splice(&mut self, fd: RawFd, at: u64, len: usize) -> std::io::Result<usize> {
        let Some((rd, wr)) = self.pipe.as_ref() else {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        };
        // SAFETY: both fds are open; a null input offset means the file's
        // own position, which the kernel advances.
        let taken = unsafe {
            libc::splice(
                self.file.as_raw_fd(),
                std::ptr::null_mut(),
                wr.as_raw_fd(),
                std::ptr::null_mut(),
                len.min(CHUNK),
                0,
            )
        };
        let taken = usize::try_from(taken).map_err(|_| std::io::Error::last_os_error())?;
        let mut out = i64::try_from(at).map_err(|_| std::io::Error::other("offset"))?;
        let mut moved = 0;
        while moved < taken {
            // SAFETY: as above; `out` is a valid offset the kernel advances.
            let n = unsafe {
                libc::splice(
                    rd.as_raw_fd(),
                    std::ptr::null_mut(),
                    fd,
                    &mut out,
                    taken - moved,
                    0,
                )
            };
            match usize::try_from(n) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => moved += n,
                Err(_) => {
                    let e = std::io::Error::last_os_error();
                    // The pipe holds bytes the file no longer will give:
                    // splicing stops here for good.
                    self.pipe = None;
                    return Err(e);
                }
            }
        }
        Ok(taken)
    }
}

/// A pipe of [`CHUNK`] bytes if the host allows, else of its default size.
fn make_pipe() -> Option<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return None;
    }
    // SAFETY: pipe2 returned two fresh descriptors that nothing else owns.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: F_SETPIPE_SZ on a pipe; a refusal leaves the default size.
    unsafe { libc::fcntl(wr.as_raw_fd(), libc::F_SETPIPE_SZ, CHUNK_C) };
    Some((rd, wr))
}

impl ReadVolatile for IntoRam<'_> {
    fn read_volatile<B: BitmapSlice>(
        &mut self,
        buf: &mut VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        let len = buf.len();
        let target = self.backing(buf.ptr_guard_mut().as_ptr() as usize, len);
        if let (Some((fd, at)), true) = (target, self.pipe.is_some()) {
            // Whole, as a read of a regular file is: vm-memory takes a short
            // read for the file's end.
            let mut done = 0;
            while done < len {
                match self.splice(fd, at + done as u64, len - done) {
                    Ok(0) => break,
                    Ok(n) => done += n,
                    Err(e) if done == 0 => return Err(VolatileMemoryError::IOError(e)),
                    Err(_) => break,
                }
            }
            buf.bitmap().mark_dirty(0, done);
            return Ok(done);
        }
        self.file.read_volatile(buf)
    }
}

impl Read for IntoRam<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.file.read(buf)
    }
}

impl Seek for IntoRam<'_> {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        self.file.seek(pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{create_memfd, map_ranges, RamRange};
    use std::io::Write;
    use std::sync::Arc;
    use vm_memory::{Bytes, GuestAddress};

    /// A file of `len` bytes on the disk (as a kernel is), removed at once.
    fn image(len: usize) -> File {
        let path = std::env::temp_dir().join(format!("skvm-into-ram-{}-{len}", std::process::id()));
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .expect("temp file");
        std::fs::remove_file(&path).expect("remove temp file");
        let bytes: Vec<u8> = (0..len)
            .map(|i| (i * 7 + i / 4096).to_le_bytes()[0])
            .collect();
        f.write_all(&bytes).expect("write");
        f.seek(SeekFrom::Start(0)).expect("seek");
        f
    }

    fn ram(size: u64) -> GuestMemoryMmap {
        let range = RamRange {
            guest_addr: 0,
            size,
            file_offset: 0,
        };
        let file = Arc::new(create_memfd(size, None, false).expect("memfd"));
        map_ranges(&[(range, file)]).expect("map")
    }

    #[test]
    fn a_file_spliced_into_ram_reads_back_the_same_at_any_offset_and_length() {
        let mem = ram(8 << 20);
        // More than one pipe's worth, at an offset that is not page aligned,
        // from a file position that is not either.
        let len = (3 << 20) + 123;
        let mut file = image(len + 77);
        let mut into = IntoRam::new(&mut file, &mem);
        into.seek(SeekFrom::Start(77)).expect("seek");
        mem.read_exact_volatile_from(GuestAddress(0x1234), &mut into, len)
            .expect("read into RAM");
        assert!(into.pipe.is_some(), "the pipe is kept after whole splices");
        assert_eq!(file.stream_position().expect("position"), (len + 77) as u64);
        let mut want = vec![0u8; len];
        file.seek(SeekFrom::Start(77)).expect("seek");
        file.read_exact(&mut want).expect("read");
        let mut got = vec![0u8; len];
        mem.read_slice(&mut got, GuestAddress(0x1234))
            .expect("read back");
        assert!(got == want, "RAM holds the file's bytes");
        let mut around = [0u8; 2];
        mem.read_slice(&mut around[..1], GuestAddress(0x1233))
            .expect("before");
        mem.read_slice(&mut around[1..], GuestAddress(0x1234 + len as u64))
            .expect("after");
        assert_eq!(around, [0, 0], "nothing around it is written");
    }

    #[test]
    fn buffers_outside_guest_ram_and_a_short_file_read_as_usual() {
        let mem = ram(1 << 20);
        let mut file = image(100);
        let mut into = IntoRam::new(&mut file, &mem);
        let mut head = [0u8; 10];
        into.read_exact(&mut head).expect("header");
        assert_eq!(head[1], 7);
        let mut local = [0u8; 10];
        let n = into
            .read_volatile(&mut VolatileSlice::from(&mut local[..]))
            .expect("local buffer");
        assert_eq!((n, local[0]), (10, 70));
        let err = mem.read_exact_volatile_from(GuestAddress(0), &mut into, 200);
        assert!(err.is_err(), "a file shorter than asked is an error");
    }
}
