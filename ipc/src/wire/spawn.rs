//! The spawner's protocol: the VMM asks for a device process with its
//! [`Jail`], the spawner answers, and reports exits on a second socket.
//! Same header and rules as the device protocol (a bounded, total
//! decoder); message kinds from 201.
//!
//! | kind | direction | message | fds |
//! |---|---|---|---|
//! | 201 | VMM -> spawner | `Spawn { id, name, kind, jail }` | the control socket; with `jail.root` a share, then its directory |
//! | 202 | spawner -> VMM | `Spawned { id, pid }` | 0 |
//! | 203 | spawner -> VMM | `Failed { id, errno }` | 0 |
//! | 204 | spawner -> VMM (exit socket) | `Exited { pid, status }` | 0 |
//!
//! Each answer carries the id of the request it answers, so that an answer
//! that comes after its request timed out is never taken for the next one's.
//! An unreadable request is answered with id 0, which the VMM never uses.

use super::{open, Reader, Writer, MAX_KIND};
use crate::IpcError;

const SPAWN: u16 = 201;
const SPAWNED: u16 = 202;
const FAILED: u16 = 203;
const EXITED: u16 = 204;

/// Longest device name ("rng0").
pub const MAX_NAME: usize = 32;
/// Most resource limits in a jail.
pub const MAX_LIMITS: usize = 8;
const LIMIT_BYTES: usize = 12;

/// What a device's seccomp filter does on a syscall its policy forbids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeccompAction {
    /// Kill the process.
    Kill,
    /// Fail the call and report it (a SIGSYS handler).
    Trap,
    /// Log and allow it.
    Log,
}

/// The host user and group a namespaced device's root maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMap {
    /// Host uid.
    pub uid: u32,
    /// Host gid.
    pub gid: u32,
}

/// A resource limit, soft and hard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// `RLIMIT_*`.
    pub resource: u32,
    /// The value.
    pub value: u64,
}

/// A namespaced device process's root.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Root {
    /// An empty, read-only tmpfs: nothing of the host's file systems.
    #[default]
    Empty,
    /// A directory the device serves (virtio-fs's share), which the
    /// spawner gets with the request as a second fd: bound on itself and
    /// made the root, mounts below it hidden, never suid, devices or exec,
    /// and read-only when asked.
    Share {
        /// Mounted read-only.
        read_only: bool,
    },
}

/// How a device process is confined: one value, applied in stages (before
/// exec by the spawner, after exec and after the hello by the device).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Jail {
    /// New user, pid, mount, net, ipc and uts namespaces and a root of
    /// their own (`root`); the namespace's root mapped to `id_map`.
    pub namespaces: Option<IdMap>,
    /// The root of a namespaced device (none without namespaces).
    pub root: Root,
    /// Set no_new_privs.
    pub no_new_privs: bool,
    /// Drop every capability (bounding and ambient sets included).
    pub drop_capabilities: bool,
    /// Resource limits.
    pub limits: Vec<Limit>,
    /// Install the kind's seccomp policy after the hello, with this action.
    pub seccomp: Option<SeccompAction>,
}

impl Jail {
    /// The wire form (what the spawner passes on to the device process).
    pub fn encode(&self) -> Result<Vec<u8>, IpcError> {
        let mut w = Writer::new(0);
        self.put(&mut w)?;
        Ok(w.buf.split_off(super::HEADER))
    }

    /// Decodes what [`Jail::encode`] made; total over any input.
    pub fn decode(bytes: &[u8]) -> Result<Self, IpcError> {
        let mut r = Reader { rest: bytes };
        let jail = Self::take(&mut r)?;
        r.end()?;
        Ok(jail)
    }

    fn put(&self, w: &mut Writer) -> Result<(), IpcError> {
        match self.namespaces {
            Some(m) => {
                w.buf.push(1);
                w.u32(m.uid);
                w.u32(m.gid);
            }
            None => w.buf.push(0),
        }
        w.buf.push(match self.root {
            Root::Empty => 0,
            Root::Share { read_only: false } => 1,
            Root::Share { read_only: true } => 2,
        });
        w.buf.push(u8::from(self.no_new_privs));
        w.buf.push(u8::from(self.drop_capabilities));
        w.count("limits", self.limits.len(), MAX_LIMITS)?;
        for l in &self.limits {
            w.u32(l.resource);
            w.u64(l.value);
        }
        w.buf.push(match self.seccomp {
            None => 0,
            Some(SeccompAction::Kill) => 1,
            Some(SeccompAction::Trap) => 2,
            Some(SeccompAction::Log) => 3,
        });
        Ok(())
    }

    fn take(r: &mut Reader<'_>) -> Result<Self, IpcError> {
        let flag = |r: &mut Reader<'_>, what| match r.array()? {
            [0] => Ok(false),
            [1] => Ok(true),
            _ => Err(IpcError::BadValue(what)),
        };
        let namespaces = if flag(r, "namespaces flag")? {
            Some(IdMap {
                uid: r.u32()?,
                gid: r.u32()?,
            })
        } else {
            None
        };
        let root = match r.array()? {
            [0] => Root::Empty,
            [1] => Root::Share { read_only: false },
            [2] => Root::Share { read_only: true },
            _ => return Err(IpcError::BadValue("root")),
        };
        let no_new_privs = flag(r, "no_new_privs flag")?;
        let drop_capabilities = flag(r, "capabilities flag")?;
        let n = r.count("limits", MAX_LIMITS, LIMIT_BYTES)?;
        let mut limits = Vec::with_capacity(n);
        for _ in 0..n {
            limits.push(Limit {
                resource: r.u32()?,
                value: r.u64()?,
            });
        }
        let seccomp = match r.array()? {
            [0] => None,
            [1] => Some(SeccompAction::Kill),
            [2] => Some(SeccompAction::Trap),
            [3] => Some(SeccompAction::Log),
            _ => return Err(IpcError::BadValue("seccomp action")),
        };
        Ok(Self {
            namespaces,
            root,
            no_new_privs,
            drop_capabilities,
            limits,
            seccomp,
        })
    }
}

/// VMM -> spawner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpawnRequest {
    /// Chosen by the VMM, echoed in the answer; never 0.
    pub id: u32,
    /// The device's name ("rng0").
    pub name: String,
    /// Its kind ("rng").
    pub kind: String,
    /// Its confinement.
    pub jail: Jail,
}

/// Spawner -> VMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpawnerReply {
    /// The device process is started.
    Spawned {
        /// The request's id.
        id: u32,
        /// Its pid.
        pid: i32,
    },
    /// It could not be started.
    Failed {
        /// The request's id (0 if the request could not be read).
        id: u32,
        /// The errno of the step that failed.
        errno: i32,
    },
    /// A device process ended (on the exit socket).
    Exited {
        /// Its pid.
        pid: i32,
        /// Its wait status.
        status: i32,
    },
}

impl SpawnRequest {
    /// The wire form; fails if a field is above its cap.
    pub fn encode(&self) -> Result<Vec<u8>, IpcError> {
        let mut w = Writer::new(SPAWN);
        w.u32(self.id);
        w.bytes("name length", self.name.as_bytes(), MAX_NAME)?;
        w.bytes("kind length", self.kind.as_bytes(), MAX_KIND)?;
        self.jail.put(&mut w)?;
        w.finish()
    }

    /// Decodes one message; total over any input.
    pub fn decode(bytes: &[u8]) -> Result<Self, IpcError> {
        let (kind, mut r) = open(bytes)?;
        if kind != SPAWN {
            return Err(IpcError::UnknownKind(kind));
        }
        let text = |r: &mut Reader<'_>, what, max| {
            String::from_utf8(r.bytes(what, max)?).map_err(|_| IpcError::BadText)
        };
        let req = Self {
            id: r.u32()?,
            name: text(&mut r, "name length", MAX_NAME)?,
            kind: text(&mut r, "kind length", MAX_KIND)?,
            jail: Jail::take(&mut r)?,
        };
        r.end()?;
        Ok(req)
    }
}

impl SpawnerReply {
    /// The wire form.
    pub fn encode(&self) -> Result<Vec<u8>, IpcError> {
        let w = match *self {
            SpawnerReply::Spawned { id, pid } => {
                let mut w = Writer::new(SPAWNED);
                w.u32(id);
                w.u32(pid.cast_unsigned());
                w
            }
            SpawnerReply::Failed { id, errno } => {
                let mut w = Writer::new(FAILED);
                w.u32(id);
                w.u32(errno.cast_unsigned());
                w
            }
            SpawnerReply::Exited { pid, status } => {
                let mut w = Writer::new(EXITED);
                w.u32(pid.cast_unsigned());
                w.u32(status.cast_unsigned());
                w
            }
        };
        w.finish()
    }

    /// Decodes one message; total over any input.
    pub fn decode(bytes: &[u8]) -> Result<Self, IpcError> {
        let (kind, mut r) = open(bytes)?;
        let reply = match kind {
            SPAWNED => SpawnerReply::Spawned {
                id: r.u32()?,
                pid: r.u32()?.cast_signed(),
            },
            FAILED => SpawnerReply::Failed {
                id: r.u32()?,
                errno: r.u32()?.cast_signed(),
            },
            EXITED => SpawnerReply::Exited {
                pid: r.u32()?.cast_signed(),
                status: r.u32()?.cast_signed(),
            },
            other => return Err(IpcError::UnknownKind(other)),
        };
        r.end()?;
        Ok(reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jail() -> Jail {
        Jail {
            namespaces: Some(IdMap {
                uid: 65534,
                gid: 65534,
            }),
            root: Root::Share { read_only: true },
            no_new_privs: true,
            drop_capabilities: true,
            limits: vec![Limit {
                resource: 7,
                value: 64,
            }],
            seccomp: Some(SeccompAction::Trap),
        }
    }

    #[test]
    fn messages_round_trip() {
        let req = SpawnRequest {
            id: 3,
            name: "blk0".into(),
            kind: "blk".into(),
            jail: jail(),
        };
        assert_eq!(SpawnRequest::decode(&req.encode().unwrap()).unwrap(), req);
        for reply in [
            SpawnerReply::Spawned { id: 3, pid: 42 },
            SpawnerReply::Failed { id: 3, errno: 1 },
            SpawnerReply::Exited { pid: 7, status: 9 },
        ] {
            assert_eq!(
                SpawnerReply::decode(&reply.encode().unwrap()).unwrap(),
                reply
            );
        }
        assert_eq!(Jail::decode(&jail().encode().unwrap()).unwrap(), jail());
        assert_eq!(
            Jail::decode(&Jail::default().encode().unwrap()).unwrap(),
            Jail::default()
        );
    }

    #[test]
    fn truncated_padded_or_bad_jails_are_refused() {
        let b = jail().encode().unwrap();
        for cut in 0..b.len() {
            assert!(Jail::decode(&b[..cut]).is_err(), "{cut}");
        }
        let mut long = b.clone();
        long.push(0);
        assert!(Jail::decode(&long).is_err());
        let mut bad_action = b.clone();
        *bad_action.last_mut().unwrap() = 4;
        assert!(Jail::decode(&bad_action).is_err());
        let mut bad_flag = b;
        bad_flag[0] = 2;
        assert!(Jail::decode(&bad_flag).is_err());
        let many = Jail {
            limits: vec![
                Limit {
                    resource: 0,
                    value: 0
                };
                MAX_LIMITS + 1
            ],
            ..Jail::default()
        };
        assert!(many.encode().is_err());
    }

    #[test]
    fn a_reply_is_not_a_request() {
        let reply = SpawnerReply::Spawned { id: 1, pid: 1 }.encode().unwrap();
        assert!(SpawnRequest::decode(&reply).is_err());
    }
}
