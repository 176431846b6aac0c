//! tracefs and bpffs: mounted when missing, and tracepoint formats read from them.

use std::path::{Path, PathBuf};

use sonde_common::TracepointOffsets;

#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    #[error("mounting {fs} at {path}: {source}")]
    Mount {
        fs: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading tracepoint format {path}: {source}")]
    Format {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("tracepoint {tracepoint} has no field `{field}`")]
    MissingField { tracepoint: String, field: String },
}

const TRACEFS: &str = "/sys/kernel/tracing";
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";
const BPFFS: &str = "/sys/fs/bpf";

/// The tracefs root, mounting it first when the kernel has it but nobody mounted it.
pub fn ensure_tracefs() -> Result<PathBuf, TracefsError> {
    for root in [TRACEFS, DEBUGFS_TRACING] {
        if Path::new(root).join("events").is_dir() {
            return Ok(PathBuf::from(root));
        }
    }
    mount("tracefs", TRACEFS)?;
    Ok(PathBuf::from(TRACEFS))
}

/// bpffs, for pinning; mounted when missing.
pub fn ensure_bpffs() -> Result<(), TracefsError> {
    if is_mounted(BPFFS, "bpf") {
        return Ok(());
    }
    mount("bpf", BPFFS)
}

fn is_mounted(path: &str, fstype: &str) -> bool {
    std::fs::read_to_string("/proc/self/mounts")
        .map(|m| {
            m.lines().any(|l| {
                let mut f = l.split_whitespace();
                let _dev = f.next();
                f.next() == Some(path) && f.next() == Some(fstype)
            })
        })
        .unwrap_or(false)
}

fn mount(fs: &'static str, path: &str) -> Result<(), TracefsError> {
    let err = |source| TracefsError::Mount {
        fs,
        path: PathBuf::from(path),
        source,
    };
    let c_fs = std::ffi::CString::new(fs).map_err(|e| err(std::io::Error::other(e)))?;
    let c_path = std::ffi::CString::new(path).map_err(|e| err(std::io::Error::other(e)))?;
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            c_fs.as_ptr(),
            c_path.as_ptr(),
            c_fs.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    tracing::info!(fs, path, "mounted");
    Ok(())
}

/// Whether `events/<category>/<name>` exists.
pub fn has_tracepoint(root: &Path, category: &str, name: &str) -> bool {
    root.join("events")
        .join(category)
        .join(name)
        .join("format")
        .is_file()
}

/// Field offsets of one tracepoint's format file.
#[derive(Debug, Clone, Default)]
pub struct Format {
    name: String,
    fields: Vec<(String, u16)>,
}

impl Format {
    pub fn read(root: &Path, category: &str, name: &str) -> Result<Format, TracefsError> {
        let path = root.join("events").join(category).join(name).join("format");
        let text = std::fs::read_to_string(&path).map_err(|source| TracefsError::Format {
            path: path.clone(),
            source,
        })?;
        Ok(Format::parse(&format!("{category}/{name}"), &text))
    }

    /// Parses lines like `field:__u16 family; offset:16; size:2; signed:0;`.
    pub fn parse(name: &str, text: &str) -> Format {
        let mut fields = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            let Some(rest) = line.strip_prefix("field:") else {
                continue;
            };
            let mut parts = rest.split(';');
            let decl = parts.next().unwrap_or_default().trim();
            let Some(offset) = parts
                .find_map(|p| p.trim().strip_prefix("offset:"))
                .and_then(|o| o.trim().parse::<u16>().ok())
            else {
                continue;
            };
            // The field name is the last word of the declaration, without any array suffix.
            let ident = decl.rsplit([' ', '*']).next().unwrap_or_default();
            let ident = ident.split('[').next().unwrap_or_default();
            fields.push((ident.to_string(), offset));
        }
        Format {
            name: name.to_string(),
            fields,
        }
    }

    pub fn offset(&self, field: &str) -> Result<u16, TracefsError> {
        self.fields
            .iter()
            .find(|(n, _)| n == field)
            .map(|(_, o)| *o)
            .ok_or_else(|| TracefsError::MissingField {
                tracepoint: self.name.clone(),
                field: field.to_string(),
            })
    }
}

/// Offsets the programs need, from the running kernel's formats.
pub fn tracepoint_offsets(
    root: &Path,
    with_sock_length: bool,
) -> Result<TracepointOffsets, TracefsError> {
    let mut tp = TracepointOffsets::default();
    if with_sock_length {
        let f = Format::read(root, "sock", "sock_send_length")?;
        tp.sock_len_sk = f.offset("sk")?;
        tp.sock_len_family = f.offset("family")?;
        tp.sock_len_protocol = f.offset("protocol")?;
    }
    let f = Format::read(root, "sock", "inet_sock_set_state")?;
    tp.state_skaddr = f.offset("skaddr")?;
    tp.state_newstate = f.offset("newstate")?;
    tp.state_sport = f.offset("sport")?;
    tp.state_dport = f.offset("dport")?;
    tp.state_family = f.offset("family")?;
    tp.state_protocol = f.offset("protocol")?;
    tp.state_saddr = f.offset("saddr")?;
    tp.state_daddr = f.offset("daddr")?;
    tp.state_saddr_v6 = f.offset("saddr_v6")?;
    tp.state_daddr_v6 = f.offset("daddr_v6")?;
    tp.state_oldstate = f.offset("oldstate")?;
    Ok(tp)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOCK_SEND_LENGTH: &str = "name: sock_send_length
ID: 2284
format:
	field:unsigned short common_type;	offset:0;	size:2;	signed:0;
	field:int common_pid;	offset:4;	size:4;	signed:1;

	field:void * sk;	offset:8;	size:8;	signed:0;
	field:__u16 family;	offset:16;	size:2;	signed:0;
	field:__u16 protocol;	offset:18;	size:2;	signed:0;
	field:int ret;	offset:20;	size:4;	signed:1;
	field:__u8 saddr_v6[16];	offset:40;	size:16;	signed:0;

print fmt: \"sk=%p\", REC->sk
";

    #[test]
    fn format_fields_are_found_by_name_including_pointers_and_arrays() {
        let f = Format::parse("sock/sock_send_length", SOCK_SEND_LENGTH);
        assert_eq!(f.offset("sk").expect("sk"), 8);
        assert_eq!(f.offset("family").expect("family"), 16);
        assert_eq!(f.offset("protocol").expect("protocol"), 18);
        assert_eq!(f.offset("saddr_v6").expect("saddr_v6"), 40);
        assert_eq!(f.offset("common_pid").expect("common_pid"), 4);
        let err = f.offset("nope").expect_err("missing");
        assert!(err.to_string().contains("sock/sock_send_length"), "{err}");
    }
}
