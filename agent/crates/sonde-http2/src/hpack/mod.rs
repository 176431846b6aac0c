//! A tolerant HPACK decoder (RFC 7541) for a passive observer.
//!
//! Why our own: h2 keeps its decoder private and treats an unknown dynamic-table index as a
//! connection error. An observer that joins late must instead report such fields as unresolved,
//! keep the table consistent for the insertions it does see, and go on decoding later blocks.
//! See [`table`] for how partially known entries are modelled.
//!
//! Any malformed block (bad integer, truncated string, bad Huffman code) leaves the rest of that
//! block unreadable, so the insertions it may have held are lost: the decoder then resets its
//! table to "unknown" rather than risk shifted indices, which would give wrong values.

pub mod huffman;
pub mod table;

use thiserror::Error;

use self::huffman::HuffmanError;
use self::table::{DynamicTable, Lookup};

/// The protocol's initial dynamic table size (SETTINGS_HEADER_TABLE_SIZE default).
pub const DEFAULT_TABLE_SIZE: usize = 4096;

/// Why a header block could not be decoded to its end.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum HpackError {
    #[error("integer does not fit in 32 bits")]
    IntegerOverflow,
    #[error("header block ends inside an instruction")]
    Truncated,
    #[error("bad huffman string: {0}")]
    Huffman(#[from] HuffmanError),
}

/// How a literal field relates to the dynamic table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LiteralMode {
    /// Literal with incremental indexing: inserted into the table.
    Incremental,
    WithoutIndexing,
    /// Must never be indexed by intermediaries (often credentials).
    NeverIndexed,
}

/// A string literal as it is on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WireString<'a> {
    pub huffman: bool,
    pub raw: &'a [u8],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameRef<'a> {
    Indexed(usize),
    Literal(WireString<'a>),
}

/// One header block instruction (RFC 7541 §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Instruction<'a> {
    Indexed(usize),
    Literal {
        name: NameRef<'a>,
        value: WireString<'a>,
        mode: LiteralMode,
    },
    SizeUpdate(usize),
}

/// Reads an integer with an N-bit prefix (RFC 7541 §5.1). Returns the value and bytes used.
pub fn read_integer(buf: &[u8], prefix_bits: u32) -> Result<(usize, usize), HpackError> {
    let first = *buf.first().ok_or(HpackError::Truncated)?;
    let mask = (1u32 << prefix_bits) - 1;
    let mut value = u32::from(first) & mask;
    if value < mask {
        return Ok((value as usize, 1));
    }
    let mut shift = 0u32;
    for (i, &b) in buf.iter().enumerate().skip(1) {
        // More than 5 continuation bytes cannot fit in 32 bits.
        if shift > 28 {
            return Err(HpackError::IntegerOverflow);
        }
        let add = (u32::from(b & 0x7f))
            .checked_shl(shift)
            .ok_or(HpackError::IntegerOverflow)?;
        if shift == 28 && b & 0x70 != 0 {
            return Err(HpackError::IntegerOverflow);
        }
        value = value.checked_add(add).ok_or(HpackError::IntegerOverflow)?;
        if b & 0x80 == 0 {
            return Ok((value as usize, i + 1));
        }
        shift += 7;
    }
    Err(HpackError::Truncated)
}

fn read_string(buf: &[u8]) -> Result<(WireString<'_>, usize), HpackError> {
    let huffman = buf.first().ok_or(HpackError::Truncated)? & 0x80 != 0;
    let (len, used) = read_integer(buf, 7)?;
    let end = used.checked_add(len).ok_or(HpackError::Truncated)?;
    let raw = buf.get(used..end).ok_or(HpackError::Truncated)?;
    Ok((WireString { huffman, raw }, end))
}

/// Parses the instruction at the start of `buf`; returns it and the bytes it used.
pub fn read_instruction(buf: &[u8]) -> Result<(Instruction<'_>, usize), HpackError> {
    let first = *buf.first().ok_or(HpackError::Truncated)?;
    if first & 0x80 != 0 {
        let (index, used) = read_integer(buf, 7)?;
        return Ok((Instruction::Indexed(index), used));
    }
    if first & 0xe0 == 0x20 {
        let (size, used) = read_integer(buf, 5)?;
        return Ok((Instruction::SizeUpdate(size), used));
    }
    let (mode, prefix) = if first & 0x40 != 0 {
        (LiteralMode::Incremental, 6)
    } else if first & 0x10 != 0 {
        (LiteralMode::NeverIndexed, 4)
    } else {
        (LiteralMode::WithoutIndexing, 4)
    };
    let (index, mut pos) = read_integer(buf, prefix)?;
    let name = if index == 0 {
        let (s, used) = read_string(buf.get(pos..).ok_or(HpackError::Truncated)?)?;
        pos += used;
        NameRef::Literal(s)
    } else {
        NameRef::Indexed(index)
    };
    let (value, used) = read_string(buf.get(pos..).ok_or(HpackError::Truncated)?)?;
    Ok((Instruction::Literal { name, value, mode }, pos + used))
}

/// One decoded field. `None` marks text that refers to a table entry we never saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field<'a> {
    pub name: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub never_indexed: bool,
}

impl Field<'_> {
    pub fn is_resolved(&self) -> bool {
        self.name.is_some() && self.value.is_some()
    }
}

/// Counters of one decoder.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HpackStats {
    pub blocks: u64,
    pub fields: u64,
    /// Fields (name or value) that referred to entries inserted before we started observing.
    pub unresolved_fields: u64,
    /// References past the end of a table we believed complete (state lost: table marked unknown).
    pub invalid_indices: u64,
    /// Blocks that could not be decoded to their end (the table was reset to unknown).
    pub malformed_blocks: u64,
    pub size_updates: u64,
    /// Size updates above the peer's SETTINGS_HEADER_TABLE_SIZE or our hard limit.
    pub size_updates_over_limit: u64,
    /// Size updates after the first field of a block (a protocol error, applied anyway).
    pub size_updates_misplaced: u64,
    /// Times the table was declared unknown (late start, lost bytes, malformed blocks).
    pub resets: u64,
}

/// What was learnt from one block besides its fields.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockSummary {
    pub fields: usize,
    pub unresolved: usize,
}

/// Where a decoded name comes from; resolved to a slice only when needed, so that the table can
/// be mutated after the field is emitted.
enum NameSrc {
    Static(&'static [u8]),
    Table(usize),
    Block(usize, usize),
    Buf,
    Unknown,
}

/// HPACK decoder for one direction of one connection.
#[derive(Debug)]
pub struct Decoder {
    table: DynamicTable,
    /// Maximum size we accept from size updates, whatever the peer announced (bounds memory).
    hard_limit: usize,
    /// SETTINGS_HEADER_TABLE_SIZE announced by the decoding peer, when seen.
    settings_limit: Option<usize>,
    name_buf: Vec<u8>,
    value_buf: Vec<u8>,
    stats: HpackStats,
}

impl Decoder {
    /// A decoder for a connection observed from its start.
    pub fn new(hard_limit: usize) -> Decoder {
        let mut table = DynamicTable::fresh(DEFAULT_TABLE_SIZE.min(hard_limit));
        if hard_limit < DEFAULT_TABLE_SIZE {
            table = DynamicTable::unknown(hard_limit);
        }
        Decoder::with_table(table, hard_limit)
    }

    /// A decoder for a connection joined after its start: the table content is unknown.
    pub fn new_late(hard_limit: usize) -> Decoder {
        let mut d = Decoder::with_table(DynamicTable::unknown(hard_limit), hard_limit);
        d.stats.resets = 1;
        d
    }

    fn with_table(table: DynamicTable, hard_limit: usize) -> Decoder {
        Decoder {
            table,
            hard_limit,
            settings_limit: None,
            name_buf: Vec::new(),
            value_buf: Vec::new(),
            stats: HpackStats::default(),
        }
    }

    /// Records the SETTINGS_HEADER_TABLE_SIZE the decoding peer announced (for abuse counting).
    pub fn set_settings_limit(&mut self, limit: usize) {
        self.settings_limit = Some(limit);
    }

    /// Forgets the table: bytes of this direction were lost, so insertions may have been missed.
    pub fn reset_unknown(&mut self) {
        self.table = DynamicTable::unknown(self.hard_limit);
        self.stats.resets += 1;
    }

    pub fn stats(&self) -> &HpackStats {
        &self.stats
    }

    pub fn table(&self) -> &DynamicTable {
        &self.table
    }

    /// Decodes one complete header block, handing every field to `sink` in order. On error the
    /// fields before the bad instruction have been handed over and the table is reset to unknown.
    pub fn decode_block(
        &mut self,
        block: &[u8],
        sink: &mut dyn FnMut(Field<'_>),
    ) -> Result<BlockSummary, HpackError> {
        self.stats.blocks += 1;
        match self.decode_inner(block, sink) {
            Ok(s) => Ok(s),
            Err(e) => {
                self.stats.malformed_blocks += 1;
                self.reset_unknown();
                Err(e)
            }
        }
    }

    fn decode_inner(
        &mut self,
        block: &[u8],
        sink: &mut dyn FnMut(Field<'_>),
    ) -> Result<BlockSummary, HpackError> {
        let mut summary = BlockSummary::default();
        let mut pos = 0;
        while pos < block.len() {
            let rest = block.get(pos..).unwrap_or_default();
            let (instruction, used) = read_instruction(rest)?;
            let base = pos;
            pos += used;
            match instruction {
                Instruction::SizeUpdate(size) => self.size_update(size, summary.fields > 0),
                Instruction::Indexed(index) => {
                    summary.fields += 1;
                    self.stats.fields += 1;
                    let field = match self.table.get(index) {
                        Lookup::Found { name, value } => Field {
                            name,
                            value: Some(value),
                            never_indexed: false,
                        },
                        Lookup::Unresolved => Field {
                            name: None,
                            value: None,
                            never_indexed: false,
                        },
                        Lookup::Invalid => {
                            self.invalid_index();
                            Field {
                                name: None,
                                value: None,
                                never_indexed: false,
                            }
                        }
                    };
                    if !field.is_resolved() {
                        summary.unresolved += 1;
                        self.stats.unresolved_fields += 1;
                    }
                    sink(field);
                }
                Instruction::Literal { name, value, mode } => {
                    summary.fields += 1;
                    self.stats.fields += 1;
                    let name_src = match name {
                        NameRef::Indexed(index) => match self.table.get(index) {
                            Lookup::Found { name: Some(_), .. }
                                if index <= table::STATIC_TABLE.len() =>
                            {
                                NameSrc::Static(
                                    table::STATIC_TABLE
                                        .get(index - 1)
                                        .map_or(&b""[..], |e| e.0.as_bytes()),
                                )
                            }
                            Lookup::Found { name: Some(_), .. } => NameSrc::Table(index),
                            Lookup::Found { name: None, .. } | Lookup::Unresolved => {
                                NameSrc::Unknown
                            }
                            Lookup::Invalid => {
                                self.invalid_index();
                                NameSrc::Unknown
                            }
                        },
                        NameRef::Literal(s) if s.huffman => {
                            self.name_buf.clear();
                            huffman::decode(s.raw, &mut self.name_buf)?;
                            NameSrc::Buf
                        }
                        NameRef::Literal(s) => {
                            let start = offset_in(block, s.raw).unwrap_or(base);
                            NameSrc::Block(start, start + s.raw.len())
                        }
                    };
                    let value_in_buf = value.huffman;
                    if value_in_buf {
                        self.value_buf.clear();
                        huffman::decode(value.raw, &mut self.value_buf)?;
                    }
                    let value_slice: &[u8] = if value_in_buf {
                        &self.value_buf
                    } else {
                        value.raw
                    };
                    let name_slice: Option<&[u8]> = match &name_src {
                        NameSrc::Static(s) => Some(s),
                        NameSrc::Table(i) => match self.table.get(*i) {
                            Lookup::Found { name, .. } => name,
                            _ => None,
                        },
                        NameSrc::Block(a, b) => block.get(*a..*b),
                        NameSrc::Buf => Some(&self.name_buf),
                        NameSrc::Unknown => None,
                    };
                    if name_slice.is_none() {
                        summary.unresolved += 1;
                        self.stats.unresolved_fields += 1;
                    }
                    sink(Field {
                        name: name_slice,
                        value: Some(value_slice),
                        never_indexed: mode == LiteralMode::NeverIndexed,
                    });
                    if mode == LiteralMode::Incremental {
                        if let NameSrc::Table(i) = name_src {
                            // The name lives in the table we are about to change: copy it first.
                            self.name_buf.clear();
                            if let Lookup::Found { name: Some(n), .. } = self.table.get(i) {
                                self.name_buf.extend_from_slice(n);
                            }
                        }
                        let name_slice: Option<&[u8]> = match name_src {
                            NameSrc::Static(s) => Some(s),
                            NameSrc::Table(_) | NameSrc::Buf => Some(&self.name_buf),
                            NameSrc::Block(a, b) => block.get(a..b),
                            NameSrc::Unknown => None,
                        };
                        let value_slice: &[u8] = if value_in_buf {
                            &self.value_buf
                        } else {
                            value.raw
                        };
                        self.table.insert(name_slice, value_slice);
                    }
                }
            }
        }
        Ok(summary)
    }

    fn invalid_index(&mut self) {
        self.stats.invalid_indices += 1;
        // The table we believed complete is not: from now on, references past it are unresolved.
        self.table.mark_incomplete();
    }

    fn size_update(&mut self, size: usize, misplaced: bool) {
        self.stats.size_updates += 1;
        if misplaced {
            self.stats.size_updates_misplaced += 1;
        }
        if self.settings_limit.is_some_and(|l| size > l) || size > self.hard_limit {
            self.stats.size_updates_over_limit += 1;
        }
        if size > self.hard_limit {
            // Keep memory bounded; entries the encoder still holds past our limit become unknown.
            self.table.set_max_size(self.hard_limit);
            self.table.mark_incomplete();
        } else {
            self.table.set_max_size(size);
        }
    }
}

/// Position of `inner` within `outer`, when it is a sub-slice of it.
fn offset_in(outer: &[u8], inner: &[u8]) -> Option<usize> {
    let start = (inner.as_ptr() as usize).checked_sub(outer.as_ptr() as usize)?;
    (start + inner.len() <= outer.len()).then_some(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap_or(0))
            .collect()
    }

    fn decode_all(d: &mut Decoder, block: &[u8]) -> Vec<(Option<String>, Option<String>)> {
        let mut out = Vec::new();
        let _ = d.decode_block(block, &mut |f| {
            out.push((
                f.name.map(|n| String::from_utf8_lossy(n).into_owned()),
                f.value.map(|v| String::from_utf8_lossy(v).into_owned()),
            ))
        });
        out
    }

    fn known(pairs: &[(&str, &str)]) -> Vec<(Option<String>, Option<String>)> {
        pairs
            .iter()
            .map(|(n, v)| (Some(n.to_string()), Some(v.to_string())))
            .collect()
    }

    #[test]
    fn integers_follow_rfc7541_c1() {
        assert_eq!(read_integer(&[0x0a], 5), Ok((10, 1)));
        assert_eq!(read_integer(&[0x1f, 0x9a, 0x0a], 5), Ok((1337, 3)));
        assert_eq!(read_integer(&[0x2a], 8), Ok((42, 1)));
        assert_eq!(read_integer(&[0x1f, 0x9a], 5), Err(HpackError::Truncated));
        assert_eq!(
            read_integer(&[0x1f, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01], 5),
            Err(HpackError::IntegerOverflow)
        );
    }

    #[test]
    fn rfc7541_c4_requests_with_huffman() {
        let mut d = Decoder::new(65536);
        let a = decode_all(&mut d, &hex("828684418cf1e3c2e5f23a6ba0ab90f4ff"));
        assert_eq!(
            a,
            known(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com")
            ])
        );
        let b = decode_all(&mut d, &hex("828684be5886a8eb10649cbf"));
        assert_eq!(
            b,
            known(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
                ("cache-control", "no-cache")
            ])
        );
        assert_eq!(d.table().size(), 110);
    }

    #[test]
    fn late_start_reports_unresolved_and_keeps_indices() {
        // Second request of C.4 decoded alone: index 62 (authority) was inserted before.
        let mut d = Decoder::new_late(65536);
        let b = decode_all(&mut d, &hex("828684be5886a8eb10649cbf"));
        assert_eq!(b[3], (None, None));
        assert_eq!(
            b[4],
            (Some("cache-control".into()), Some("no-cache".into()))
        );
        assert_eq!(d.stats().unresolved_fields, 1);
        // The insertion we saw is entry 62 now; entry 63 is the unknown earlier one.
        let c = decode_all(&mut d, &[0xbe, 0xbf]);
        assert_eq!(
            c,
            vec![
                (Some("cache-control".into()), Some("no-cache".into())),
                (None, None)
            ]
        );
    }

    #[test]
    fn malformed_block_resets_table() {
        let mut d = Decoder::new(65536);
        let _ = decode_all(&mut d, &hex("828684418cf1e3c2e5f23a6ba0ab90f4ff"));
        assert_eq!(d.table().len(), 1);
        // A literal whose string runs past the end of the block.
        assert_eq!(
            d.decode_block(&[0x40, 0x85, 0x01], &mut |_| {}),
            Err(HpackError::Truncated)
        );
        assert_eq!(d.table().len(), 0);
        assert_eq!(decode_all(&mut d, &[0xbe]), vec![(None, None)]);
        assert_eq!(d.stats().malformed_blocks, 1);
    }

    #[test]
    fn size_update_above_hard_limit_is_clamped_and_counted() {
        let mut d = Decoder::new(1024);
        // Size update to 1_000_000 (5-bit prefix).
        let _ = decode_all(&mut d, &[0x3f, 0xa1, 0x84, 0x3d]);
        assert_eq!(d.table().max_size(), 1024);
        assert_eq!(d.stats().size_updates_over_limit, 1);
    }
}
