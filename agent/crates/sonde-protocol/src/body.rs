//! Body accounting and bounded samples: sizes of every body, the first bytes of it decoded from
//! its content encoding, with the decoder's output bounded (decompression bombs stop at the
//! sample size).

use std::io::Read;

use bytes::{Bytes, BytesMut};
use sonde_model::Body;

/// Sample bounds of one body.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SampleLimits {
    /// Decoded bytes kept.
    pub decoded: usize,
    /// Encoded bytes kept to decode from (only when a content encoding is applied).
    pub wire: usize,
}

/// Collects a body as it streams by.
#[derive(Debug, Default)]
pub(crate) struct BodyAcc {
    pub declared_len: Option<u64>,
    pub wire_len: u64,
    pub missing_len: u64,
    encoding: Option<String>,
    /// Bytes kept so far: the first piece is kept as a zero-copy slice, later ones copied.
    first: Bytes,
    rest: BytesMut,
    keep: usize,
    /// Body bytes were seen that the sample does not hold (limit, or after a gap).
    cut: bool,
}

impl BodyAcc {
    pub fn new(declared_len: Option<u64>, encoding: Option<String>, limits: SampleLimits) -> Self {
        let identity = encoding
            .as_deref()
            .is_none_or(|e| e.is_empty() || e == "identity");
        let keep = if identity {
            limits.decoded
        } else {
            limits.wire
        };
        BodyAcc {
            declared_len,
            encoding: encoding.filter(|_| !identity),
            keep,
            ..Default::default()
        }
    }

    /// Bytes held for the sample so far.
    pub fn kept(&self) -> usize {
        self.first.len() + self.rest.len()
    }

    /// Body bytes, in order, all captured.
    pub fn data(&mut self, bytes: &Bytes) {
        self.wire_len = self.wire_len.saturating_add(bytes.len() as u64);
        if self.cut {
            return;
        }
        let room = self.keep.saturating_sub(self.kept());
        let take = room.min(bytes.len());
        if take < bytes.len() {
            self.cut = true;
        }
        if take == 0 {
            return;
        }
        if self.first.is_empty() && self.rest.is_empty() {
            self.first = bytes.slice(..take);
        } else {
            self.rest
                .extend_from_slice(bytes.get(..take).unwrap_or(bytes));
        }
    }

    /// Body bytes that exist but were not captured; the sample stops here.
    pub fn gap(&mut self, len: u64) {
        self.wire_len = self.wire_len.saturating_add(len);
        self.missing_len = self.missing_len.saturating_add(len);
        if len > 0 {
            self.cut = true;
        }
    }

    /// Whether the body lost bytes to a gap.
    pub fn has_gap(&self) -> bool {
        self.missing_len > 0
    }

    /// Finishes the body. `complete` is false when the message ended early (close, gap).
    pub fn finish(self, limits: SampleLimits, complete: bool, stats: &mut DecodeStats) -> Body {
        let raw = if self.rest.is_empty() {
            self.first
        } else {
            let mut all = BytesMut::with_capacity(self.first.len() + self.rest.len());
            all.extend_from_slice(&self.first);
            all.extend_from_slice(&self.rest);
            all.freeze()
        };
        let input_cut = self.cut || !complete;
        let mut body = Body {
            declared_len: self.declared_len,
            wire_len: self.wire_len,
            missing_len: self.missing_len,
            sample: Bytes::new(),
            sample_truncated: input_cut,
            encoding: self.encoding.clone(),
            decode_error: false,
        };
        match self.encoding.as_deref() {
            None => body.sample = raw,
            Some(encoding) => {
                if raw.is_empty() {
                    return body;
                }
                let decoded = decode(encoding, &raw, limits.decoded);
                stats.decoded += 1;
                body.sample_truncated |= decoded.output_cut;
                // A stream we cut ourselves ends early: not the sender's fault.
                if decoded.failed && !input_cut {
                    body.decode_error = true;
                    stats.errors += 1;
                }
                body.sample = decoded.output;
            }
        }
        body
    }
}

/// Decoder outcomes, for the tracker's counters.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct DecodeStats {
    pub decoded: u64,
    pub errors: u64,
}

struct Decoded {
    output: Bytes,
    /// The output reached the limit (more would follow).
    output_cut: bool,
    failed: bool,
}

/// Content codings applied in order (`gzip, br` means gzip first); unknown ones fail.
fn decode(encoding: &str, input: &[u8], limit: usize) -> Decoded {
    let codings: Vec<&str> = encoding
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty() && *c != "identity")
        .collect();
    // Each layer's output is bounded too, so an inner bomb cannot blow up an outer layer.
    let layer_limit = limit.saturating_mul(4).max(limit);
    let mut data: Vec<u8> = input.to_vec();
    let mut output_cut = false;
    for (i, coding) in codings.iter().rev().enumerate() {
        let bound = if i + 1 == codings.len() {
            limit
        } else {
            layer_limit
        };
        let mut out = Vec::new();
        let res = match decoder(coding, &data) {
            Some(reader) => reader.take(bound as u64 + 1).read_to_end(&mut out),
            None => Err(std::io::Error::from(std::io::ErrorKind::Unsupported)),
        };
        if res
            .as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::Unsupported)
        {
            return Decoded {
                output: Bytes::from(data),
                output_cut,
                failed: true,
            };
        }
        if res.is_err() && out.is_empty() && i > 0 {
            // This layer is not what the label says (servers list codings they did not apply):
            // keep what the layers before it produced.
            return Decoded {
                output: Bytes::from(data),
                output_cut,
                failed: true,
            };
        }
        if out.len() > bound {
            out.truncate(bound);
            output_cut = true;
        }
        data = out;
        if res.is_err() {
            return Decoded {
                output: Bytes::from(data),
                output_cut,
                failed: true,
            };
        }
    }
    let data = Bytes::from(data);
    Decoded {
        output: data,
        output_cut,
        failed: false,
    }
}

/// A decoder for one coding. `gzip`/`deflate` are told apart by their magic bytes because
/// servers mislabel them (gzip sent as deflate and the reverse); `deflate` may be zlib-wrapped
/// or raw.
fn decoder<'a>(coding: &str, data: &'a [u8]) -> Option<Box<dyn Read + 'a>> {
    let gzip_magic = data.starts_with(&[0x1f, 0x8b]);
    let zlib_header = data.len() >= 2
        && data[0] & 0x0f == 8
        && (u16::from(data[0]) << 8 | u16::from(data[1])) % 31 == 0;
    match coding.to_ascii_lowercase().as_str() {
        "gzip" | "x-gzip" | "deflate" if gzip_magic => {
            Some(Box::new(flate2::read::MultiGzDecoder::new(data)))
        }
        "gzip" | "x-gzip" | "deflate" if zlib_header => {
            Some(Box::new(flate2::read::ZlibDecoder::new(data)))
        }
        "gzip" | "x-gzip" | "deflate" => Some(Box::new(flate2::read::DeflateDecoder::new(data))),
        "br" => Some(Box::new(brotli::Decompressor::new(data, 4096))),
        "zstd" => zstd::stream::read::Decoder::with_buffer(data)
            .ok()
            .map(|d| Box::new(d) as Box<dyn Read + 'a>),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    const LIMITS: SampleLimits = SampleLimits {
        decoded: 1024,
        wire: 1024,
    };

    fn finish(acc: BodyAcc, complete: bool) -> (Body, DecodeStats) {
        let mut stats = DecodeStats::default();
        let body = acc.finish(LIMITS, complete, &mut stats);
        (body, stats)
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).expect("in memory");
        e.finish().expect("in memory")
    }

    #[test]
    fn identity_sample_is_zero_copy_and_bounded() {
        let mut acc = BodyAcc::new(Some(2000), None, LIMITS);
        let piece = Bytes::from(vec![b'x'; 2000]);
        acc.data(&piece);
        let (body, _) = finish(acc, true);
        assert_eq!(body.sample.len(), 1024);
        assert_eq!(body.sample.as_ptr(), piece.as_ptr());
        assert!(body.sample_truncated);
        assert_eq!(body.wire_len, 2000);
    }

    #[test]
    fn gzip_deflate_br_zstd_decode() {
        let text = b"{\"hello\":\"world\"}".repeat(10);
        let gz = gzip(&text);
        let mut zl = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        zl.write_all(&text).expect("mem");
        let zl = zl.finish().expect("mem");
        let mut br = Vec::new();
        {
            let mut w = brotli::CompressorWriter::new(&mut br, 4096, 5, 22);
            w.write_all(&text).expect("mem");
        }
        let zs = zstd::stream::encode_all(&text[..], 3).expect("mem");
        for (enc, wire) in [
            ("gzip", gz.clone()),
            ("deflate", zl),
            ("br", br),
            ("zstd", zs),
            ("deflate", gz),
        ] {
            let mut acc = BodyAcc::new(None, Some(enc.into()), LIMITS);
            acc.data(&Bytes::from(wire));
            let (body, stats) = finish(acc, true);
            assert_eq!(&body.sample[..], &text[..], "{enc}");
            assert!(!body.decode_error && !body.sample_truncated, "{enc}");
            assert_eq!(stats.decoded, 1);
        }
    }

    #[test]
    fn decompression_bomb_stops_at_the_sample_size() {
        let bomb = gzip(&vec![0u8; 10 << 20]);
        assert!(bomb.len() < 1024 * 16);
        let limits = SampleLimits {
            decoded: 4096,
            wire: 64 << 10,
        };
        let mut acc = BodyAcc::new(None, Some("gzip".into()), limits);
        acc.data(&Bytes::from(bomb));
        let mut stats = DecodeStats::default();
        let body = acc.finish(limits, true, &mut stats);
        assert_eq!(body.sample.len(), 4096);
        assert!(body.sample_truncated);
        assert!(!body.decode_error);
    }

    #[test]
    fn corrupt_input_is_a_decode_error_but_cut_input_is_not() {
        let mut acc = BodyAcc::new(None, Some("gzip".into()), LIMITS);
        acc.data(&Bytes::from_static(b"\x1f\x8bthis is not gzip"));
        let (body, stats) = finish(acc, true);
        assert!(body.decode_error);
        assert_eq!(stats.errors, 1);

        let gz = gzip(&b"abcdefgh".repeat(100));
        let mut acc = BodyAcc::new(None, Some("gzip".into()), LIMITS);
        acc.data(&Bytes::copy_from_slice(&gz[..gz.len() / 2]));
        acc.gap((gz.len() - gz.len() / 2) as u64);
        let (body, _) = finish(acc, true);
        assert!(!body.decode_error);
        assert!(body.sample_truncated);
        assert!(body.missing_len > 0);
    }

    #[test]
    fn unknown_coding_is_reported() {
        let mut acc = BodyAcc::new(None, Some("lzma".into()), LIMITS);
        acc.data(&Bytes::from_static(b"\x5d\x00\x00"));
        let (body, _) = finish(acc, true);
        assert!(body.decode_error);
        assert_eq!(body.encoding.as_deref(), Some("lzma"));
    }
}
