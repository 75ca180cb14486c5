//! The vCPU threads: started under their filter and held until the whole
//! VMM is confined, checked for filters, kicked for profiling, stopped.

use std::os::unix::thread::JoinHandleExt;
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::exit::ExitSignal;
use crate::vcpu::{self, Vcpu};
use crate::{host, log, vmm_sandbox};

/// Holds the vCPU threads between their filter and their first KVM_RUN
/// until the main thread is confined too.
#[derive(Default)]
pub(super) struct StartGate {
    open: Mutex<bool>,
    cv: Condvar,
}

impl StartGate {
    pub(super) fn wait(&self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        while !*open {
            open = self.cv.wait(open).unwrap_or_else(|e| e.into_inner());
        }
    }

    pub(super) fn open(&self) {
        *self.open.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.cv.notify_all();
    }
}

/// Checks that every thread but the calling one has a seccomp filter
/// (`Seccomp: 2` in its /proc status): a thread that would not install its
/// own (or one a library started) stops skvm here, before the guest runs.
pub(super) fn every_other_thread_filtered(threads: &host::Threads) -> Result<()> {
    // SAFETY: gettid cannot fail.
    let me = unsafe { libc::gettid() }.to_string();
    let tids = threads.ids().context("cannot list the VMM's threads")?;
    for tid in tids {
        if tid == me {
            continue;
        }
        let Some(status) = threads.status(&tid) else {
            continue; // it ended meanwhile
        };
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(str::trim)
                .unwrap_or("?")
                .to_owned()
        };
        if field("Seccomp:") != "2" {
            bail!("thread {tid} ({}) has no seccomp filter", field("Name:"));
        }
    }
    Ok(())
}

/// Starts the vCPU threads: each installs `filter`, reports on `ready`,
/// and waits at `gate` before its first KVM_RUN.
pub(super) fn spawn_vcpus(
    vcpus: Vec<Vcpu>,
    filter: Option<Arc<seccompiler::BpfProgram>>,
    gate: &Arc<StartGate>,
    ready: &mpsc::Sender<Result<(), String>>,
) -> Result<Vec<JoinHandle<()>>> {
    let mut handles = Vec::with_capacity(vcpus.len());
    for v in vcpus {
        let name = format!("skvm-vcpu{}", v.index);
        let (filter, gate, ready) = (filter.clone(), gate.clone(), ready.clone());
        let h = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                if let Some(prog) = filter {
                    if let Err(e) = vmm_sandbox::install_on_this_thread(&prog) {
                        let _ = ready.send(Err(format!("vcpu{}: {e}", v.index)));
                        return;
                    }
                }
                let _ = ready.send(Ok(()));
                drop(ready);
                gate.wait();
                v.run();
            })
            .with_context(|| format!("cannot start thread {name}"))?;
        handles.push(h);
    }
    Ok(handles)
}

/// Kicks each vCPU out of KVM_RUN until its thread ends.
pub(super) fn stop_vcpus(handles: Vec<JoinHandle<()>>) {
    for h in handles {
        while !h.is_finished() {
            // SAFETY: the thread is alive (not finished and not joined), so
            // its pthread_t is valid; the signal's handler does nothing.
            unsafe { libc::pthread_kill(h.as_pthread_t(), vcpu::kick_signal()) };
            std::thread::sleep(Duration::from_millis(1));
        }
        if h.join().is_err() {
            log::error("a vcpu thread panicked");
        }
    }
}

/// Kicks every vCPU every 10 ms so it samples its RIP (SKVM_PROFILE).
pub(super) fn spawn_sampler(
    handles: Arc<Vec<JoinHandle<()>>>,
    exit: Arc<ExitSignal>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        while !exit.requested() {
            for h in handles.iter() {
                if !h.is_finished() {
                    // SAFETY: the thread is alive; the handler does nothing.
                    unsafe { libc::pthread_kill(h.as_pthread_t(), vcpu::kick_signal()) };
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    })
}
