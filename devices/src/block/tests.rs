//! The block request protocol's unit tests.

use super::*;
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::GuestAddress;

use crate::test_queue::{raw_chains, used, D, NEXT, WRITE};

const MEM_SIZE: usize = 0x40_0000;
/// Request headers, one per 64 bytes.
const HDR: u64 = 0x10_0000;
/// Status bytes, one per 16 bytes.
const STATUS: u64 = 0x18_0000;
/// Data buffers.
const DATA: u64 = 0x20_0000;
const DISK_SECTORS: u64 = 64;

fn mem() -> GuestMemory {
    GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

/// An image in a memfd, filled with `fill`.
fn image(fill: u8) -> File {
    // SAFETY: memfd_create with a valid C string returns a new fd.
    let fd = unsafe { libc::memfd_create(c"skvm-blk-test".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: the fd is new and owned by nothing else.
    let mut f = unsafe { File::from_raw_fd(fd) };
    f.write_all(&vec![fill; usize::try_from(DISK_SECTORS * SECTOR).unwrap()])
        .unwrap();
    f
}

fn contents(f: &File) -> Vec<u8> {
    let mut f = f.try_clone().unwrap();
    let mut v = Vec::new();
    use std::io::Seek;
    f.seek(SeekFrom::Start(0)).unwrap();
    f.read_to_end(&mut v).unwrap();
    v
}

use std::io::SeekFrom;

fn device(read_only: bool) -> Block {
    let mut b = Block::new(
        image(0xaa),
        DiskParams {
            sectors: DISK_SECTORS,
            read_only,
            direct: false,
            serial: b"serial-7".to_vec(),
        },
    );
    b.activate(b.features()).unwrap();
    b
}

/// Queues `chains` and runs the device; returns the used entries as
/// (id, len).
fn run(b: &mut Block, m: &GuestMemory, chains: &[Vec<D>]) -> Vec<(u32, u32)> {
    let vq = MockSplitQueue::new(m, 64);
    vq.add_desc_chains(&raw_chains(chains, 0), 0).unwrap();
    let mut q: Queue = vq.create_queue().unwrap();
    b.process_queue(0, &mut q, m).unwrap();
    used(&vq)
}

/// Writes request header `n` and returns its address.
fn header(m: &GuestMemory, n: u64, kind: u32, sector: u64) -> u64 {
    let at = HDR + n * 64;
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&kind.to_le_bytes());
    h[8..].copy_from_slice(&sector.to_le_bytes());
    m.write_slice(&h, GuestAddress(at)).unwrap();
    at
}

fn status(m: &GuestMemory, n: u64) -> u8 {
    m.read_obj(GuestAddress(STATUS + n * 16)).unwrap()
}

fn st(n: u64) -> D {
    (STATUS + n * 16, 1, true)
}

/// A plain request: header, one data buffer, status.
fn req(m: &GuestMemory, n: u64, kind: u32, sector: u64, data: u32, write: bool) -> Vec<D> {
    // Poison the status so that a missing write shows.
    m.write_obj(0xffu8, GuestAddress(STATUS + n * 16)).unwrap();
    let h = header(m, n, kind, sector);
    vec![(h, 16, false), (DATA + n * 0x1_0000, data, write), st(n)]
}

#[test]
fn written_sectors_read_back() {
    let m = mem();
    let mut b = device(false);
    m.write_slice(&[0x5a; 1024], GuestAddress(DATA)).unwrap();
    let w = req(&m, 0, VIRTIO_BLK_T_OUT, 3, 1024, false);
    let r = req(&m, 1, VIRTIO_BLK_T_IN, 3, 1024, true);
    let used = run(&mut b, &m, &[w, r]);
    assert_eq!(used, vec![(0, 1), (3, 1025)]);
    assert_eq!((status(&m, 0), status(&m, 1)), (0, 0));
    let mut back = [0u8; 1024];
    m.read_slice(&mut back, GuestAddress(DATA + 0x1_0000))
        .unwrap();
    assert_eq!(back, [0x5a; 1024]);
    let disk = contents(&b.file);
    assert_eq!(disk[3 * 512..5 * 512], [0x5a; 1024]);
    assert_eq!(disk[5 * 512], 0xaa);
    assert_eq!(b.stats().bytes_written, 1024);
    assert_eq!(b.stats().bytes_read, 1024);
}

#[test]
fn a_header_split_over_descriptors_works() {
    let m = mem();
    let mut b = device(false);
    let h = header(&m, 0, VIRTIO_BLK_T_IN, 1);
    let chain = vec![(h, 5, false), (h + 5, 11, false), (DATA, 512, true), st(0)];
    assert_eq!(run(&mut b, &m, &[chain]), vec![(0, 513)]);
    assert_eq!(status(&m, 0), VIRTIO_BLK_S_OK);
}

#[test]
fn data_and_status_may_share_a_descriptor() {
    let m = mem();
    let mut b = device(false);
    let h = header(&m, 0, VIRTIO_BLK_T_IN, 0);
    assert_eq!(
        run(&mut b, &m, &[vec![(h, 16, false), (DATA, 513, true)]]),
        vec![(0, 513)]
    );
    let s: u8 = m.read_obj(GuestAddress(DATA + 512)).unwrap();
    assert_eq!(s, VIRTIO_BLK_S_OK);
}

#[test]
fn requests_past_the_end_fail() {
    let m = mem();
    let mut b = device(false);
    let chains = [
        req(&m, 0, VIRTIO_BLK_T_IN, DISK_SECTORS, 512, true),
        req(&m, 1, VIRTIO_BLK_T_OUT, DISK_SECTORS - 1, 1024, false),
        req(&m, 2, VIRTIO_BLK_T_IN, u64::MAX, 512, true),
        req(&m, 3, VIRTIO_BLK_T_IN, DISK_SECTORS - 1, 512, true),
    ];
    let used = run(&mut b, &m, &chains);
    assert_eq!(used.len(), 4);
    assert_eq!(status(&m, 0), VIRTIO_BLK_S_IOERR);
    assert_eq!(status(&m, 1), VIRTIO_BLK_S_IOERR);
    assert_eq!(status(&m, 2), VIRTIO_BLK_S_IOERR);
    assert_eq!(status(&m, 3), VIRTIO_BLK_S_OK);
    assert_eq!(b.stats().errors, 3);
    assert!(contents(&b.file).iter().all(|&x| x == 0xaa));
}

#[test]
fn partial_sectors_fail() {
    let m = mem();
    let mut b = device(false);
    let used = run(
        &mut b,
        &m,
        &[
            req(&m, 0, VIRTIO_BLK_T_IN, 0, 100, true),
            req(&m, 1, VIRTIO_BLK_T_OUT, 0, 513, false),
        ],
    );
    assert_eq!(used, vec![(0, 1), (3, 1)]);
    assert_eq!(status(&m, 0), VIRTIO_BLK_S_IOERR);
    assert_eq!(status(&m, 1), VIRTIO_BLK_S_IOERR);
}

#[test]
fn a_short_header_fails() {
    let m = mem();
    let mut b = device(false);
    let h = header(&m, 0, VIRTIO_BLK_T_IN, 0);
    run(&mut b, &m, &[vec![(h, 8, false), st(0)]]);
    assert_eq!(status(&m, 0), VIRTIO_BLK_S_IOERR);
}

#[test]
fn a_chain_without_a_status_byte_is_dropped_and_the_next_served() {
    let m = mem();
    let mut b = device(false);
    let h = header(&m, 0, VIRTIO_BLK_T_IN, 0);
    let good = req(&m, 1, VIRTIO_BLK_T_FLUSH, 0, 0, false);
    let good = vec![good[0], good[2]];
    let used = run(
        &mut b,
        &m,
        &[vec![(h, 16, false), (DATA, 512, false)], good],
    );
    assert_eq!(used, vec![(0, 0), (2, 1)]);
    assert_eq!(b.stats().dropped, 1);
    assert_eq!(status(&m, 1), VIRTIO_BLK_S_OK);
}

#[test]
fn a_zero_length_status_is_no_status() {
    let m = mem();
    let mut b = device(false);
    let h = header(&m, 0, VIRTIO_BLK_T_FLUSH, 0);
    let used = run(&mut b, &m, &[vec![(h, 16, false), (STATUS, 0, true)]]);
    assert_eq!(used, vec![(0, 0)]);
}

#[test]
fn readable_after_writable_fails() {
    let m = mem();
    let mut b = device(false);
    let h = header(&m, 0, VIRTIO_BLK_T_OUT, 0);
    let chain = vec![(h, 16, false), st(0), (DATA, 512, false), st(1)];
    m.write_obj(0xffu8, GuestAddress(STATUS + 16)).unwrap();
    run(&mut b, &m, &[chain]);
    // The status is the last writable byte.
    assert_eq!(status(&m, 1), VIRTIO_BLK_S_IOERR);
    assert!(contents(&b.file).iter().all(|&x| x == 0xaa));
}

#[test]
fn buffers_outside_memory_fail() {
    let m = mem();
    let mut b = device(false);
    let h = header(&m, 0, VIRTIO_BLK_T_IN, 0);
    let outside = MEM_SIZE as u64 - 256;
    let huge = (DATA, 0x8000_0000, true);
    let used = run(
        &mut b,
        &m,
        &[
            vec![(h, 16, false), (outside, 512, true), st(0)],
            vec![(h, 16, false), huge, st(1)],
            vec![(h, 16, false), (u64::MAX - 100, 512, true), st(2)],
        ],
    );
    assert_eq!(used.len(), 3);
    for n in 0..3 {
        assert_eq!(status(&m, n), VIRTIO_BLK_S_IOERR, "request {n}");
    }
    // A chain of more than 4 GiB is illegal: virtio-queue stops the walk
    // and the request is dropped.
    let used = run(
        &mut b,
        &m,
        &[vec![(h, 16, false), (DATA, u32::MAX, true), st(3)]],
    );
    assert_eq!(used, vec![(0, 0)]);
}

#[test]
fn a_descriptor_loop_is_dropped() {
    let m = mem();
    let vq = MockSplitQueue::new(&m, 16);
    let h = header(&m, 0, VIRTIO_BLK_T_IN, 0);
    vq.desc_table()
        .store(0, RawDescriptor::from(SplitDescriptor::new(h, 16, NEXT, 1)))
        .unwrap();
    vq.desc_table()
        .store(
            1,
            RawDescriptor::from(SplitDescriptor::new(STATUS, 1, WRITE | NEXT, 0)),
        )
        .unwrap();
    vq.avail().ring().ref_at(0).unwrap().store(0);
    vq.avail().idx().store(1);
    let mut q: Queue = vq.create_queue().unwrap();
    let mut b = device(false);
    b.process_queue(0, &mut q, &m).unwrap();
    assert_eq!(vq.used().idx().load(), 1);
    assert_eq!(vq.used().ring().ref_at(0).unwrap().load().len(), 0);
    assert_eq!(b.stats().dropped, 1);
}

#[test]
fn a_read_only_disk_refuses_writes() {
    let m = mem();
    let mut b = device(true);
    assert_ne!(b.features() & 1 << VIRTIO_BLK_F_RO, 0);
    m.write_slice(&[1; 512], GuestAddress(DATA)).unwrap();
    let mut dz = req(&m, 1, VIRTIO_BLK_T_DISCARD, 0, 16, false);
    dz[1].0 = DATA + 0x8000;
    m.write_slice(&dwz(0, 8, 0), GuestAddress(DATA + 0x8000))
        .unwrap();
    run(
        &mut b,
        &m,
        &[req(&m, 0, VIRTIO_BLK_T_OUT, 0, 512, false), dz],
    );
    assert_eq!(status(&m, 0), VIRTIO_BLK_S_IOERR);
    assert_eq!(status(&m, 1), VIRTIO_BLK_S_IOERR);
    assert!(contents(&b.file).iter().all(|&x| x == 0xaa));
}

#[test]
fn unknown_types_are_unsupported() {
    let m = mem();
    let mut b = device(false);
    run(&mut b, &m, &[req(&m, 0, 99, 0, 512, true)]);
    assert_eq!(status(&m, 0), VIRTIO_BLK_S_UNSUPP);
    assert_eq!(b.stats().unsupported, 1);
}

#[test]
fn unnegotiated_commands_are_unsupported() {
    let m = mem();
    let mut b = device(false);
    b.reset();
    b.activate(TRANSPORT_FEATURES).unwrap();
    let f = req(&m, 0, VIRTIO_BLK_T_FLUSH, 0, 0, false);
    let mut d = req(&m, 1, VIRTIO_BLK_T_DISCARD, 0, 16, false);
    d[1].0 = DATA;
    m.write_slice(&dwz(0, 8, 0), GuestAddress(DATA)).unwrap();
    run(&mut b, &m, &[vec![f[0], f[2]], d]);
    assert_eq!(status(&m, 0), VIRTIO_BLK_S_UNSUPP);
    assert_eq!(status(&m, 1), VIRTIO_BLK_S_UNSUPP);
}

#[test]
fn get_id_returns_the_serial() {
    let m = mem();
    let mut b = device(false);
    m.write_slice(&[0xee; 20], GuestAddress(DATA)).unwrap();
    let used = run(&mut b, &m, &[req(&m, 0, VIRTIO_BLK_T_GET_ID, 0, 20, true)]);
    assert_eq!(used, vec![(0, 21)]);
    let mut id = [0u8; 20];
    m.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id[..8], b"serial-7");
    assert!(id[8..].iter().all(|&x| x == 0));
}

fn dwz(sector: u64, count: u32, flags: u32) -> [u8; 16] {
    let mut s = [0u8; 16];
    s[..8].copy_from_slice(&sector.to_le_bytes());
    s[8..12].copy_from_slice(&count.to_le_bytes());
    s[12..].copy_from_slice(&flags.to_le_bytes());
    s
}

fn dwz_req(m: &GuestMemory, n: u64, kind: u32, segs: &[[u8; 16]]) -> Vec<D> {
    let mut c = req(m, n, kind, 0, 0, false);
    let at = DATA + n * 0x1_0000;
    for (i, s) in segs.iter().enumerate() {
        m.write_slice(s, GuestAddress(at + 16 * i as u64)).unwrap();
    }
    c[1] = (at, u32::try_from(16 * segs.len()).unwrap(), false);
    c
}

#[test]
fn discard_and_write_zeroes_clear_sectors() {
    let m = mem();
    let mut b = device(false);
    let chains = [
        dwz_req(&m, 0, VIRTIO_BLK_T_DISCARD, &[dwz(0, 8, 0)]),
        dwz_req(&m, 1, VIRTIO_BLK_T_WRITE_ZEROES, &[dwz(16, 2, 0)]),
        dwz_req(&m, 2, VIRTIO_BLK_T_WRITE_ZEROES, &[dwz(32, 8, FLAG_UNMAP)]),
    ];
    run(&mut b, &m, &chains);
    for n in 0..3 {
        assert_eq!(status(&m, n), VIRTIO_BLK_S_OK, "request {n}");
    }
    let disk = contents(&b.file);
    let zero = |from: usize, n: usize| disk[from * 512..(from + n) * 512].iter().all(|&x| x == 0);
    assert!(zero(0, 8) && zero(16, 2) && zero(32, 8));
    assert_eq!(disk[8 * 512], 0xaa);
    assert_eq!(disk[18 * 512], 0xaa);
    assert_eq!(disk.len() as u64, DISK_SECTORS * SECTOR);
}

#[test]
fn bad_discards_fail() {
    let m = mem();
    let mut b = device(false);
    let chains = [
        // The unmap flag is for write-zeroes only.
        dwz_req(&m, 0, VIRTIO_BLK_T_DISCARD, &[dwz(0, 8, FLAG_UNMAP)]),
        // More segments than offered.
        dwz_req(&m, 1, VIRTIO_BLK_T_DISCARD, &[dwz(0, 8, 0), dwz(8, 8, 0)]),
        // Past the end.
        dwz_req(&m, 2, VIRTIO_BLK_T_DISCARD, &[dwz(DISK_SECTORS - 4, 8, 0)]),
        // Unknown flags.
        dwz_req(&m, 3, VIRTIO_BLK_T_WRITE_ZEROES, &[dwz(0, 8, 4)]),
    ];
    run(&mut b, &m, &chains);
    assert_eq!(status(&m, 0), VIRTIO_BLK_S_UNSUPP);
    assert_eq!(status(&m, 1), VIRTIO_BLK_S_UNSUPP);
    assert_eq!(status(&m, 2), VIRTIO_BLK_S_IOERR);
    assert_eq!(status(&m, 3), VIRTIO_BLK_S_UNSUPP);
    assert!(contents(&b.file).iter().all(|&x| x == 0xaa));
}

#[test]
fn a_full_ring_of_bad_requests_keeps_the_device_serving() {
    let m = mem();
    let mut b = device(false);
    let chains: Vec<Vec<D>> = (0..20)
        .map(|n| req(&m, n, VIRTIO_BLK_T_IN, u64::MAX - n, 512, true))
        .collect();
    assert_eq!(run(&mut b, &m, &chains).len(), 20);
    let ok = req(&m, 30, VIRTIO_BLK_T_IN, 0, 512, true);
    assert_eq!(run(&mut b, &m, &[ok]), vec![(0, 513)]);
    assert_eq!(status(&m, 30), VIRTIO_BLK_S_OK);
}

#[test]
fn the_configuration_describes_the_disk() {
    let b = device(false);
    let c = b.config();
    assert_eq!(c.len(), CONFIG_LEN);
    assert_eq!(u64::from_le_bytes(c[..8].try_into().unwrap()), DISK_SECTORS);
    assert_eq!(u32::from_le_bytes(c[20..24].try_into().unwrap()), 512);
    assert_eq!(b.features() & 1 << VIRTIO_BLK_F_RO, 0);
    assert!(Block::new(image(0), b.params.clone())
        .activate(1 << 3)
        .is_err());
}

/// The configuration of a 2048-sector disk, written out byte by byte.
fn pinned_config(blk_size: [u8; 4], sector_alignment: u8) -> Vec<u8> {
    let mut c = Vec::new();
    c.extend([0x00, 0x08, 0, 0, 0, 0, 0, 0]); // capacity: 2048
    c.extend([0x00, 0x00, 0x10, 0x00]); // size_max: 1 MiB
    c.extend([0xfe, 0x00, 0x00, 0x00]); // seg_max: 254
    c.extend([0; 4]); // geometry
    c.extend(blk_size);
    c.extend([0; 8]); // topology
    c.extend([0; 4]); // writeback, unused0, num_queues
    c.extend([0x00, 0x00, 0x20, 0x00]); // max_discard_sectors: 1 GiB
    c.extend([0x01, 0x00, 0x00, 0x00]); // max_discard_seg
    c.extend([sector_alignment, 0, 0, 0]); // discard_sector_alignment
    c.extend([0x00, 0x00, 0x20, 0x00]); // max_write_zeroes_sectors
    c.extend([0x01, 0x00, 0x00, 0x00]); // max_write_zeroes_seg
    c.extend([1, 0, 0, 0]); // write_zeroes_may_unmap, unused1
    c
}

fn config_of(read_only: bool, direct: bool) -> Vec<u8> {
    let params = DiskParams {
        sectors: 2048,
        read_only,
        direct,
        serial: Vec::new(),
    };
    Block::new(image(0), params).config()
}

#[test]
fn config_bytes_of_a_buffered_disk_are_pinned() {
    let c = config_of(false, false);
    assert_eq!(c, pinned_config([0x00, 0x02, 0x00, 0x00], 1));
}

#[test]
fn config_bytes_of_a_direct_disk_are_pinned() {
    let c = config_of(false, true);
    assert_eq!(c, pinned_config([0x00, 0x10, 0x00, 0x00], 8));
}

#[test]
fn config_bytes_of_a_read_only_disk_are_pinned() {
    let c = config_of(true, false);
    assert_eq!(c, pinned_config([0x00, 0x02, 0x00, 0x00], 1));
}
