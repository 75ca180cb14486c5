//! `skvm drive`: the rng device, started as `skvm run` starts it (a
//! confined process with its seccomp filter in kill mode, or a thread), is
//! driven from the host through its real queue, eventfds and ipc.

// Test code: a panic is a failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use guest_tests::{field, skvm_bin};

fn drive(args: &[&str]) -> (i32, String) {
    let out = Command::new(skvm_bin())
        .arg("drive")
        .args(args)
        .output()
        .expect("cannot run skvm drive");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn value(out: &str, key: &str) -> f64 {
    let v = field(&out.replace(' ', "\n").replace('=', " "), key)
        .unwrap_or_else(|| panic!("no {key} in {out}"));
    v.parse().unwrap_or(0.0)
}

#[test]
fn the_rng_device_serves_a_host_driver_in_both_modes() {
    for mode in ["process", "thread"] {
        for depth in ["1", "32"] {
            let (code, out) = drive(&[
                "--device-mode",
                mode,
                "--depth",
                depth,
                "--requests",
                "2000",
                "--size",
                "512",
            ]);
            assert_eq!(code, 0, "{mode} depth {depth}: {out}");
            assert!(value(&out, "mb_per_s") > 0.0, "{out}");
            assert!(value(&out, "p50_us") > 0.0, "{out}");
        }
    }
}

#[test]
fn the_device_process_is_small() {
    let (code, out) = drive(&["--requests", "100"]);
    assert_eq!(code, 0, "{out}");
    let pss = value(&out, "pss_kib");
    assert!(pss > 0.0 && pss < 2048.0, "device PSS {pss} KiB: {out}");
}

#[test]
fn devices_that_cannot_be_driven_are_refused() {
    let (code, out) = drive(&["--device", "blk0"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("only rng devices can be driven"), "{out}");
    let (code, out) = drive(&["--size", "0"]);
    assert_eq!(code, 2, "{out}");
}
