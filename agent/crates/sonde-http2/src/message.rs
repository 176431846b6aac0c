//! Accumulates one side of a stream (request or response) into the sonde-model shapes.

use bytes::Bytes;
use sonde_model::{Body, Header};

use crate::config::Http2Config;
use crate::grpc::MessageCounter;
use crate::hpack::Field;

/// Pseudo-header values of one header block.
#[derive(Clone, Debug, Default)]
pub(crate) struct Pseudo {
    pub method: Option<String>,
    pub scheme: Option<String>,
    pub authority: Option<String>,
    pub path: Option<String>,
    pub status: Option<String>,
}

/// The fields of one decoded header block, bounded by the configured limits.
#[derive(Debug, Default)]
pub(crate) struct BlockFields {
    pub pseudo: Pseudo,
    pub headers: Vec<Header>,
    /// Fields dropped by the limits.
    pub dropped: u64,
    /// Fields that could not be resolved (HPACK state unknown).
    pub unresolved: u64,
}

impl BlockFields {
    pub fn push(&mut self, field: Field<'_>, cfg: &Http2Config) {
        let (Some(name), Some(value)) = (field.name, field.value) else {
            self.unresolved += 1;
            return;
        };
        if let Some(pseudo) = name.strip_prefix(b":") {
            let slot = match pseudo {
                b"method" => &mut self.pseudo.method,
                b"scheme" => &mut self.pseudo.scheme,
                b"authority" => &mut self.pseudo.authority,
                b"path" => &mut self.pseudo.path,
                b"status" => &mut self.pseudo.status,
                _ => {
                    self.dropped += 1;
                    return;
                }
            };
            let (v, _) = bounded_text(value, cfg.max_header_value_bytes);
            *slot = Some(v);
            return;
        }
        if self.headers.len() >= cfg.max_headers {
            self.dropped += 1;
            return;
        }
        let (value, value_truncated) = bounded_text(value, cfg.max_header_value_bytes);
        let mut name = String::from_utf8_lossy(name).into_owned();
        name.make_ascii_lowercase();
        self.headers.push(Header {
            name,
            value,
            value_truncated,
        });
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        sonde_model::exchange::find_header(&self.headers, name)
    }
}

/// Header bytes as text; bytes that are not UTF-8 (obs-text) become U+FFFD.
fn text(bytes: &[u8]) -> String {
    // The strict check is much faster than the lossy path and almost always succeeds.
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_owned(),
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// Text of at most `limit` bytes (cut on a character boundary); whether it was cut.
fn bounded_text(bytes: &[u8], limit: usize) -> (String, bool) {
    let cut = bytes.len() > limit;
    let bytes = bytes.get(..limit).unwrap_or(bytes);
    let mut text = text(bytes);
    if cut {
        // A cut multi-byte character decodes to U+FFFD at the end; drop it.
        while text.ends_with('\u{fffd}') {
            text.pop();
        }
    }
    (text, cut)
}

/// Body bytes and their bounded sample.
#[derive(Debug, Default)]
pub(crate) struct BodyAcc {
    pub declared_len: Option<u64>,
    pub wire_len: u64,
    pub missing_len: u64,
    pub sample: Vec<u8>,
    pub sample_truncated: bool,
    pub encoding: Option<String>,
}

impl BodyAcc {
    pub fn data(&mut self, data: &[u8], limit: usize) {
        self.wire_len += data.len() as u64;
        if self.sample.capacity() == 0 {
            // One allocation for the usual body whose length was announced.
            let expect = self
                .declared_len
                .map_or(data.len() as u64, |l| l.max(data.len() as u64));
            self.sample
                .reserve(usize::try_from(expect).unwrap_or(limit).min(limit));
        }
        let room = limit.saturating_sub(self.sample.len());
        if data.len() > room {
            self.sample_truncated = true;
        }
        self.sample
            .extend_from_slice(data.get(..room).unwrap_or(data));
    }

    pub fn missing(&mut self, len: u64) {
        self.wire_len += len;
        self.missing_len += len;
        self.sample_truncated = true;
    }

    /// The final body: the sample is content-decoded (bounded by `limit`) when an encoding was
    /// announced. `complete`: the message ended normally, so all of its body was seen.
    pub fn finish(self, limit: usize, complete: bool) -> Body {
        let mut sample = self.sample;
        let mut sample_truncated = self.sample_truncated;
        let mut decode_error = false;
        if let Some(encoding) = &self.encoding
            && !sample.is_empty()
        {
            let whole = complete && !self.sample_truncated && self.missing_len == 0;
            let d = crate::content::decode(encoding, &sample, limit, whole);
            decode_error = d.failed;
            sample_truncated |= d.cut;
            sample = d.output;
        }
        Body {
            declared_len: self.declared_len,
            wire_len: self.wire_len,
            missing_len: self.missing_len,
            sample: Bytes::from(sample),
            sample_truncated,
            encoding: self.encoding,
            decode_error,
        }
    }
}

/// One side of a stream.
#[derive(Debug, Default)]
pub(crate) struct Message {
    pub pseudo: Pseudo,
    pub headers: Vec<Header>,
    pub trailers: Vec<Header>,
    pub body: BodyAcc,
    pub grpc: MessageCounter,
    pub ts_start_ns: u64,
    pub ts_end_ns: u64,
    /// END_STREAM seen.
    pub ended: bool,
}

impl Message {
    pub fn from_block(block: BlockFields, ts_ns: u64) -> Message {
        let declared_len = block
            .header("content-length")
            .and_then(|v| v.trim().parse().ok());
        let encoding = block
            .header("content-encoding")
            .map(str::to_owned)
            .filter(|e| !e.eq_ignore_ascii_case("identity"));
        Message {
            pseudo: block.pseudo,
            headers: block.headers,
            body: BodyAcc {
                declared_len,
                encoding,
                ..BodyAcc::default()
            },
            ts_start_ns: ts_ns,
            ts_end_ns: ts_ns,
            ..Message::default()
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        sonde_model::exchange::find_header(&self.headers, name)
    }

    pub fn trailer(&self, name: &str) -> Option<&str> {
        sonde_model::exchange::find_header(&self.trailers, name)
    }
}
