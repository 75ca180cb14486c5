//! The VMM side: with `SKVM_ESCAPE_VMM=ACTION`, a VMM thread that exists
//! before the VMM's filter is installed attempts ACTION right after it,
//! proving the filter reaches threads created earlier (TSYNC). Only
//! actions that are harmless if they were to succeed.

use std::io;
use std::sync::mpsc;
use std::thread::JoinHandle;

/// The actions, one per denied group.
pub const ACTIONS: &[&str] = &[
    "exec-shell",
    "fork",
    "setuid",
    "unshare",
    "setpriority",
    "thread",
];

/// A thread waiting to attempt an action.
pub struct Pending {
    action: String,
    go: mpsc::Sender<()>,
    thread: JoinHandle<io::Result<()>>,
}

fn check(rc: libc::c_long) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn attempt(action: &str) -> io::Result<()> {
    // SAFETY: plain syscalls on valid arguments; a child exits at once.
    unsafe {
        match action {
            "exec-shell" => {
                let argv = [
                    c"sh".as_ptr(),
                    c"-c".as_ptr(),
                    c"exit 0".as_ptr(),
                    std::ptr::null(),
                ];
                let envp: [*const libc::c_char; 1] = [std::ptr::null()];
                check(libc::execve(c"/bin/sh".as_ptr(), argv.as_ptr(), envp.as_ptr()).into())
            }
            "fork" => {
                let pid = libc::fork();
                if pid == 0 {
                    libc::_exit(0);
                }
                check(pid.into())?;
                libc::waitpid(pid, std::ptr::null_mut(), 0);
                Ok(())
            }
            // glibc's setuid would signal every thread; the raw call
            // changes only this one.
            "setuid" => check(libc::syscall(libc::SYS_setuid, 0)),
            "unshare" => check(libc::syscall(libc::SYS_unshare, libc::CLONE_NEWUTS)),
            "setpriority" => check(libc::setpriority(libc::PRIO_PROCESS, 0, 0).into()),
            // A new thread must still work under spawn=deny.
            "thread" => std::thread::spawn(|| ())
                .join()
                .map_err(|_| io::Error::other("thread panicked")),
            _ => Err(io::Error::from_raw_os_error(libc::EINVAL)),
        }
    }
}

/// Starts the waiting thread if `SKVM_ESCAPE_VMM` is set.
pub fn prepare() -> Option<Pending> {
    let action = std::env::var("SKVM_ESCAPE_VMM").ok()?;
    if !ACTIONS.contains(&action.as_str()) {
        vmm::log::error(&format!(
            "SKVM_ESCAPE_VMM: unknown action '{action}'; actions: {}",
            ACTIONS.join(" ")
        ));
    }
    let (go, wait) = mpsc::channel::<()>();
    let a = action.clone();
    let thread = std::thread::spawn(move || {
        let _ = wait.recv();
        attempt(&a)
    });
    Some(Pending { action, go, thread })
}

impl Pending {
    /// Lets the thread attempt its action; prints the outcome.
    pub fn run(self) {
        let _ = self.go.send(());
        let outcome = match self.thread.join() {
            Ok(Ok(())) => "done".to_owned(),
            Ok(Err(e)) => format!("refused reason=\"{e}\""),
            Err(_) => "panicked".to_owned(),
        };
        vmm::log::info(&format!("escape-vmm={} outcome={outcome}", self.action));
    }
}
