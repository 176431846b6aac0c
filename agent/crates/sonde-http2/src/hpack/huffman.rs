//! The HPACK Huffman code (RFC 7541, Appendix B).
//!
//! The code is canonical: codes of one length are consecutive, ordered by symbol, and each length
//! starts right after the last code of the previous length. So the code lengths alone determine it,
//! and decoding needs only, per length, the first code and where its symbols start. Decoding reads
//! up to 32 bits at a time from a 64-bit accumulator and finds the length by comparing the
//! left-aligned bits against each length's upper limit; most symbols are 5 to 8 bits long, so the
//! scan ends after a few comparisons.

use thiserror::Error;

/// Code length in bits of every symbol 0..=255 and of EOS (256), from RFC 7541 Appendix B.
const CODE_LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, // 0x00
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28, // 0x10
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, // 0x20 ' '..'/'
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, // 0x30 '0'..'?'
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, // 0x40 '@'..'O'
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, // 0x50 'P'..'_'
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, // 0x60 '`'..'o'
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, // 0x70 'p'..0x7f
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, // 0x80
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, // 0x90
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, // 0xa0
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23, // 0xb0
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, // 0xc0
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, // 0xd0
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, // 0xe0
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, // 0xf0
    30, // EOS
];

const EOS: u16 = 256;
const MAX_LEN: usize = 30;

/// Decoding tables derived from [`CODE_LENGTHS`] at compile time.
struct Tables {
    /// For each length L, one past the last code of length L, left-aligned in 32 bits (as u64 so
    /// that the all-ones end of the code fits).
    limit: [u64; MAX_LEN + 1],
    /// First code of each length (right-aligned).
    first_code: [u32; MAX_LEN + 1],
    /// Index into `symbols` of the first symbol of each length.
    first_index: [u16; MAX_LEN + 1],
    /// Symbols sorted by (length, symbol).
    symbols: [u16; 257],
    /// Indexed by the next 8 bits: `(symbol << 8) | length` for codes of at most 8 bits, 0 when
    /// the code is longer (then the per-length scan decides). Most header text is such symbols.
    fast: [u16; 256],
}

const fn build_tables() -> Tables {
    let mut count = [0u32; MAX_LEN + 1];
    let mut i = 0;
    while i < 257 {
        count[CODE_LENGTHS[i] as usize] += 1;
        i += 1;
    }
    let mut limit = [0u64; MAX_LEN + 1];
    let mut first_code = [0u32; MAX_LEN + 1];
    let mut first_index = [0u16; MAX_LEN + 1];
    let mut code: u32 = 0;
    let mut index: u16 = 0;
    let mut len = 1;
    while len <= MAX_LEN {
        first_code[len] = code;
        first_index[len] = index;
        code += count[len];
        index += count[len] as u16;
        limit[len] = (code as u64) << (32 - len);
        code <<= 1;
        len += 1;
    }
    let mut symbols = [0u16; 257];
    let mut fill = first_index;
    let mut sym = 0;
    while sym < 257 {
        let l = CODE_LENGTHS[sym] as usize;
        symbols[fill[l] as usize] = sym as u16;
        fill[l] += 1;
        sym += 1;
    }
    let mut fast = [0u16; 256];
    let mut i = 0;
    while i < 257 {
        let sym = symbols[i] as usize;
        let l = CODE_LENGTHS[sym] as usize;
        if l <= 8 {
            let code = first_code[l] + (i as u32 - first_index[l] as u32);
            let start = (code << (8 - l)) as usize;
            let mut k = 0;
            while k < (1 << (8 - l)) {
                fast[start + k] = ((sym as u16) << 8) | l as u16;
                k += 1;
            }
        }
        i += 1;
    }
    Tables {
        limit,
        first_code,
        first_index,
        symbols,
        fast,
    }
}

static TABLES: Tables = build_tables();

/// Why a Huffman-coded string was rejected.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum HuffmanError {
    #[error("huffman string contains the EOS symbol")]
    EosInString,
    #[error("huffman padding longer than 7 bits or not all ones")]
    BadPadding,
}

/// Decodes `src` and appends the octets to `dst`.
pub fn decode(src: &[u8], dst: &mut Vec<u8>) -> Result<(), HuffmanError> {
    dst.reserve(src.len() + src.len() / 2);
    let t = &TABLES;
    // Bits are kept left-aligned in `acc`; `nbits` of them are valid.
    let mut acc: u64 = 0;
    let mut nbits: u32 = 0;
    let mut input = src.iter();
    loop {
        while nbits <= 56 {
            match input.next() {
                Some(&b) => {
                    acc |= u64::from(b) << (56 - nbits);
                    nbits += 8;
                }
                None => break,
            }
        }
        if nbits == 0 {
            return Ok(());
        }
        if nbits >= 8 {
            let entry = t.fast[(acc >> 56) as usize];
            if entry != 0 {
                let len = u32::from(entry & 0xff);
                dst.push((entry >> 8) as u8);
                acc <<= len;
                nbits -= len;
                continue;
            }
        }
        let top = acc >> 32;
        let mut len = 5;
        while len < MAX_LEN && top >= t.limit[len] {
            len += 1;
        }
        if len as u32 > nbits {
            // Not enough bits left for a whole symbol: what remains must be EOS padding.
            let pad_mask = !0u64 << (64 - nbits);
            if nbits <= 7 && acc & pad_mask == pad_mask {
                return Ok(());
            }
            return Err(HuffmanError::BadPadding);
        }
        let code = (top >> (32 - len)) as u32;
        let offset = code.wrapping_sub(t.first_code[len]) as usize + t.first_index[len] as usize;
        let sym = t.symbols.get(offset).copied().unwrap_or(EOS);
        if sym == EOS {
            return Err(HuffmanError::EosInString);
        }
        dst.push(sym as u8);
        acc <<= len;
        nbits -= len as u32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encoder used only to test the decoder: canonical codes from the same lengths.
    fn encode(src: &[u8]) -> Vec<u8> {
        let t = &TABLES;
        let mut codes = [0u32; 257];
        for (i, sym) in t.symbols.iter().enumerate() {
            let len = CODE_LENGTHS[*sym as usize] as usize;
            codes[*sym as usize] = t.first_code[len] + (i as u32 - u32::from(t.first_index[len]));
        }
        let mut out = Vec::new();
        let mut acc: u64 = 0;
        let mut n = 0u32;
        for &b in src {
            let len = u32::from(CODE_LENGTHS[b as usize]);
            acc = (acc << len) | u64::from(codes[b as usize]);
            n += len;
            while n >= 8 {
                out.push((acc >> (n - 8)) as u8);
                n -= 8;
            }
        }
        if n > 0 {
            out.push(((acc << (8 - n)) as u8) | (0xff >> n));
        }
        out
    }

    #[test]
    fn code_is_complete_and_ends_with_eos_all_ones() {
        // Kraft sum exactly 1 <=> the canonical construction ends on the all-ones EOS code.
        let kraft: u64 = CODE_LENGTHS
            .iter()
            .map(|&l| 1u64 << (MAX_LEN - l as usize))
            .sum();
        assert_eq!(kraft, 1u64 << MAX_LEN);
        assert_eq!(TABLES.limit[30], 1u64 << 32);
        assert_eq!(TABLES.symbols[256], EOS);
    }

    #[test]
    fn rfc7541_appendix_c_examples() {
        let cases: [(&str, &str); 4] = [
            ("f1e3c2e5f23a6ba0ab90f4ff", "www.example.com"),
            ("a8eb10649cbf", "no-cache"),
            ("25a849e95ba97d7f", "custom-key"),
            ("25a849e95bb8e8b4bf", "custom-value"),
        ];
        for (hex, text) in cases {
            let wire: Vec<u8> = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap_or(0))
                .collect();
            let mut out = Vec::new();
            decode(&wire, &mut out).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(out, text.as_bytes());
        }
    }

    #[test]
    fn every_octet_round_trips() {
        let all: Vec<u8> = (0..=255u8).collect();
        let mut out = Vec::new();
        decode(&encode(&all), &mut out).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out, all);
    }

    #[test]
    fn rejects_eos_and_bad_padding() {
        let mut out = Vec::new();
        // 30 ones then padding: EOS inside the string.
        assert_eq!(
            decode(&[0xff, 0xff, 0xff, 0xff], &mut out),
            Err(HuffmanError::EosInString)
        );
        // 'a' (00011) then 3 zero bits of padding.
        assert_eq!(decode(&[0x18], &mut out), Err(HuffmanError::BadPadding));
        // A full byte of ones as padding is too long.
        out.clear();
        assert_eq!(
            decode(&[0x1f, 0xff], &mut out),
            Err(HuffmanError::BadPadding)
        );
        assert!(decode(&[], &mut out).is_ok());
    }
}
