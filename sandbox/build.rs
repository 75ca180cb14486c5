//! Generates the x86_64 syscall name table from the kernel's uapi header
//! (linux-libc-dev), so that trap-mode reports can name any syscall. Without
//! the header the table is empty and syscalls are reported by number.

use std::fmt::Write as _;

const HEADER: &str = "/usr/include/x86_64-linux-gnu/asm/unistd_64.h";

fn main() {
    println!("cargo:rerun-if-changed={HEADER}");
    println!("cargo:rerun-if-changed=build.rs");
    let text = std::fs::read_to_string(HEADER).unwrap_or_default();
    let mut entries: Vec<(i64, String)> = text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("#define __NR_")?;
            let mut parts = rest.split_whitespace();
            let name = parts.next()?;
            let nr = parts.next()?.parse::<i64>().ok()?;
            Some((nr, name.to_owned()))
        })
        .collect();
    entries.sort();
    let mut out = String::from("/// x86_64 syscall numbers and names, sorted by number.\n");
    out.push_str("pub const SYSCALL_NAMES: &[(i64, &str)] = &[\n");
    for (nr, name) in entries {
        let _ = writeln!(out, "    ({nr}, \"{name}\"),");
    }
    out.push_str("];\n");
    let dir = std::env::var("OUT_DIR").unwrap_or_else(|_| ".".into());
    let path = std::path::Path::new(&dir).join("syscall_names.rs");
    if let Err(e) = std::fs::write(&path, out) {
        println!("cargo:warning=cannot write {}: {e}", path.display());
        std::process::exit(1);
    }
}
