//! Content decoding of body samples (`content-encoding`: gzip, deflate, br, zstd), bounded.
//!
//! The sample holds the first captured bytes of an encoded body; the decoded sample is the first
//! `limit` bytes of what they decode to. Every layer's output is bounded, so a decompression bomb
//! costs at most a few times `limit` of memory and the time to produce it.

use std::io::Read;

/// Result of decoding a sample.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Decoded {
    pub output: Vec<u8>,
    /// The output was cut at the limit, or the input ended early (a cut sample).
    pub cut: bool,
    /// The data does not decode as labelled (or the coding is unknown).
    pub failed: bool,
}

/// Decodes `input` encoded with the codings of a `content-encoding` value (applied in the order
/// listed, so undone from the last). `input_complete`: the whole body is in `input`, so an early
/// end of input is corruption rather than the sample bound.
pub(crate) fn decode(encoding: &str, input: &[u8], limit: usize, input_complete: bool) -> Decoded {
    let codings: Vec<&str> = encoding
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty() && !c.eq_ignore_ascii_case("identity"))
        .collect();
    let mut data = input.to_vec();
    let mut cut = false;
    for (i, coding) in codings.iter().rev().enumerate() {
        let last = i + 1 == codings.len();
        // An inner layer feeds the next decoder, which may expand less: give it more room.
        let bound = if last { limit } else { limit.saturating_mul(4) };
        let Some(reader) = decoder(coding, &data) else {
            return Decoded {
                output: data,
                cut,
                failed: true,
            };
        };
        let mut out = Vec::new();
        let res = reader.take(bound as u64 + 1).read_to_end(&mut out);
        if out.len() > bound {
            out.truncate(bound);
            cut = true;
        }
        match res {
            Ok(_) => {}
            // A sample cut before the end of the body ends in the middle of the stream.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !input_complete => {
                cut = true;
            }
            Err(_) if out.is_empty() => {
                return Decoded {
                    output: data,
                    cut,
                    failed: true,
                };
            }
            Err(_) => {
                return Decoded {
                    output: out,
                    cut: true,
                    failed: true,
                };
            }
        }
        data = out;
    }
    Decoded {
        output: data,
        cut,
        failed: false,
    }
}

/// A reader for one coding. gzip and deflate are told apart by their first bytes because servers
/// mislabel them; deflate may be zlib-wrapped (as specified) or raw (as often sent).
fn decoder<'a>(coding: &str, data: &'a [u8]) -> Option<Box<dyn Read + 'a>> {
    let gzip_magic = data.starts_with(&[0x1f, 0x8b]);
    let zlib_header = match data {
        [cmf, flg, ..] => cmf & 0x0f == 8 && (u16::from(*cmf) << 8 | u16::from(*flg)) % 31 == 0,
        _ => false,
    };
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

    fn text() -> Vec<u8> {
        (0..5000)
            .flat_map(|i| format!("{{\"id\":{i},\"email\":\"u{i}@example.com\"}}").into_bytes())
            .collect()
    }

    fn brotli_params() -> brotli::enc::BrotliEncoderParams {
        brotli::enc::BrotliEncoderParams {
            quality: 4,
            ..Default::default()
        }
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).expect("in-memory write");
        e.finish().expect("in-memory finish")
    }

    #[test]
    fn every_coding_decodes_to_the_limit() {
        let t = text();
        let gz = gzip(&t);
        let mut zl = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        zl.write_all(&t).expect("write");
        let zl = zl.finish().expect("finish");
        let mut br = Vec::new();
        brotli::BrotliCompress(&mut &t[..], &mut br, &brotli_params()).expect("brotli");
        let zs = zstd::encode_all(&t[..], 3).expect("zstd");
        for (coding, wire) in [("gzip", &gz), ("deflate", &zl), ("br", &br), ("zstd", &zs)] {
            let d = decode(coding, wire, 1000, true);
            assert_eq!(d.output, &t[..1000], "{coding}");
            assert!(d.cut && !d.failed, "{coding}");
            let d = decode(coding, wire, t.len(), true);
            assert_eq!(
                (d.output.len(), d.cut, d.failed),
                (t.len(), false, false),
                "{coding}"
            );
        }
        // Two layers: gzip applied first, then br.
        let mut both = Vec::new();
        brotli::BrotliCompress(&mut &gz[..], &mut both, &brotli_params()).expect("brotli");
        assert_eq!(decode("gzip, br", &both, t.len(), true).output, t);
    }

    #[test]
    fn cut_samples_keep_their_prefix_and_garbage_fails() {
        let t = text();
        let gz = gzip(&t);
        let d = decode("gzip", &gz[..gz.len() / 2], 1 << 20, false);
        assert!(!d.failed && d.cut && !d.output.is_empty());
        assert!(t.starts_with(&d.output));
        let d = decode("gzip", b"definitely not gzip", 1000, true);
        assert!(d.failed);
        assert!(decode("compress", b"abc", 1000, true).failed);
        // A bomb: 4 MiB of zeros compresses to ~4 KiB; output stays at the limit.
        let zeros = vec![0u8; 4 << 20];
        let bomb = gzip(&zeros);
        let d = decode("gzip", &bomb, 4096, true);
        assert_eq!((d.output.len(), d.cut, d.failed), (4096, true, false));
    }
}
