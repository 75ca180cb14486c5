//! The one-queue request devices, rng and blk: what one request looks like
//! in driver memory, how its answer is checked, their hostile chains, and
//! the benchmark loop (depth requests per kick).

use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::queue::{
    BUFFERS, DESC_F_NEXT, DESC_F_WRITE, HEADERS, QUEUE0, QUEUE_SIZE, RAM, STATUSES, STRIDE,
};
use super::{DriveArgs, Figures, Op};
use crate::virtio_pci::DeviceEvents;

/// Descriptors per request (blk: header, data, status; rng uses one).
const DESCS_PER_REQUEST: u16 = 3;

/// What the driver asks of the device.
#[derive(Debug, Clone, Copy)]
pub enum Workload {
    /// Fill a buffer with random bytes.
    Rng,
    /// Block I/O on a disk of `sectors` sectors.
    Blk { op: Op, sectors: u64 },
}

/// What a hostile chain must get back.
struct Expect {
    used_len: u32,
    /// The blk status byte, where the device must write one.
    status: Option<u8>,
}

/// Posts hostile chain `case` at descriptor 0 and returns what the device
/// must answer.
fn post_hostile(mem: &GuestMemoryMmap, w: Workload, case: &str) -> Result<Expect> {
    use devices::block::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP};
    let buf = BUFFERS;
    let outside = RAM - 16;
    let expect = |used_len, status| Ok(Expect { used_len, status });
    match (w, case) {
        (Workload::Rng, "loop") => {
            QUEUE0.write_desc(mem, 0, buf, 64, DESC_F_WRITE | DESC_F_NEXT)?;
            QUEUE0.write_desc_to(mem, 1, buf + 64, 64, DESC_F_WRITE | DESC_F_NEXT, 0)?;
            // Served up to the walk's limit: queue-size descriptors.
            expect(u32::from(QUEUE_SIZE) * 64, None)
        }
        (Workload::Rng, "outside") => {
            QUEUE0.write_desc(mem, 0, outside, 64, DESC_F_WRITE)?;
            expect(0, None)
        }
        (Workload::Rng, "zero-len") => {
            QUEUE0.write_desc(mem, 0, buf, 0, DESC_F_WRITE)?;
            expect(0, None)
        }
        (Workload::Rng, "huge-len") => {
            QUEUE0.write_desc(mem, 0, buf, u32::MAX, DESC_F_WRITE)?;
            expect(u32::try_from(devices::rng::MAX_REQUEST)?, None)
        }
        (Workload::Rng, "readonly") => {
            QUEUE0.write_desc(mem, 0, buf, 64, 0)?;
            expect(0, None)
        }
        (Workload::Blk { sectors, .. }, case) => {
            let hdr = HEADERS;
            let status = STATUSES;
            mem.write_obj(0xffu8, GuestAddress(status))?;
            let header = |kind: u32, sector: u64| -> Result<()> {
                mem.write_obj(kind, GuestAddress(hdr))?;
                mem.write_obj(0u32, GuestAddress(hdr + 4))?;
                mem.write_obj(sector, GuestAddress(hdr + 8))?;
                Ok(())
            };
            let read_chain = |data: u64, len: u32| -> Result<()> {
                QUEUE0.write_desc(mem, 0, hdr, 16, DESC_F_NEXT)?;
                QUEUE0.write_desc(mem, 1, data, len, DESC_F_NEXT | DESC_F_WRITE)?;
                QUEUE0.write_desc(mem, 2, status, 1, DESC_F_WRITE)
            };
            let t_in = devices::block::VIRTIO_BLK_T_IN;
            match case {
                "loop" => {
                    header(t_in, 0)?;
                    QUEUE0.write_desc(mem, 0, hdr, 16, DESC_F_NEXT)?;
                    QUEUE0.write_desc_to(mem, 1, status, 1, DESC_F_WRITE | DESC_F_NEXT, 0)?;
                    expect(0, None)
                }
                "outside" => {
                    header(t_in, 0)?;
                    read_chain(outside, 512)?;
                    expect(1, Some(VIRTIO_BLK_S_IOERR))
                }
                "past-end" => {
                    header(t_in, sectors)?;
                    read_chain(buf, 512)?;
                    expect(1, Some(VIRTIO_BLK_S_IOERR))
                }
                "partial-sector" => {
                    header(t_in, 0)?;
                    read_chain(buf, 100)?;
                    expect(1, Some(VIRTIO_BLK_S_IOERR))
                }
                "split-header" => {
                    header(t_in, 0)?;
                    QUEUE0.write_desc(mem, 0, hdr, 5, DESC_F_NEXT)?;
                    QUEUE0.write_desc(mem, 1, hdr + 5, 11, DESC_F_NEXT)?;
                    QUEUE0.write_desc(mem, 2, buf, 512, DESC_F_NEXT | DESC_F_WRITE)?;
                    QUEUE0.write_desc(mem, 3, status, 1, DESC_F_WRITE)?;
                    expect(513, Some(VIRTIO_BLK_S_OK))
                }
                "no-status" => {
                    header(t_in, 0)?;
                    QUEUE0.write_desc(mem, 0, hdr, 16, DESC_F_NEXT)?;
                    QUEUE0.write_desc(mem, 1, buf, 512, 0)?;
                    expect(0, None)
                }
                "unknown-type" => {
                    header(99, 0)?;
                    read_chain(buf, 512)?;
                    expect(1, Some(VIRTIO_BLK_S_UNSUPP))
                }
                other => bail!("unknown blk hostile case '{other}'"),
            }
        }
        (Workload::Rng, other) => bail!("unknown rng hostile case '{other}'"),
    }
}

/// `--hostile CASE`: the hostile chain, then a normal request.
pub fn hostile(
    mem: &GuestMemoryMmap,
    events: &DeviceEvents,
    w: Workload,
    case: &str,
) -> Result<String> {
    let want = post_hostile(mem, w, case)?;
    let got = QUEUE0
        .submit_one(mem, events, 0)
        .context("no answer to the hostile chain")?;
    ensure!(
        got == want.used_len,
        "hostile case {case}: used length {got}, expected {}",
        want.used_len
    );
    if let Some(s) = want.status {
        let st: u8 = mem.read_obj(GuestAddress(STATUSES))?;
        ensure!(st == s, "hostile case {case}: status {st}, expected {s}");
    }
    // The device still serves a normal request.
    let size = 4096;
    let mut rand = 1;
    post(mem, w, size, 0, 0, &mut rand)?;
    let len = QUEUE0
        .submit_one(mem, events, 1)
        .context("no answer after the hostile chain")?;
    check(mem, w, size, 0, len)?;
    Ok(format!(
        "hostile={case} outcome=handled used_len={got} then=served"
    ))
}

/// xorshift64, for random offsets.
fn next_random(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

/// Writes the chain of request `slot` (the `n`th of the run) starting at
/// descriptor `head`.
fn post(
    mem: &GuestMemoryMmap,
    w: Workload,
    size: u32,
    slot: u16,
    n: u64,
    rand: &mut u64,
) -> Result<()> {
    let head = slot * DESCS_PER_REQUEST;
    let buf = BUFFERS + u64::from(slot) * STRIDE;
    match w {
        Workload::Rng => {
            // Zero the first bytes so a device that writes nothing is caught.
            mem.write_slice(&[0u8; 16], GuestAddress(buf))?;
            QUEUE0.write_desc(mem, head, buf, size, DESC_F_WRITE)
        }
        Workload::Blk { op, sectors } => {
            let per = u64::from(size / 512);
            let slots = (sectors / per).max(1);
            let block = match op {
                Op::Randread | Op::Randwrite => next_random(rand) % slots,
                _ => n % slots,
            };
            let write = matches!(op, Op::Write | Op::Randwrite);
            let kind: u32 = if write {
                devices::block::VIRTIO_BLK_T_OUT
            } else {
                devices::block::VIRTIO_BLK_T_IN
            };
            let hdr = HEADERS + u64::from(slot) * 16;
            mem.write_obj(kind, GuestAddress(hdr))?;
            mem.write_obj(0u32, GuestAddress(hdr + 4))?;
            mem.write_obj(block * per, GuestAddress(hdr + 8))?;
            let status = STATUSES + u64::from(slot);
            mem.write_obj(0xffu8, GuestAddress(status))?;
            let data_flags = if write {
                DESC_F_NEXT
            } else {
                DESC_F_NEXT | DESC_F_WRITE
            };
            QUEUE0.write_desc(mem, head, hdr, 16, DESC_F_NEXT)?;
            QUEUE0.write_desc(mem, head + 1, buf, size, data_flags)?;
            QUEUE0.write_desc(mem, head + 2, status, 1, DESC_F_WRITE)
        }
    }
}

/// Checks the used entry of request `slot`; returns the data bytes moved.
fn check(mem: &GuestMemoryMmap, w: Workload, size: u32, slot: u16, len: u32) -> Result<u64> {
    match w {
        Workload::Rng => {
            ensure!(len == size, "request of {size} bytes got {len}");
            let mut head = [0u8; 16];
            let buf = BUFFERS + u64::from(slot) * STRIDE;
            mem.read_slice(&mut head, GuestAddress(buf))?;
            ensure!(
                len < 16 || head.iter().any(|b| *b != 0),
                "device returned zeros"
            );
        }
        Workload::Blk { op, .. } => {
            let write = matches!(op, Op::Write | Op::Randwrite);
            let want = if write { 1 } else { size + 1 };
            ensure!(len == want, "used length {len}, expected {want}");
            let status: u8 = mem.read_obj(GuestAddress(STATUSES + u64::from(slot)))?;
            ensure!(status == 0, "request failed with status {status}");
        }
    }
    Ok(u64::from(size))
}

/// The benchmark: `args.requests` requests, `args.depth` per kick.
pub fn drive(
    mem: &GuestMemoryMmap,
    events: &DeviceEvents,
    args: &DriveArgs,
    w: Workload,
) -> Result<Figures> {
    let size = args.size();
    let depth = args.depth;
    let mut latencies = Vec::with_capacity(usize::try_from(args.requests).unwrap_or(0));
    let mut next_avail: u16 = 0;
    let mut seen_used: u16 = 0;
    let mut done: u32 = 0;
    let mut bytes: u64 = 0;
    let mut rand = 0x9e37_79b9_7f4a_7c15u64;
    let start = Instant::now();
    while done < args.requests {
        let batch = u16::try_from((args.requests - done).min(u32::from(depth))).unwrap_or(1);
        for slot in 0..batch {
            post(
                mem,
                w,
                size,
                slot,
                u64::from(done) + u64::from(slot),
                &mut rand,
            )?;
            QUEUE0.offer(mem, next_avail.wrapping_add(slot), slot * DESCS_PER_REQUEST)?;
        }
        next_avail = next_avail.wrapping_add(batch);
        let kicked = Instant::now();
        QUEUE0.publish_and_wait(mem, events, next_avail)?;
        latencies.push(u64::try_from(kicked.elapsed().as_nanos()).unwrap_or(u64::MAX));
        for i in 0..batch {
            let (id, len) = QUEUE0.used_entry(mem, seen_used.wrapping_add(i))?;
            let per = u32::from(DESCS_PER_REQUEST);
            ensure!(
                id.is_multiple_of(per) && id / per < u32::from(batch),
                "used entry names descriptor {id}"
            );
            let slot = u16::try_from(id / per).unwrap_or(0);
            bytes += check(mem, w, size, slot, len)?;
        }
        seen_used = seen_used.wrapping_add(batch);
        done += u32::from(batch);
    }
    Ok(Figures {
        secs: start.elapsed().as_secs_f64(),
        latencies_ns: latencies,
        bytes,
    })
}
