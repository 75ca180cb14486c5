//! What a device serves, as `Hello` describes it: the device's kind, its
//! parameters in that kind's own versioned encoding ([`crate::params`]),
//! and how many fds travel beside it. The ipc crate knows no device kind:
//! it carries the parameters as bounded bytes, and the kind decodes them.

use super::{Reader, Writer};
use crate::IpcError;

/// Longest kind name ("rng", "blk", ...).
pub const MAX_KIND: usize = 16;
/// Largest encoded parameters of a kind.
pub const MAX_PARAMS: usize = 512;
/// Most fds a backend hands a device (an image, a tap, ...).
pub const MAX_BACKEND_FDS: usize = 4;

/// What a device is attached to on the host; sent with `Hello`, with
/// `fds` fds beside it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Backend {
    /// The device kind, lowercase ASCII letters ("rng", "blk", ...).
    pub kind: String,
    /// The kind's parameters, in its own encoding.
    pub params: Vec<u8>,
    /// How many fds travel with it.
    pub fds: u8,
}

/// Whether `kind` is a well-formed kind name.
pub fn valid_kind(kind: &str) -> bool {
    !kind.is_empty() && kind.len() <= MAX_KIND && kind.bytes().all(|b| b.is_ascii_lowercase())
}

impl Backend {
    /// How many fds travel with it.
    pub fn fd_count(&self) -> usize {
        usize::from(self.fds)
    }

    pub(super) fn encode(&self, w: &mut Writer) -> Result<(), IpcError> {
        if !valid_kind(&self.kind) {
            return Err(IpcError::BadValue("backend kind"));
        }
        if self.fd_count() > MAX_BACKEND_FDS {
            return Err(IpcError::Limit {
                what: "backend fds",
                got: self.fd_count(),
                max: MAX_BACKEND_FDS,
            });
        }
        w.bytes("kind length", self.kind.as_bytes(), MAX_KIND)?;
        w.bytes("parameters length", &self.params, MAX_PARAMS)?;
        w.buf.push(self.fds);
        Ok(())
    }

    pub(super) fn decode(r: &mut Reader<'_>) -> Result<Self, IpcError> {
        let kind =
            String::from_utf8(r.bytes("kind length", MAX_KIND)?).map_err(|_| IpcError::BadText)?;
        if !valid_kind(&kind) {
            return Err(IpcError::BadValue("backend kind"));
        }
        let params = r.bytes("parameters length", MAX_PARAMS)?;
        let [fds] = r.array()?;
        if usize::from(fds) > MAX_BACKEND_FDS {
            return Err(IpcError::Limit {
                what: "backend fds",
                got: usize::from(fds),
                max: MAX_BACKEND_FDS,
            });
        }
        Ok(Self { kind, params, fds })
    }
}
