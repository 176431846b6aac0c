//! Protocol versions as they travel (`0x0303` is TLS 1.2).

use serde::{Deserialize, Serialize};

/// A TLS protocol version by its wire value.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct ProtocolVersion(pub u16);

impl ProtocolVersion {
    pub const SSL3: ProtocolVersion = ProtocolVersion(0x0300);
    pub const TLS10: ProtocolVersion = ProtocolVersion(0x0301);
    pub const TLS11: ProtocolVersion = ProtocolVersion(0x0302);
    pub const TLS12: ProtocolVersion = ProtocolVersion(0x0303);
    pub const TLS13: ProtocolVersion = ProtocolVersion(0x0304);

    /// `TLS 1.2`, `SSL 3.0`, or the hex value for drafts and unknown values.
    pub fn name(self) -> String {
        match self.0 {
            0x0300 => "SSL 3.0".into(),
            0x0301 => "TLS 1.0".into(),
            0x0302 => "TLS 1.1".into(),
            0x0303 => "TLS 1.2".into(),
            0x0304 => "TLS 1.3".into(),
            v if v >> 8 == 0x7f => format!("TLS 1.3 draft {}", v & 0xff),
            v => format!("0x{v:04x}"),
        }
    }

    /// A GREASE value (RFC 8701): `0x?a?a`, sent to keep peers tolerant, never negotiated.
    pub fn is_grease(self) -> bool {
        self.0 & 0x0f0f == 0x0a0a && self.0 >> 8 == self.0 & 0xff
    }

    /// Encrypts everything after the ServerHello (TLS 1.3 and its drafts).
    pub fn is_tls13(self) -> bool {
        self.0 == 0x0304 || self.0 >> 8 == 0x7f
    }
}

impl std::fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}
