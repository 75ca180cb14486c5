//! Minimal logging to stderr. Every line starts with `skvm:` so it cannot be
//! confused with guest console output, and names the component it is about.

use std::sync::atomic::{AtomicBool, Ordering};

static DEBUG: AtomicBool = AtomicBool::new(false);
static RAW_TERMINAL: AtomicBool = AtomicBool::new(false);

/// Tells the logger the terminal is in raw mode (lines need `\r\n`).
pub fn set_raw_terminal(on: bool) {
    RAW_TERMINAL.store(on, Ordering::Relaxed);
}

/// Turns debug messages on (from `--debug` or `SKVM_DEBUG`).
pub fn set_debug(on: bool) {
    DEBUG.store(on, Ordering::Relaxed);
}

/// Whether debug messages are shown.
pub fn debug_enabled() -> bool {
    DEBUG.load(Ordering::Relaxed)
}

/// A debug message, shown only with `--debug`.
pub fn debug(msg: &str) {
    if debug_enabled() {
        emit("debug", msg);
    }
}

/// Something the user should know about.
pub fn info(msg: &str) {
    emit("info", msg);
}

/// Something went wrong but skvm carries on.
#[allow(dead_code)] // For device supervision.
pub fn warn(msg: &str) {
    emit("warning", msg);
}

/// Something went wrong and skvm will stop.
pub fn error(msg: &str) {
    emit("error", msg);
}

/// Writes the line with one system call (stderr is unbuffered, and
/// `eprintln!` writes each piece of its format on its own): lines of
/// several threads do not interleave, and a line costs one write.
fn emit(level: &str, msg: &str) {
    use std::io::Write;
    let line = if RAW_TERMINAL.load(Ordering::Relaxed) {
        // In raw mode a bare \n does not return the carriage.
        format!("\r\nskvm: {level}: {msg}\r\n")
    } else {
        format!("skvm: {level}: {msg}\n")
    };
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}
