//! A device kind's parameters on the wire: a version byte, then
//! little-endian fields, with the same bounds and totality as the
//! messages themselves. Each kind owns its layout and version (the ipc
//! crate carries the bytes without knowing what they mean); a kind
//! refuses a version it does not speak and any byte left over.

use crate::wire::Reader;
use crate::IpcError;

/// Builds a kind's parameters.
#[derive(Debug)]
pub struct Encoder {
    buf: Vec<u8>,
}

impl Encoder {
    /// Parameters of layout `version`.
    pub fn new(version: u8) -> Self {
        Self { buf: vec![version] }
    }
    /// One byte.
    pub fn u8(mut self, v: u8) -> Self {
        self.buf.push(v);
        self
    }
    /// A flag, as one byte 0 or 1.
    pub fn bool(self, v: bool) -> Self {
        self.u8(u8::from(v))
    }
    /// A little-endian u64.
    pub fn u64(mut self, v: u64) -> Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// A fixed number of bytes.
    pub fn array(mut self, b: &[u8]) -> Self {
        self.buf.extend_from_slice(b);
        self
    }
    /// A byte string of at most `max` (at most 255) bytes, length first;
    /// longer strings are cut to `max`.
    pub fn bytes(mut self, b: &[u8], max: u8) -> Self {
        let b = b.get(..usize::from(max)).unwrap_or(b);
        self.buf.push(u8::try_from(b.len()).unwrap_or(max));
        self.buf.extend_from_slice(b);
        self
    }
    /// The encoded parameters.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// Reads a kind's parameters; every read is checked (the messages' own
/// reader underneath).
#[derive(Debug)]
pub struct Decoder<'a> {
    r: Reader<'a>,
}

impl<'a> Decoder<'a> {
    /// Starts reading `bytes`, which must be of layout `version`.
    pub fn new(bytes: &'a [u8], version: u8) -> Result<Self, IpcError> {
        let mut r = Reader::new(bytes);
        match r.array()? {
            [v] if v == version => Ok(Self { r }),
            _ => Err(IpcError::BadValue("parameters version")),
        }
    }
    /// One byte.
    pub fn u8(&mut self) -> Result<u8, IpcError> {
        let [b] = self.r.array()?;
        Ok(b)
    }
    /// A flag: 0 or 1, anything else is refused.
    pub fn bool(&mut self, what: &'static str) -> Result<bool, IpcError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(IpcError::BadValue(what)),
        }
    }
    /// A little-endian u64.
    pub fn u64(&mut self) -> Result<u64, IpcError> {
        self.r.u64()
    }
    /// `N` bytes.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], IpcError> {
        self.r.array()
    }
    /// A byte string of at most `max` bytes.
    pub fn bytes(&mut self, what: &'static str, max: u8) -> Result<Vec<u8>, IpcError> {
        let n = self.u8()?;
        if n > max {
            return Err(IpcError::Limit {
                what,
                got: usize::from(n),
                max: usize::from(max),
            });
        }
        Ok(self.r.take(usize::from(n))?.to_vec())
    }
    /// Ends reading: nothing may be left.
    pub fn end(self) -> Result<(), IpcError> {
        self.r.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip() {
        let b = Encoder::new(3)
            .u64(7)
            .bool(true)
            .array(&[1, 2])
            .bytes(b"abc", 20)
            .finish();
        let mut d = Decoder::new(&b, 3).unwrap();
        assert_eq!(d.u64().unwrap(), 7);
        assert!(d.bool("flag").unwrap());
        assert_eq!(d.array::<2>().unwrap(), [1, 2]);
        assert_eq!(d.bytes("serial", 20).unwrap(), b"abc");
        d.end().unwrap();
    }

    #[test]
    fn another_version_short_input_and_leftovers_are_refused() {
        let b = Encoder::new(1).u64(7).finish();
        assert!(Decoder::new(&b, 2).is_err());
        assert!(Decoder::new(&[], 1).is_err());
        let mut d = Decoder::new(&b[..5], 1).unwrap();
        assert!(d.u64().is_err());
        let b = Encoder::new(1).u64(7).u8(0).finish();
        let mut d = Decoder::new(&b, 1).unwrap();
        d.u64().unwrap();
        assert!(d.end().is_err());
    }

    #[test]
    fn bounds_hold_for_any_input() {
        let b = [1, 2];
        let mut d = Decoder::new(&b, 1).unwrap();
        assert!(d.bool("flag").is_err());
        let b = [1, 30, 0];
        let mut d = Decoder::new(&b, 1).unwrap();
        assert!(d.bytes("serial", 20).is_err());
        let b = Encoder::new(1).bytes(&[9; 40], 20).finish();
        assert_eq!(b.len(), 22);
    }
}
