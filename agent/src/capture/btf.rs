//! Field offsets of kernel structures, from the kernel's own BTF (`/sys/kernel/btf/vmlinux`).
//!
//! The programs are built without CO-RE relocations (aya's Rust programs cannot carry them), so
//! the few kernel fields they read directly have their offsets looked up here and passed in the
//! config. Layouts differ between kernel versions and configurations: never hardcoded.

use std::path::Path;

use btfparse::{Offset, Readable, TypeInformation};
use sonde_common::SockOffsets;

/// Where the running kernel publishes its BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("reading {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("struct {0} not in the kernel's BTF")]
    NoStruct(&'static str),
    #[error("member {1} of struct {0} not in the kernel's BTF: {2}")]
    NoMember(&'static str, &'static str, String),
    #[error("member {1} of struct {0} is a bitfield or past what the programs can address")]
    Unaddressable(&'static str, &'static str),
}

/// The BTF bytes, read whole first: the parser's many small reads cost a syscall each on sysfs.
struct InMemory(Vec<u8>);

impl Readable for InMemory {
    fn read(&self, offset: u64, buffer: &mut [u8]) -> btfparse::Result<()> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        match start
            .checked_add(buffer.len())
            .and_then(|end| self.0.get(start..end))
        {
            Some(bytes) => {
                buffer.copy_from_slice(bytes);
                Ok(())
            }
            None => Err(btfparse::Error::new(
                btfparse::ErrorKind::IOError,
                "read past the end of the BTF data",
            )),
        }
    }
}

/// The address fields of `struct sock_common` in the BTF file at `path` (about 80 ms for a
/// kernel's 5 MB).
pub fn sock_offsets(path: &Path) -> Result<SockOffsets, BtfError> {
    let read_error = |reason: String| BtfError::Read {
        path: path.display().to_string(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| read_error(e.to_string()))?;
    let types = TypeInformation::new(&InMemory(bytes)).map_err(|e| read_error(format!("{e:?}")))?;
    const STRUCT: &str = "sock_common";
    let id = types.id_of(STRUCT).ok_or(BtfError::NoStruct(STRUCT))?;
    // Member paths look through anonymous unions and structs, where most of these fields are.
    let at = |name: &'static str| -> Result<u16, BtfError> {
        match types.offset_of(id, name) {
            Ok((_, Offset::ByteOffset(bytes))) => {
                u16::try_from(bytes).map_err(|_| BtfError::Unaddressable(STRUCT, name))
            }
            Ok((_, Offset::BitOffsetAndSize(..))) => Err(BtfError::Unaddressable(STRUCT, name)),
            Err(e) => Err(BtfError::NoMember(STRUCT, name, format!("{e:?}"))),
        }
    };
    Ok(SockOffsets {
        family: at("skc_family")?,
        num: at("skc_num")?,
        dport: at("skc_dport")?,
        rcv_saddr: at("skc_rcv_saddr")?,
        daddr: at("skc_daddr")?,
        v6_rcv_saddr: at("skc_v6_rcv_saddr")?,
        v6_daddr: at("skc_v6_daddr")?,
        known: 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The running kernel's layout: the fields the programs read sit where the uapi-visible
    /// `struct sock_common` has always put them on 64-bit kernels (addresses first, then ports,
    /// family), and the IPv6 addresses after them.
    #[test]
    fn the_running_kernels_sock_common_offsets_are_found() {
        let path = Path::new(VMLINUX_BTF);
        if !path.exists() {
            eprintln!("no kernel BTF on this host: skipped");
            return;
        }
        let o = sock_offsets(path).expect("offsets");
        assert_eq!((o.daddr, o.rcv_saddr), (0, 4));
        assert_eq!((o.dport, o.num, o.family), (12, 14, 16));
        assert!(
            o.v6_daddr > o.family && o.v6_rcv_saddr == o.v6_daddr + 16,
            "{o:?}"
        );
        assert_eq!(o.known, 1);
    }

    #[test]
    fn a_file_that_is_not_btf_is_an_error_not_a_panic() {
        let dir = std::env::temp_dir().join(format!("sonde-btf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("garbage");
        std::fs::write(&file, vec![0xa5u8; 4096]).expect("write");
        assert!(sock_offsets(&file).is_err());
        assert!(sock_offsets(&dir.join("missing")).is_err());
    }
}
