//! TLS library entry points in an ELF file, as file offsets (what a uprobe attaches to): the
//! OpenSSL-family functions from the dynamic symbol table or, for static builds that keep it,
//! the full symbol table; Go's crypto/tls from [`super::go`].

use std::path::Path;

use std::os::fd::AsRawFd as _;

use object::{Object as _, ObjectSection as _, ObjectSymbol as _, SymbolKind};

use super::go::{GoTls, find_go_tls};

/// Functions looked up, in the order of [`SslSymbols::offsets`].
pub const SSL_FUNCTIONS: [&str; 8] = [
    "SSL_read",
    "SSL_write",
    "SSL_read_ex",
    "SSL_write_ex",
    "SSL_set_fd",
    "SSL_peek",
    "SSL_peek_ex",
    "SSL_sendfile",
];

#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    #[error("opening {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("parsing {path} as ELF: {source}")]
    Parse {
        path: String,
        source: object::read::Error,
    },
}

/// File offsets of the functions of [`SSL_FUNCTIONS`] that the file defines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SslSymbols {
    pub offsets: [Option<u64>; SSL_FUNCTIONS.len()],
}

impl SslSymbols {
    pub fn get(&self, name: &str) -> Option<u64> {
        let i = SSL_FUNCTIONS.iter().position(|f| *f == name)?;
        self.offsets[i]
    }

    /// A TLS library Sonde can read: it defines both SSL_read and SSL_write.
    pub fn is_usable(&self) -> bool {
        self.get("SSL_read").is_some() && self.get("SSL_write").is_some()
    }

    pub fn found(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        SSL_FUNCTIONS
            .iter()
            .zip(self.offsets.iter())
            .filter_map(|(n, o)| Some((*n, (*o)?)))
    }
}

/// A read-only private mapping of a whole file: the kernel pages in only what the symbol lookup
/// touches (executables with OpenSSL linked in are often 100 MB), and strings are read in place
/// rather than with a syscall each. Written here because no mmap crate is in the tree and the
/// need is two libc calls.
struct MappedFile {
    ptr: *mut libc::c_void,
    len: usize,
    file: std::fs::File,
}

impl MappedFile {
    fn open(path: &Path) -> std::io::Result<MappedFile> {
        let file = std::fs::File::open(path)?;
        let len = usize::try_from(file.metadata()?.len())
            .map_err(|_| std::io::Error::other("file larger than the address space"))?;
        if len == 0 {
            return Err(std::io::Error::other("empty file"));
        }
        // SAFETY: a fresh read-only private mapping of an open file; unmapped in Drop. The
        // file being truncated meanwhile would fault: mapped libraries are replaced by rename,
        // not rewritten in place (doing so would crash the processes mapping them too).
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(MappedFile { ptr, len, file })
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is `len` readable bytes and lives as long as `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.len) }
    }
}

impl Drop for MappedFile {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping made in `open`.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// Every TLS entry point of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryPoints {
    pub ssl: SslSymbols,
    pub go: GoTls,
}

/// Looks the OpenSSL-family functions up in `path`, from its headers and symbol tables.
pub fn find_ssl_symbols(path: &Path) -> Result<SslSymbols, ElfError> {
    with_elf(path, |elf, _| ssl_symbols(elf))
}

/// Looks up every TLS entry point of `path`: OpenSSL-family functions and Go's crypto/tls.
pub fn find_entry_points(path: &Path) -> Result<EntryPoints, ElfError> {
    with_elf(path, |elf, file| EntryPoints {
        ssl: ssl_symbols(elf),
        go: find_go_tls(elf, Some(file)),
    })
}

/// Parses `path` from a mapping of it; `f` also gets the file, to read code with `pread`: a
/// mapping of a file that another tool has uprobes on gets their breakpoints (int3) written in.
fn with_elf<T>(
    path: &Path,
    f: impl FnOnce(&object::File<'_>, &std::fs::File) -> T,
) -> Result<T, ElfError> {
    let file = MappedFile::open(path).map_err(|source| ElfError::Open {
        path: path.display().to_string(),
        source,
    })?;
    let elf = object::File::parse(file.bytes()).map_err(|source| ElfError::Parse {
        path: path.display().to_string(),
        source,
    })?;
    Ok(f(&elf, &file.file))
}

fn ssl_symbols(elf: &object::File<'_>) -> SslSymbols {
    let mut found = SslSymbols::default();
    // Exported functions first (shared libraries, node); a static build that was not stripped
    // has them in .symtab only. A table whose strings lack "SSL_read" is not walked at all:
    // most mapped files are not TLS libraries, and a big binary's .symtab has 100k+ symbols.
    for (table, strings) in [
        (elf.dynamic_symbols(), ".dynstr"),
        (elf.symbols(), ".strtab"),
    ] {
        let mentions_ssl = elf
            .section_by_name(strings)
            .and_then(|s| s.data().ok())
            .is_some_and(|d| memchr::memmem::find(d, b"SSL_read\0").is_some());
        if !mentions_ssl {
            continue;
        }
        for sym in table {
            if sym.kind() != SymbolKind::Text || !sym.is_definition() || sym.address() == 0 {
                continue;
            }
            let Ok(name) = sym.name() else { continue };
            let Some(i) = SSL_FUNCTIONS.iter().position(|f| *f == name) else {
                continue;
            };
            if found.offsets[i].is_some() {
                continue;
            }
            let Some(section) = sym
                .section_index()
                .and_then(|s| elf.section_by_index(s).ok())
            else {
                continue;
            };
            let Some((section_offset, _)) = section.file_range() else {
                continue;
            };
            // file offset = address - section address + section file offset
            if let Some(off) = sym
                .address()
                .checked_sub(section.address())
                .and_then(|d| d.checked_add(section_offset))
            {
                found.offsets[i] = Some(off);
            }
        }
        if found.is_usable() {
            break;
        }
    }
    found
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::path::PathBuf;

    /// This host's OpenSSL 3 library, if installed.
    pub(crate) fn host_libssl() -> Option<PathBuf> {
        [
            "/usr/lib/x86_64-linux-gnu/libssl.so.3",
            "/usr/lib/aarch64-linux-gnu/libssl.so.3",
            "/lib/x86_64-linux-gnu/libssl.so.3",
            "/usr/lib64/libssl.so.3",
        ]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
    }

    /// The offsets agree with what `nm -D` prints (an independent ELF reader) for the same
    /// file: for a shared library the text section's address equals its file offset, so the
    /// symbol value is the file offset.
    #[test]
    fn libssl_so_3_defines_every_hooked_function_at_the_offsets_nm_prints() {
        let Some(lib) = host_libssl() else {
            eprintln!("no libssl.so.3 on this host: skipped");
            return;
        };
        let syms = find_ssl_symbols(&lib).expect("libssl parses");
        assert!(syms.is_usable());
        for f in [
            "SSL_read",
            "SSL_write",
            "SSL_read_ex",
            "SSL_write_ex",
            "SSL_set_fd",
        ] {
            assert!(syms.get(f).is_some(), "{f} missing: {syms:?}");
        }
        let nm = std::process::Command::new("nm")
            .args(["-D", "--defined-only"])
            .arg(&lib)
            .output()
            .expect("nm runs (binutils)");
        let text = String::from_utf8_lossy(&nm.stdout);
        for (name, off) in syms.found() {
            let line = text
                .lines()
                .find(|l| {
                    let mut f = l.split_whitespace();
                    let _addr = f.next();
                    let _kind = f.next();
                    f.next().is_some_and(|n| n.split('@').next() == Some(name))
                })
                .unwrap_or_else(|| panic!("nm lists {name}"));
            let addr = u64::from_str_radix(line.split_whitespace().next().unwrap_or(""), 16)
                .expect("hex address");
            assert_eq!(off, addr, "{name}");
        }
    }

    #[test]
    fn libraries_without_openssl_and_non_elf_files_are_told_apart() {
        let libc = [
            "/usr/lib/x86_64-linux-gnu/libc.so.6",
            "/lib/x86_64-linux-gnu/libc.so.6",
        ]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
        if let Some(libc) = libc {
            let syms = find_ssl_symbols(&libc).expect("libc parses");
            assert!(!syms.is_usable());
            assert_eq!(syms.found().count(), 0);
        }
        // nginx imports SSL_read from libssl: undefined symbols are not entry points.
        if Path::new("/usr/sbin/nginx").exists() {
            let syms = find_ssl_symbols(Path::new("/usr/sbin/nginx")).expect("nginx parses");
            assert!(!syms.is_usable(), "{syms:?}");
        }
        // Debian's node links OpenSSL in statically and exports its API.
        if Path::new("/usr/bin/node").exists() {
            let syms = find_ssl_symbols(Path::new("/usr/bin/node")).expect("node parses");
            assert!(syms.is_usable(), "{syms:?}");
        }
        let dir = std::env::temp_dir().join(format!("sonde-elf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let junk = dir.join("not-elf");
        std::fs::write(&junk, b"#!/bin/sh\necho hi\n").expect("write");
        assert!(matches!(
            find_ssl_symbols(&junk),
            Err(ElfError::Parse { .. })
        ));
        assert!(matches!(
            find_ssl_symbols(&dir.join("missing")),
            Err(ElfError::Open { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
