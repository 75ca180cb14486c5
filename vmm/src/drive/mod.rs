//! `skvm drive`: plays the guest's driver against a device, without a guest.
//!
//! The device is started exactly as `skvm run` starts it (same spawner, same
//! confinement, same ipc, or a VMM thread in thread mode). This side builds
//! split virtqueues (virtio 1.2, 2.7) in a memfd "guest RAM", activates the
//! device with them, then posts descriptor chains, kicks the queue's eventfd
//! and waits on its interrupt eventfd, checking every used entry. It prints
//! throughput and kick-to-interrupt latency: the device's own cost, which a
//! guest on an emulating host cannot show.
//!
//! It is a client of the library: devices start through
//! [`crate::device_host::start_device`] and [`crate::device_host::greet`]
//! with their kind from the [`Registry`], and the backends open as the
//! kinds' modules open them. What it knows of each kind is what a guest
//! driver knows: how rng, blk and net requests look.
//!
//! Code map: `queue` is the driver's half of a split virtqueue; `request`
//! drives the one-queue devices (rng, blk); `net` drives virtio-net through
//! a tap and AF_PACKET sockets on its interface; `console` drives
//! virtio-console against an echoing peer; `vsock` drives virtio-vsock as
//! both a host program and the guest's echoing end of one stream; `fs`
//! sends virtio-fs's FUSE requests against a host directory; `fuzz` is
//! `--fuzz-stdin`.

mod console;
mod fs;
mod fuzz;
mod net;
mod queue;
mod request;
mod vsock;

use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::config::SandboxArgs;
use crate::device_host::spawner::{SingleThreaded, Spawner};
use crate::device_host::{
    describe_status, greet, start_device, with_early_end, DeviceMode, Launch,
};
use crate::kinds::blk::DiskSpec;
use crate::kinds::{Opened, Registry};
use crate::memory::{GuestRam, HUGE_PAGE};
use crate::virtio_pci::{Backend, DeviceEvents};
use queue::{QUEUE0, QUEUE1, QUEUE2, RAM};
use request::Workload;

/// Options of `skvm drive`.
#[derive(Debug, Args)]
pub struct DriveArgs {
    /// Device to start, named as in `skvm run` (its kind is the name without
    /// the trailing number): rng0, blk0 with --disk, net0 with --net, or
    /// console0 (its pty is a socket pair whose host end echoes every byte:
    /// a request is `--size` bytes written to the console and read back),
    /// or vsock0 (a host program's stream to the driver, which echoes it: a
    /// request is `--size` bytes the host program writes and reads back),
    /// or fs0 with --fs (FUSE requests on the shared directory, see --op).
    #[arg(long, value_name = "NAME", default_value = "rng0")]
    pub device: String,
    /// Where the device runs, as in `skvm run`.
    #[arg(long, value_enum, value_name = "MODE", default_value_t = DeviceMode::Process)]
    pub device_mode: DeviceMode,
    /// The device's adaptive polling window, as `skvm run
    /// --device-poll-us` sets it (0 to 1000; 0: off).
    #[arg(long, value_name = "US", default_value_t = 0,
          value_parser = clap::value_parser!(u32).range(0..=i64::from(ipc::MAX_POLL_US)))]
    pub device_poll_us: u32,
    /// The driver's side of the same: after a kick, it looks for the
    /// device's answer for up to US microseconds before it sleeps on the
    /// interrupt, as KVM's halt polling keeps a guest's idle vCPU awake
    /// (its default is 200). 0, the default: it sleeps at once, which on a
    /// host whose idle cores halt adds the wake-up to every round trip.
    /// For the waits that follow a kick: rng, blk, fs, net tx and vsock's
    /// transmit.
    #[arg(long, value_name = "US", default_value_t = 0,
          value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub halt_poll_us: u32,
    /// Negotiate VIRTIO_F_RING_EVENT_IDX (rng, blk and fs): the driver asks
    /// for an interrupt only when the last request of a kick is used, and
    /// kicks only when the device asks for it.
    #[arg(long)]
    pub event_idx: bool,
    /// The driver's memory (where the queues and the buffers are) in the
    /// host's 2 MiB pages, as `skvm run --hugepages` puts guest RAM: the
    /// host's pool needs 33 free pages.
    #[arg(long)]
    pub hugepages: bool,
    /// Number of requests to complete (net: frames).
    #[arg(long, value_name = "N", default_value_t = 20_000,
          value_parser = clap::value_parser!(u32).range(1..=100_000_000))]
    pub requests: u32,
    /// Bytes each request moves (rng: at most 64 KiB, its cap per request;
    /// blk: a multiple of 512, at most 1 MiB; net: the Ethernet frame, 60
    /// bytes to the tap's MTU plus 14; console: at most 4096; vsock: at
    /// most 64 KiB; fs reads and writes: 8 bytes to 128 KiB). Default 4096,
    /// net 1514, console and vsock 64.
    #[arg(long, value_name = "BYTES",
          value_parser = clap::value_parser!(u32).range(1..=1 << 20))]
    pub size: Option<u32>,
    /// Requests in flight per kick (queue depth; net rx: frames sent to the
    /// tap at once).
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub depth: u16,
    /// The image a blk device serves, as `skvm run --disk` takes it
    /// (PATH[,ro][,direct=on]). Writes change it.
    #[arg(long, value_name = "PATH[,ro][,direct=on]")]
    pub disk: Option<String>,
    /// The tap a net device serves, as `skvm run --net` takes it:
    /// tap=NAME attaches to an existing tap (it must be up), tap creates
    /// one for the run. The harness's end is AF_PACKET sockets on the
    /// tap's interface (CAP_NET_RAW).
    #[arg(long, value_name = "tap[=NAME][,mac=MAC]")]
    pub net: Option<String>,
    /// The directory an fs device shares, as `skvm run --fs` takes it. The
    /// run's files, `skvm-drive-PID*` in it, are removed at the end; the
    /// device's user (skvm's unprivileged one) must be able to write it.
    #[arg(long, value_name = "tag=TAG,path=DIR[,ro][,xattr]")]
    pub fs: Option<String>,
    /// What requests do. blk: sequential or random reads or writes
    /// (default randread). net: tx, frames the driver sends, read back
    /// from the tap's interface; rx, frames written into the tap's
    /// interface that the driver receives (default tx). fs: read or write,
    /// sequential requests of `--size` bytes on one file (its offsets wrap
    /// at 64 MiB); create, stat or unlink, one file made (MKNOD), looked up
    /// (LOOKUP) or removed (UNLINK) per request, at most 10 000 (default
    /// read).
    #[arg(long, value_enum, value_name = "OP")]
    pub op: Option<Op>,
    /// How device processes are confined.
    #[command(flatten)]
    pub sandbox: SandboxArgs,
    /// Fuzzing harness mode (see docs/FUZZING.md): read inputs from stdin,
    /// each a 4-byte little-endian length and that many bytes (at most 64
    /// KiB). For each, reset and re-activate the device with a queue of 16
    /// at descriptor table 0x0, available ring 0x100 and used ring 0x200,
    /// write the input over driver memory from address 0, kick, and wait
    /// briefly for an interrupt; then answer one byte on stdout: `0` if the
    /// device is still alive. If it died, print why on stderr and exit 1.
    /// rng and blk only.
    #[arg(long)]
    pub fuzz_stdin: bool,
    /// Run the device process without any confinement (no namespaces,
    /// empty root, capability drop, rlimits or seccomp), to measure what the
    /// sandbox costs. Benchmarks only; `skvm run` has no such option.
    #[arg(long)]
    pub unconfined: bool,
    /// Instead of a benchmark, post one hostile descriptor chain (rng:
    /// loop, outside, zero-len, huge-len, readonly; blk: loop, outside,
    /// past-end, partial-sector, split-header, no-status, unknown-type;
    /// net: tx-short, tx-oversized, tx-writable, tx-outside, tx-loop,
    /// rx-readable, rx-outside, rx-zero-len, rx-loop), check the device's
    /// answer, then check that a normal request still works. Prints one
    /// line; exit status 1 if the device misbehaved.
    #[arg(long, value_name = "CASE")]
    pub hostile: Option<String>,
    /// vsock0 only: start no device; connect to the vsock socket of a
    /// running VM (`skvm run --vsock cid=N,socket=PATH`) and time `--size`
    /// byte round trips through a guest program that echoes on port
    /// `--port` (the default guest's `vsock listen 5000 echo`): the stream
    /// through the device, the guest's kernel and back.
    #[arg(long, value_name = "PATH")]
    pub connect: Option<std::path::PathBuf>,
    /// The guest port `--connect` asks for.
    #[arg(long, value_name = "PORT", default_value_t = 5000)]
    pub port: u32,
    /// Pin the harness (every thread of this process but the device's,
    /// and the threads it starts later) to CPU H and the device's process
    /// or thread to CPU D; H and D may be the same. Without it the host's
    /// scheduler places them, and where a wake-up of a halted core is
    /// dear (a nested VM) the figures then depend on whether it put them
    /// on one core or two.
    #[arg(long, value_name = "H,D", value_parser = parse_cpus)]
    pub cpus: Option<Cpus>,
}

/// `--cpus H,D`: where the harness and the device run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cpus {
    /// The harness's CPU.
    pub harness: usize,
    /// The device's CPU.
    pub device: usize,
}

fn parse_cpus(s: &str) -> Result<Cpus, String> {
    let cpu = |v: &str| {
        v.trim()
            .parse::<usize>()
            .ok()
            .filter(|c| *c < libc::CPU_SETSIZE as usize)
            .ok_or_else(|| format!("'{v}' is not a CPU number"))
    };
    let (h, d) = s
        .split_once(',')
        .ok_or_else(|| format!("'{s}': expected H,D (two CPU numbers)"))?;
    Ok(Cpus {
        harness: cpu(h)?,
        device: cpu(d)?,
    })
}

/// What requests do (`--op`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Op {
    /// blk: sequential reads.
    Read,
    /// blk: sequential writes.
    Write,
    /// blk: reads at random aligned offsets.
    Randread,
    /// blk: writes at random aligned offsets.
    Randwrite,
    /// net: the driver transmits frames.
    Tx,
    /// net: the driver receives frames.
    Rx,
    /// fs: a file made per request.
    Create,
    /// fs: a file looked up per request.
    Stat,
    /// fs: a file removed per request.
    Unlink,
}

impl Op {
    /// Its name on the command line.
    fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::Randread => "randread",
            Op::Randwrite => "randwrite",
            Op::Tx => "tx",
            Op::Rx => "rx",
            Op::Create => "create",
            Op::Stat => "stat",
            Op::Unlink => "unlink",
        }
    }

    fn is_blk(self) -> bool {
        matches!(self, Op::Read | Op::Write | Op::Randread | Op::Randwrite)
    }

    fn is_fs(self) -> bool {
        matches!(
            self,
            Op::Read | Op::Write | Op::Create | Op::Stat | Op::Unlink
        )
    }
}

/// The device kinds `skvm drive` has a driver for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Driven {
    Rng,
    Blk,
    Net,
    Console,
    Vsock,
    Fs,
}

impl Driven {
    /// The driver for device `name`, if there is one.
    fn of(name: &str) -> Option<Self> {
        match name.trim_end_matches(|c: char| c.is_ascii_digit()) {
            "rng" => Some(Driven::Rng),
            "blk" => Some(Driven::Blk),
            "net" => Some(Driven::Net),
            "console" => Some(Driven::Console),
            "vsock" => Some(Driven::Vsock),
            "fs" => Some(Driven::Fs),
            _ => None,
        }
    }
}

impl DriveArgs {
    fn driven(&self) -> Option<Driven> {
        Driven::of(&self.device)
    }

    /// Bytes per request, with the device's default.
    fn size(&self) -> u32 {
        let default = match self.driven() {
            Some(Driven::Net) => 1514,
            Some(Driven::Console | Driven::Vsock) => 64,
            _ => 4096,
        };
        self.size.unwrap_or(default)
    }

    /// The operation, with the device's default (none for rng).
    fn op(&self) -> Option<Op> {
        match self.driven() {
            Some(Driven::Blk) => Some(self.op.unwrap_or(Op::Randread)),
            Some(Driven::Net) => Some(self.op.unwrap_or(Op::Tx)),
            Some(Driven::Fs) => Some(self.op.unwrap_or(Op::Read)),
            _ => None,
        }
    }
}

/// What one run measured.
struct Figures {
    secs: f64,
    latencies_ns: Vec<u64>,
    bytes: u64,
}

/// The device under test and its host side.
enum Target {
    /// rng or blk, one queue.
    Request(Workload),
    /// net, through a tap.
    Net(net::Host),
    /// console, against an echoing peer.
    Console,
    /// vsock, with a host program's stream.
    Vsock(vsock::Host),
    /// fs, on a host directory.
    Fs(fs::Host),
}

/// Refuses option combinations that do not fit the device.
fn validate(args: &DriveArgs) -> Result<()> {
    let Some(kind) = args.driven() else {
        bail!(
            "device '{}': only rng, blk, net, console, vsock and fs devices can be driven",
            args.device
        );
    };
    validate_backend(args, kind)?;
    validate_size(args, kind)?;
    let hostile_ok = matches!(kind, Driven::Rng | Driven::Blk | Driven::Net);
    if args.hostile.is_some() && !hostile_ok {
        bail!("--hostile drives rng, blk and net devices only");
    }
    if args.event_idx && !matches!(kind, Driven::Rng | Driven::Blk | Driven::Fs) {
        bail!("--event-idx drives rng, blk and fs devices only");
    }
    if args.fuzz_stdin && !matches!(kind, Driven::Rng | Driven::Blk) {
        bail!("--fuzz-stdin drives rng and blk devices only");
    }
    match (kind, args.op) {
        (_, None) => {}
        (Driven::Blk, Some(op)) if op.is_blk() => {}
        (Driven::Net, Some(Op::Tx | Op::Rx)) => {}
        (Driven::Fs, Some(op)) if op.is_fs() => {}
        (_, Some(op)) => bail!(
            "--op {} is not for {} devices",
            op.name(),
            args.device.trim_end_matches(|c: char| c.is_ascii_digit())
        ),
    }
    if args.connect.is_some() && (kind != Driven::Vsock || args.unconfined) {
        bail!("--connect drives the vsock device of a running VM: give --device vsock0 only");
    }
    if args.unconfined && args.device_mode != DeviceMode::Process {
        bail!("--unconfined is for --device-mode process");
    }
    if args.connect.is_some() && args.cpus.is_some() {
        bail!("--cpus places a device skvm drive starts; with --connect it starts none");
    }
    Ok(())
}

/// Refuses a backend option (`--disk`, `--net`, `--fs`) that is not the
/// one `kind` takes, and a missing one that it does.
fn validate_backend(args: &DriveArgs, kind: Driven) -> Result<()> {
    // The backend option each kind takes, and the ones given.
    let wants = match kind {
        Driven::Blk => Some("--disk"),
        Driven::Net => Some("--net"),
        Driven::Fs => Some("--fs"),
        Driven::Rng | Driven::Console | Driven::Vsock => None,
    };
    let given = [
        ("--disk", args.disk.is_some(), "blk"),
        ("--net", args.net.is_some(), "net"),
        ("--fs", args.fs.is_some(), "fs"),
    ];
    for (option, present, for_kind) in given {
        if present && wants != Some(option) {
            bail!(
                "device '{}': {option} is for {for_kind} devices",
                args.device
            );
        }
    }
    match wants {
        Some(option) if !given.iter().any(|(o, present, _)| *o == option && *present) => {
            let what = match kind {
                Driven::Blk => "the image with --disk",
                Driven::Net => "the tap with --net tap[=NAME]",
                _ => "the shared directory with --fs tag=TAG,path=DIR",
            };
            bail!("device '{}': give {what}", args.device);
        }
        _ => {}
    }
    Ok(())
}

/// Refuses a `--size` (and, for fs, a `--requests`) the device cannot serve.
fn validate_size(args: &DriveArgs, kind: Driven) -> Result<()> {
    let size = args.size();
    match kind {
        Driven::Rng if size > 65536 => {
            bail!("--size {size}: an rng request is at most 65536 bytes")
        }
        Driven::Blk if !size.is_multiple_of(512) => {
            bail!("--size {size}: blk requests are whole 512-byte sectors")
        }
        Driven::Console | Driven::Vsock => {
            let (what, max) = match kind {
                Driven::Console => ("console", console::MAX_SIZE),
                _ => ("vsock", vsock::MAX_SIZE),
            };
            if size > max {
                bail!("--size {size}: a {what} request is at most {max} bytes");
            }
        }
        Driven::Fs => {
            if !(8..=fs::MAX_SIZE).contains(&size) {
                bail!(
                    "--size {size}: an fs read or write is 8 to {} bytes",
                    fs::MAX_SIZE
                );
            }
            let meta = matches!(args.op(), Some(Op::Create | Op::Stat | Op::Unlink));
            if meta && args.requests > fs::MAX_META {
                bail!(
                    "--requests {}: at most {} files per create, stat or unlink run (each is a \
                     node the device holds)",
                    args.requests,
                    fs::MAX_META
                );
            }
        }
        _ => {}
    }
    Ok(())
}

/// Opens what the device serves: its backend, the fds that go with it, and
/// the harness's side.
fn open_target(args: &DriveArgs) -> Result<(Opened, Target)> {
    if args.driven() == Some(Driven::Console) {
        return Ok((console::open()?, Target::Console));
    }
    if args.driven() == Some(Driven::Vsock) {
        let (opened, host) = vsock::open()?;
        return Ok((opened, Target::Vsock(host)));
    }
    if let Some(value) = &args.fs {
        let (opened, dir, read_only) = crate::kinds::fs::open_share(
            value,
            &args.device,
            args.device_mode == DeviceMode::Process && !args.unconfined,
        )?;
        let mut host = fs::Host::new(dir, read_only);
        host.prepare(args, args.op().unwrap_or(Op::Read))?;
        return Ok((opened, Target::Fs(host)));
    }
    if let Some(d) = &args.disk {
        let spec = DiskSpec::parse(d)?;
        let disk = crate::kinds::blk::disk::open(&spec)?;
        let op = args.op().unwrap_or(Op::Randread);
        if u64::from(args.size()) > disk.sectors * 512 {
            bail!("--size {} is larger than the disk", args.size());
        }
        if spec.read_only && matches!(op, Op::Write | Op::Randwrite) {
            bail!("--op {} on a read-only disk", op.name());
        }
        let params = crate::kinds::blk::encode(&devices::block::DiskParams {
            sectors: disk.sectors,
            read_only: spec.read_only,
            direct: spec.direct,
            serial: Vec::new(),
        });
        let w = Workload::Blk {
            op,
            sectors: disk.sectors,
        };
        let opened = Opened {
            params,
            fds: vec![disk.fd],
            file_size: disk.size,
            root: ipc::Root::Empty,
            status: None,
            terminal: None,
        };
        return Ok((opened, Target::Request(w)));
    }
    if let Some(n) = &args.net {
        let (host, params, tap) = net::open(n, &args.device, args.size())?;
        let opened = Opened {
            params,
            fds: vec![tap],
            file_size: 0,
            root: ipc::Root::Empty,
            status: None,
            terminal: None,
        };
        return Ok((opened, Target::Net(host)));
    }
    let opened = Opened {
        params: crate::kinds::rng::params(),
        fds: Vec::new(),
        file_size: 0,
        root: ipc::Root::Empty,
        status: None,
        terminal: None,
    };
    Ok((opened, Target::Request(Workload::Rng)))
}

/// `skvm drive`: runs the benchmark and prints one line of `key=value`
/// figures (or the hostile case's line). Device kinds come from `kinds`.
pub fn run(args: &DriveArgs, kinds: &Registry) -> Result<()> {
    validate(args)?;
    queue::set_halt_poll(args.halt_poll_us);
    queue::set_event_idx(args.event_idx);
    if let Some(path) = &args.connect {
        let f = vsock::through_guest(path, args)?;
        print_figures(args, &f, None, None);
        return Ok(());
    }
    let kind = kinds
        .kind_of(&args.device)
        .with_context(|| format!("device '{}': unknown device kind", args.device))?;
    let mut sandbox = args.sandbox.opts();
    sandbox.unconfined = args.unconfined;
    // `--seccomp trap`: the SIGSYS reporter, for device threads and the
    // spawner (which inherits it), as `skvm run` installs it.
    sandbox.vmm.prepare(sandbox.seccomp);
    // The spawner must be forked while this process has a single thread.
    let single = SingleThreaded::claim()?;
    let spawner = match args.device_mode {
        DeviceMode::Process => Some(Spawner::start(&single, &sandbox, Vec::new())?),
        DeviceMode::Thread => None,
    };
    let (
        Opened {
            params,
            fds: backend_fds,
            file_size,
            root,
            ..
        },
        target,
    ) = open_target(args)?;
    let backend = ipc::Backend {
        kind: kind.name().to_owned(),
        params,
        fds: u8::try_from(backend_fds.len())?,
    };
    // Huge pages come whole: the last one is only partly used.
    let size = if args.hugepages {
        RAM.next_multiple_of(HUGE_PAGE)
    } else {
        RAM
    };
    let ram = GuestRam::new(size, args.hugepages).context("cannot create driver memory")?;
    let started = start_device(
        spawner.as_ref(),
        args.device_mode,
        &args.device,
        kind.clone(),
        sandbox,
        Launch {
            fds: &backend_fds,
            file_size,
            root,
        },
    )?;
    let pid = started.process.as_ref().map(sandbox::process::Pidfd::pid);
    let (backend, backend_fds) = started.hello(&backend, &backend_fds);
    let thread = started.thread;
    let memory = ram.ranges.iter().map(|r| (*r, ram.memfd.clone())).collect();
    let mut dev = greet(
        &args.device,
        (started.chan, started.process),
        kind.as_ref(),
        (&backend, backend_fds),
        &memory,
        args.device_poll_us,
    )
    .map_err(|e| with_early_end(e, spawner.as_ref(), pid))?;
    let queues = match target {
        Target::Request(_) => vec![QUEUE0.layout()],
        Target::Net(_) | Target::Console => vec![QUEUE0.layout(), QUEUE1.layout()],
        Target::Vsock(_) => vec![QUEUE0.layout(), QUEUE1.layout(), QUEUE2.layout()],
        Target::Fs(_) => vec![fs::HIPRIO.layout(), fs::REQUESTS.layout()],
    };
    let events = DeviceEvents::new(queues.len())?;
    let task = device_task(pid, &args.device);
    if let Some(cpus) = args.cpus {
        pin(cpus, task)?;
    }
    let clock = task.map(|t| std::path::PathBuf::from(format!("/proc/{t}/schedstat")));
    let mut cpu = None;
    let result = if args.fuzz_stdin {
        let all = dev.description().features;
        fuzz::fuzz_stdin(&mut dev, &ram.mem, &events, all).map(|()| None)
    } else {
        dev.start(
            driver_features(dev.description().features, args.event_idx),
            &queues,
            &events,
        )
        .context("activation failed")
        .and_then(|()| {
            let before = cpu_ns(clock.as_deref());
            let r = exercise(args, &ram.mem, &events, &target);
            cpu = before
                .zip(cpu_ns(clock.as_deref()))
                .map(|(a, b)| b.saturating_sub(a));
            r
        })
    };
    // An error with the device still alive is the harness's (or the fuzz
    // input stream's).
    let died = result.is_err() && dev.is_dead();
    let pss = pid.and_then(pss_kib);
    dev.shutdown();
    drop(dev);
    if let Some(t) = thread {
        let _ = t.join();
    }
    // Let the device process end on its own, so that its last words (what
    // it dropped) are written before the spawner takes it down.
    let status = spawner
        .as_ref()
        .and_then(|s| s.wait_exit(Duration::from_secs(2)))
        .map(|x| x.status);
    drop(spawner);
    match result {
        Err(e) if died => {
            let how = status.map(describe_status).unwrap_or_default();
            bail!("device {} died: {e:#}; {how}", args.device)
        }
        Err(e) => Err(e),
        Ok(Some(f)) => {
            print_figures(args, &f, pss, cpu);
            Ok(())
        }
        Ok(None) => Ok(()),
    }
}

/// What the harness's driver takes of the `offered` features: everything
/// it understands. blk's FLUSH (so writes are not synced one by one) and
/// RO, net's MAC, STATUS and MRG_RXBUF (no offloads: frames stay whole and
/// checksummed), VERSION_1, and RING_EVENT_IDX with `--event-idx`.
fn driver_features(offered: u64, event_idx: bool) -> u64 {
    let ring = if event_idx {
        1u64 << devices::virtio::VIRTIO_F_RING_EVENT_IDX
    } else {
        0
    };
    offered
        & (ring
            | (1u64 << devices::virtio::VIRTIO_F_VERSION_1)
            | (1 << devices::block::VIRTIO_BLK_F_FLUSH)
            | (1 << devices::block::VIRTIO_BLK_F_RO)
            | net::FEATURES)
}

/// The benchmark or the hostile case, on an activated device. Returns the
/// figures of a benchmark.
fn exercise(
    args: &DriveArgs,
    mem: &vm_memory::GuestMemoryMmap,
    events: &DeviceEvents,
    target: &Target,
) -> Result<Option<Figures>> {
    match (&args.hostile, target) {
        (Some(case), Target::Request(w)) => {
            println!("{}", request::hostile(mem, events, *w, case)?);
            Ok(None)
        }
        (Some(case), Target::Net(host)) => {
            println!("{}", net::hostile(mem, events, host, case)?);
            Ok(None)
        }
        (None, Target::Request(w)) => request::drive(mem, events, args, *w).map(Some),
        (None, Target::Net(host)) => net::drive(mem, events, host, args).map(Some),
        (None, Target::Console) => console::drive(mem, events, args).map(Some),
        (None, Target::Vsock(host)) => vsock::drive(mem, events, host, args).map(Some),
        (None, Target::Fs(host)) => {
            fs::drive(mem, events, host, args, args.op().unwrap_or(Op::Read)).map(Some)
        }
        (Some(_), Target::Console | Target::Vsock(_) | Target::Fs(_)) => {
            bail!("no hostile cases for console, vsock and fs devices")
        }
    }
}

/// The device's task: its process `pid` (a device process has one
/// thread), or its thread in this process (named `skvm-dev-NAME`, cut to
/// the kernel's 15 bytes).
fn device_task(pid: Option<libc::pid_t>, name: &str) -> Option<libc::pid_t> {
    if pid.is_some() {
        return pid;
    }
    let comm: String = format!("skvm-dev-{name}").chars().take(15).collect();
    std::fs::read_dir("/proc/self/task")
        .ok()?
        .filter_map(Result::ok)
        .find(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == comm)
        })?
        .file_name()
        .to_str()?
        .parse()
        .ok()
}

/// `--cpus`: the device's task to its CPU, every other thread of this
/// process to the harness's (threads started later inherit it).
fn pin(cpus: Cpus, device: Option<libc::pid_t>) -> Result<()> {
    let device = device.context("--cpus: the device's thread was not found")?;
    set_affinity(device, cpus.device)
        .with_context(|| format!("--cpus: cannot pin the device to CPU {}", cpus.device))?;
    let tasks = std::fs::read_dir("/proc/self/task").context("--cpus: /proc/self/task")?;
    for t in tasks.filter_map(Result::ok) {
        let Some(tid) = t.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        if tid != device {
            set_affinity(tid, cpus.harness).with_context(|| {
                format!("--cpus: cannot pin the harness to CPU {}", cpus.harness)
            })?;
        }
    }
    Ok(())
}

/// Lets task `tid` run on `cpu` only.
fn set_affinity(tid: libc::pid_t, cpu: usize) -> std::io::Result<()> {
    // SAFETY: an all-zero cpu_set_t is the empty set; CPU_SET stays inside
    // it for cpu < CPU_SETSIZE (parse_cpus checks), and sched_setaffinity
    // only reads the set.
    let r = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Nanoseconds a task has run on a CPU, from its schedstat file.
fn cpu_ns(schedstat: Option<&std::path::Path>) -> Option<u64> {
    std::fs::read_to_string(schedstat?)
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
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

/// One line of figures; `cpu`: the device's CPU time over the run, in
/// nanoseconds (printed per request, the driver's own left out).
fn print_figures(args: &DriveArgs, f: &Figures, pss: Option<u64>, cpu: Option<u64>) {
    let mut l = f.latencies_ns.clone();
    l.sort_unstable();
    let mode = match (args.device_mode, args.unconfined) {
        _ if args.connect.is_some() => "guest",
        (DeviceMode::Process, false) => "process",
        (DeviceMode::Process, true) => "process-unconfined",
        (DeviceMode::Thread, _) => "thread",
    };
    let secs = f.secs.max(1e-9);
    let op = args
        .op()
        .map_or_else(String::new, |op| format!(" op={}", op.name()));
    println!(
        "device={}{op} mode={mode} depth={} size={} requests={} secs={:.3} req_per_s={:.0} mb_per_s={:.1} \
         p50_us={:.1} p90_us={:.1} p99_us={:.1} pss_kib={} cpu_us_per_req={}{}",
        args.device,
        args.depth,
        args.size(),
        args.requests,
        f.secs,
        f64::from(args.requests) / secs,
        f.bytes as f64 / secs / 1e6,
        us(percentile(&l, 50)),
        us(percentile(&l, 90)),
        us(percentile(&l, 99)),
        pss.map_or_else(|| "n/a".to_owned(), |p| p.to_string()),
        cpu.map_or_else(
            || "n/a".to_owned(),
            |ns| format!("{:.2}", ns as f64 / 1e3 / f64::from(args.requests))
        ),
        args.cpus.map_or_else(String::new, |c| format!(
            " cpus={},{}",
            c.harness, c.device
        )),
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
