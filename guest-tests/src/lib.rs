//! Guest tests: boot real guests through the built `skvm` binary.
