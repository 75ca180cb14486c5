//! A snapshot's directory: `state` (the state file) and `memory` (guest
//! RAM, sparse). The control client creates them and passes them to the VMM
//! as fds; `skvm run --restore` opens them before the VMM gives up its view
//! of the host's files.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::format::MAX_STATE;
use super::state::VmSnapshot;

/// The state file's name in the directory.
pub const STATE: &str = "state";
/// The memory file's name in the directory.
pub const MEMORY: &str = "memory";

/// The files of a snapshot being written, removed again unless
/// [`NewSnapshot::keep`] is called.
pub struct NewSnapshot {
    dir: PathBuf,
    created_dir: bool,
    /// The state file, empty.
    pub state: File,
    /// The memory file, empty.
    pub memory: File,
    kept: bool,
}

fn create(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))
}

impl NewSnapshot {
    /// Creates `dir` (mode 0700) unless it exists and is empty, and in it
    /// the two files (mode 0600), which must not exist yet.
    pub fn create(dir: &Path) -> Result<Self> {
        let created_dir = match std::fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => true,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                let mut entries = std::fs::read_dir(dir).with_context(|| {
                    format!("{} is not a directory skvm can use", dir.display())
                })?;
                if entries.next().is_some() {
                    bail!(
                        "{} is not empty: a snapshot needs a new or empty directory",
                        dir.display()
                    );
                }
                false
            }
            Err(e) => {
                return Err(
                    anyhow::Error::new(e).context(format!("cannot create {}", dir.display()))
                )
            }
        };
        let mut made = Self {
            dir: dir.to_owned(),
            created_dir,
            // Placeholders until both files exist; dropping `made` on an
            // error below removes whatever was created.
            state: File::open("/dev/null").context("/dev/null")?,
            memory: File::open("/dev/null").context("/dev/null")?,
            kept: false,
        };
        made.state = create(&dir.join(STATE))?;
        made.memory = create(&dir.join(MEMORY))?;
        Ok(made)
    }

    /// Flushes both files to disk and keeps them.
    pub fn keep(mut self) -> Result<()> {
        self.state
            .sync_all()
            .context("cannot flush the state file")?;
        self.memory
            .sync_all()
            .context("cannot flush the memory file")?;
        self.kept = true;
        Ok(())
    }
}

impl Drop for NewSnapshot {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        for name in [STATE, MEMORY] {
            let _ = std::fs::remove_file(self.dir.join(name));
        }
        if self.created_dir {
            let _ = std::fs::remove_dir(&self.dir);
        }
    }
}

/// Reads and checks the state file in `dir` (as [`VmSnapshot::decode`]
/// does), and that a memory file is there.
pub fn read_state(dir: &Path) -> Result<VmSnapshot> {
    let path = dir.join(STATE);
    let file = File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if len > MAX_STATE as u64 {
        bail!(
            "{} is {len} bytes, more than a state file can be",
            path.display()
        );
    }
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.take(MAX_STATE as u64 + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let snapshot = VmSnapshot::decode(&bytes).with_context(|| path.display().to_string())?;
    let memory = dir.join(MEMORY);
    if !memory.is_file() {
        bail!("no memory file {}", memory.display());
    }
    Ok(snapshot)
}

/// Opens the memory file in `dir`, for reading.
pub fn open_memory(dir: &Path) -> Result<File> {
    let path = dir.join(MEMORY);
    File::open(&path).with_context(|| format!("cannot open {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("skvm-snapfiles-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        p
    }

    #[test]
    fn files_are_created_private_and_removed_unless_kept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = scratch("keep");
        let s = NewSnapshot::create(&dir).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(STATE)), 0o600);
        drop(s);
        assert!(!dir.exists(), "an abandoned snapshot leaves nothing");
        let s = NewSnapshot::create(&dir).unwrap();
        s.keep().unwrap();
        assert!(dir.join(MEMORY).is_file());
        // A directory with files in it is refused and left alone.
        let e = NewSnapshot::create(&dir).err().unwrap().to_string();
        assert!(e.contains("not empty"), "{e}");
        assert!(dir.join(STATE).is_file());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_existing_empty_directory_is_used_and_kept_when_abandoned() {
        let dir = scratch("empty");
        std::fs::create_dir(&dir).unwrap();
        drop(NewSnapshot::create(&dir).unwrap());
        assert!(dir.is_dir());
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        std::fs::remove_dir(&dir).unwrap();
    }
}
