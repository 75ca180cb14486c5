//! A decoder for the LZ4 "legacy" frame, the format of an LZ4-compressed
//! kernel inside a bzImage (`lz4 -l`, then the kernel build appends the
//! decoded length as 4 little-endian bytes).
//!
//! The legacy frame is the magic 0x184c2102, then blocks, each a
//! little-endian u32 compressed length and one LZ4 block that decodes to at
//! most 8 MiB on its own (no match reaches into an earlier block). A further
//! magic may start a new frame; a zero length or the end of the input ends
//! it.
//!
//! Every length and offset is checked: a corrupt or hostile image gives an
//! error, never a panic or an output beyond the limit the caller sets.

/// The legacy frame's magic, little-endian in the file.
pub const LEGACY_MAGIC: u32 = 0x184c_2102;

/// The most one legacy block decodes to.
const BLOCK_MAX: usize = 8 << 20;

/// Why an input is not a valid LZ4 legacy frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Lz4Error {
    /// The input does not start with the legacy magic.
    #[error("not an LZ4 legacy frame")]
    NoMagic,
    /// A block's length runs past the end of the input.
    #[error("block at offset {at} runs past the end of the input")]
    Truncated {
        /// Where the block's length field starts.
        at: usize,
    },
    /// A block's contents are not a valid LZ4 block.
    #[error("block at offset {at} is corrupt ({why})")]
    Corrupt {
        /// Where the block's length field starts.
        at: usize,
        /// What was wrong.
        why: &'static str,
    },
    /// The output would grow beyond the caller's limit.
    #[error("decodes to more than {limit} bytes")]
    TooLong {
        /// The limit.
        limit: usize,
    },
}

/// Decodes a legacy frame (`input` without any trailing length) into at
/// most `limit` bytes.
pub fn decode_legacy(input: &[u8], limit: usize) -> Result<Vec<u8>, Lz4Error> {
    if read_u32(input, 0) != Some(LEGACY_MAGIC) {
        return Err(Lz4Error::NoMagic);
    }
    let mut out = Vec::with_capacity(limit.min(BLOCK_MAX));
    let mut at = 4;
    while let Some(len) = read_u32(input, at) {
        if len == LEGACY_MAGIC {
            at += 4;
            continue;
        }
        if len == 0 {
            break;
        }
        let start = at + 4;
        let block = usize::try_from(len)
            .ok()
            .and_then(|len| input.get(start..start.checked_add(len)?))
            .ok_or(Lz4Error::Truncated { at })?;
        let room = limit.saturating_sub(out.len()).min(BLOCK_MAX);
        decode_block(block, &mut out, room).map_err(|why| match why {
            BlockError::Full if room < BLOCK_MAX => Lz4Error::TooLong { limit },
            BlockError::Full => Lz4Error::Corrupt {
                at,
                why: "decodes to more than 8 MiB",
            },
            BlockError::Bad(why) => Lz4Error::Corrupt { at, why },
        })?;
        at = start + block.len();
    }
    Ok(out)
}

enum BlockError {
    /// The block decodes to more than the room it was given.
    Full,
    /// The block is malformed.
    Bad(&'static str),
}

/// Appends the decoding of one LZ4 block to `out`, at most `room` bytes.
/// Matches may reach back only into this block's own output.
fn decode_block(block: &[u8], out: &mut Vec<u8>, room: usize) -> Result<(), BlockError> {
    let base = out.len();
    let cap = base + room;
    let mut i = 0;
    loop {
        let token = *block.get(i).ok_or(BlockError::Bad("ends inside a token"))?;
        i += 1;
        let literals = length(block, &mut i, usize::from(token >> 4))?;
        let lit_end = i
            .checked_add(literals)
            .filter(|&e| e <= block.len())
            .ok_or(BlockError::Bad("literals run past the block"))?;
        if out.len() + literals > cap {
            return Err(BlockError::Full);
        }
        out.extend_from_slice(&block[i..lit_end]);
        i = lit_end;
        if i == block.len() {
            // The last sequence has literals only.
            return Ok(());
        }
        let offset = block
            .get(i..i + 2)
            .map(|b| usize::from(u16::from_le_bytes([b[0], b[1]])))
            .ok_or(BlockError::Bad("ends inside a match offset"))?;
        i += 2;
        if offset == 0 || offset > out.len() - base {
            return Err(BlockError::Bad("match offset outside the block's output"));
        }
        let len = length(block, &mut i, usize::from(token & 0xf))? + 4;
        if out.len() + len > cap {
            return Err(BlockError::Full);
        }
        let from = out.len() - offset;
        if offset >= len {
            out.extend_from_within(from..from + len);
        } else {
            // The match overlaps its own output: copy it a period at a time.
            let mut left = len;
            while left > 0 {
                let n = left.min(offset);
                out.extend_from_within(from..from + n);
                left -= n;
            }
        }
    }
}

/// A token's length nibble `nibble`, extended by the bytes that follow when
/// it is 15.
fn length(block: &[u8], i: &mut usize, nibble: usize) -> Result<usize, BlockError> {
    let mut len = nibble;
    if nibble == 15 {
        loop {
            let b = *block
                .get(*i)
                .ok_or(BlockError::Bad("ends inside a length"))?;
            *i += 1;
            len = len
                .checked_add(usize::from(b))
                .ok_or(BlockError::Bad("length overflows"))?;
            if b != 255 {
                break;
            }
        }
    }
    Ok(len)
}

/// A legacy frame that holds `data` as literals only (no compression),
/// followed by its length as a bzImage's payload is: what tests and the
/// `kernel_image` fuzz target wrap a hand-made kernel in.
pub fn stored_payload(data: &[u8]) -> Vec<u8> {
    let mut out = LEGACY_MAGIC.to_le_bytes().to_vec();
    for chunk in data.chunks(BLOCK_MAX / 2) {
        let mut block = Vec::with_capacity(chunk.len() + chunk.len() / 255 + 2);
        if chunk.len() < 15 {
            // Below 15 the length fits the token's nibble.
            block.push(u8::try_from(chunk.len() << 4).unwrap_or(0xf0));
        } else {
            block.push(0xf0);
            let mut rest = chunk.len() - 15;
            while rest >= 255 {
                block.push(255);
                rest -= 255;
            }
            block.push(u8::try_from(rest).unwrap_or(0));
        }
        block.extend_from_slice(chunk);
        let len = u32::try_from(block.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&block);
    }
    let total = u32::try_from(data.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&total.to_le_bytes());
    out
}

/// The little-endian u32 at `at`, if the input holds one there.
fn read_u32(input: &[u8], at: usize) -> Option<u32> {
    let b = input.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(blocks: &[&[u8]]) -> Vec<u8> {
        let mut f = LEGACY_MAGIC.to_le_bytes().to_vec();
        for b in blocks {
            f.extend_from_slice(&u32::try_from(b.len()).unwrap().to_le_bytes());
            f.extend_from_slice(b);
        }
        f
    }

    #[test]
    fn literals_and_overlapping_matches_decode() {
        // "abc", then a match of 9 at offset 3 (overlapping), then "xyz".
        let block = [0x35, b'a', b'b', b'c', 3, 0, 0x30, b'x', b'y', b'z'];
        let out = decode_legacy(&frame(&[&block]), 1 << 20).unwrap();
        assert_eq!(out, b"abcabcabcabcxyz");
    }

    #[test]
    fn long_lengths_and_several_blocks_and_frames_decode() {
        // 15 + 255 + 10 = 280 literals 'q', then a last literal.
        let mut first = vec![0xf0, 255, 10];
        first.extend(std::iter::repeat_n(b'q', 280));
        // One literal, then a match of 4 + 15 + 1 = 20 at offset 1, then one
        // last literal.
        let second = [0x1f, b'r', 1, 0, 1, 0x10, b's'];
        let mut input = frame(&[&first]);
        input.extend_from_slice(&frame(&[&second]));
        let out = decode_legacy(&input, 1 << 20).unwrap();
        let mut want = vec![b'q'; 280];
        want.extend(std::iter::repeat_n(b'r', 21));
        want.push(b's');
        assert_eq!(out, want);
        // A zero length ends the frame: what follows is not decoded.
        let mut ended = frame(&[&second]);
        ended.extend_from_slice(&[0, 0, 0, 0, 0xff]);
        assert_eq!(decode_legacy(&ended, 1 << 20).unwrap().len(), 22);
    }

    #[test]
    fn a_stored_payload_decodes_to_its_data() {
        for n in [0, 1, 14, 15, 16, 269, 270, 271, 5000, BLOCK_MAX / 2 + 3] {
            let data: Vec<u8> = (0..n).map(|i| u8::try_from(i * 7 % 251).unwrap()).collect();
            let p = stored_payload(&data);
            let (frame, len) = p.split_at(p.len() - 4);
            assert_eq!(len, &u32::try_from(n).unwrap().to_le_bytes());
            assert_eq!(decode_legacy(frame, n).unwrap(), data, "{n}");
        }
    }

    #[test]
    fn bad_input_is_an_error_never_a_panic() {
        assert_eq!(
            decode_legacy(b"\x1f\x8b\x08\x00", 100),
            Err(Lz4Error::NoMagic)
        );
        assert_eq!(decode_legacy(b"", 100), Err(Lz4Error::NoMagic));
        let mut truncated = frame(&[&[0x10, b'a']]);
        truncated.pop();
        assert_eq!(
            decode_legacy(&truncated, 100),
            Err(Lz4Error::Truncated { at: 4 })
        );
        // A match reaching before the block's output.
        let far = [0x10, b'a', 2, 0, 0x10, b'b'];
        assert!(matches!(
            decode_legacy(&frame(&[&far]), 100),
            Err(Lz4Error::Corrupt { .. })
        ));
        // A zero offset.
        let zero = [0x10, b'a', 0, 0, 0x10, b'b'];
        assert!(decode_legacy(&frame(&[&zero]), 100).is_err());
        // Literals past the block, a length past the block.
        assert!(decode_legacy(&frame(&[&[0x50, b'a']]), 100).is_err());
        assert!(decode_legacy(&frame(&[&[0xf0, 255]]), 100).is_err());
        // The limit holds.
        let block = [0x15, b'a', 1, 0, 0x10, b'b'];
        assert_eq!(decode_legacy(&frame(&[&block]), 12).unwrap().len(), 11);
        assert_eq!(
            decode_legacy(&frame(&[&block]), 10),
            Err(Lz4Error::TooLong { limit: 10 })
        );
        // Every truncation of a valid frame is handled.
        let good = frame(&[&[0x35, b'a', b'b', b'c', 3, 0, 0x30, b'x', b'y', b'z']]);
        for n in 0..good.len() {
            let _ = decode_legacy(&good[..n], 100);
        }
    }
}
