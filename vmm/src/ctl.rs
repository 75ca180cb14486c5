//! The control socket (`skvm run --ctl PATH`) and its client (`skvm ctl`).
//!
//! One command per connection: the client writes one line (`status`,
//! `pause`, `resume`, `device-restart NAME`, `mem-add SIZE`, `powerdown`,
//! `snapshot [--resume]` with the snapshot's two files as fds, `shutdown`),
//! skvm answers with one JSON object on one line and closes. The main
//! thread serves the socket between its other work ([`Control`]); a client
//! that does not send its line within a second is dropped, so it cannot
//! stall the VM.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::os::unix::thread::JoinHandleExt;
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::console::backend::Console;
use crate::device_host::DeviceHost;
use crate::exit::{ExitReason, ExitSignal};
use crate::hotplug::Hotplug;
use crate::legacy::power_button::PowerButton;
use crate::log;
use crate::snapshot::take::SnapshotSource;
use crate::vcpu::{self, PauseGate};

/// Longest command line accepted.
const MAX_LINE: usize = 256;
/// How long a client may take to send its command.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(1);

/// A command on the control socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Each device's pid, state, restarts, RSS and queue rings, and the
    /// VM's state.
    Status,
    /// Stop the vCPUs and the devices.
    Pause,
    /// Start them again.
    Resume,
    /// Replace a device by a new instance (save, new sandbox, restore).
    DeviceRestart(String),
    /// Add guest memory.
    MemAdd(u64),
    /// Press the ACPI power button: the guest powers off cleanly.
    Powerdown,
    /// Write a snapshot of the whole VM into the two files the client
    /// passes, then stop (or, with `resume`, carry on).
    Snapshot {
        /// Carry on after the snapshot instead of stopping.
        resume: bool,
    },
    /// Stop the VM.
    Shutdown,
}

/// Why a command line was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// Nothing was sent.
    #[error("empty command")]
    Empty,
    /// Not a command skvm knows.
    #[error(
        "unknown command {0:?} (status, pause, resume, device-restart NAME, mem-add SIZE, \
         powerdown, snapshot DIR [--resume], shutdown)"
    )]
    Unknown(String),
    /// mem-add with a size that does not parse.
    #[error("bad size {0:?} (e.g. 128M, 1G)")]
    Size(String),
    /// The line could not be read.
    #[error("reading the command: {0}")]
    Read(String),
    /// The line is too long.
    #[error("command longer than {MAX_LINE} bytes")]
    TooLong,
    /// The line is not UTF-8.
    #[error("command is not UTF-8")]
    NotUtf8,
}

/// Parses one command line.
pub fn parse(line: &str) -> Result<Command, CommandError> {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["status"] => Ok(Command::Status),
        ["pause"] => Ok(Command::Pause),
        ["resume"] => Ok(Command::Resume),
        ["powerdown"] => Ok(Command::Powerdown),
        ["snapshot"] => Ok(Command::Snapshot { resume: false }),
        ["snapshot", "--resume"] => Ok(Command::Snapshot { resume: true }),
        ["shutdown"] => Ok(Command::Shutdown),
        ["device-restart", name] => Ok(Command::DeviceRestart((*name).to_owned())),
        ["mem-add", size] => crate::memory::parse_size(size)
            .filter(|s| *s > 0)
            .map(Command::MemAdd)
            .ok_or_else(|| CommandError::Size((*size).to_owned())),
        [] => Err(CommandError::Empty),
        _ => Err(CommandError::Unknown(clip(line.trim()).to_owned())),
    }
}

fn clip(s: &str) -> &str {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A JSON string literal for `s`.
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The answer to a failed command.
pub fn error_answer(message: &str) -> String {
    format!("{{\"ok\":false,\"error\":{}}}", json_string(message))
}

/// The listening control socket.
pub struct CtlServer {
    socket: PrivateSocket,
}

/// The control socket's file, to remove when the VMM ends: by path, and
/// only while the path still names the socket skvm bound (same device and
/// inode). The VMM cannot remove it itself once it has left the host's
/// file system; the spawner, which stays outside, does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    fn of(path: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::symlink_metadata(path)?;
        Ok(Self {
            path: path.to_owned(),
            dev: m.dev(),
            ino: m.ino(),
        })
    }

    /// Removes the file if the path still names the socket bound.
    pub fn remove(&self) {
        if Self::of(&self.path).is_ok_and(|now| now == *self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A listening unix socket skvm bound (`--ctl`, `--serial socket=`):
/// non-blocking, mode 0600, and its file removed when it is dropped, unless
/// it was handed off to the spawner (the VMM cannot remove it once
/// confined: see [`SocketFile`]).
pub struct PrivateSocket {
    listener: UnixListener,
    file: SocketFile,
    handed_off: bool,
}

impl PrivateSocket {
    /// Listens on `path`, created mode 0600 (under umask 0177, so no other
    /// user can connect between its creation and its chmod). A socket file
    /// left by a VM that was killed (nobody listens) is replaced; a live
    /// one, or any other file, is refused. `flag` (e.g. "--ctl ") starts
    /// every message. Call while the process has one thread (the umask is
    /// the process's).
    pub fn bind(path: &Path, flag: &str) -> Result<Self> {
        let shown = path.display();
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => {
                if UnixStream::connect(path).is_ok() {
                    bail!(
                        "{flag}{shown}: something is listening there (another skvm?); not replacing it"
                    );
                }
                std::fs::remove_file(path).with_context(|| format!("cannot replace {shown}"))?;
            }
            Ok(_) => bail!("{flag}{shown}: the file exists and is not a socket"),
            Err(_) => {}
        }
        // SAFETY: umask cannot fail; the old mask is put back below.
        let old = unsafe { libc::umask(0o177) };
        let bound = UnixListener::bind(path);
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        let listener = bound.with_context(|| format!("{flag}{shown}: cannot listen"))?;
        let file = SocketFile::of(path).with_context(|| format!("{flag}{shown}"))?;
        // From here on, an error drops the socket, which removes its file.
        let socket = Self {
            listener,
            file,
            handed_off: false,
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("{flag}{shown}: cannot restrict"))?;
        socket
            .listener
            .set_nonblocking(true)
            .with_context(|| format!("{flag}{shown}"))?;
        Ok(socket)
    }

    /// The listener (non-blocking).
    pub fn listener(&self) -> &UnixListener {
        &self.listener
    }

    /// The socket's file.
    pub fn file(&self) -> &SocketFile {
        &self.file
    }

    /// Leaves the removal of the socket's file at exit to the spawner.
    pub fn hand_off(&mut self) {
        self.handed_off = true;
    }
}

impl std::fmt::Debug for PrivateSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrivateSocket")
            .field("path", &self.file.path)
            .finish_non_exhaustive()
    }
}

impl Drop for PrivateSocket {
    fn drop(&mut self) {
        if !self.handed_off {
            self.file.remove();
        }
    }
}

impl CtlServer {
    /// Listens on `path` ([`PrivateSocket::bind`]).
    pub fn bind(path: &Path) -> Result<Self> {
        Ok(Self {
            socket: PrivateSocket::bind(path, "--ctl ")?,
        })
    }

    /// The socket's file.
    pub fn file(&self) -> &SocketFile {
        self.socket.file()
    }

    /// Leaves the removal of the socket's file at exit to the spawner.
    pub fn hand_off(&mut self) {
        self.socket.hand_off();
    }

    /// The fd to poll for clients.
    pub fn fd(&self) -> RawFd {
        self.socket.listener().as_raw_fd()
    }

    /// The next waiting client with its command line and the fds it sent
    /// (at most [`MAX_CLIENT_FDS`]: a snapshot's files), if any. A client
    /// that sends nothing usable gets its error answer here.
    pub fn next(&self) -> Option<Client> {
        loop {
            let (stream, _) = self.socket.listener().accept().ok()?;
            if stream.set_nonblocking(false).is_err()
                || stream.set_write_timeout(Some(CLIENT_TIMEOUT)).is_err()
            {
                continue;
            }
            let mut fds = Vec::new();
            let command = read_line(&stream, &mut fds).and_then(|l| parse(&l));
            return Some(Client {
                stream,
                command,
                fds,
            });
        }
    }
}

/// Sends `answer` (one JSON object) and closes.
pub fn answer(mut stream: UnixStream, answer: &str) {
    let _ = stream.write_all(format!("{answer}\n").as_bytes());
}

/// A client of the control socket: its connection, its command and the
/// fds it sent with it.
pub struct Client {
    /// Where the answer goes.
    pub stream: UnixStream,
    /// What it asked.
    pub command: Result<Command, CommandError>,
    /// The fds that came with the command line.
    pub fds: Vec<OwnedFd>,
}

/// Most fds a client may send (a snapshot's state and memory files).
pub const MAX_CLIENT_FDS: usize = 2;

/// Reads the command line, all of it within [`CLIENT_TIMEOUT`] (a client
/// sending a byte at a time cannot hold the main thread longer), and the
/// fds that come with it (more than [`MAX_CLIENT_FDS`] is an error).
fn read_line(stream: &UnixStream, fds: &mut Vec<OwnedFd>) -> Result<String, CommandError> {
    let deadline = std::time::Instant::now() + CLIENT_TIMEOUT;
    let mut buf = Vec::with_capacity(64);
    let mut chunk = [0u8; 64];
    while !buf.contains(&b'\n') {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(CommandError::Read(format!(
                "no complete command within {} ms",
                CLIENT_TIMEOUT.as_millis()
            )));
        }
        match ipc::fdpass::recv(stream.as_fd(), &mut chunk, MAX_CLIENT_FDS, Some(left)) {
            Ok((0, _)) => break,
            Ok((n, got)) => {
                fds.extend(got);
                buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
            }
            Err(ipc::IpcError::Timeout) => continue,
            Err(e) => return Err(CommandError::Read(e.to_string())),
        }
        if fds.len() > MAX_CLIENT_FDS {
            return Err(CommandError::Read(format!(
                "more than {MAX_CLIENT_FDS} fds sent"
            )));
        }
        if buf.len() > MAX_LINE {
            return Err(CommandError::TooLong);
        }
    }
    let line = buf.split(|b| *b == b'\n').next().unwrap_or_default();
    String::from_utf8(line.to_vec()).map_err(|_| CommandError::NotUtf8)
}

/// What the control socket acts on: the VM's vCPUs, its devices and its
/// hot-added memory; commands run on the main thread.
pub struct Control {
    server: CtlServer,
    gate: Arc<PauseGate>,
    handles: Arc<Vec<JoinHandle<()>>>,
    paused: bool,
    hotplug: Option<Hotplug>,
    power_button: Arc<PowerButton>,
    /// What a snapshot reads of the machine.
    snapshot: SnapshotSource,
    /// The serial console, for `status`.
    console: Arc<Console>,
}

/// How long the vCPUs may take to stop for a pause.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(2);

impl Control {
    /// Serves `server`, pausing the vCPU threads `handles` through `gate`.
    pub fn new(
        server: CtlServer,
        gate: Arc<PauseGate>,
        handles: Arc<Vec<JoinHandle<()>>>,
        hotplug: Option<Hotplug>,
        power_button: Arc<PowerButton>,
        snapshot: SnapshotSource,
        console: Arc<Console>,
    ) -> Self {
        Self {
            console,
            server,
            gate,
            handles,
            paused: false,
            hotplug,
            power_button,
            snapshot,
        }
    }

    /// The fd to poll for clients.
    pub fn fd(&self) -> RawFd {
        self.server.fd()
    }

    /// Answers every waiting client.
    pub fn serve(&mut self, host: &mut DeviceHost, exit: &ExitSignal) {
        while let Some(client) = self.server.next() {
            let reply = match client.command {
                Ok(c) => self.execute(c, client.fds, host, exit),
                Err(e) => error_answer(&e.to_string()),
            };
            answer(client.stream, &reply);
        }
    }

    fn execute(
        &mut self,
        command: Command,
        fds: Vec<OwnedFd>,
        host: &mut DeviceHost,
        exit: &ExitSignal,
    ) -> String {
        log::debug(&format!("control socket: {command:?}"));
        let result = match command {
            Command::Status => Ok(self.status(host)),
            Command::Pause => self.pause(host).map(|()| self.state_answer()),
            Command::Resume => {
                let resumed = host.resume_all();
                self.gate.resume();
                self.paused = false;
                resumed.map(|()| self.state_answer())
            }
            Command::DeviceRestart(name) => host.restart(&name).map(|t| {
                format!(
                    "{{\"ok\":true,\"device\":{},\"pid\":{},\"save_us\":{},\"spawn_us\":{},\"restore_us\":{}}}",
                    json_string(&name),
                    t.pid.map_or_else(|| "null".to_owned(), |p| p.to_string()),
                    t.save.as_micros(),
                    t.spawn.as_micros(),
                    t.restore.as_micros()
                )
            }),
            Command::MemAdd(size) => match self.hotplug.as_mut() {
                None => Err(anyhow::anyhow!(
                    "mem-add: this VM has no room for memory hotplug (skvm run --hotplug-mem SIZE)"
                )),
                Some(h) => h.add(size, host).map(|a| {
                    log::info(&format!(
                        "memory: added {} MiB; {} devices rebuilt, longest pause {} us",
                        a.size >> 20,
                        a.devices,
                        a.longest_pause.as_micros()
                    ));
                    format!(
                        "{{\"ok\":true,\"added\":{},\"usable\":{},\"devices\":{},\"longest_pause_us\":{}}}",
                        a.size,
                        a.usable,
                        a.devices,
                        a.longest_pause.as_micros()
                    )
                }),
            },
            Command::Powerdown => {
                log::info("power button pressed on the control socket");
                self.power_button
                    .press()
                    .map(|()| "{\"ok\":true}".to_owned())
                    .context("cannot press the power button")
            }
            Command::Snapshot { resume } => self.snapshot(fds, resume, host, exit),
            Command::Shutdown => {
                log::info("shutdown requested on the control socket");
                exit.request(ExitReason::Poweroff);
                Ok("{\"ok\":true}".to_owned())
            }
        };
        result.unwrap_or_else(|e| error_answer(&format!("{e:#}")))
    }

    /// Pauses the VM (unless it is), writes the snapshot into the client's
    /// two files, then stops the VM or, with `resume`, lets it run again
    /// (if it ran before). A failed snapshot leaves the VM as it was.
    fn snapshot(
        &mut self,
        fds: Vec<OwnedFd>,
        resume: bool,
        host: &mut DeviceHost,
        exit: &ExitSignal,
    ) -> Result<String> {
        let [state, memory]: [OwnedFd; 2] = fds.try_into().map_err(|_| {
            anyhow::anyhow!(
                "snapshot: no files came with the command (use skvm ctl SOCKET snapshot DIR)"
            )
        })?;
        let (state, memory) = (std::fs::File::from(state), std::fs::File::from(memory));
        let was_paused = self.paused;
        self.pause(host)?;
        let taken = crate::snapshot::take::take(&self.snapshot, &self.gate, host, &state, &memory);
        let carry_on = resume || taken.is_err();
        if carry_on && !was_paused {
            let resumed = host.resume_all();
            self.gate.resume();
            self.paused = false;
            resumed?;
        }
        let t = taken?;
        log::info(&format!(
            "snapshot: {} bytes of state, {} MiB of memory in {} ms{}",
            t.state_bytes,
            t.memory_bytes >> 20,
            (t.state_time + t.memory_time).as_millis(),
            if resume {
                "; the VM carries on"
            } else {
                "; the VM stops"
            }
        ));
        if !resume {
            exit.request(ExitReason::Snapshotted);
        }
        Ok(format!(
            "{{\"ok\":true,\"state_bytes\":{},\"memory_bytes\":{},\"state_us\":{},\"memory_us\":{},\"resumed\":{resume}}}",
            t.state_bytes,
            t.memory_bytes,
            t.state_time.as_micros(),
            t.memory_time.as_micros()
        ))
    }

    fn state_answer(&self) -> String {
        let state = if self.paused { "paused" } else { "running" };
        format!("{{\"ok\":true,\"state\":\"{state}\"}}")
    }

    fn pause(&mut self, host: &mut DeviceHost) -> Result<()> {
        if self.paused {
            return Ok(());
        }
        let handles = self.handles.clone();
        let kick = move || {
            for h in handles.iter().filter(|h| !h.is_finished()) {
                // SAFETY: the thread is alive; the signal's handler does
                // nothing.
                unsafe { libc::pthread_kill(h.as_pthread_t(), vcpu::kick_signal()) };
            }
        };
        if !self.gate.pause(self.handles.len(), kick, PAUSE_TIMEOUT) {
            self.gate.resume();
            bail!("the vCPUs did not stop within {PAUSE_TIMEOUT:?}");
        }
        if let Err(e) = host.pause_all() {
            let _ = host.resume_all();
            self.gate.resume();
            return Err(e);
        }
        self.paused = true;
        Ok(())
    }

    fn status(&self, host: &DeviceHost) -> String {
        let devices: Vec<String> = host
            .status()
            .iter()
            .map(|d| {
                let num = |v: Option<u64>| v.map_or_else(|| "null".to_owned(), |v| v.to_string());
                let queues: Vec<String> = d
                    .queues
                    .iter()
                    .map(|q| {
                        format!(
                            "{{\"index\":{},\"size\":{},\"desc\":{},\"avail\":{},\"used\":{}}}",
                            q.index, q.size, q.desc, q.avail, q.used
                        )
                    })
                    .collect();
                let backend = d
                    .backend
                    .as_ref()
                    .map(|b| format!(",\"backend\":{b}"))
                    .unwrap_or_default();
                format!(
                    "{{\"name\":{},\"pid\":{},\"state\":\"{}\",\"restarts\":{},\"rss_kib\":{},\"queues\":[{}]{backend}}}",
                    json_string(&d.name),
                    num(d.pid.and_then(|p| u64::try_from(p).ok())),
                    d.state,
                    d.restarts,
                    num(d.rss_kib),
                    queues.join(",")
                )
            })
            .collect();
        let state = if self.paused { "paused" } else { "running" };
        let hotplugged = self.hotplug.as_ref().map_or(0, Hotplug::added);
        format!(
            "{{\"ok\":true,\"state\":\"{state}\",\"hotplugged\":{hotplugged},\"serial\":{},\"devices\":[{}]}}",
            self.console.status(),
            devices.join(",")
        )
    }
}

/// `skvm ctl` options.
#[derive(Debug, Clone, Args)]
pub struct CtlArgs {
    /// The VM's control socket (`skvm run --ctl PATH`).
    #[arg(value_name = "SOCKET")]
    pub socket: PathBuf,
    /// status | pause | resume | device-restart NAME | mem-add SIZE |
    /// powerdown | snapshot DIR [--resume] | shutdown.
    #[arg(value_name = "COMMAND", required = true, num_args = 1.., allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// `snapshot DIR [--resume]` as the client takes it: the directory and
/// the line sent to skvm (which gets the files, not the path).
fn snapshot_words(words: &[String]) -> Option<(PathBuf, String)> {
    let resume = words.iter().any(|w| w == "--resume");
    let dirs: Vec<&String> = words.iter().skip(1).filter(|w| *w != "--resume").collect();
    match (words.first().map(String::as_str), dirs.as_slice()) {
        (Some("snapshot"), [dir]) if words.len() == 2 + usize::from(resume) => Some((
            PathBuf::from(dir),
            if resume {
                "snapshot --resume"
            } else {
                "snapshot"
            }
            .to_owned(),
        )),
        _ => None,
    }
}

/// Sends one command and prints the answer; fails when skvm cannot be
/// reached or the answer is not `"ok":true`. `snapshot DIR` creates the
/// snapshot's files in DIR and sends them with the command (the VMM opens
/// no path); they are removed again if the snapshot fails.
pub fn client(args: &CtlArgs) -> Result<()> {
    let snapshot = if args.command.first().is_some_and(|w| w == "snapshot") {
        Some(
            snapshot_words(&args.command)
                .context("usage: skvm ctl SOCKET snapshot DIR [--resume]")?,
        )
    } else {
        None
    };
    let line = match &snapshot {
        Some((_, line)) => line.clone(),
        None => args.command.join(" "),
    };
    parse(&line)?;
    let mut stream = UnixStream::connect(&args.socket)
        .with_context(|| format!("cannot connect to {}", args.socket.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(600)))?;
    let files = match &snapshot {
        Some((dir, _)) => Some(crate::snapshot::files::NewSnapshot::create(dir)?),
        None => None,
    };
    let wire = format!("{line}\n");
    match &files {
        Some(f) => ipc::fdpass::send(
            stream.as_fd(),
            wire.as_bytes(),
            &[f.state.as_fd(), f.memory.as_fd()],
        )
        .context("cannot send the command")?,
        None => stream
            .write_all(wire.as_bytes())
            .context("cannot send the command")?,
    }
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .context("no answer from skvm")?;
    let answer = answer.trim_end();
    if answer.is_empty() {
        bail!("skvm closed the connection without an answer");
    }
    println!("{answer}");
    if !answer.starts_with("{\"ok\":true") {
        bail!("the command failed");
    }
    if let Some(f) = files {
        f.keep()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("skvm-ctl-{tag}-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&p);
        p
    }

    #[test]
    fn a_live_socket_is_never_replaced() {
        let path = scratch("live");
        let first = CtlServer::bind(&path).unwrap();
        let e = CtlServer::bind(&path).err().unwrap().to_string();
        assert!(e.contains("something is listening there"), "{e}");
        // The first still serves on its file.
        assert!(UnixStream::connect(&path).is_ok());
        drop(first);
        assert!(!path.exists());
    }

    #[test]
    fn a_client_dripping_bytes_is_cut_at_the_deadline() {
        let path = scratch("drip");
        let server = CtlServer::bind(&path).unwrap();
        let p = path.clone();
        let client = std::thread::spawn(move || {
            let mut s = UnixStream::connect(&p).unwrap();
            for _ in 0..20 {
                if s.write_all(b"s").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        std::thread::sleep(Duration::from_millis(100));
        let start = std::time::Instant::now();
        let command = server.next().unwrap().command;
        let took = start.elapsed();
        assert!(matches!(command, Err(CommandError::Read(_))), "{command:?}");
        assert!(took < CLIENT_TIMEOUT * 2, "{took:?}");
        client.join().unwrap();
    }

    #[test]
    fn commands_parse_and_bad_ones_say_why() {
        assert_eq!(parse("status\n"), Ok(Command::Status));
        assert_eq!(
            parse(" device-restart  blk0 "),
            Ok(Command::DeviceRestart("blk0".into()))
        );
        assert_eq!(parse("mem-add 128M"), Ok(Command::MemAdd(128 << 20)));
        assert_eq!(parse("powerdown"), Ok(Command::Powerdown));
        assert_eq!(parse("shutdown"), Ok(Command::Shutdown));
        assert_eq!(
            parse("snapshot --resume"),
            Ok(Command::Snapshot { resume: true })
        );
        let e = |line| parse(line).unwrap_err().to_string();
        assert!(e("mem-add 0").contains("bad size"));
        assert!(parse("mem-add lots").is_err());
        assert!(e("device-restart").contains("unknown command"));
        assert!(parse("").is_err());
        assert!(e("reboot now").contains("status, pause"));
    }

    #[test]
    fn the_client_sends_the_snapshot_command_without_its_directory() {
        let w = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
        assert_eq!(
            snapshot_words(&w("snapshot /s")),
            Some((PathBuf::from("/s"), "snapshot".into()))
        );
        assert_eq!(
            snapshot_words(&w("snapshot --resume /s")),
            Some((PathBuf::from("/s"), "snapshot --resume".into()))
        );
        assert_eq!(snapshot_words(&w("snapshot")), None);
        assert_eq!(snapshot_words(&w("snapshot /a /b")), None);
    }

    #[test]
    fn fds_sent_with_a_command_arrive_with_it_and_too_many_are_refused() {
        let path = scratch("fds");
        let server = CtlServer::bind(&path).unwrap();
        let files: Vec<std::fs::File> = (0..3)
            .map(|_| std::fs::File::open("/dev/null").unwrap())
            .collect();
        let send = |n: usize| {
            let c = UnixStream::connect(&path).unwrap();
            let fds: Vec<_> = files.iter().take(n).map(AsFd::as_fd).collect();
            ipc::fdpass::send(c.as_fd(), b"snapshot\n", &fds).unwrap();
            let client = server.next().unwrap();
            (c, client)
        };
        let (_c, two) = send(2);
        assert_eq!(two.command, Ok(Command::Snapshot { resume: false }));
        assert_eq!(two.fds.len(), 2);
        let (_c, three) = send(3);
        assert!(matches!(three.command, Err(CommandError::Read(_))));
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_string("a\"b\\c\nd\u{1}"), "\"a\\\"b\\\\c\\nd\\u0001\"");
        assert_eq!(
            error_answer("no \"x\""),
            "{\"ok\":false,\"error\":\"no \\\"x\\\"\"}"
        );
    }

    #[test]
    fn a_socket_file_is_replaced_and_other_files_are_refused() {
        let dir = std::env::temp_dir().join(format!("skvm-ctl-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("ctl");
        drop(UnixListener::bind(&sock).unwrap());
        let server = CtlServer::bind(&sock).unwrap();
        let mode = std::fs::metadata(&sock).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let mut c = UnixStream::connect(&sock).unwrap();
        c.write_all(b"status\n").unwrap();
        let client = server.next().unwrap();
        assert_eq!(client.command, Ok(Command::Status));
        assert!(client.fds.is_empty());
        answer(client.stream, "{\"ok\":true}");
        let mut got = String::new();
        c.read_to_string(&mut got).unwrap();
        assert_eq!(got, "{\"ok\":true}\n");
        drop(server);
        assert!(!sock.exists(), "the socket outlived the server");
        let file = dir.join("file");
        std::fs::write(&file, b"keep").unwrap();
        let e = CtlServer::bind(&file).err().unwrap().to_string();
        assert!(e.contains("not a socket"), "{e}");
        assert_eq!(std::fs::read(&file).unwrap(), b"keep");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
