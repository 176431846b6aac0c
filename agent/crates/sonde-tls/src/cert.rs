//! The server's leaf certificate, as far as posture needs it.

use serde::{Deserialize, Serialize};
use x509_parser::extensions::GeneralName;
use x509_parser::x509::X509Name;

/// Names kept per list (SAN DNS names): a certificate with thousands stays small here.
const MAX_NAMES: usize = 8;
/// Characters kept of a name.
const MAX_NAME_LEN: usize = 128;

/// Subject, issuer and validity of a certificate. Only organisational names are kept (common
/// name, organisation); e-mail addresses and other personal attributes of a DN are left out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateInfo {
    pub subject_cn: Option<String>,
    pub subject_org: Option<String>,
    pub issuer_cn: Option<String>,
    pub issuer_org: Option<String>,
    /// DNS names of the subjectAltName extension (at most 8).
    pub dns_names: Vec<String>,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    /// Subject and issuer are the same name.
    pub self_signed: bool,
}

/// Whether a certificate was valid at some time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Validity {
    Valid,
    Expired,
    NotYetValid,
}

impl CertificateInfo {
    /// Parses a DER certificate; `None` when it is not one.
    pub fn from_der(der: &[u8]) -> Option<CertificateInfo> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let dns_names = match cert.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(|g| match g {
                    GeneralName::DNSName(n) => Some(bounded(n)),
                    _ => None,
                })
                .take(MAX_NAMES)
                .collect(),
            _ => Vec::new(),
        };
        let validity = cert.validity();
        Some(CertificateInfo {
            subject_cn: first(cert.subject().iter_common_name()),
            subject_org: first(cert.subject().iter_organization()),
            issuer_cn: first(cert.issuer().iter_common_name()),
            issuer_org: first(cert.issuer().iter_organization()),
            dns_names,
            not_before: validity.not_before.timestamp(),
            not_after: validity.not_after.timestamp(),
            self_signed: same_name(cert.subject(), cert.issuer()),
        })
    }

    /// Validity at `unix_secs`.
    pub fn validity_at(&self, unix_secs: i64) -> Validity {
        if unix_secs > self.not_after {
            Validity::Expired
        } else if unix_secs < self.not_before {
            Validity::NotYetValid
        } else {
            Validity::Valid
        }
    }
}

fn first<'a>(
    mut attrs: impl Iterator<Item = &'a x509_parser::x509::AttributeTypeAndValue<'a>>,
) -> Option<String> {
    attrs.next().and_then(|a| a.as_str().ok()).map(bounded)
}

fn same_name(a: &X509Name<'_>, b: &X509Name<'_>) -> bool {
    a.as_raw() == b.as_raw()
}

fn bounded(s: &str) -> String {
    s.chars().take(MAX_NAME_LEN).collect()
}

/// Unix seconds as an RFC 2822 date, for evidence (x509-parser's own formatting).
pub(crate) fn date_text(unix_secs: i64) -> String {
    x509_parser::time::ASN1Time::from_timestamp(unix_secs)
        .ok()
        .and_then(|t| t.to_rfc2822().ok())
        .unwrap_or_else(|| format!("@{unix_secs}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_print_for_people() {
        assert_eq!(date_text(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
    }

    #[test]
    fn garbage_is_no_certificate() {
        assert!(CertificateInfo::from_der(b"\x30\x03\x02\x01\x00").is_none());
        assert!(CertificateInfo::from_der(&[]).is_none());
    }
}
