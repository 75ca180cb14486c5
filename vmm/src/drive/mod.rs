//! `skvm drive`: plays the guest's driver against a device, without a guest.
//!
//! The device is started exactly as `skvm run` starts it (same spawner, same
//! confinement, same ipc, or a VMM thread in thread mode). This side builds
//! a split virtqueue (virtio 1.2, 2.7) in a memfd "guest RAM", activates the
//! device with it, then posts descriptor chains, kicks the queue's eventfd
//! and waits on its interrupt eventfd, checking every used entry. It prints
//! throughput and kick-to-interrupt latency: the device's own cost, which a
//! guest on an emulating host cannot show.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::config::SandboxArgs;
use crate::device_host::remote::RemoteDevice;
use crate::device_host::spawner::Spawner;
use crate::device_host::{
    describe_status, device_type_of, kind_of, start_device, DeviceMode, Started,
};
use crate::disk::DiskSpec;
use crate::memory::GuestRam;
use crate::virtio_pci::{Backend, DeviceEvents};

/// Options of `skvm drive`.
#[derive(Debug, Args)]
pub struct DriveArgs {
    /// Device to start, named as in `skvm run` (its kind is the name without
    /// the trailing number): rng0, or blk0 with --disk.
    #[arg(long, value_name = "NAME", default_value = "rng0")]
    pub device: String,
    /// Where the device runs, as in `skvm run`.
    #[arg(long, value_enum, value_name = "MODE", default_value_t = DeviceMode::Process)]
    pub device_mode: DeviceMode,
    /// Number of requests to complete.
    #[arg(long, value_name = "N", default_value_t = 20_000,
          value_parser = clap::value_parser!(u32).range(1..=100_000_000))]
    pub requests: u32,
    /// Bytes each request moves (rng: at most 64 KiB, its cap per request;
    /// blk: a multiple of 512, at most 1 MiB).
    #[arg(long, value_name = "BYTES", default_value_t = 4096,
          value_parser = clap::value_parser!(u32).range(1..=1 << 20))]
    pub size: u32,
    /// Requests in flight per kick (queue depth).
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub depth: u16,
    /// The image a blk device serves, as `skvm run --disk` takes it
    /// (PATH[,ro][,direct=on]). Writes change it.
    #[arg(long, value_name = "PATH[,ro][,direct=on]")]
    pub disk: Option<String>,
    /// What blk requests do: sequential or random reads or writes.
    #[arg(long, value_enum, value_name = "OP", default_value_t = BlkOp::Randread)]
    pub op: BlkOp,
    #[command(flatten)]
    pub sandbox: SandboxArgs,
    /// Fuzzing harness mode (see docs/FUZZING.md): read inputs from stdin,
    /// each a 4-byte little-endian length and that many bytes (at most 64
    /// KiB). For each, reset and re-activate the device with a queue of 16
    /// at descriptor table 0x0, available ring 0x100 and used ring 0x200,
    /// write the input over driver memory from address 0, kick, and wait
    /// briefly for an interrupt; then answer one byte on stdout: `0` if the
    /// device is still alive. If it died, print why on stderr and exit 1.
    #[arg(long)]
    pub fuzz_stdin: bool,
    /// Run the device process without any confinement (no namespaces,
    /// empty root, capability drop, rlimits or seccomp), to measure what the
    /// sandbox costs. Benchmarks only; `skvm run` has no such option.
    #[arg(long)]
    pub unconfined: bool,
    /// Instead of a benchmark, post one hostile descriptor chain (rng:
    /// loop, outside, zero-len, huge-len, readonly; blk: loop, outside,
    /// past-end, partial-sector, split-header, no-status, unknown-type),
    /// check the device's answer, then check that a normal request still
    /// works. Prints one line; exit status 1 if the device misbehaved.
    #[arg(long, value_name = "CASE")]
    pub hostile: Option<String>,
    /// Test builds only: instead of a benchmark, make the confined device
    /// (escrng0, escblk0, escnet0) attempt this hostile action and report the
    /// outcome.
    #[cfg(feature = "escape-test")]
    #[arg(long, value_name = "ACTION")]
    pub escape: Option<String>,
}

/// The blk workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BlkOp {
    /// Sequential reads.
    Read,
    /// Sequential writes.
    Write,
    /// Reads at random aligned offsets.
    Randread,
    /// Writes at random aligned offsets.
    Randwrite,
}

/// Queue size used by the driver.
const QUEUE_SIZE: u16 = 256;
/// Where the queue parts and buffers sit in the driver's "guest RAM".
const DESC: u64 = 0x1_0000;
const AVAIL: u64 = 0x2_0000;
const USED: u64 = 0x3_0000;
/// blk request headers (16 bytes each) and status bytes.
const HEADERS: u64 = 0x4_0000;
const STATUSES: u64 = 0x5_0000;
const BUFFERS: u64 = 0x10_0000;
/// Distance between two requests' data buffers.
const STRIDE: u64 = 1 << 20;
/// Size of that RAM: the buffers of a full queue depth fit.
const RAM: u64 = BUFFERS + 64 * STRIDE;
/// Descriptors per request (blk: header, data, status; rng uses one).
const DESCS_PER_REQUEST: u16 = 3;
/// Longest wait for an interrupt before the device is declared stuck.
const IRQ_TIMEOUT: Duration = Duration::from_secs(5);
/// VIRTQ_DESC_F_NEXT: the chain goes on.
const DESC_F_NEXT: u16 = 1;
/// VIRTQ_DESC_F_WRITE: the device writes this buffer.
const DESC_F_WRITE: u16 = 2;

/// What one run measured.
struct Figures {
    secs: f64,
    latencies_ns: Vec<u64>,
    bytes: u64,
}

/// What the driver asks of the device.
#[derive(Debug, Clone, Copy)]
enum Workload {
    /// Fill a buffer with random bytes.
    Rng,
    /// Block I/O on a disk of `sectors` sectors.
    Blk { op: BlkOp, sectors: u64 },
}

/// `skvm drive`: runs the benchmark and prints one line of `key=value`
/// figures.
pub fn run(args: &DriveArgs) -> Result<()> {
    #[cfg(feature = "escape-test")]
    if let Some(action) = &args.escape {
        return escape(args, action);
    }
    let kind = kind_of(&args.device);
    match (kind, &args.disk) {
        ("rng", None) => {
            if args.size > 65536 {
                bail!(
                    "--size {}: an rng request is at most 65536 bytes",
                    args.size
                );
            }
        }
        ("blk", Some(_)) => {
            if !args.size.is_multiple_of(512) {
                bail!(
                    "--size {}: blk requests are whole 512-byte sectors",
                    args.size
                );
            }
        }
        ("blk", None) => bail!("device '{}': give the image with --disk", args.device),
        ("rng", Some(_)) => bail!("device '{}': --disk is for blk devices", args.device),
        _ => bail!(
            "device '{}': only rng and blk devices can be driven so far",
            args.device
        ),
    }
    if args.unconfined && args.device_mode != DeviceMode::Process {
        bail!("--unconfined is for --device-mode process");
    }
    let mut sandbox = args.sandbox.opts();
    sandbox.unconfined = args.unconfined;
    // The spawner must be forked while this process has a single thread.
    let spawner = match args.device_mode {
        DeviceMode::Process => Some(Spawner::start()?),
        DeviceMode::Thread => None,
    };
    let (backend, backend_fds, workload) = match &args.disk {
        Some(d) => {
            let spec = DiskSpec::parse(d).map_err(anyhow::Error::msg)?;
            let disk = crate::disk::open(&spec)?;
            if u64::from(args.size) > disk.sectors * 512 {
                bail!("--size {} is larger than the disk", args.size);
            }
            if spec.read_only && matches!(args.op, BlkOp::Write | BlkOp::Randwrite) {
                bail!("--op {:?} on a read-only disk", args.op);
            }
            let backend = ipc::Backend::Block {
                sectors: disk.sectors,
                read_only: spec.read_only,
                direct: spec.direct,
                serial: Vec::new(),
            };
            let w = Workload::Blk {
                op: args.op,
                sectors: disk.sectors,
            };
            (backend, vec![disk.fd], w)
        }
        None => (ipc::Backend::None, Vec::new(), Workload::Rng),
    };
    let device_type = device_type_of(kind).context("unknown device kind")?;
    let ram = GuestRam::new(RAM).context("cannot create driver memory")?;
    let Started { chan, pid, thread } =
        start_device(spawner.as_ref(), args.device_mode, &args.device, sandbox)?;
    let memory = ram.ranges.iter().map(|r| (*r, ram.memfd.clone())).collect();
    let borrowed: Vec<BorrowedFd<'_>> = backend_fds.iter().map(AsFd::as_fd).collect();
    let mut dev = RemoteDevice::connect(
        &args.device,
        pid,
        chan,
        device_type,
        (&backend, &borrowed),
        memory,
    )?;
    let events = DeviceEvents {
        kicks: vec![EventFd::new(EFD_NONBLOCK)?],
        irqs: vec![EventFd::new(EFD_NONBLOCK)?],
        config_irq: EventFd::new(EFD_NONBLOCK)?,
    };
    let layout = ipc::QueueLayout {
        index: 0,
        size: QUEUE_SIZE,
        desc: DESC,
        avail: AVAIL,
        used: USED,
    };
    // Everything the device offers that the driver understands: FLUSH (so
    // writes are not synced one by one) and the ring features.
    let features = dev.info().features
        & ((1u64 << devices::virtio::VIRTIO_F_VERSION_1)
            | (1 << devices::block::VIRTIO_BLK_F_FLUSH)
            | (1 << devices::block::VIRTIO_BLK_F_RO));
    if args.fuzz_stdin {
        let all = dev.info().features;
        let r = fuzz_stdin(&mut dev, &ram.mem, &events, all);
        // An error with the device still alive is the input stream's.
        let died = r.is_err() && dev.is_dead();
        let mut reason = r
            .as_ref()
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        if died {
            if let Some(s) = spawner.as_ref() {
                let deadline = Instant::now() + Duration::from_secs(2);
                while Instant::now() < deadline {
                    if let Some(x) = s.next_exit() {
                        reason = format!("{reason}; {}", describe_status(x.status));
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
        dev.shutdown();
        drop(dev);
        if let Some(t) = thread {
            let _ = t.join();
        }
        drop(spawner);
        if died {
            bail!("device {} died: {reason}", args.device);
        }
        return r;
    }
    dev.activate(features, &[layout], &events)
        .context("activation failed")?;
    let result = match &args.hostile {
        Some(case) => hostile(&ram.mem, &events, workload, case).map(|line| {
            println!("{line}");
            None
        }),
        None => drive(&ram.mem, &events, args, workload).map(Some),
    };
    let pss = pid.and_then(pss_kib);
    dev.shutdown();
    drop(dev);
    if let Some(t) = thread {
        let _ = t.join();
    }
    drop(spawner);
    if let Some(f) = result? {
        print_figures(args, &f, pss);
    }
    Ok(())
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
            write_desc(mem, 0, buf, 64, DESC_F_WRITE | DESC_F_NEXT)?;
            write_desc(mem, 1, buf + 64, 64, DESC_F_WRITE | DESC_F_NEXT)?;
            mem.write_obj(0u16, GuestAddress(DESC + 16 + 14))?;
            // Served up to the walk's limit: queue-size descriptors.
            expect(u32::from(QUEUE_SIZE) * 64, None)
        }
        (Workload::Rng, "outside") => {
            write_desc(mem, 0, outside, 64, DESC_F_WRITE)?;
            expect(0, None)
        }
        (Workload::Rng, "zero-len") => {
            write_desc(mem, 0, buf, 0, DESC_F_WRITE)?;
            expect(0, None)
        }
        (Workload::Rng, "huge-len") => {
            write_desc(mem, 0, buf, u32::MAX, DESC_F_WRITE)?;
            expect(u32::try_from(devices::rng::MAX_REQUEST)?, None)
        }
        (Workload::Rng, "readonly") => {
            write_desc(mem, 0, buf, 64, 0)?;
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
                write_desc(mem, 0, hdr, 16, DESC_F_NEXT)?;
                write_desc(mem, 1, data, len, DESC_F_NEXT | DESC_F_WRITE)?;
                write_desc(mem, 2, status, 1, DESC_F_WRITE)
            };
            let t_in = devices::block::VIRTIO_BLK_T_IN;
            match case {
                "loop" => {
                    header(t_in, 0)?;
                    write_desc(mem, 0, hdr, 16, DESC_F_NEXT)?;
                    write_desc(mem, 1, status, 1, DESC_F_WRITE | DESC_F_NEXT)?;
                    mem.write_obj(0u16, GuestAddress(DESC + 16 + 14))?;
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
                    write_desc(mem, 0, hdr, 5, DESC_F_NEXT)?;
                    write_desc(mem, 1, hdr + 5, 11, DESC_F_NEXT)?;
                    write_desc(mem, 2, buf, 512, DESC_F_NEXT | DESC_F_WRITE)?;
                    write_desc(mem, 3, status, 1, DESC_F_WRITE)?;
                    expect(513, Some(VIRTIO_BLK_S_OK))
                }
                "no-status" => {
                    header(t_in, 0)?;
                    write_desc(mem, 0, hdr, 16, DESC_F_NEXT)?;
                    write_desc(mem, 1, buf, 512, 0)?;
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

/// Publishes the available index `next_avail`, kicks the queue, and waits
/// (interrupt by interrupt) until the device has used everything up to it.
fn publish_and_wait(mem: &GuestMemoryMmap, events: &DeviceEvents, next_avail: u16) -> Result<()> {
    use std::sync::atomic::{fence, Ordering};
    fence(Ordering::SeqCst);
    mem.write_obj(next_avail, GuestAddress(AVAIL + 2))?;
    fence(Ordering::SeqCst);
    events.kicks[0].write(1)?;
    loop {
        wait_readable(&events.irqs[0])?;
        let _ = events.irqs[0].read();
        fence(Ordering::SeqCst);
        let used: u16 = mem.read_obj(GuestAddress(USED + 2))?;
        if used == next_avail {
            return Ok(());
        }
    }
}

/// Posts the chain at descriptor 0 as the next available entry, kicks,
/// and returns its used length.
fn submit_one(mem: &GuestMemoryMmap, events: &DeviceEvents, n: u16) -> Result<u32> {
    let ring = AVAIL + 4 + u64::from(n % QUEUE_SIZE) * 2;
    mem.write_obj(0u16, GuestAddress(ring))?;
    publish_and_wait(mem, events, n.wrapping_add(1))?;
    let e = USED + 4 + u64::from(n % QUEUE_SIZE) * 8;
    let id: u32 = mem.read_obj(GuestAddress(e))?;
    ensure!(id == 0, "used entry names descriptor {id}");
    Ok(mem.read_obj(GuestAddress(e + 4))?)
}

/// `--hostile CASE`: the hostile chain, then a normal request.
fn hostile(
    mem: &GuestMemoryMmap,
    events: &DeviceEvents,
    w: Workload,
    case: &str,
) -> Result<String> {
    let want = post_hostile(mem, w, case)?;
    let got = submit_one(mem, events, 0).context("no answer to the hostile chain")?;
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
    let len = submit_one(mem, events, 1).context("no answer after the hostile chain")?;
    check(mem, w, size, 0, len)?;
    Ok(format!(
        "hostile={case} outcome=handled used_len={got} then=served"
    ))
}

/// Largest fuzz input: the part of driver memory it overwrites.
const FUZZ_MAX: usize = 0x1_0000;
/// The fuzz queue: small, at the same addresses as the in-process fuzz
/// targets (fuzz/fuzz_targets/common), so corpora carry over.
const FUZZ_QUEUE: ipc::QueueLayout = ipc::QueueLayout {
    index: 0,
    size: 16,
    desc: 0x0,
    avail: 0x100,
    used: 0x200,
};
/// How long to wait for an interrupt after a fuzz input's kick: many
/// inputs make the device answer nothing.
const FUZZ_IRQ_WAIT_MS: i32 = 5;

/// `--fuzz-stdin`: serves fuzz inputs until stdin ends. An error means the
/// device died (or stopped answering the control channel).
fn fuzz_stdin(
    dev: &mut RemoteDevice,
    mem: &GuestMemoryMmap,
    events: &DeviceEvents,
    features: u64,
) -> Result<()> {
    use std::io::{Read, Write};
    let mut stdin = std::io::stdin().lock();
    let mut stdout = std::io::stdout().lock();
    let zeros = vec![0u8; FUZZ_MAX];
    let mut input = vec![0u8; FUZZ_MAX];
    loop {
        let mut len = [0u8; 4];
        if stdin.read_exact(&mut len).is_err() {
            return Ok(());
        }
        let n = usize::try_from(u32::from_le_bytes(len)).unwrap_or(usize::MAX);
        ensure!(
            n <= FUZZ_MAX,
            "fuzz input of {n} bytes (at most {FUZZ_MAX})"
        );
        let data = input.get_mut(..n).context("input buffer")?;
        stdin.read_exact(data).context("truncated fuzz input")?;
        dev.reset().context("reset before the input")?;
        mem.write_slice(&zeros, GuestAddress(0))?;
        mem.write_slice(data, GuestAddress(0))?;
        let _ = events.irqs[0].read();
        if let Err(e) = dev.activate(features, &[FUZZ_QUEUE], events) {
            // Refusing a queue it cannot use is a right answer.
            if dev.is_dead() {
                return Err(e.context("activation"));
            }
            stdout.write_all(b"0")?;
            stdout.flush()?;
            continue;
        }
        events.kicks[0].write(1)?;
        let mut p = libc::pollfd {
            fd: events.irqs[0].as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: polls one valid pollfd; a timeout or EINTR is fine here.
        unsafe { libc::poll(&mut p, 1, FUZZ_IRQ_WAIT_MS) };
        // Alive if it still answers on its control channel.
        dev.reset().context("reset after the input")?;
        stdout.write_all(b"0")?;
        stdout.flush()?;
    }
}

/// Test builds: starts the escape device as `skvm run` would start a
/// device, has it attempt `action`, and prints the outcome.
#[cfg(feature = "escape-test")]
fn escape(args: &DriveArgs, action: &str) -> Result<()> {
    use crate::device_host::escape::{real_kind, ACTIONS};
    use crate::virtio_pci::Backend as _;
    let index = ACTIONS
        .iter()
        .position(|a| *a == action)
        .with_context(|| format!("unknown action '{action}'; actions: {}", ACTIONS.join(" ")))?;
    ensure!(
        real_kind(kind_of(&args.device)).is_some(),
        "--escape needs an escape device (escrng0, escblk0, escnet0)"
    );
    ensure!(
        args.device_mode == DeviceMode::Process,
        "--escape needs --device-mode process"
    );
    let spawner = Spawner::start()?;
    let ram = GuestRam::new(1 << 20).context("cannot create driver memory")?;
    let Started { chan, pid, .. } = start_device(
        Some(&spawner),
        DeviceMode::Process,
        &args.device,
        args.sandbox.opts(),
    )?;
    let memory = ram.ranges.iter().map(|r| (*r, ram.memfd.clone())).collect();
    let mut dev = RemoteDevice::connect(
        &args.device,
        pid,
        chan,
        devices::virtio::DEVICE_ID_RNG,
        (&ipc::Backend::None, &[]),
        memory,
    )?;
    // SAFETY: getpid cannot fail.
    let me = unsafe { libc::getpid() };
    let result = dev.write_config(u32::try_from(index)?, &me.to_le_bytes());
    let outcome = match result {
        Ok(()) => "outcome=escaped".to_owned(),
        Err(e) if !dev.is_dead() => format!("outcome=refused reason=\"{e:#}\""),
        Err(_) => {
            let deadline = Instant::now() + Duration::from_secs(5);
            let status = loop {
                if let Some(x) = spawner.next_exit() {
                    break Some(x.status);
                }
                if Instant::now() > deadline {
                    break None;
                }
                std::thread::sleep(Duration::from_millis(10));
            };
            match status {
                Some(s) if libc::WIFSIGNALED(s) => {
                    format!("outcome=killed signal={}", libc::WTERMSIG(s))
                }
                Some(s) => format!("outcome=exited status={}", libc::WEXITSTATUS(s)),
                None => "outcome=unknown".to_owned(),
            }
        }
    };
    // The VMM side carries on: the device is shut down cleanly if alive.
    dev.shutdown();
    println!("escape={action} device={} {outcome}", args.device);
    Ok(())
}

fn write_desc(mem: &GuestMemoryMmap, index: u16, addr: u64, len: u32, flags: u16) -> Result<()> {
    let d = DESC + u64::from(index) * 16;
    mem.write_obj(addr, GuestAddress(d))?;
    mem.write_obj(len, GuestAddress(d + 8))?;
    mem.write_obj(flags, GuestAddress(d + 12))?;
    mem.write_obj(index.wrapping_add(1), GuestAddress(d + 14))?;
    Ok(())
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
            write_desc(mem, head, buf, size, DESC_F_WRITE)
        }
        Workload::Blk { op, sectors } => {
            let per = u64::from(size / 512);
            let slots = (sectors / per).max(1);
            let block = match op {
                BlkOp::Read | BlkOp::Write => n % slots,
                BlkOp::Randread | BlkOp::Randwrite => next_random(rand) % slots,
            };
            let write = matches!(op, BlkOp::Write | BlkOp::Randwrite);
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
            write_desc(mem, head, hdr, 16, DESC_F_NEXT)?;
            write_desc(mem, head + 1, buf, size, data_flags)?;
            write_desc(mem, head + 2, status, 1, DESC_F_WRITE)
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
            let write = matches!(op, BlkOp::Write | BlkOp::Randwrite);
            let want = if write { 1 } else { size + 1 };
            ensure!(len == want, "used length {len}, expected {want}");
            let status: u8 = mem.read_obj(GuestAddress(STATUSES + u64::from(slot)))?;
            ensure!(status == 0, "request failed with status {status}");
        }
    }
    Ok(u64::from(size))
}

fn drive(
    mem: &GuestMemoryMmap,
    events: &DeviceEvents,
    args: &DriveArgs,
    w: Workload,
) -> Result<Figures> {
    let size = args.size;
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
            let ring = AVAIL + 4 + u64::from(next_avail.wrapping_add(slot) % QUEUE_SIZE) * 2;
            mem.write_obj(slot * DESCS_PER_REQUEST, GuestAddress(ring))?;
        }
        next_avail = next_avail.wrapping_add(batch);
        let kicked = Instant::now();
        publish_and_wait(mem, events, next_avail)?;
        latencies.push(u64::try_from(kicked.elapsed().as_nanos()).unwrap_or(u64::MAX));
        for i in 0..batch {
            let e = USED + 4 + u64::from(seen_used.wrapping_add(i) % QUEUE_SIZE) * 8;
            let id: u32 = mem.read_obj(GuestAddress(e))?;
            let len: u32 = mem.read_obj(GuestAddress(e + 4))?;
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

fn wait_readable(e: &EventFd) -> Result<()> {
    // SAFETY: the EventFd outlives this call.
    let fd = unsafe { BorrowedFd::borrow_raw(e.as_raw_fd()) };
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(IRQ_TIMEOUT.as_millis()).unwrap_or(i32::MAX);
    loop {
        // SAFETY: polls one valid pollfd.
        let rc = unsafe { libc::poll(&mut p, 1, ms) };
        if rc > 0 {
            return Ok(());
        }
        if rc == 0 {
            bail!("no interrupt from the device within {IRQ_TIMEOUT:?}");
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err.into());
        }
    }
}

/// Proportional set size of `pid` in KiB, from /proc/PID/smaps_rollup.
fn pss_kib(pid: libc::pid_t) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let line = s.lines().find(|l| l.starts_with("Pss:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The `p`th percentile (1 to 100) of sorted values, by nearest rank.
fn percentile(sorted: &[u64], p: usize) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p.saturating_mul(sorted.len()).div_ceil(100)).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Nanoseconds as microseconds, for printing.
fn us(ns: u64) -> f64 {
    Duration::from_nanos(ns).as_secs_f64() * 1e6
}

fn print_figures(args: &DriveArgs, f: &Figures, pss: Option<u64>) {
    let mut l = f.latencies_ns.clone();
    l.sort_unstable();
    let mode = match (args.device_mode, args.unconfined) {
        (DeviceMode::Process, false) => "process",
        (DeviceMode::Process, true) => "process-unconfined",
        (DeviceMode::Thread, _) => "thread",
    };
    let secs = f.secs.max(1e-9);
    let op = match (kind_of(&args.device), args.op) {
        ("blk", BlkOp::Read) => " op=read",
        ("blk", BlkOp::Write) => " op=write",
        ("blk", BlkOp::Randread) => " op=randread",
        ("blk", BlkOp::Randwrite) => " op=randwrite",
        _ => "",
    };
    println!(
        "device={}{op} mode={mode} depth={} size={} requests={} secs={:.3} req_per_s={:.0} mb_per_s={:.1} \
         p50_us={:.1} p90_us={:.1} p99_us={:.1} pss_kib={}",
        args.device,
        args.depth,
        args.size,
        args.requests,
        f.secs,
        f64::from(args.requests) / secs,
        f.bytes as f64 / secs / 1e6,
        us(percentile(&l, 50)),
        us(percentile(&l, 90)),
        us(percentile(&l, 99)),
        pss.map_or_else(|| "n/a".to_owned(), |p| p.to_string()),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50), 50);
        assert_eq!(percentile(&v, 99), 99);
        assert_eq!(percentile(&v, 100), 100);
        assert_eq!(percentile(&[7], 90), 7);
        assert_eq!(percentile(&[], 50), 0);
    }
}
