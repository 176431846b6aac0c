//! `/proc/PID/maps`: which files a process has mapped executable.

use std::path::{Path, PathBuf};

/// A file (device, inode): uprobes attach to an inode, whatever path or mount namespace it is
/// reached by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    /// `major:minor` as the kernel prints it, packed as `major << 32 | minor`.
    pub dev: u64,
    pub inode: u64,
}

/// One file-backed executable mapping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub key: ObjectKey,
    /// The path as the process sees it (in its own mount namespace).
    pub path: String,
    /// The file was deleted or replaced on disk since it was mapped (an upgraded library): it
    /// can only be reached through `/proc/PID/map_files/`.
    pub deleted: bool,
}

impl Mapping {
    /// A path to this mapping's file that works from the agent's mount namespace.
    pub fn reachable_path(&self, proc_root: &Path, pid: u32) -> PathBuf {
        let base = proc_root.join(pid.to_string());
        if self.deleted {
            base.join("map_files")
                .join(format!("{:x}-{:x}", self.start, self.end))
        } else {
            base.join("root").join(self.path.trim_start_matches('/'))
        }
    }
}

/// The executable file mappings of a maps text, one per file (first mapping wins). Anonymous,
/// special (`[vdso]`) and malformed lines are skipped.
pub fn executable_files(text: &str) -> Vec<Mapping> {
    let mut out: Vec<Mapping> = Vec::new();
    for line in text.lines() {
        let Some(m) = parse_line(line) else {
            continue;
        };
        if !out.iter().any(|o| o.key == m.key) {
            out.push(m);
        }
    }
    out
}

/// `start-end perms offset major:minor inode [path]`, kept only for executable file mappings.
fn parse_line(line: &str) -> Option<Mapping> {
    let mut fields = line.splitn(6, ' ');
    let range = fields.next()?;
    let perms = fields.next()?;
    let _offset = fields.next()?;
    let dev = fields.next()?;
    let inode: u64 = fields.next()?.parse().ok()?;
    let path = fields.next()?.trim_start();
    if inode == 0 || perms.as_bytes().get(2) != Some(&b'x') {
        return None;
    }
    if !path.starts_with('/') {
        return None;
    }
    let (start, end) = range.split_once('-')?;
    let (major, minor) = dev.split_once(':')?;
    let (path, deleted) = match path.strip_suffix(" (deleted)") {
        Some(p) => (p, true),
        None => (path, false),
    };
    Some(Mapping {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        key: ObjectKey {
            dev: (u64::from_str_radix(major, 16).ok()? << 32)
                | u64::from_str_radix(minor, 16).ok()?,
            inode,
        },
        path: path.to_string(),
        deleted,
    })
}

/// Pids of every process under `proc_root`.
pub fn pids(proc_root: &Path) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir(proc_root) else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_give_executable_files_with_their_inode_and_deleted_flag() {
        let text = "\
55d0c0a00000-55d0c0a20000 r--p 00000000 fd:01 1050 /usr/sbin/nginx
55d0c0a20000-55d0c0b00000 r-xp 00020000 fd:01 1050 /usr/sbin/nginx
7f00aa000000-7f00aa100000 r-xp 00022000 fd:01 2201 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f00ab000000-7f00ab100000 r-xp 00022000 08:10 77 /opt/my lib/libssl.so.1.1 (deleted)
7f00ac000000-7f00ac001000 rw-p 00000000 00:00 0
7ffd1c5f0000-7ffd1c5f2000 r-xp 00000000 00:00 0                          [vdso]
garbage line
";
        let files = executable_files(text);
        assert_eq!(files.len(), 3, "{files:?}");
        assert_eq!(files[0].path, "/usr/sbin/nginx");
        assert_eq!(
            files[0].start, 0x55d0c0a20000,
            "the executable mapping, not the r-- one"
        );
        assert_eq!(
            files[1].key,
            ObjectKey {
                dev: (0xfd << 32) | 1,
                inode: 2201
            }
        );
        assert_eq!(files[2].path, "/opt/my lib/libssl.so.1.1");
        assert!(files[2].deleted);
        assert_eq!(
            files[2].reachable_path(Path::new("/proc"), 9),
            PathBuf::from("/proc/9/map_files/7f00ab000000-7f00ab100000")
        );
        assert_eq!(
            files[1].reachable_path(Path::new("/proc"), 9),
            PathBuf::from("/proc/9/root/usr/lib/x86_64-linux-gnu/libssl.so.3")
        );
    }

    /// A real process of this host that maps libssl.so.3: `openssl` itself.
    #[test]
    fn a_live_openssl_process_maps_libssl_and_the_key_matches_the_file() {
        use std::os::unix::fs::MetadataExt as _;
        let Some(lib) = crate::capture::tls::elf::tests::host_libssl() else {
            eprintln!("no libssl.so.3 on this host: skipped");
            return;
        };
        // `openssl enc` waits on its stdin: a live process with libssl.so.3 mapped.
        let mut child = std::process::Command::new("openssl")
            .args(["enc", "-aes-128-cbc", "-pbkdf2", "-pass", "pass:x"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("openssl runs (cargo xtask setup installs it)");
        let pid = child.id();
        let mut text = String::new();
        for _ in 0..200 {
            text = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
            if text.contains("libssl") {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let _ = child.kill();
        let _ = child.wait();
        let files = executable_files(&text);
        let ssl = files
            .iter()
            .find(|m| m.path.contains("libssl.so"))
            .expect("libssl mapped executable");
        let meta = std::fs::metadata(&lib).expect("stat libssl");
        assert_eq!(ssl.key.inode, meta.ino());
        let dev = meta.dev();
        let (major, minor) = (libc::major(dev) as u64, libc::minor(dev) as u64);
        assert_eq!(ssl.key.dev, (major << 32) | minor);
    }
}
