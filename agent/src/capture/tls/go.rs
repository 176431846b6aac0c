//! Go's `crypto/tls` in an executable: where `(*Conn).Read` and `(*Conn).Write` start and
//! return, as file offsets for uprobes.
//!
//! Go has no shared TLS library and its stacks move, so uretprobes (which rewrite the return
//! address on the stack) would crash it: the return probes go on every RET instruction of the
//! two functions instead, found by decoding their machine code (iced-x86). Function bounds come
//! from the symbol table or, in a stripped binary (`-ldflags=-s`), from Go's own function table
//! (`.gopclntab`); the Go version comes from the build info section, since only Go ≥ 1.17 passes
//! arguments in registers.

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
    /// Go with neither a symbol table nor a readable `.gopclntab`: the functions cannot be
    /// located.
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

/// Looks the two functions up in a parsed executable. Their code is read from `file` when given
/// (see [`function_points`]), else from the parsed bytes.
pub fn find_go_tls(elf: &object::File<'_>, file: Option<&std::fs::File>) -> GoTls {
    let Some(version) = build_version(elf) else {
        return GoTls::NotGo;
    };
    if elf.architecture() != Architecture::X86_64 {
        return GoTls::UnsupportedArch;
    }
    if !register_abi(&version) {
        return GoTls::StackAbi(version);
    }
    let located = if elf.section_by_name(".symtab").is_some() {
        symtab_functions(elf)
    } else {
        // Position-independent builds move it into the relocated read-only data.
        let table = [".gopclntab", ".data.rel.ro.gopclntab"]
            .iter()
            .find_map(|name| elf.section_by_name(name))
            .and_then(|s| s.data().ok());
        match table {
            Some(table) => match pclntab_functions(table, elf) {
                Ok(found) => found,
                Err(e) => return GoTls::Undecodable(format!(".gopclntab: {e}")),
            },
            None => return GoTls::Stripped,
        }
    };
    let [Some(read), Some(write)] = located else {
        return GoTls::NoCryptoTls;
    };
    match (
        function_points(elf, read, file),
        function_points(elf, write, file),
    ) {
        (Ok(read), Ok(write)) => GoTls::Found(GoTlsFunctions {
            version,
            read,
            write,
        }),
        (Err(e), _) | (_, Err(e)) => GoTls::Undecodable(e),
    }
}

/// A function's name, address and size in bytes.
type Located = (&'static str, u64, u64);

/// Read and Write from the symbol table.
fn symtab_functions(elf: &object::File<'_>) -> [Option<Located>; 2] {
    let mut found = [None, None];
    // Most Go binaries are not TLS clients: no walk over 100k symbols without the name.
    let mentions = elf
        .section_by_name(".strtab")
        .and_then(|s| s.data().ok())
        .is_some_and(|d| memchr::memmem::find(d, b"crypto/tls.(*Conn).Read\0").is_some());
    if !mentions {
        return found;
    }
    for sym in elf.symbols() {
        if sym.kind() != SymbolKind::Text || !sym.is_definition() {
            continue;
        }
        let i = match sym.name() {
            Ok(GO_TLS_READ) => 0,
            Ok(GO_TLS_WRITE) => 1,
            _ => continue,
        };
        found[i] = Some(([GO_TLS_READ, GO_TLS_WRITE][i], sym.address(), sym.size()));
        if found.iter().all(Option::is_some) {
            break;
        }
    }
    found
}

/// Read and Write from Go's own function table, `.gopclntab`, which the runtime needs for stack
/// traces and so survives `-ldflags=-s`. Formats of Go 1.16-1.17 (magic 0xfffffffa) and 1.18+
/// (0xfffffff0, 0xfffffff1): a header of offsets, a table of (entry, function record) pairs
/// sorted by entry (a function ends where the next begins), and records naming their function
/// by an offset into the name table. Written here: no maintained crate reads it.
fn pclntab_functions(table: &[u8], elf: &object::File<'_>) -> Result<[Option<Located>; 2], String> {
    let u32_at = |off: usize| -> Result<u32, String> {
        table
            .get(off..off + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(|| format!("truncated at {off}"))
    };
    let magic = u32_at(0)?;
    let go118 = match magic {
        0xffff_fff0 | 0xffff_fff1 => true,
        0xffff_fffa => false,
        m => return Err(format!("magic {m:#x} not known")),
    };
    let ptr = *table.get(7).ok_or("truncated header")? as usize;
    if ptr != 8 {
        return Err(format!("pointer size {ptr}"));
    }
    let word = |off: usize| -> Result<u64, String> {
        table
            .get(off..off + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
            .ok_or_else(|| format!("truncated at {off}"))
    };
    let nfunc = usize::try_from(word(8)?).map_err(|_| "function count")?;
    // Go 1.18 added textStart after nfiles; the offsets follow.
    let (text_start, offsets_at) = if go118 {
        let text = word(24)?;
        let text = if text != 0 {
            text
        } else {
            elf.section_by_name(".text")
                .map(|s| s.address())
                .unwrap_or(0)
        };
        (text, 32)
    } else {
        (0, 24)
    };
    let funcname = usize::try_from(word(offsets_at)?).map_err(|_| "offset")?;
    let pcln = usize::try_from(word(offsets_at + 32)?).map_err(|_| "offset")?;
    // functab entries: (entry, funcoff) as u32 pairs (1.18+) or pointer pairs (1.16).
    let entry_size = if go118 { 8 } else { 16 };
    if nfunc > table.len() / entry_size {
        return Err(format!("{nfunc} functions in {} bytes", table.len()));
    }
    let entry = |i: usize| -> Result<(u64, usize), String> {
        let at = pcln + i * entry_size;
        if go118 {
            Ok((
                text_start + u64::from(u32_at(at)?),
                u32_at(at + 4)? as usize,
            ))
        } else {
            Ok((
                word(at)?,
                usize::try_from(word(at + 8)?).map_err(|_| "offset")?,
            ))
        }
    };
    let mut found = [None, None];
    for i in 0..nfunc {
        let (addr, func_off) = entry(i)?;
        // The record: entry (u32 or pointer), then the name offset (i32).
        let name_field = pcln + func_off + if go118 { 4 } else { 8 };
        let name_off = u32_at(name_field)? as usize;
        let name_at = funcname + name_off;
        let name = table
            .get(name_at..)
            .and_then(|rest| rest.split(|b| *b == 0).next())
            .ok_or_else(|| format!("name of function {i}"))?;
        let slot = match name {
            b"crypto/tls.(*Conn).Read" => 0,
            b"crypto/tls.(*Conn).Write" => 1,
            _ => continue,
        };
        let (next, _) = entry(i + 1)?;
        let size = next
            .checked_sub(addr)
            .ok_or_else(|| format!("function {i} ends before it starts"))?;
        found[slot] = Some(([GO_TLS_READ, GO_TLS_WRITE][slot], addr, size));
        if found.iter().all(Option::is_some) {
            break;
        }
    }
    Ok(found)
}

/// The uprobe points of a located function: its body's entry and every RET. The code is read
/// from `file` with `pread` when given: in a memory mapping of the file, uprobes already placed
/// by another tracer (or an earlier agent) show as int3 where the RETs were.
fn function_points(
    elf: &object::File<'_>,
    at: Located,
    file: Option<&std::fs::File>,
) -> Result<GoFunction, String> {
    let (name, address, size) = at;
    let section = elf
        .sections()
        .find(|s| {
            s.kind() == object::SectionKind::Text
                && address >= s.address()
                && address < s.address() + s.size()
        })
        .ok_or_else(|| format!("{name}: {address:#x} in no text section"))?;
    let (section_offset, _) = section
        .file_range()
        .ok_or_else(|| format!("{name}: section not in the file"))?;
    let data = section.data().map_err(|e| format!("{name}: {e}"))?;
    let start =
        usize::try_from(address - section.address()).map_err(|_| format!("{name}: address"))?;
    let size = usize::try_from(size).map_err(|_| format!("{name}: size"))?;
    let mapped = data
        .get(start..start.saturating_add(size))
        .filter(|c| !c.is_empty())
        .ok_or_else(|| format!("{name}: {size} bytes past its section"))?;
    let to_file = |addr: u64| addr - section.address() + section_offset;
    let read;
    let code = match file {
        Some(f) => {
            use std::os::unix::fs::FileExt as _;
            let mut buf = vec![0u8; size];
            f.read_exact_at(&mut buf, to_file(address))
                .map_err(|e| format!("{name}: reading its code: {e}"))?;
            read = buf;
            &read[..]
        }
        None => mapped,
    };
    let mut decoder = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
    let mut returns = Vec::new();
    let mut entry = address;
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
