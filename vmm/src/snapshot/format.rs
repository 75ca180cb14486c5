//! The snapshot's state file: everything of a VM but its RAM, as tagged
//! sections behind a checked header. All integers are little-endian.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `SKVMSNAP` |
//! | 8 | 4 | format version ([`FORMAT_VERSION`]) |
//! | 12 | 4 | number of sections |
//! | 16 | 8 | bytes of sections that follow the header |
//! | 24 | 4 | CRC-32 (IEEE 802.3) of those bytes |
//! | 28 | 4 | zero |
//!
//! Each section is a tag (u32), a length (u32) and that many bytes. A file
//! is refused whole, before anything in it is used, if it is not a
//! snapshot, has another version, is truncated or longer than it says, or
//! fails its checksum; every count and length in it is checked against a
//! cap before anything is allocated, and a section must be consumed
//! exactly by its decoder.

use thiserror::Error;

/// The file's first eight bytes.
pub const MAGIC: [u8; 8] = *b"SKVMSNAP";
/// The version this skvm writes and reads; any change to a section's
/// layout takes a new one.
pub const FORMAT_VERSION: u32 = 1;
/// Header bytes before the first section.
pub const HEADER: usize = 32;
/// Largest state file read (the vCPUs, the irqchip, the devices' saved
/// states: a few hundred KiB for the largest VM skvm runs).
pub const MAX_STATE: usize = 64 << 20;
/// Most sections in one file.
pub const MAX_SECTIONS: usize = 4096;

/// Why a state file was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FormatError {
    /// The magic is wrong: not a skvm snapshot.
    #[error("not a skvm snapshot (no SKVMSNAP header)")]
    NotSnapshot,
    /// Another format version.
    #[error("snapshot format version {found}, this skvm reads version {FORMAT_VERSION}")]
    Version {
        /// What the file says.
        found: u32,
    },
    /// Shorter than its header says.
    #[error("snapshot state is truncated ({have} bytes, the header says {want})")]
    Truncated {
        /// Bytes present.
        have: usize,
        /// Bytes the header announces.
        want: usize,
    },
    /// Longer than its header says.
    #[error("snapshot state has {0} bytes after its last section")]
    Trailing(usize),
    /// Over a cap.
    #[error("snapshot {what} is {value}, above the limit of {max}")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its value.
        value: u64,
        /// The cap.
        max: u64,
    },
    /// The checksum does not match: the file was changed or damaged.
    #[error("snapshot state is corrupted (checksum {found:#010x}, computed {computed:#010x})")]
    Checksum {
        /// What the header says.
        found: u32,
        /// What the sections give.
        computed: u32,
    },
    /// A section the reader needs is missing or appears twice.
    #[error("snapshot section {0} is {1}")]
    Section(&'static str, &'static str),
    /// A section's content is malformed.
    #[error("snapshot {0}: {1}")]
    Bad(&'static str, String),
}

/// CRC-32 as in IEEE 802.3 (zlib's `crc32`).
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Builds a state file, section by section.
#[derive(Default)]
pub struct StateWriter {
    sections: Vec<u8>,
    count: u32,
}

impl StateWriter {
    /// An empty file.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends section `tag` with `body`.
    pub fn section(&mut self, tag: u32, body: &Enc) -> Result<(), FormatError> {
        let len = u32::try_from(body.0.len())
            .ok()
            .filter(|l| (*l as usize) <= MAX_STATE)
            .ok_or(FormatError::TooLarge {
                what: "section",
                value: body.0.len() as u64,
                max: MAX_STATE as u64,
            })?;
        self.sections.extend_from_slice(&tag.to_le_bytes());
        self.sections.extend_from_slice(&len.to_le_bytes());
        self.sections.extend_from_slice(&body.0);
        self.count += 1;
        Ok(())
    }

    /// The whole file: header and sections.
    pub fn finish(self) -> Result<Vec<u8>, FormatError> {
        if HEADER + self.sections.len() > MAX_STATE || self.count as usize > MAX_SECTIONS {
            return Err(FormatError::TooLarge {
                what: "state",
                value: (HEADER + self.sections.len()) as u64,
                max: MAX_STATE as u64,
            });
        }
        let mut out = Vec::with_capacity(HEADER + self.sections.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&self.count.to_le_bytes());
        out.extend_from_slice(&(self.sections.len() as u64).to_le_bytes());
        out.extend_from_slice(&crc32(&self.sections).to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&self.sections);
        Ok(out)
    }
}

/// A checked state file's sections, in file order.
#[derive(Debug)]
pub struct Sections<'a> {
    list: Vec<(u32, &'a [u8])>,
}

fn le32(b: &[u8], at: usize) -> u32 {
    let mut v = [0u8; 4];
    v.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(v)
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

impl<'a> Sections<'a> {
    /// Checks the header, the length and the checksum of `file`, then
    /// splits it into sections.
    pub fn parse(file: &'a [u8]) -> Result<Self, FormatError> {
        if file.len() < 8 || file[..8] != MAGIC {
            return Err(FormatError::NotSnapshot);
        }
        if file.len() < HEADER {
            return Err(FormatError::Truncated {
                have: file.len(),
                want: HEADER,
            });
        }
        let version = le32(file, 8);
        if version != FORMAT_VERSION {
            return Err(FormatError::Version { found: version });
        }
        let count = le32(file, 12) as usize;
        if count > MAX_SECTIONS {
            return Err(FormatError::TooLarge {
                what: "section count",
                value: count as u64,
                max: MAX_SECTIONS as u64,
            });
        }
        let len = le64(file, 16);
        if len > (MAX_STATE - HEADER) as u64 {
            return Err(FormatError::TooLarge {
                what: "state",
                value: len,
                max: MAX_STATE as u64,
            });
        }
        // Below MAX_STATE, checked above.
        let want = HEADER + usize::try_from(len).unwrap_or(MAX_STATE);
        if file.len() < want {
            return Err(FormatError::Truncated {
                have: file.len(),
                want,
            });
        }
        if file.len() > want {
            return Err(FormatError::Trailing(file.len() - want));
        }
        let body = &file[HEADER..];
        let (found, computed) = (le32(file, 24), crc32(body));
        if found != computed {
            return Err(FormatError::Checksum { found, computed });
        }
        if le32(file, 28) != 0 {
            return Err(FormatError::Bad(
                "header",
                "reserved field is not zero".into(),
            ));
        }
        let mut list = Vec::with_capacity(count);
        let mut at = 0usize;
        for _ in 0..count {
            if body.len() - at < 8 {
                return Err(FormatError::Bad(
                    "sections",
                    "a section header is cut".into(),
                ));
            }
            let tag = le32(body, at);
            let n = le32(body, at + 4) as usize;
            at += 8;
            if body.len() - at < n {
                return Err(FormatError::Bad(
                    "sections",
                    format!("section {tag:#x} runs past the end"),
                ));
            }
            list.push((tag, &body[at..at + n]));
            at += n;
        }
        if at != body.len() {
            return Err(FormatError::Trailing(body.len() - at));
        }
        Ok(Self { list })
    }

    /// The one section tagged `tag`, named `what` in errors.
    pub fn one(&self, tag: u32, what: &'static str) -> Result<Dec<'a>, FormatError> {
        let mut found = self.list.iter().filter(|(t, _)| *t == tag);
        let (_, body) = found.next().ok_or(FormatError::Section(what, "missing"))?;
        if found.next().is_some() {
            return Err(FormatError::Section(what, "repeated"));
        }
        Ok(Dec::new(what, body))
    }

    /// Every section tagged `tag`, in file order.
    pub fn all(&self, tag: u32, what: &'static str) -> Vec<Dec<'a>> {
        self.list
            .iter()
            .filter(|(t, _)| *t == tag)
            .map(|(_, b)| Dec::new(what, b))
            .collect()
    }

    /// Tags present, in file order.
    pub fn tags(&self) -> impl Iterator<Item = u32> + '_ {
        self.list.iter().map(|(t, _)| *t)
    }
}

/// A section's body being built.
#[derive(Default, Debug)]
pub struct Enc(Vec<u8>);

impl Enc {
    /// An empty body.
    pub fn new() -> Self {
        Self::default()
    }
    /// Appends a u8.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    /// Appends a u16.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// Appends a u32.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// Appends a u64.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// Appends a length (u32) and `b`.
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        // Sections are capped far below 4 GiB when written.
        self.u32(u32::try_from(b.len()).unwrap_or(u32::MAX));
        self.0.extend_from_slice(b);
        self
    }
    /// Appends `b` as it is (a fixed size the reader knows).
    pub fn raw(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
    /// The body so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// A section's body being read: every read is bounds-checked, and
/// [`Dec::end`] checks that nothing is left.
#[derive(Debug)]
pub struct Dec<'a> {
    what: &'static str,
    b: &'a [u8],
    at: usize,
}

impl<'a> Dec<'a> {
    /// Reads `b`, named `what` in errors.
    pub fn new(what: &'static str, b: &'a [u8]) -> Self {
        Self { what, b, at: 0 }
    }

    fn bad(&self, why: impl Into<String>) -> FormatError {
        FormatError::Bad(self.what, why.into())
    }

    /// The next `n` bytes.
    pub fn raw(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        if self.b.len() - self.at < n {
            return Err(self.bad(format!(
                "cut short ({} bytes left, {n} needed at {})",
                self.b.len() - self.at,
                self.at
            )));
        }
        let s = &self.b[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }
    /// A u8.
    pub fn u8(&mut self) -> Result<u8, FormatError> {
        Ok(self.raw(1)?[0])
    }
    /// A u16.
    pub fn u16(&mut self) -> Result<u16, FormatError> {
        let r = self.raw(2)?;
        Ok(u16::from_le_bytes([r[0], r[1]]))
    }
    /// A u32.
    pub fn u32(&mut self) -> Result<u32, FormatError> {
        Ok(le32(self.raw(4)?, 0))
    }
    /// A u64.
    pub fn u64(&mut self) -> Result<u64, FormatError> {
        Ok(le64(self.raw(8)?, 0))
    }
    /// A boolean written as one byte 0 or 1.
    pub fn flag(&mut self) -> Result<bool, FormatError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(self.bad(format!("flag byte {v}"))),
        }
    }
    /// A length (u32) of at most `max` and that many bytes.
    pub fn bytes(&mut self, max: usize) -> Result<&'a [u8], FormatError> {
        let n = self.u32()? as usize;
        if n > max {
            return Err(FormatError::TooLarge {
                what: self.what,
                value: n as u64,
                max: max as u64,
            });
        }
        self.raw(n)
    }
    /// A count (u32) of at most `max` items of at least `min_item` bytes
    /// each, checked against what is left before the caller allocates.
    pub fn count(&mut self, max: usize, min_item: usize) -> Result<usize, FormatError> {
        let n = self.u32()? as usize;
        if n > max {
            return Err(FormatError::TooLarge {
                what: self.what,
                value: n as u64,
                max: max as u64,
            });
        }
        if n.saturating_mul(min_item) > self.b.len() - self.at {
            return Err(self.bad(format!("{n} items cannot fit in what is left")));
        }
        Ok(n)
    }
    /// Checks that the whole body was read.
    pub fn end(self) -> Result<(), FormatError> {
        if self.at != self.b.len() {
            return Err(self.bad(format!("{} bytes left over", self.b.len() - self.at)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut w = StateWriter::new();
        let mut a = Enc::new();
        a.u8(7)
            .u16(0x1234)
            .u32(0xdead_beef)
            .u64(u64::MAX)
            .bytes(b"hello");
        w.section(1, &a).unwrap();
        let mut b = Enc::new();
        b.u32(2).u64(10).u64(20);
        w.section(2, &b).unwrap();
        w.section(2, &Enc::new()).unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn sections_round_trip_and_are_consumed_exactly() {
        let file = sample();
        let s = Sections::parse(&file).unwrap();
        assert_eq!(s.tags().collect::<Vec<_>>(), [1, 2, 2]);
        let mut a = s.one(1, "a").unwrap();
        assert_eq!(a.u8().unwrap(), 7);
        assert_eq!(a.u16().unwrap(), 0x1234);
        assert_eq!(a.u32().unwrap(), 0xdead_beef);
        assert_eq!(a.u64().unwrap(), u64::MAX);
        assert_eq!(a.bytes(16).unwrap(), b"hello");
        a.end().unwrap();
        assert_eq!(
            s.one(2, "b").unwrap_err(),
            FormatError::Section("b", "repeated")
        );
        assert_eq!(
            s.one(3, "c").unwrap_err(),
            FormatError::Section("c", "missing")
        );
        let mut b = s.all(2, "b");
        assert_eq!(b.len(), 2);
        let first = &mut b[0];
        assert_eq!(first.count(4, 8).unwrap(), 2);
        // A decoder that stops early is told so.
        let mut again = Sections::parse(&file).unwrap().all(2, "b").remove(0);
        again.u32().unwrap();
        assert!(matches!(again.end(), Err(FormatError::Bad("b", _))));
    }

    #[test]
    fn foreign_truncated_corrupt_and_versioned_files_are_refused() {
        let file = sample();
        assert_eq!(
            Sections::parse(b"\x7fELF....").unwrap_err(),
            FormatError::NotSnapshot
        );
        assert_eq!(Sections::parse(b"").unwrap_err(), FormatError::NotSnapshot);
        for cut in [9, HEADER - 1, HEADER, file.len() - 1] {
            assert!(
                matches!(
                    Sections::parse(&file[..cut]).unwrap_err(),
                    FormatError::Truncated { .. }
                ),
                "cut at {cut}"
            );
        }
        let mut longer = file.clone();
        longer.push(0);
        assert_eq!(
            Sections::parse(&longer).unwrap_err(),
            FormatError::Trailing(1)
        );
        let mut v2 = file.clone();
        v2[8] = 2;
        assert_eq!(
            Sections::parse(&v2).unwrap_err(),
            FormatError::Version { found: 2 }
        );
        // Any flipped bit in the sections fails the checksum.
        for at in [HEADER, HEADER + 9, file.len() - 1] {
            let mut bad = file.clone();
            bad[at] ^= 0x10;
            assert!(matches!(
                Sections::parse(&bad).unwrap_err(),
                FormatError::Checksum { .. }
            ));
        }
    }

    #[test]
    fn lengths_and_counts_are_capped_before_anything_is_allocated() {
        // A header announcing more than the cap is refused before the
        // length is compared with the file.
        let mut huge = sample();
        huge[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            Sections::parse(&huge).unwrap_err(),
            FormatError::TooLarge { .. }
        ));
        let mut many = sample();
        many[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            Sections::parse(&many).unwrap_err(),
            FormatError::TooLarge { .. }
        ));
        // Inside a section: a byte string longer than its cap, a count
        // that cannot fit in what is left.
        let mut e = Enc::new();
        e.bytes(&[0; 32]);
        let mut d = Dec::new("x", e.as_bytes());
        assert!(matches!(d.bytes(16), Err(FormatError::TooLarge { .. })));
        let mut e = Enc::new();
        e.u32(1000).u64(0);
        let mut d = Dec::new("x", e.as_bytes());
        assert!(matches!(d.count(10_000, 8), Err(FormatError::Bad(..))));
        let mut d = Dec::new("x", &[1, 2]);
        assert!(matches!(d.u32(), Err(FormatError::Bad(..))));
        let mut d = Dec::new("x", &[2]);
        assert!(matches!(d.flag(), Err(FormatError::Bad(..))));
    }

    #[test]
    fn a_section_count_that_disagrees_with_the_bytes_is_refused() {
        let mut file = sample();
        // One section fewer than there are: bytes left over.
        file[12..16].copy_from_slice(&2u32.to_le_bytes());
        assert_eq!(
            Sections::parse(&file).unwrap_err(),
            FormatError::Trailing(8)
        );
        // One more than there are: a section header is cut.
        file[12..16].copy_from_slice(&4u32.to_le_bytes());
        assert!(matches!(
            Sections::parse(&file).unwrap_err(),
            FormatError::Bad("sections", _)
        ));
    }
}
