//! Sensitive-data scanner: one pass over a value with cheap byte triggers, then validation of the
//! few candidates (Luhn, mod-97, IIN ranges, token shapes). Values are never kept: only the kind.
//!
//! Written by hand rather than with one regex per kind: a regex set still needs a second pass per
//! match to validate, and running ~16 patterns over every body costs far more than the 2 ns/byte
//! budget. Here every byte is looked at once; words that cannot start a secret are skipped whole.

use serde::{Deserialize, Serialize};

/// A kind of sensitive data. Serialized in snake_case (`payment_card`), as in `Evidence.field_kinds`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SensitiveKind {
    Email,
    Phone,
    PaymentCard,
    Iban,
    UsSsn,
    IpAddress,
    Jwt,
    AwsAccessKey,
    GcpApiKey,
    AzureStorageKey,
    GithubToken,
    SlackToken,
    StripeKey,
    PrivateKey,
    /// A non-empty value in a field named like a password.
    Password,
    /// A non-empty value in a field named like a secret, token or API key.
    Secret,
}

impl SensitiveKind {
    pub const ALL: [SensitiveKind; 16] = [
        SensitiveKind::Email,
        SensitiveKind::Phone,
        SensitiveKind::PaymentCard,
        SensitiveKind::Iban,
        SensitiveKind::UsSsn,
        SensitiveKind::IpAddress,
        SensitiveKind::Jwt,
        SensitiveKind::AwsAccessKey,
        SensitiveKind::GcpApiKey,
        SensitiveKind::AzureStorageKey,
        SensitiveKind::GithubToken,
        SensitiveKind::SlackToken,
        SensitiveKind::StripeKey,
        SensitiveKind::PrivateKey,
        SensitiveKind::Password,
        SensitiveKind::Secret,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SensitiveKind::Email => "email",
            SensitiveKind::Phone => "phone",
            SensitiveKind::PaymentCard => "payment_card",
            SensitiveKind::Iban => "iban",
            SensitiveKind::UsSsn => "us_ssn",
            SensitiveKind::IpAddress => "ip_address",
            SensitiveKind::Jwt => "jwt",
            SensitiveKind::AwsAccessKey => "aws_access_key",
            SensitiveKind::GcpApiKey => "gcp_api_key",
            SensitiveKind::AzureStorageKey => "azure_storage_key",
            SensitiveKind::GithubToken => "github_token",
            SensitiveKind::SlackToken => "slack_token",
            SensitiveKind::StripeKey => "stripe_key",
            SensitiveKind::PrivateKey => "private_key",
            SensitiveKind::Password => "password",
            SensitiveKind::Secret => "secret",
        }
    }

    /// Personal data (as opposed to credentials): what `inventory.unauthenticated_pii` is about.
    pub fn is_personal(self) -> bool {
        matches!(
            self,
            SensitiveKind::Email
                | SensitiveKind::Phone
                | SensitiveKind::PaymentCard
                | SensitiveKind::Iban
                | SensitiveKind::UsSsn
        )
    }

    /// Credentials and keys: finding one in a URL or a response is a leak.
    pub fn is_credential(self) -> bool {
        !self.is_personal() && self != SensitiveKind::IpAddress
    }

    fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

/// A set of kinds, one bit each.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KindSet(pub u32);

impl KindSet {
    pub const EMPTY: KindSet = KindSet(0);

    pub fn insert(&mut self, k: SensitiveKind) {
        self.0 |= k.bit();
    }

    pub fn contains(self, k: SensitiveKind) -> bool {
        self.0 & k.bit() != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn union(self, other: KindSet) -> KindSet {
        KindSet(self.0 | other.0)
    }

    pub fn iter(self) -> impl Iterator<Item = SensitiveKind> {
        SensitiveKind::ALL
            .into_iter()
            .filter(move |k| self.contains(*k))
    }
}

const C_OTHER: u8 = 0;
const C_DIGIT: u8 = 1;
const C_UPPER: u8 = 2;
const C_LOWER: u8 = 3;
const C_AT: u8 = 4;
const C_PLUS: u8 = 5;
const C_DASH: u8 = 6;
const C_UNDERSCORE: u8 = 7;
const C_PAREN: u8 = 8;

static CLASS: [u8; 256] = {
    let mut t = [C_OTHER; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        t[i] = if c.is_ascii_digit() {
            C_DIGIT
        } else if c.is_ascii_uppercase() {
            C_UPPER
        } else if c.is_ascii_lowercase() {
            C_LOWER
        } else if c == b'@' {
            C_AT
        } else if c == b'+' {
            C_PLUS
        } else if c == b'-' {
            C_DASH
        } else if c == b'_' {
            C_UNDERSCORE
        } else if c == b'(' {
            C_PAREN
        } else {
            C_OTHER
        };
        i += 1;
    }
    t
};

#[inline]
fn class(c: u8) -> u8 {
    CLASS[c as usize]
}

#[inline]
fn is_alnum(c: u8) -> bool {
    matches!(class(c), C_DIGIT | C_UPPER | C_LOWER)
}

#[inline]
fn is_word(c: u8) -> bool {
    matches!(
        class(c),
        C_DIGIT | C_UPPER | C_LOWER | C_UNDERSCORE | C_DASH
    )
}

fn at(b: &[u8], i: usize) -> u8 {
    b.get(i).copied().unwrap_or(0)
}

/// Scans free text (a header value, a JSON string, a query value) for sensitive kinds.
pub fn scan_text(b: &[u8]) -> KindSet {
    let mut set = KindSet::EMPTY;
    let n = b.len();
    let mut i = 0;
    while i < n {
        let c = b[i];
        match class(c) {
            C_OTHER => {
                // Spaces and punctuation start nothing: skip the whole run.
                i += 1;
                while i < n && class(b[i]) == C_OTHER {
                    i += 1;
                }
            }
            C_DIGIT => {
                if i == 0 || !is_alnum(b[i - 1]) {
                    let plus = i > 0 && b[i - 1] == b'+';
                    i = scan_digit_run(b, i, plus, false, &mut set);
                } else {
                    i += 1;
                    while i < n && is_alnum(b[i]) {
                        i += 1;
                    }
                }
            }
            C_UPPER | C_LOWER => {
                let boundary = i == 0 || !is_alnum(b[i - 1]);
                let mut end = i + 1;
                while end < n && is_word(b[end]) {
                    end += 1;
                }
                if boundary && let Some(next) = check_word(b, i, end, &mut set) {
                    end = next;
                }
                i = end;
            }
            C_AT => {
                i = match scan_email(b, i) {
                    Some(end) => {
                        set.insert(SensitiveKind::Email);
                        end
                    }
                    None => i + 1,
                };
            }
            C_PAREN => {
                // US phone "(415) 555-0123".
                if at(b, i + 4) == b')'
                    && b.get(i + 1..i + 4)
                        .is_some_and(|d| d.iter().all(u8::is_ascii_digit))
                {
                    i = scan_digit_run(b, i + 1, false, true, &mut set);
                } else {
                    i += 1;
                }
            }
            C_DASH => {
                if b.get(i..i + 11) == Some(b"-----BEGIN ") {
                    let window = b.get(i + 11..(i + 60).min(n)).unwrap_or(&[]);
                    if memchr::memmem::find(window, b"PRIVATE KEY-----").is_some() {
                        set.insert(SensitiveKind::PrivateKey);
                    }
                    i += 11;
                } else {
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    set
}

/// Scans a value and also checks it whole (IPv6 addresses are only recognised as a whole value).
pub fn scan_value(b: &[u8]) -> KindSet {
    let mut set = scan_text(b);
    // Cheapest test first: most values fail on their first non-hex byte.
    if (3..=45).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_hexdigit() || *c == b':' || *c == b'.')
        && b.contains(&b':')
        && std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse::<std::net::Ipv6Addr>().ok())
            .is_some()
    {
        set.insert(SensitiveKind::IpAddress);
    }
    set
}

/// Kind implied by a field name alone (`password`, `client_secret`, `x-api-key`), for non-empty values.
pub fn kind_for_field_name(name: &str) -> Option<SensitiveKind> {
    let mut norm = [0u8; 48];
    let mut len = 0;
    for c in name.bytes() {
        if c == b'_' || c == b'-' || c == b'.' || c == b' ' {
            continue;
        }
        if len == norm.len() {
            return None;
        }
        norm[len] = c.to_ascii_lowercase();
        len += 1;
    }
    let n = &norm[..len];
    const PASSWORD: [&[u8]; 4] = [b"password", b"passwd", b"passphrase", b"pwd"];
    const SECRET: [&[u8]; 9] = [
        b"secret",
        b"token",
        b"apikey",
        b"privatekey",
        b"accesskey",
        b"secretkey",
        b"credentials",
        b"credential",
        b"sessionid",
    ];
    if PASSWORD.iter().any(|p| n.ends_with(p)) {
        return Some(SensitiveKind::Password);
    }
    if SECRET.iter().any(|p| n.ends_with(p)) {
        return Some(SensitiveKind::Secret);
    }
    None
}

/// Kind a bare digit string is in a field of this name: a phone number or an SSN.
pub fn numeric_field_kind(name: &str) -> Option<SensitiveKind> {
    let mut buf = [0u8; 48];
    let n = name.len().min(buf.len());
    for (d, c) in buf.iter_mut().zip(name.bytes()) {
        *d = c.to_ascii_lowercase();
    }
    let lower = &buf[..n];
    let has = |needle: &[u8]| lower.windows(needle.len()).any(|w| w == needle);
    if has(b"phone") || has(b"mobile") || lower == b"tel" || lower.ends_with(b"_tel") {
        return Some(SensitiveKind::Phone);
    }
    if lower == b"ssn" || lower.ends_with(b"_ssn") || has(b"social_security") {
        return Some(SensitiveKind::UsSsn);
    }
    None
}

/// Whether `digits` digits fit the numeric kind (7 to 15 for a phone, 9 for an SSN).
pub fn numeric_kind_fits(kind: SensitiveKind, digits: usize) -> bool {
    match kind {
        SensitiveKind::Phone => (7..=15).contains(&digits),
        SensitiveKind::UsSsn => digits == 9,
        _ => false,
    }
}

/// Digit run starting at `start`: digits with single separators (space, dash, dot). Returns the
/// index after the run. `plus`: a `+` precedes (international phone); `paren`: `(ddd)` form.
fn scan_digit_run(b: &[u8], start: usize, plus: bool, paren: bool, set: &mut KindSet) -> usize {
    const MAX_DIGITS: usize = 24;
    let n = b.len();
    // Pre-pass: a run of fewer than 7 digits without dots is none of the kinds (phones have 8+
    // digits after `+` or 10 formatted, SSNs 9, cards 13+; IPs need dots): skip it cheaply.
    if !paren {
        let (mut j, mut nd, mut dot) = (start, 0usize, false);
        while j < n {
            let c = b[j];
            if c.is_ascii_digit() {
                nd += 1;
                j += 1;
            } else if matches!(c, b' ' | b'-' | b'.') && at(b, j + 1).is_ascii_digit() {
                dot |= c == b'.';
                j += 1;
            } else {
                break;
            }
        }
        if nd < 7 && !dot {
            // A run glued to letters is skipped as one word, as below.
            while j < n && is_word(b[j]) {
                j += 1;
            }
            return j;
        }
    }
    let mut digits = [0u8; MAX_DIGITS];
    let mut nd = 0usize;
    let mut groups = [0u8; 8];
    let mut ng = 0usize;
    let mut seps = 0u8; // bit 0 space, bit 1 dash, bit 2 dot, bit 3 paren
    let mut i = start;
    let mut cur = 0u8;
    let mut overflow = false;
    loop {
        let c = at(b, i);
        if i < n && c.is_ascii_digit() {
            if nd < MAX_DIGITS {
                digits[nd] = c - b'0';
                nd += 1;
            } else {
                overflow = true;
            }
            cur = cur.saturating_add(1);
            i += 1;
            continue;
        }
        // End of a group.
        if ng < groups.len() {
            groups[ng] = cur;
        } else {
            overflow = true;
        }
        ng += 1;
        cur = 0;
        let sep = match c {
            b' ' => 1,
            b'-' => 2,
            b'.' => 4,
            b')' if paren && ng == 1 => 8,
            _ => 0,
        };
        let next = if sep == 8 && at(b, i + 1) == b' ' {
            i + 2
        } else {
            i + 1
        };
        if sep != 0 && i < n && at(b, next).is_ascii_digit() {
            seps |= sep;
            i = next;
            continue;
        }
        break;
    }
    let end = i;
    // A run glued to letters (`123abc`) is an identifier, not a number.
    if end < n && (b[end].is_ascii_alphabetic() || b[end] == b'_') || overflow {
        let mut j = end;
        while j < n && is_word(b[j]) {
            j += 1;
        }
        return j.max(start + 1);
    }
    let g = &groups[..ng.min(groups.len())];
    let d = &digits[..nd];
    if paren {
        if g == [3, 3, 4] && seps & 8 != 0 {
            set.insert(SensitiveKind::Phone);
        }
        return end;
    }
    if seps == 4 && g.len() == 4 && g.iter().all(|l| (1..=3).contains(l)) {
        let mut pos = 0;
        let mut ok = true;
        for &l in g {
            let v = d[pos..pos + l as usize]
                .iter()
                .fold(0u32, |a, x| a * 10 + u32::from(*x));
            ok &= v <= 255 && !(l > 1 && d[pos] == 0);
            pos += l as usize;
        }
        if ok {
            set.insert(SensitiveKind::IpAddress);
        }
        return end;
    }
    if plus && (8..=15).contains(&nd) && seps & 4 == 0 {
        set.insert(SensitiveKind::Phone);
        return end;
    }
    if seps == 2 && g == [3, 2, 4] && valid_ssn(d) {
        set.insert(SensitiveKind::UsSsn);
        return end;
    }
    if (seps == 2 || seps == 4) && g == [3, 3, 4] {
        set.insert(SensitiveKind::Phone);
        return end;
    }
    if seps & 4 == 0 && (13..=19).contains(&nd) && card_iin(d) && luhn(d) {
        set.insert(SensitiveKind::PaymentCard);
    }
    end
}

fn valid_ssn(d: &[u8]) -> bool {
    let area = u32::from(d[0]) * 100 + u32::from(d[1]) * 10 + u32::from(d[2]);
    let group = u32::from(d[3]) * 10 + u32::from(d[4]);
    let serial = d[5..9].iter().fold(0u32, |a, x| a * 10 + u32::from(*x));
    area != 0 && area != 666 && area < 900 && group != 0 && serial != 0
}

/// Issuer identification ranges of the major networks: a Luhn-valid number outside them is far
/// more likely an order or tracking number.
fn card_iin(d: &[u8]) -> bool {
    let p = |k: usize| d.iter().take(k).fold(0u32, |a, x| a * 10 + u32::from(*x));
    let n = d.len();
    match d.first() {
        Some(4) => matches!(n, 13 | 16 | 19),
        Some(5) => (51..=55).contains(&p(2)) && n == 16,
        Some(2) => (2221..=2720).contains(&p(4)) && n == 16,
        Some(3) => {
            (matches!(p(2), 34 | 37) && n == 15)
                || ((3528..=3589).contains(&p(4)) && n >= 16)
                || (matches!(p(2), 36 | 38 | 39) || (300..=305).contains(&p(3))) && n >= 14
        }
        Some(6) => p(4) == 6011 || p(2) == 65 || (644..=649).contains(&p(3)) || p(2) == 62,
        _ => false,
    }
}

/// Luhn checksum over decimal digits.
pub fn luhn(d: &[u8]) -> bool {
    let mut sum = 0u32;
    for (k, &x) in d.iter().rev().enumerate() {
        let mut v = u32::from(x);
        if k % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

/// Email around the `@` at `at_pos`; returns the index after the domain.
fn scan_email(b: &[u8], at_pos: usize) -> Option<usize> {
    let local_ok = |c: u8| is_alnum(c) || matches!(c, b'.' | b'_' | b'%' | b'+' | b'-');
    let mut l = at_pos;
    while l > 0 && at_pos - l < 64 && local_ok(b[l - 1]) {
        l -= 1;
    }
    if l == at_pos || b[l] == b'.' {
        return None;
    }
    let n = b.len();
    let mut r = at_pos + 1;
    let mut last_dot = None;
    while r < n && r - at_pos < 255 && (is_alnum(b[r]) || b[r] == b'-' || b[r] == b'.') {
        if b[r] == b'.' {
            last_dot = Some(r);
        }
        r += 1;
    }
    // Trailing dot ends a sentence, not the domain.
    let mut end = r;
    if end > at_pos + 1 && b[end - 1] == b'.' {
        end -= 1;
        last_dot = b[at_pos + 1..end]
            .iter()
            .rposition(|c| *c == b'.')
            .map(|p| p + at_pos + 1);
    }
    let dot = last_dot?;
    let tld = b.get(dot + 1..end)?;
    if dot == at_pos + 1 || tld.len() < 2 || !tld.iter().all(u8::is_ascii_alphabetic) {
        return None;
    }
    Some(end)
}

/// Checks a word `[start, end)` (letters, digits, `_`, `-`) for token shapes. Returns a new end
/// when the match extends past the word (JWT dots, IBAN groups, `AccountKey=` values).
fn check_word(b: &[u8], start: usize, end: usize, set: &mut KindSet) -> Option<usize> {
    let w = &b[start..end];
    let len = w.len();
    let first = w[0];
    match first {
        b'A' => {
            if len == 20
                && matches!(
                    w.get(..4),
                    Some(b"AKIA" | b"ASIA" | b"AGPA" | b"AIDA" | b"AROA" | b"ANPA" | b"AIPA")
                )
                && w[4..]
                    .iter()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
            {
                set.insert(SensitiveKind::AwsAccessKey);
                return None;
            }
            if len == 39 && w.starts_with(b"AIza") {
                set.insert(SensitiveKind::GcpApiKey);
                return None;
            }
            if (w == b"AccountKey" || w == b"SharedAccessKey") && at(b, end) == b'=' {
                let mut j = end + 1;
                while j < b.len() && (is_alnum(b[j]) || matches!(b[j], b'+' | b'/' | b'=')) {
                    j += 1;
                }
                if j - end > 40 {
                    set.insert(SensitiveKind::AzureStorageKey);
                }
                return Some(j);
            }
        }
        b'e' => {
            if w.starts_with(b"eyJ")
                && let Some(jwt_end) = jwt_extent(b, start)
            {
                set.insert(SensitiveKind::Jwt);
                return Some(jwt_end);
            }
        }
        b'g' if ((len == 40
            && matches!(
                w.get(..4),
                Some(b"ghp_" | b"gho_" | b"ghu_" | b"ghs_" | b"ghr_")
            ))
            || (len >= 50 && w.starts_with(b"github_pat_"))) =>
        {
            set.insert(SensitiveKind::GithubToken);
            return None;
        }
        b'x' if len >= 15
            && w.starts_with(b"xox")
            && matches!(at(w, 3), b'a' | b'b' | b'p' | b'o' | b's' | b'r')
            && at(w, 4) == b'-' =>
        {
            set.insert(SensitiveKind::SlackToken);
            return None;
        }
        b's' | b'r'
            if len >= 24
                && matches!(
                    w.get(..8),
                    Some(b"sk_live_" | b"sk_test_" | b"rk_live_" | b"rk_test_")
                ) =>
        {
            set.insert(SensitiveKind::StripeKey);
            return None;
        }
        _ => {}
    }
    if first.is_ascii_uppercase()
        && len >= 4
        && let Some(iban_end) = iban_extent(b, start)
    {
        set.insert(SensitiveKind::Iban);
        return Some(iban_end);
    }
    None
}

/// `header.payload.signature` in base64url, header and payload starting with `eyJ` (`{"`).
/// The signature may be empty (`alg: none`).
fn jwt_extent(b: &[u8], start: usize) -> Option<usize> {
    let b64 = |c: u8| is_alnum(c) || c == b'-' || c == b'_';
    let mut i = start;
    let mut parts = [0usize; 3];
    for (k, part) in parts.iter_mut().enumerate() {
        let s = i;
        while i < b.len() && b64(b[i]) {
            i += 1;
        }
        *part = i - s;
        if k < 2 {
            if at(b, i) != b'.' {
                return None;
            }
            i += 1;
        }
    }
    let payload_start = start + parts[0] + 1;
    (parts[0] >= 10 && parts[1] >= 4 && b.get(payload_start..payload_start + 2) == Some(b"ey"))
        .then_some(i)
}

/// IBAN registry lengths of the countries most seen; an IBAN-shaped string from another
/// country code is not reported (keeps random upper-case identifiers out).
fn iban_length(cc: &[u8]) -> Option<usize> {
    Some(match cc {
        b"AD" => 24,
        b"AE" => 23,
        b"AT" => 20,
        b"BA" => 20,
        b"BE" => 16,
        b"BG" => 22,
        b"BH" => 22,
        b"BR" => 29,
        b"CH" => 21,
        b"CY" => 28,
        b"CZ" => 24,
        b"DE" => 22,
        b"DK" => 18,
        b"EE" => 20,
        b"ES" => 24,
        b"FI" => 18,
        b"FR" => 27,
        b"GB" => 22,
        b"GR" => 27,
        b"HR" => 21,
        b"HU" => 28,
        b"IE" => 22,
        b"IL" => 23,
        b"IS" => 26,
        b"IT" => 27,
        b"LI" => 21,
        b"LT" => 20,
        b"LU" => 20,
        b"LV" => 21,
        b"MC" => 27,
        b"MT" => 31,
        b"NL" => 18,
        b"NO" => 15,
        b"PL" => 28,
        b"PT" => 25,
        b"RO" => 24,
        b"RS" => 22,
        b"SA" => 24,
        b"SE" => 24,
        b"SI" => 19,
        b"SK" => 24,
        b"SM" => 27,
        b"TR" => 26,
        b"UA" => 29,
        _ => return None,
    })
}

/// IBAN at `start`, compact or printed in groups of four separated by single spaces.
fn iban_extent(b: &[u8], start: usize) -> Option<usize> {
    let head = b.get(start..start + 4)?;
    if !(head[0].is_ascii_uppercase()
        && head[1].is_ascii_uppercase()
        && head[2].is_ascii_digit()
        && head[3].is_ascii_digit())
    {
        return None;
    }
    let want = iban_length(&head[..2])?;
    let mut chars = [0u8; 34];
    let mut nc = 0;
    let mut i = start;
    let mut group = 0;
    while i < b.len() && nc < want {
        let c = b[i];
        if c.is_ascii_uppercase() || c.is_ascii_digit() {
            chars[nc] = c;
            nc += 1;
            group += 1;
            i += 1;
        } else if c == b' ' && group == 4 && at(b, i + 1).is_ascii_alphanumeric() {
            group = 0;
            i += 1;
        } else {
            break;
        }
    }
    if nc != want || (i < b.len() && is_alnum(b[i])) {
        return None;
    }
    // mod-97 over the rearranged number (country code and check digits moved to the end).
    let mut rem = 0u32;
    for &c in chars[4..nc].iter().chain(chars[..4].iter()) {
        if c.is_ascii_digit() {
            rem = (rem * 10 + u32::from(c - b'0')) % 97;
        } else {
            let v = u32::from(c - b'A') + 10;
            rem = (rem * 100 + v) % 97;
        }
    }
    (rem == 1).then_some(i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn_known_values() {
        let d = |s: &str| s.bytes().map(|c| c - b'0').collect::<Vec<_>>();
        assert!(luhn(&d("4111111111111111")));
        assert!(!luhn(&d("4111111111111112")));
    }
}
