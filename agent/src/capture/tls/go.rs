//! Go's `crypto/tls` in an executable: where `(*Conn).Read` and `(*Conn).Write` start and
//! return, as file offsets for uprobes.
//!
//! Go has no shared TLS library and its stacks move, so uretprobes (which rewrite the return
//! address on the stack) would crash it: the return probes go on every RET instruction of the
//! two functions instead, found by decoding their machine code (iced-x86). Function bounds come
//! from the symbol table, so a stripped binary (`-ldflags=-s`) cannot be read; the Go version
//! comes from the build info section, since only Go ≥ 1.17 passes arguments in registers.

use iced_x86::{Decoder, DecoderOptions, Mnemonic, OpKind, Register};
use object::{Architecture, Object as _, ObjectSection as _, ObjectSymbol as _, SymbolKind};

pub const GO_TLS_READ: &str = "crypto/tls.(*Conn).Read";
pub const GO_TLS_WRITE: &str = "crypto/tls.(*Conn).Write";

/// RET instructions per function at most (Go's Read and Write have a handful): a function with
/// more is not attached rather than costing hundreds of probes.
pub const MAX_RETURNS: usize = 64;

/// A Go function's uprobe points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoFunction {
    /// File offset of the first instruction past the stack-growth check (`cmp ..., 0x10(%r14);
    /// jbe morestack`): a goroutine whose stack must grow runs the prologue twice (morestack
    /// starts the function over), the body once. The arguments are still in their registers.
    /// The function's first instruction when it has no such check.
    pub entry: u64,
    /// File offsets of every RET instruction.
    pub returns: Vec<u64>,
}

/// The two functions of a readable Go executable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoTlsFunctions {
    pub version: String,
    pub read: GoFunction,
    pub write: GoFunction,
}

/// What an executable offers for Go TLS probes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GoTls {
    /// Not a Go executable.
    NotGo,
    /// A Go executable without `crypto/tls` (nothing to read, nothing blind).
    NoCryptoTls,
    /// Go, but its symbol table was stripped: the functions cannot be located.
    Stripped,
    /// Go older than 1.17: arguments on the stack (not supported).
    StackAbi(String),
    /// Go on an architecture other than x86-64 (the register map and decoder are amd64's).
    UnsupportedArch,
    /// A function was found but could not be decoded, or has too many RETs.
    Undecodable(String),
    Found(GoTlsFunctions),
}

/// Version of the Go toolchain that built the executable (`go1.19.8`), from `.go.buildinfo`.
pub fn build_version(elf: &object::File<'_>) -> Option<String> {
    let section = elf.section_by_name(".go.buildinfo")?;
    let data = section.data().ok()?;
    // Header: 14-byte magic, pointer size, flags; 32 bytes in all.
    if data.len() < 32 || !data.starts_with(b"\xff Go buildinf:") {
        return None;
    }
    let ptr_size = data[14] as usize;
    let flags = data[15];
    if flags & 2 != 0 {
        // Go ≥ 1.18: the version string follows inline, length as a uvarint.
        let (len, used) = uvarint(&data[32..])?;
        let start = 32 + used;
        let end = start.checked_add(usize::try_from(len).ok()?)?;
        return String::from_utf8(data.get(start..end)?.to_vec()).ok();
    }
    // Older: a pointer to a Go string header (pointer, length) in the data segment.
    let big_endian = flags & 1 != 0;
    let word = |bytes: &[u8]| -> Option<u64> {
        let b = bytes.get(..ptr_size)?;
        let mut v = 0u64;
        for i in 0..ptr_size {
            let byte = if big_endian {
                b[i]
            } else {
                b[ptr_size - 1 - i]
            };
            v = (v << 8) | byte as u64;
        }
        Some(v)
    };
    let header = word(&data[16..])?;
    let header = read_vaddr(elf, header, 2 * ptr_size)?;
    let ptr = word(header)?;
    let len = word(&header[ptr_size..])?;
    if len > 64 {
        return None;
    }
    String::from_utf8(read_vaddr(elf, ptr, len as usize)?.to_vec()).ok()
}

/// (major, minor) of `go1.19.8`; a development build (`devel ...`) is taken as recent.
pub fn version_number(version: &str) -> Option<(u32, u32)> {
    let v = version.strip_prefix("go")?;
    let mut parts = v.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().and_then(|m| m.parse().ok()).unwrap_or(0);
    Some((major, minor))
}

/// Whether Go of this version passes arguments in registers on amd64 (1.17 and later).
pub fn register_abi(version: &str) -> bool {
    match version_number(version) {
        Some(v) => v >= (1, 17),
        None => version.starts_with("devel"),
    }
}

fn read_vaddr<'a>(elf: &object::File<'a>, addr: u64, len: usize) -> Option<&'a [u8]> {
    for s in elf.sections() {
        let start = s.address();
        if addr >= start && addr.checked_add(len as u64)? <= start + s.size() {
            let data = s.data().ok()?;
            let off = usize::try_from(addr - start).ok()?;
            return data.get(off..off + len);
        }
    }
    None
}

fn uvarint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, byte) in b.iter().take(10).enumerate() {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// Looks the two functions up in a parsed executable.
pub fn find_go_tls(elf: &object::File<'_>) -> GoTls {
    let Some(version) = build_version(elf) else {
        return GoTls::NotGo;
    };
    if elf.architecture() != Architecture::X86_64 {
        return GoTls::UnsupportedArch;
    }
    if !register_abi(&version) {
        return GoTls::StackAbi(version);
    }
    let Some(strtab) = elf.section_by_name(".strtab").and_then(|s| s.data().ok()) else {
        return GoTls::Stripped;
    };
    if memchr::memmem::find(strtab, b"crypto/tls.(*Conn).Read\0").is_none() {
        // Go binaries without crypto/tls, and stripped ones: their .strtab (if any) is the
        // section names' only. Which is which: a stripped one has no .symtab.
        return if elf.section_by_name(".symtab").is_some() {
            GoTls::NoCryptoTls
        } else {
            GoTls::Stripped
        };
    }
    let mut read = None;
    let mut write = None;
    for sym in elf.symbols() {
        if sym.kind() != SymbolKind::Text || !sym.is_definition() {
            continue;
        }
        let slot = match sym.name() {
            Ok(GO_TLS_READ) => &mut read,
            Ok(GO_TLS_WRITE) => &mut write,
            _ => continue,
        };
        *slot = Some(function_points(elf, &sym));
        if read.is_some() && write.is_some() {
            break;
        }
    }
    match (read, write) {
        (Some(Ok(read)), Some(Ok(write))) => GoTls::Found(GoTlsFunctions {
            version,
            read,
            write,
        }),
        (Some(Err(e)), _) | (_, Some(Err(e))) => GoTls::Undecodable(e),
        _ => GoTls::NoCryptoTls,
    }
}

fn function_points(
    elf: &object::File<'_>,
    sym: &object::Symbol<'_, '_>,
) -> Result<GoFunction, String> {
    let name = sym.name().unwrap_or("?");
    let section = sym
        .section_index()
        .and_then(|i| elf.section_by_index(i).ok())
        .ok_or_else(|| format!("{name}: no section"))?;
    let (section_offset, _) = section
        .file_range()
        .ok_or_else(|| format!("{name}: section not in the file"))?;
    let data = section.data().map_err(|e| format!("{name}: {e}"))?;
    let start = sym
        .address()
        .checked_sub(section.address())
        .and_then(|d| usize::try_from(d).ok())
        .ok_or_else(|| format!("{name}: address outside its section"))?;
    let size = usize::try_from(sym.size()).map_err(|_| format!("{name}: size"))?;
    let code = data
        .get(start..start.saturating_add(size))
        .filter(|c| !c.is_empty())
        .ok_or_else(|| format!("{name}: {size} bytes past its section"))?;
    let to_file = |addr: u64| addr - section.address() + section_offset;
    let mut decoder = Decoder::with_ip(64, code, sym.address(), DecoderOptions::NONE);
    let mut returns = Vec::new();
    let mut entry = sym.address();
    let mut stack_check = false;
    for (i, instr) in decoder.iter().enumerate() {
        // The prologue: at most a LEA, then CMP against g.stackguard0 (R14 + 16), then JBE.
        if i < 4 {
            if instr.mnemonic() == Mnemonic::Cmp
                && (0..instr.op_count()).any(|op| {
                    instr.op_kind(op) == OpKind::Memory
                        && instr.memory_base() == Register::R14
                        && instr.memory_displacement64() == 16
                })
            {
                stack_check = true;
            } else if stack_check && instr.mnemonic() == Mnemonic::Jbe {
                entry = instr.next_ip();
                stack_check = false;
            }
        }
        if instr.is_invalid() {
            return Err(format!("{name}: undecodable at {:#x}", instr.ip()));
        }
        if instr.mnemonic() == Mnemonic::Ret {
            if returns.len() == MAX_RETURNS {
                return Err(format!("{name}: more than {MAX_RETURNS} returns"));
            }
            returns.push(to_file(instr.ip()));
        }
    }
    if returns.is_empty() {
        return Err(format!("{name}: no RET instruction"));
    }
    Ok(GoFunction {
        entry: to_file(entry),
        returns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_before_1_17_pass_arguments_on_the_stack() {
        assert!(register_abi("go1.19.8"));
        assert!(register_abi("go1.17"));
        assert!(register_abi("go1.23rc1"));
        assert!(register_abi("go2.0"));
        assert!(!register_abi("go1.16.15"));
        assert!(!register_abi("go1.9"));
        assert!(register_abi("devel go1.24-abcdef"));
        assert!(!register_abi("garbage"));
        assert_eq!(version_number("go1.21.0"), Some((1, 21)));
    }

    #[test]
    fn uvarints_are_bounded() {
        assert_eq!(uvarint(&[0x08]), Some((8, 1)));
        assert_eq!(uvarint(&[0x80, 0x01]), Some((128, 2)));
        assert_eq!(uvarint(&[0xff; 12]), None);
        assert_eq!(uvarint(&[]), None);
    }
}
