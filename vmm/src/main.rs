//! skvm: a multi-process secure KVM hypervisor. The binary is the library's
//! command line (see the `vmm` crate and docs/ARCHITECTURE.md).

fn main() -> std::process::ExitCode {
    vmm::cli::main()
}
