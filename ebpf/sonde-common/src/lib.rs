//! Types shared by Sonde's eBPF programs and user space.
//!
//! Everything here is `#[repr(C)]`, `Copy`, made of fixed-size integers and arrays with explicit
//! padding, and checked for size at compile time: the kernel writes these bytes and user space
//! reads them, so the two sides must agree to the byte.
#![no_std]

/// Bytes of payload one data event carries at most.
/// (Records of the largest class hold 16 KiB, twice a chunk: see the eBPF crate's `emit_one`.)
pub const CHUNK_SIZE: usize = 8 * 1024;
/// Data events one syscall emits at most; bytes past `MAX_CHUNKS_PER_CALL * chunk` travel as a
/// length only.
pub const MAX_CHUNKS_PER_CALL: u32 = 8;
/// iovec entries looked at per readv/writev/sendmsg/recvmsg call; bytes of further entries travel
/// as a length only.
pub const MAX_IOVECS: u32 = 8;
/// Calls on a connection of unknown protocol that are shipped before it is declared not HTTP.
pub const CLASSIFY_PROBE_CALLS: u8 = 4;
/// TLS ciphertext bytes shipped per direction of a connection at most, so user space sees the
/// handshake (ClientHello, ServerHello, a TLS 1.2 certificate); shipping stops earlier, at the
/// first application_data record of the direction.
pub const TLS_HANDSHAKE_CAP: u32 = 16 * 1024;

/// Kinds of ring-buffer records (first byte of every record).
pub mod kind {
    pub const DATA: u8 = 1;
    pub const OPEN: u8 = 2;
    pub const CLOSE: u8 = 3;
    /// A process called exec: user space looks for TLS libraries in its mappings.
    pub const EXEC: u8 = 4;
    /// A process exited: user space may detach uprobes nobody maps any more.
    pub const EXIT: u8 = 5;
}

/// Where the payload was taken from.
pub mod source {
    pub const SYSCALL: u8 = 0;
    pub const TLS: u8 = 1;
}

/// Direction from the owning process's point of view.
pub mod direction {
    pub const EGRESS: u8 = 0;
    pub const INGRESS: u8 = 1;
}

/// Connection role, as learnt from connect/accept.
pub mod role {
    pub const UNKNOWN: u8 = 0;
    pub const CLIENT: u8 = 1;
    pub const SERVER: u8 = 2;
}

/// What the first bytes of a connection looked like.
pub mod class {
    pub const UNKNOWN: u8 = 0;
    pub const HTTP1: u8 = 1;
    pub const HTTP2: u8 = 2;
    pub const TLS: u8 = 3;
    /// Not HTTP: payload is no longer shipped.
    pub const OTHER: u8 = 4;
}

/// Flags of an open record.
pub mod open_flags {
    /// The kernel knew the socket's addresses (from inet_sock_set_state).
    pub const ADDRS_KNOWN: u16 = 1;
    /// First seen on a data call, not at connect/accept: it may predate capture.
    pub const MID_STREAM: u16 = 2;
    /// A client whose server is a listening socket of this host that is captured too: its
    /// payload is not shipped (the server's view carries the same bytes).
    pub const LOCAL_PEER: u16 = 4;
}

/// Per-CPU counters: the single value of the `COUNTERS` map (one lookup per program run).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub values: [u64; counter::SLOTS as usize],
}

/// Indices into [`Counters::values`].
pub mod counter {
    /// Data records lost because the ring buffer was full.
    pub const RING_FULL_DATA: u32 = 0;
    /// Open/close records lost because the ring buffer was full.
    pub const RING_FULL_CONN: u32 = 1;
    /// Calls with more bytes than the per-call cap.
    pub const CAP_EXCEEDED_CALLS: u32 = 2;
    /// Bytes that travelled as a length only because of the per-call cap or the iovec limit.
    pub const CAP_EXCEEDED_BYTES: u32 = 3;
    /// bpf_probe_read_user failed (unmapped buffer): the bytes travel as a length only.
    pub const READ_USER_FAILED: u32 = 4;
    /// A map insert failed (pending-call table or connection table full).
    pub const MAP_FULL: u32 = 5;
    /// Connections declared not HTTP by their first bytes.
    pub const NON_HTTP_CONNS: u32 = 6;
    /// Calls on such connections (or on TLS ciphertext) skipped without copying.
    pub const NON_HTTP_CALLS: u32 = 7;
    /// Data records written.
    pub const DATA_EVENTS: u32 = 8;
    /// Payload bytes copied into records.
    pub const CAPTURED_BYTES: u32 = 9;
    /// Connections first seen (open records written).
    pub const CONNS_OPENED: u32 = 10;
    /// Calls on connections skipped by the port or process filter.
    pub const FILTERED_CALLS: u32 = 11;
    /// sendfile bytes (no user buffer: travel as a length only).
    pub const SENDFILE_BYTES: u32 = 12;
    /// recv calls with MSG_PEEK (not consumed, not shipped).
    pub const PEEK_CALLS: u32 = 13;
    /// TLS connections seen on the syscall path (ciphertext, not shipped).
    pub const TLS_CONNS: u32 = 14;
    /// Connections closed (close records written).
    pub const CONNS_CLOSED: u32 = 15;
    /// SSL_read/SSL_write calls whose plaintext was shipped.
    pub const TLS_PLAINTEXT_CALLS: u32 = 16;
    /// SSL calls whose socket could not be named (no syscall inside the call and no cached fd
    /// for the `SSL*`): their plaintext is lost.
    pub const TLS_FD_UNKNOWN: u32 = 17;
    /// TLS connections whose plaintext is not HTTP (no longer shipped).
    pub const TLS_NON_HTTP_CONNS: u32 = 18;
    /// SSL_peek / SSL_sendfile calls: counted, not shipped (peeked bytes are read again later;
    /// sendfile plaintext never passes through user memory).
    pub const TLS_UNCAPTURED_CALLS: u32 = 19;
    /// Saved SSL arguments found unfinished when their thread entered a new SSL call (the
    /// previous call never returned: the thread exited or unwound mid-call); overwritten.
    pub const TLS_STALE_ARGS: u32 = 20;
    /// TLS ciphertext bytes shipped so user space can read the handshake.
    pub const TLS_HANDSHAKE_BYTES: u32 = 21;
    /// Exec and exit records written.
    pub const PROC_EVENTS: u32 = 22;
    /// Exec/exit records lost because the ring buffer was full.
    pub const RING_FULL_PROC: u32 = 23;
    /// Client connections to a captured listening socket of this host (payload not shipped).
    pub const LOCAL_PEER_CONNS: u32 = 24;
    /// Calls on such connections skipped without copying.
    pub const LOCAL_PEER_SKIPPED: u32 = 25;
    /// First calls of a new connection (fd from connect/accept) lost because the thread moved
    /// to another CPU between the sock tracepoint that named the socket and the syscall's exit.
    pub const MIGRATED_UNNAMED: u32 = 26;
    /// Counters in use.
    pub const COUNT: u32 = 27;
    /// Slots of the counters array: a power of two, so an index is bounded by a mask.
    pub const SLOTS: u32 = 32;

    /// Names for export, by index.
    pub const NAMES: [&str; COUNT as usize] = [
        "ring_full_data",
        "ring_full_conn",
        "cap_exceeded_calls",
        "cap_exceeded_bytes",
        "read_user_failed",
        "map_full",
        "non_http_conns",
        "non_http_calls",
        "data_events",
        "captured_bytes",
        "conns_opened",
        "filtered_calls",
        "sendfile_bytes",
        "peek_calls",
        "tls_conns",
        "conns_closed",
        "tls_plaintext_calls",
        "tls_fd_unknown",
        "tls_non_http_conns",
        "tls_uncaptured_calls",
        "tls_stale_args",
        "tls_handshake_bytes",
        "proc_events",
        "ring_full_proc",
        "local_peer_conns",
        "local_peer_skipped",
        "migrated_unnamed",
    ];

    /// Whether a counter counts lost data (as opposed to activity).
    pub const fn is_drop(index: u32) -> bool {
        matches!(
            index,
            RING_FULL_DATA
                | RING_FULL_CONN
                | READ_USER_FAILED
                | MAP_FULL
                | TLS_FD_UNKNOWN
                | RING_FULL_PROC
                | MIGRATED_UNNAMED
        )
    }
}

/// Header of a data record; `captured` payload bytes follow it in the same record.
///
/// The record covers bytes `[offset, offset + len)` of its direction; the first `captured` of
/// them are present, the rest are known to exist but were not copied.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DataHeader {
    pub kind: u8,
    pub source: u8,
    pub direction: u8,
    pub _pad0: u8,
    pub tgid: u32,
    pub tid: u32,
    pub fd: i32,
    pub generation: u32,
    pub len: u32,
    pub captured: u32,
    pub _pad1: u32,
    pub offset: u64,
    pub ts_ns: u64,
}

/// A connection became known to the kernel side.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenEvent {
    pub kind: u8,
    pub role: u8,
    pub flags: u16,
    pub tgid: u32,
    pub fd: i32,
    pub generation: u32,
    pub ts_ns: u64,
    pub cgroup_id: u64,
    pub addrs: SockAddrs,
    pub comm: [u8; 16],
}

/// A process event (exec, exit) for the TLS attachment manager.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcEvent {
    pub kind: u8,
    pub _pad0: [u8; 3],
    pub tgid: u32,
    pub ts_ns: u64,
}

/// A connection was closed by its process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CloseEvent {
    pub kind: u8,
    pub _pad0: [u8; 3],
    pub tgid: u32,
    pub fd: i32,
    pub generation: u32,
    pub ts_ns: u64,
}

/// A TCP socket's addresses as `inet_sock_set_state` reports them (network byte order ports are
/// converted to host order by the tracepoint already).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockAddrs {
    /// AF_INET (2) or AF_INET6 (10).
    pub family: u16,
    pub local_port: u16,
    pub remote_port: u16,
    pub _pad: u16,
    /// IPv4 in the first 4 bytes, or IPv6.
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
}

/// A syscall in progress on an fd, remembered from `sys_enter_*` to `sys_exit_*`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingCall {
    /// User buffer, iovec array for readv/writev, or `struct user_msghdr` for recvmsg/sendmsg.
    pub buf: u64,
    /// Buffer length, or iovec count (readv/writev).
    pub count: u64,
    /// The socket the sock tracepoint saw during the call (0: none seen).
    pub sk: u64,
    pub fd: i32,
    pub direction: u8,
    /// 1 if `buf` is an iovec array.
    pub vectored: u8,
    /// 1 when the sock tracepoint saw a TCP socket (AF_INET/AF_INET6, IPPROTO_TCP).
    pub is_tcp: u8,
    /// 1 when the sock tracepoint saw some other socket.
    pub not_tcp: u8,
    /// 1 for sendfile (no user buffer).
    pub sendfile: u8,
    /// 1 once `sys_exit` handled the call. Entries are overwritten, not deleted (cheaper), in
    /// an LRU map that forgets threads which no longer make calls.
    pub done: u8,
    pub _pad: [u8; 6],
}

/// What the kernel side knows about an fd of a process.
///
/// A TLS connection has two byte streams per direction: the ciphertext the syscalls move
/// (`offset`, `class`) and the plaintext inside the TLS library (`tls_offset`, `tls_class`).
/// They are numbered and classified separately; user space tells them apart by the record's
/// source.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FdState {
    /// Byte offsets, by direction, of the next byte.
    pub offset: [u64; 2],
    /// Byte offsets, by direction, of the next plaintext byte of a TLS library.
    pub tls_offset: [u64; 2],
    pub generation: u32,
    /// See [`fd_kind`].
    pub kind: u8,
    pub role: u8,
    /// See [`class`].
    pub class: u8,
    /// Calls shipped while `class` is unknown.
    pub probe_calls: u8,
    /// 1 when the port or process filter excludes this connection.
    pub filtered: u8,
    /// [`class`] of the plaintext (UNKNOWN until the first SSL call).
    pub tls_class: u8,
    /// SSL calls shipped while `tls_class` is unknown.
    pub tls_probe_calls: u8,
    /// Bit per direction: the ciphertext handshake of that direction is over (first
    /// application_data record, or [`TLS_HANDSHAKE_CAP`] bytes); no more ciphertext is shipped.
    pub handshake_done: u8,
    /// Ciphertext bytes shipped, by direction (saturating).
    pub handshake_bytes: [u16; 2],
    /// 1 for a client whose server side is captured on this host (see
    /// [`open_flags::LOCAL_PEER`]): calls stop at the exit's first lookup.
    pub local_peer: u8,
    /// The TLS library whose plaintext this connection shipped ([`tls_lib`]): a Go one's
    /// syscalls need not tell an SSL call in progress which socket it uses.
    pub tls_lib: u8,
    pub _pad: [u8; 6],
}

/// Arguments of an SSL_read/SSL_write call in progress, saved at the uprobe for the uretprobe,
/// by pid_tgid (a map of their own: SSL_read calls read() inside, which has its own entry).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SslCall {
    /// The `SSL*`.
    pub ssl: u64,
    /// Plaintext buffer.
    pub buf: u64,
    /// `size_t *` of the `_ex` variants (bytes done), else 0.
    pub done_ptr: u64,
    /// The socket fd of the first read/write syscall made inside the call.
    pub fd: i32,
    pub direction: u8,
    /// 1 between the uprobe and the uretprobe. Entries are overwritten, not deleted, in an LRU
    /// map that forgets threads that no longer make calls.
    pub active: u8,
    /// 1 once `fd` was set by a syscall inside the call.
    pub fd_seen: u8,
    /// 1 when that socket is a local client view ([`FdState::local_peer`]): not shipped.
    pub local_peer: u8,
}

/// Key of the `SSL*` → fd cache: SSL pointers are per process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SslKey {
    pub ssl: u64,
    pub tgid: u32,
    pub _pad: u32,
}

/// Sources of TLS plaintext, by [`FdState::tls_lib`].
pub mod tls_lib {
    pub const UNKNOWN: u8 = 0;
    /// OpenSSL and its kin (`SSL*` calls).
    pub const OPENSSL: u8 = 1;
    /// Go `crypto/tls`, whose probes read the socket from the `tls.Conn` itself.
    pub const GO: u8 = 2;
}

/// Kinds of [`FdState`].
pub mod fd_kind {
    /// A role hint from connect/accept; the connection is created on the first TCP data.
    pub const HINT: u8 = 0;
    /// A TCP connection being tracked.
    pub const CONN: u8 = 1;
    /// Not a TCP socket (file, pipe, UDP, unix): calls on it are ignored until it is closed.
    pub const NOT_TCP: u8 = 2;
}

/// A listening TCP socket of this host: the key of the `LISTENERS` map. A wildcard listener
/// (0.0.0.0 or ::) has an all-zero `addr`.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ListenerKey {
    /// AF_INET (2) or AF_INET6 (10).
    pub family: u16,
    pub port: u16,
    pub _pad: u32,
    /// IPv4 in the first 4 bytes, or IPv6.
    pub addr: [u8; 16],
}

/// Tracepoint field offsets read from tracefs by user space (formats may move between kernels).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TracepointOffsets {
    /// sock_send_length / sock_recv_length: `sk`, `family`, `protocol`.
    pub sock_len_sk: u16,
    pub sock_len_family: u16,
    pub sock_len_protocol: u16,
    /// inet_sock_set_state: skaddr, newstate, sport, dport, family, protocol, saddr, daddr,
    /// saddr_v6, daddr_v6.
    pub state_skaddr: u16,
    pub state_newstate: u16,
    pub state_sport: u16,
    pub state_dport: u16,
    pub state_family: u16,
    pub state_protocol: u16,
    pub state_saddr: u16,
    pub state_daddr: u16,
    pub state_saddr_v6: u16,
    pub state_daddr_v6: u16,
    pub state_oldstate: u16,
    pub _pad: [u16; 2],
}

/// Where a thread's user registers, saved at kernel entry (`struct pt_regs`), hold the first
/// syscall arguments and the syscall number: the architecture's ABI, filled in by user space
/// for the architecture it runs on (all zero: unknown, calls that lose their per-CPU slot are
/// then not rebuilt).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RegsOffsets {
    /// Arguments 0-3 as they were at entry (on x86-64 `di`, `si`, `dx`, `r10`; on arm64
    /// `orig_x0`, `regs[1..=3]`).
    pub arg: [u16; 4],
    /// The syscall number (`orig_ax`, `syscallno`); read as 32 bits.
    pub nr: u16,
    pub _pad: [u16; 3],
}

impl RegsOffsets {
    /// True when the offsets are known for this architecture.
    pub const fn known(&self) -> bool {
        self.nr != 0
    }
}

/// Byte offsets of the address fields in the kernel's `struct sock_common` (the head of every
/// `struct sock`), read from the kernel's BTF: the addresses of a connection established before
/// capture started (no `inet_sock_set_state` seen) are read from its socket. Zero: unknown.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockOffsets {
    /// `skc_family` (u16).
    pub family: u16,
    /// `skc_num`: local port, host order (u16).
    pub num: u16,
    /// `skc_dport`: remote port, network order (u16).
    pub dport: u16,
    /// `skc_rcv_saddr`, `skc_daddr`: IPv4 local and remote addresses.
    pub rcv_saddr: u16,
    pub daddr: u16,
    /// `skc_v6_rcv_saddr`, `skc_v6_daddr`: IPv6 local and remote addresses.
    pub v6_rcv_saddr: u16,
    pub v6_daddr: u16,
    /// 1 when the offsets were found.
    pub known: u16,
}

/// Runtime configuration written by user space into the `CONFIG` array (index 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// The agent's own process: never captured.
    pub self_tgid: u32,
    /// Bytes per data record (≤ CHUNK_SIZE).
    pub chunk_size: u32,
    /// Data records per call (≤ MAX_CHUNKS_PER_CALL).
    pub max_chunks_per_call: u32,
    /// 1: only processes in `TGID_FILTER` are captured.
    pub tgid_filter_enabled: u32,
    /// 1: only connections with a local or remote port in `PORT_FILTER` are captured.
    pub port_filter_enabled: u32,
    /// 1: the sock tracepoints tell TCP; 0: only connect/accept hints do (fallback strategy).
    pub sock_tracepoints: u32,
    /// 1: `TGID_EXCLUDE` holds processes to skip besides the agent.
    pub exclude_enabled: u32,
    /// 1: clients of listening sockets in `LISTENERS` are not shipped (see
    /// [`open_flags::LOCAL_PEER`]).
    pub local_peer_skip: u32,
    /// Ring bytes pending after which a record forces a wake-up of user space.
    pub wakeup_threshold: u64,
    pub tp: TracepointOffsets,
    pub regs: RegsOffsets,
    pub sock: SockOffsets,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            self_tgid: 0,
            chunk_size: CHUNK_SIZE as u32,
            max_chunks_per_call: MAX_CHUNKS_PER_CALL,
            tgid_filter_enabled: 0,
            port_filter_enabled: 0,
            sock_tracepoints: 1,
            exclude_enabled: 0,
            local_peer_skip: 0,
            wakeup_threshold: 256 * 1024,
            tp: TracepointOffsets::default(),
            regs: RegsOffsets::default(),
            sock: SockOffsets::default(),
        }
    }
}

pub const DATA_HEADER_SIZE: usize = core::mem::size_of::<DataHeader>();

const _: () = assert!(core::mem::size_of::<DataHeader>() == 48);
const _: () = assert!(core::mem::size_of::<OpenEvent>() == 88);
const _: () = assert!(core::mem::size_of::<CloseEvent>() == 24);
const _: () = assert!(core::mem::size_of::<SockAddrs>() == 40);
const _: () = assert!(core::mem::size_of::<PendingCall>() == 40);
const _: () = assert!(core::mem::size_of::<FdState>() == 56);
const _: () = assert!(core::mem::size_of::<SslCall>() == 32);
const _: () = assert!(core::mem::size_of::<SslKey>() == 16);
const _: () = assert!(core::mem::size_of::<ProcEvent>() == 16);
const _: () = assert!(counter::SLOTS.is_power_of_two() && counter::COUNT <= counter::SLOTS);
const _: () = assert!(core::mem::size_of::<TracepointOffsets>() == 32);
const _: () = assert!(core::mem::size_of::<ListenerKey>() == 24);

const _: () = assert!(core::mem::size_of::<RegsOffsets>() == 16);
const _: () = assert!(core::mem::size_of::<Config>() == 104);
const _: () = assert!(CHUNK_SIZE.is_power_of_two() && CHUNK_SIZE <= 8192);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are repr(C), Copy, made of integers and arrays with explicit padding.
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for Counters {}
    unsafe impl aya::Pod for FdState {}
    unsafe impl aya::Pod for ListenerKey {}
    unsafe impl aya::Pod for PendingCall {}
    unsafe impl aya::Pod for SslCall {}
    unsafe impl aya::Pod for SslKey {}
    unsafe impl aya::Pod for SockAddrs {}
}
