//! TLS plaintext: finds the TLS libraries processes map and attaches the eBPF uprobes to them.
//!
//! - [`maps`]: `/proc/PID/maps`, the executable files a process maps, by (device, inode);
//! - [`elf`]: the OpenSSL-family entry points (`SSL_read`, `SSL_write`, `_ex`, ...) in a file;
//! - [`go`]: Go's `crypto/tls` `(*Conn).Read`/`Write`, their entries and RET instructions;
//! - [`attach::TlsAttacher`]: one attachment per file, kept while some process maps it, bounded,
//!   fed by exec and exit records from the kernel.

pub mod attach;
pub mod elf;
pub mod go;
pub mod maps;

pub use attach::{ProcNotice, TlsAttacher, TlsStats};
