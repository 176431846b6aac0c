//! Cipher suites: IANA names (tls-parser's registry) and the weakness classes posture cares about.

use serde::{Deserialize, Serialize};
use tls_parser::{TlsCipherAu, TlsCipherEnc, TlsCipherKx, TlsCipherSuite};

/// Why a negotiated suite protects the connection badly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Weakness {
    /// No encryption at all (`*_WITH_NULL_*`).
    Null,
    /// No server authentication (`DH_anon`, `ECDH_anon`): anyone in the path can impersonate it.
    Anonymous,
    /// 40/56-bit export-grade keys (FREAK, Logjam).
    Export,
    /// RC4 (RFC 7465 forbids it).
    Rc4,
    /// Single DES (56-bit keys).
    Des,
    /// Triple DES: 64-bit blocks (Sweet32).
    TripleDes,
}

impl Weakness {
    pub fn as_str(self) -> &'static str {
        match self {
            Weakness::Null => "NULL",
            Weakness::Anonymous => "anon",
            Weakness::Export => "EXPORT",
            Weakness::Rc4 => "RC4",
            Weakness::Des => "DES",
            Weakness::TripleDes => "3DES",
        }
    }
}

/// A cipher suite by its wire id, with its IANA name when the registry knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CipherInfo {
    pub id: u16,
    /// `TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256`; `0x....` for ids the registry lacks.
    pub name: String,
    pub weaknesses: Vec<Weakness>,
}

/// Name and weakness classes of suite `id`.
pub fn cipher_info(id: u16) -> CipherInfo {
    let Some(suite) = TlsCipherSuite::from_id(id) else {
        return CipherInfo {
            id,
            name: format!("0x{id:04x}"),
            weaknesses: Vec::new(),
        };
    };
    CipherInfo {
        id,
        name: suite.name.to_string(),
        weaknesses: weaknesses(suite),
    }
}

fn weaknesses(suite: &TlsCipherSuite) -> Vec<Weakness> {
    let mut out = Vec::new();
    // TLS_NULL_WITH_NULL_NULL has neither encryption nor authentication; PSK suites
    // authenticate with the key, so only the encryption counts for them.
    if suite.enc == TlsCipherEnc::Null {
        out.push(Weakness::Null);
    }
    let anon_kx = matches!(
        suite.kx,
        TlsCipherKx::Dh | TlsCipherKx::Dhe | TlsCipherKx::Ecdh | TlsCipherKx::Aecdh
    ) && suite.au == TlsCipherAu::Null;
    if anon_kx || suite.name.contains("_anon_") {
        out.push(Weakness::Anonymous);
    }
    if suite.name.contains("EXPORT") {
        out.push(Weakness::Export);
    }
    match suite.enc {
        TlsCipherEnc::Rc4 => out.push(Weakness::Rc4),
        TlsCipherEnc::Des => out.push(Weakness::Des),
        TlsCipherEnc::TripleDes => out.push(Weakness::TripleDes),
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_weakness_classes_come_from_the_registry() {
        let gcm = cipher_info(0xc02f);
        assert_eq!(gcm.name, "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256");
        assert!(gcm.weaknesses.is_empty());
        assert!(
            cipher_info(0x1301).weaknesses.is_empty(),
            "TLS_AES_128_GCM_SHA256"
        );
        assert_eq!(cipher_info(0x0005).weaknesses, vec![Weakness::Rc4]);
        assert_eq!(cipher_info(0x000a).weaknesses, vec![Weakness::TripleDes]);
        assert_eq!(cipher_info(0x0002).weaknesses, vec![Weakness::Null]);
        assert_eq!(cipher_info(0x0034).weaknesses, vec![Weakness::Anonymous]);
        assert!(cipher_info(0x0003).weaknesses.contains(&Weakness::Export));
        assert!(
            cipher_info(0xc018)
                .weaknesses
                .contains(&Weakness::Anonymous)
        );
        assert_eq!(cipher_info(0xfafa).name, "0xfafa");
    }
}
