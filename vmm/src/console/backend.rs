//! Where the serial console goes (`--serial`): skvm's own terminal, a
//! pseudo-terminal, a unix socket clients attach to, a file, or nowhere.
//!
//! Everything is opened before the VMM gives up its view of the host's
//! files; afterwards the VMM only reads, writes, accepts and closes. Guest
//! output is written by vCPU threads (the UART's transmit register), input
//! is read by the main thread; neither ever blocks on a reader that does
//! not keep up: output a client or pty cannot take is dropped for it
//! (a socket's last 64 KiB are kept for the next client).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::ctl::{PrivateSocket, SocketFile};

use devices::console::{History, BUSY};

/// How long a client that just attached may take to accept the history.
const HISTORY_TIMEOUT: Duration = Duration::from_secs(1);

/// `--serial`: where the 8250's output goes and its input comes from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SerialSpec {
    /// skvm's standard input and output (raw mode on a terminal).
    #[default]
    Stdio,
    /// A new pseudo-terminal, whose path skvm prints.
    Pty,
    /// A unix socket at PATH, one client at a time.
    Socket(PathBuf),
    /// Output appended to the file at PATH; no input.
    File(PathBuf),
    /// No output, no input.
    Off,
}

impl FromStr for SerialSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let path = |p: &str| {
            if p.is_empty() {
                Err(format!("'{s}': the path is empty"))
            } else {
                Ok(PathBuf::from(p))
            }
        };
        match s {
            "stdio" => Ok(Self::Stdio),
            "pty" => Ok(Self::Pty),
            "off" => Ok(Self::Off),
            _ => {
                if let Some(p) = s.strip_prefix("socket=") {
                    Ok(Self::Socket(path(p)?))
                } else if let Some(p) = s.strip_prefix("file=") {
                    Ok(Self::File(path(p)?))
                } else {
                    Err(format!(
                        "'{s}': expected stdio, pty, socket=PATH, file=PATH or off"
                    ))
                }
            }
        }
    }
}

/// What a socket console keeps: the last output, and the attached client.
struct SocketOut {
    history: History,
    client: Option<Arc<UnixStream>>,
}

/// The output side, shared with the vCPU threads.
enum Out {
    Stdout,
    /// A pty master or an appended file: written, never waited for.
    Fd(File),
    Socket(SocketOut),
    Off,
}

/// The input side, the main thread's.
enum In {
    Stdin,
    /// The pty master, and a slave fd skvm keeps open so that the pty
    /// keeps serving while no one else has it open; the slave's path.
    Pty {
        master: File,
        _slave: File,
        path: PathBuf,
    },
    Socket(PrivateSocket),
    None,
}

/// An opened `--serial` backend.
pub struct Console {
    spec: SerialSpec,
    out: Arc<Mutex<Out>>,
    input: In,
}

/// What reading the console's input gave.
#[derive(Debug, PartialEq, Eq)]
pub enum ConsoleRead {
    /// Bytes for the guest.
    Data(usize),
    /// Nothing now.
    Nothing,
    /// Standard input ended: stop reading it.
    Closed,
}

fn lock(m: &Mutex<Out>) -> MutexGuard<'_, Out> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Console {
    /// Opens the backend `spec` names. Call while the VMM still sees the
    /// host's files, and (for a socket) has one thread.
    pub fn open(spec: &SerialSpec) -> Result<Self> {
        let (out, input) = match spec {
            SerialSpec::Stdio => (Out::Stdout, In::Stdin),
            SerialSpec::Off => (Out::Off, In::None),
            SerialSpec::File(path) => {
                let f = std::fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .open(path)
                    .with_context(|| format!("--serial file={}", path.display()))?;
                (Out::Fd(f), In::None)
            }
            SerialSpec::Pty => {
                let (master, slave, path) = open_pty().context("--serial pty")?;
                let out = master.try_clone().context("--serial pty")?;
                (
                    Out::Fd(out),
                    In::Pty {
                        master,
                        _slave: slave,
                        path,
                    },
                )
            }
            SerialSpec::Socket(path) => {
                let socket = PrivateSocket::bind(path, "--serial socket=")?;
                (
                    Out::Socket(SocketOut {
                        history: History::default(),
                        client: None,
                    }),
                    In::Socket(socket),
                )
            }
        };
        Ok(Self {
            spec: spec.clone(),
            out: Arc::new(Mutex::new(out)),
            input,
        })
    }

    /// Leaves the removal of a socket console's file at exit to the
    /// spawner.
    pub fn hand_off(&mut self) {
        if let In::Socket(s) = &mut self.input {
            s.hand_off();
        }
    }

    /// The socket file to remove when skvm ends, for a socket console.
    pub fn socket_file(&self) -> Option<SocketFile> {
        match &self.input {
            In::Socket(s) => Some(s.file().clone()),
            _ => None,
        }
    }

    /// Where the guest's output goes, for the UART.
    pub fn writer(&self) -> ConsoleWriter {
        ConsoleWriter(self.out.clone())
    }

    /// Whether this console is skvm's own standard input and output.
    pub fn is_stdio(&self) -> bool {
        self.spec == SerialSpec::Stdio
    }

    /// Where the console is, as `skvm ctl status` reports it (JSON).
    pub fn status(&self) -> String {
        let attached = match &*lock(&self.out) {
            Out::Socket(s) => s.client.is_some(),
            _ => false,
        };
        match &self.spec {
            SerialSpec::Stdio => backend_status("stdio", None, None),
            SerialSpec::Off => backend_status("off", None, None),
            SerialSpec::Pty => {
                backend_status("pty", Some(self.pty_path().unwrap_or(Path::new(""))), None)
            }
            SerialSpec::File(p) => backend_status("file", Some(p), None),
            SerialSpec::Socket(p) => backend_status("socket", Some(p), Some(attached)),
        }
    }

    /// The pty's path, for `--serial pty`.
    pub fn pty_path(&self) -> Option<&Path> {
        match &self.input {
            In::Pty { path, .. } => Some(path),
            _ => None,
        }
    }

    /// The fds the main thread waits on: input (when `want_input`) and, for
    /// a socket, the listener (`true` marks it).
    pub fn poll_fds(&self, want_input: bool) -> Vec<(RawFd, bool)> {
        let mut fds = Vec::new();
        match &self.input {
            In::Stdin if want_input => fds.push((libc::STDIN_FILENO, false)),
            In::Pty { master, .. } if want_input => fds.push((master.as_raw_fd(), false)),
            In::Socket(socket) => {
                fds.push((socket.listener().as_raw_fd(), true));
                if let (true, Out::Socket(s)) = (want_input, &*lock(&self.out)) {
                    if let Some(c) = &s.client {
                        fds.push((c.as_raw_fd(), false));
                    }
                }
            }
            _ => {}
        }
        fds
    }

    /// Reads input into `buf`. A client that hung up is detached.
    pub fn read(&self, buf: &mut [u8]) -> ConsoleRead {
        let got = match &self.input {
            In::Stdin => {
                // SAFETY: reads into a valid buffer of the given length.
                let r =
                    unsafe { libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len()) };
                return match usize::try_from(r) {
                    Ok(0) => ConsoleRead::Closed,
                    Ok(n) => ConsoleRead::Data(n),
                    Err(_) => ConsoleRead::Nothing,
                };
            }
            In::Pty { master, .. } => (&*master).read(buf),
            In::Socket(_) => {
                let client = match &*lock(&self.out) {
                    Out::Socket(s) => s.client.clone(),
                    _ => None,
                };
                let Some(client) = client else {
                    return ConsoleRead::Nothing;
                };
                match (&*client).read(buf) {
                    Ok(0) => {
                        self.detach();
                        return ConsoleRead::Nothing;
                    }
                    Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => {
                        self.detach();
                        return ConsoleRead::Nothing;
                    }
                    r => r,
                }
            }
            In::None => return ConsoleRead::Nothing,
        };
        match got {
            Ok(n) if n > 0 => ConsoleRead::Data(n),
            _ => ConsoleRead::Nothing,
        }
    }

    /// Takes a waiting client: it gets the kept output, then what the
    /// guest writes from now on. One client at a time: another one is told
    /// so and closed.
    pub fn accept(&self) {
        let In::Socket(socket) = &self.input else {
            return;
        };
        while let Ok((stream, _)) = socket.listener().accept() {
            let mut out = lock(&self.out);
            let Out::Socket(s) = &mut *out else {
                return;
            };
            if s.client.is_some() {
                let _ = stream.set_nonblocking(true);
                let _ = (&stream).write_all(BUSY);
                continue;
            }
            let (a, b) = s.history.as_slices();
            let sent = stream.set_nonblocking(false).is_ok()
                && stream.set_write_timeout(Some(HISTORY_TIMEOUT)).is_ok()
                && (&stream).write_all(a).is_ok()
                && (&stream).write_all(b).is_ok()
                && stream.set_nonblocking(true).is_ok();
            if sent {
                crate::log::debug("serial console: a client attached");
                s.client = Some(Arc::new(stream));
            }
        }
    }

    fn detach(&self) {
        if let Out::Socket(s) = &mut *lock(&self.out) {
            if s.client.take().is_some() {
                crate::log::debug("serial console: the client detached");
            }
        }
    }
}

/// The UART's output: never blocks, never fails (a console that cannot
/// take output must not stop the guest).
pub struct ConsoleWriter(Arc<Mutex<Out>>);

impl Write for ConsoleWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &mut *lock(&self.0) {
            Out::Stdout => {
                let _ = std::io::stdout().write_all(buf);
            }
            Out::Fd(f) => {
                let _ = f.write(buf);
            }
            Out::Socket(s) => {
                s.history.keep(buf);
                if let Some(c) = &s.client {
                    // Non-blocking: what the client cannot take now is
                    // dropped for it. write(2), not send(2): the vCPU
                    // threads' filter has write only.
                    // SAFETY: writes from a valid buffer to an open fd.
                    let n = unsafe { libc::write(c.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
                    if n < 0
                        && std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock
                    {
                        s.client = None;
                    }
                }
            }
            Out::Off => {}
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if let Out::Stdout = &*lock(&self.0) {
            let _ = std::io::stdout().flush();
        }
        Ok(())
    }
}

/// Where a console is, as `skvm ctl status` shows it (a JSON object): its
/// backend, the path of its pty, file or socket, and whether a client is
/// attached, for those that apply. The 8250's and the virtio consoles'.
pub fn backend_status(backend: &str, path: Option<&Path>, attached: Option<bool>) -> String {
    let mut s = format!("{{\"backend\":\"{backend}\"");
    if let Some(p) = path {
        s.push_str(",\"path\":");
        s.push_str(&crate::ctl::json_string(&p.display().to_string()));
    }
    if let Some(a) = attached {
        s.push_str(&format!(",\"attached\":{a}"));
    }
    s.push('}');
    s
}

/// Opens a new pty in raw mode: its master (non-blocking), a slave fd
/// skvm keeps, and the slave's path.
pub fn open_pty() -> Result<(File, File, PathBuf)> {
    // SAFETY: posix_openpt returns a new fd or -1.
    let fd = unsafe {
        libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC)
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("cannot open /dev/ptmx");
    }
    // SAFETY: fd is a new fd this function owns.
    let master = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    // SAFETY: grantpt and unlockpt act on the master fd.
    if unsafe { libc::grantpt(fd) } != 0 || unsafe { libc::unlockpt(fd) } != 0 {
        return Err(std::io::Error::last_os_error()).context("cannot unlock the pty");
    }
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: ptsname_r writes a NUL-terminated name within the buffer.
    if unsafe { libc::ptsname_r(fd, name.as_mut_ptr(), name.len()) } != 0 {
        return Err(std::io::Error::last_os_error()).context("cannot name the pty");
    }
    // SAFETY: ptsname_r NUL-terminated it.
    let path = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) };
    let path = PathBuf::from(std::ffi::OsStr::from_bytes(path.to_bytes()));
    // On a master, the terminal calls set the slave's modes.
    super::make_raw(fd).context("cannot set the pty raw")?;
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    Ok((master, slave, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_bad_ones_say_what_is_expected() {
        assert_eq!("stdio".parse(), Ok(SerialSpec::Stdio));
        assert_eq!("pty".parse(), Ok(SerialSpec::Pty));
        assert_eq!("off".parse(), Ok(SerialSpec::Off));
        assert_eq!(
            "socket=/run/x.sock".parse(),
            Ok(SerialSpec::Socket("/run/x.sock".into()))
        );
        assert_eq!("file=log".parse(), Ok(SerialSpec::File("log".into())));
        for bad in ["", "tty", "socket=", "file=", "socket"] {
            let e = bad.parse::<SerialSpec>().unwrap_err();
            assert!(e.contains(&format!("'{bad}'")), "{e}");
        }
    }

    #[test]
    fn a_backends_status_is_the_json_object_ctl_prints() {
        assert_eq!(backend_status("off", None, None), r#"{"backend":"off"}"#);
        assert_eq!(
            backend_status("socket", Some(Path::new("/run/s \"q\"")), Some(true)),
            r#"{"backend":"socket","path":"/run/s \"q\"","attached":true}"#
        );
        assert_eq!(
            backend_status("pty", Some(Path::new("/dev/pts/3")), None),
            r#"{"backend":"pty","path":"/dev/pts/3"}"#
        );
    }

    #[test]
    fn a_pty_carries_output_and_input_and_a_file_appends() {
        let dir = std::env::temp_dir().join(format!("skvm-console-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let c = Console::open(&SerialSpec::Pty).unwrap();
        let path = c.pty_path().unwrap().to_owned();
        assert!(c.status().contains(&path.display().to_string()));
        let mut user = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        c.writer().write_all(b"guest says hi\r\n").unwrap();
        let mut got = [0u8; 64];
        let n = user.read(&mut got).unwrap();
        assert_eq!(&got[..n], b"guest says hi\r\n");
        user.write_all(b"ls\n").unwrap();
        let mut buf = [0u8; 16];
        let mut n = 0;
        for _ in 0..100 {
            if let ConsoleRead::Data(k) = c.read(&mut buf) {
                n = k;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(&buf[..n], b"ls\n");

        let log = dir.join("console.log");
        std::fs::write(&log, "before\n").unwrap();
        let f = Console::open(&SerialSpec::File(log.clone())).unwrap();
        f.writer().write_all(b"after\n").unwrap();
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "before\nafter\n");
        assert!(f.poll_fds(true).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_socket_client_gets_the_history_and_one_client_at_a_time() {
        let dir = std::env::temp_dir().join(format!("skvm-sock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("serial.sock");
        let c = Console::open(&SerialSpec::Socket(path.clone())).unwrap();
        c.writer().write_all(b"early boot\n").unwrap();
        let mut first = UnixStream::connect(&path).unwrap();
        c.accept();
        assert!(c.status().contains("\"attached\":true"), "{}", c.status());
        let mut got = [0u8; 11];
        first.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"early boot\n");
        c.writer().write_all(b"later\n").unwrap();
        let mut got = [0u8; 6];
        first.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"later\n");
        // A second client is turned away.
        let mut second = UnixStream::connect(&path).unwrap();
        c.accept();
        let mut msg = String::new();
        second.read_to_string(&mut msg).unwrap();
        assert!(msg.contains("another client"), "{msg}");
        // Input from the client; its hang-up detaches it, and the next
        // client sees everything kept.
        first.write_all(b"x").unwrap();
        let mut buf = [0u8; 4];
        let mut seen = ConsoleRead::Nothing;
        for _ in 0..100 {
            seen = c.read(&mut buf);
            if seen != ConsoleRead::Nothing {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(seen, ConsoleRead::Data(1));
        drop(first);
        for _ in 0..100 {
            let _ = c.read(&mut buf);
            if c.status().contains("\"attached\":false") {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(c.status().contains("\"attached\":false"), "{}", c.status());
        let mut third = UnixStream::connect(&path).unwrap();
        c.accept();
        let mut got = [0u8; 17];
        third.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"early boot\nlater\n");
        drop(c);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
