//! Sonde's kernel side: copy TCP socket payloads of every process into a ring buffer.
//!
//! A call is remembered at `sys_enter_*` (fd, user buffer or iovec array), learnt to be TCP inside
//! the syscall by the `sock_send_length`/`sock_recv_length` tracepoints (or a kprobe on
//! `tcp_sendmsg`/`tcp_recvmsg` where the kernel has them), and copied at `sys_exit_*` once the
//! byte count is known. The call travels from entry to exit in a per-CPU slot. Every fd that
//! turns out not to be a TCP socket is remembered until it is closed, so file and pipe I/O costs
//! one map lookup on entry and nothing on exit.
//!
//! TLS: uprobes on the OpenSSL-family `SSL_read`/`SSL_write` (and `_ex`) save their arguments,
//! the read/write syscall made inside the call names the socket fd, and the uretprobe copies the
//! plaintext as records of source TLS on that connection, numbered in a byte stream of their
//! own. Go's `crypto/tls` is read from uprobes at the entry of `(*Conn).Write` and at the entry
//! and every RET of `(*Conn).Read` (keyed by goroutine). The ciphertext of a TLS connection is shipped only until its handshake is over, for the
//! posture analysis in user space.
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_user, bpf_probe_read_user_buf,
        generated::{bpf_get_current_task_btf, bpf_map_lookup_percpu_elem, bpf_task_pt_regs},
    },
    macros::{kprobe, map, tracepoint, uprobe, uretprobe},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{ProbeContext, RetProbeContext, TracePointContext},
};
use sonde_common::{
    CHUNK_SIZE, CLASSIFY_PROBE_CALLS, CloseEvent, Config, Counters, DATA_HEADER_SIZE, DataHeader,
    FdState, ListenerKey, MAX_CHUNKS_PER_CALL, MAX_IOVECS, OpenEvent, PendingCall, ProcEvent,
    SockAddrs, SslCall, SslKey, TLS_HANDSHAKE_CAP, class, counter, direction, fd_kind, kind,
    open_flags, role, source, tls_lib,
};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u16 = 6;
const MSG_PEEK: u64 = 2;
const TCP_ESTABLISHED: i32 = 1;
const TCP_CLOSE: i32 = 7;
/// TLS record content type of application data: the handshake of a direction is over.
const TLS_APPLICATION_DATA: u8 = 23;
const TCP_LISTEN: i32 = 10;
/// Bytes of the BPF_RB_AVAIL_DATA query flag (linux/bpf.h).
const BPF_RB_AVAIL_DATA: u64 = 0;

/// Syscall tracepoint arguments are `unsigned long`s from offset 16 (an ABI of the syscall
/// tracepoint macros, the same on every kernel); the return value of `sys_exit_*` is at 16.
const ARG0: usize = 16;
const ARG1: usize = 24;
const ARG2: usize = 32;
const ARG3: usize = 40;
const RET: usize = 16;
/// `int __syscall_nr` of every syscall tracepoint.
const SYSCALL_NR: usize = 8;

/// A field of a tracepoint's record at a constant offset. Tracepoint programs may load their
/// context directly (the verifier checks constant, aligned offsets), which costs one load where
/// `read_at` costs a probe-read helper call; the syscall paths read 4-6 fields per call.
#[inline(always)]
fn ctx_field<T: Copy, const OFFSET: usize>(ctx: &TracePointContext) -> T {
    // SAFETY: OFFSET is within the record of every tracepoint this is used on (syscall
    // arguments and return values, the sock_*_length fields checked against tracefs).
    unsafe { core::ptr::read_volatile(ctx.as_ptr().cast::<u8>().add(OFFSET).cast::<T>()) }
}

#[map]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// The data call in progress on each CPU, from `sys_enter` through the sock tracepoint to
/// `sys_exit`: a per-CPU slot costs a few instructions where a map keyed by thread costs a hash
/// lookup (20-40 ns here) at each of the three points. A thread that sleeps inside a call may
/// resume on another CPU, and other threads may take the slot meanwhile, so every reader checks
/// the thread and the syscall number; a call that lost its slot is rebuilt from the registers
/// its thread entered the kernel with ([`rebuild_call`]), and slots a moved thread left behind
/// are cleared ([`clear_stale_slots`]), so a slot that matches is always the current call's.
#[map]
static CALL_SLOT: PerCpuArray<CallSlot> = PerCpuArray::with_max_entries(1, 0);

#[repr(C)]
#[derive(Clone, Copy)]
struct CallSlot {
    /// pid_tgid of the thread in the call; 0 once its `sys_exit` took it.
    id: u64,
    /// Syscall number of the call (`__syscall_nr`).
    nr: i32,
    /// [`slot_state`].
    state: u32,
    call: PendingCall,
}

mod slot_state {
    /// The entry hook saved the call's arguments.
    pub const ARGS: u32 = 0;
    /// The entry hook decided not to capture the call (a file, a filtered or non-HTTP
    /// connection, a peek, an excluded process).
    pub const SKIP: u32 = 1;
    /// The sock tracepoint found no slot of this thread: only what it learnt is here; the exit
    /// rebuilds the arguments from the registers.
    pub const LEARNT: u32 = 2;
}

/// CPUs whose stale slots a moved thread clears (`bpf_map_lookup_percpu_elem` ends the walk at
/// the first CPU id the kernel does not have).
const MAX_CPUS: u32 = 1024;

/// What is known of each (tgid, fd).
#[map]
static FDS: LruHashMap<u64, FdState> = LruHashMap::with_max_entries(65536, 0);

/// Addresses of established TCP sockets, by `struct sock *`.
#[map]
static SOCK_ADDRS: LruHashMap<u64, SockAddrs> = LruHashMap::with_max_entries(65536, 0);

/// SSL calls in progress, by pid_tgid (separate from CALL_SLOT: SSL_read calls read() inside).
#[map]
static SSL_ARGS: LruHashMap<u64, SslCall> = LruHashMap::with_max_entries(16384, 0);

/// The socket fd of each `SSL*` last seen, for SSL calls served from the library's buffer
/// without a syscall inside (filled by SSL_set_fd and by the syscalls inside SSL calls).
#[map]
static SSL_FDS: LruHashMap<SslKey, i32> = LruHashMap::with_max_entries(65536, 0);

/// Listening TCP sockets of this host whose process is captured, from LISTEN transitions here
/// (value: the listening tgid) and from procfs when the agent starts (value 0).
#[map]
static LISTENERS: HashMap<ListenerKey, u32> = HashMap::with_max_entries(4096, 0);

#[map]
static COUNTERS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(1, 0);

/// Source of connection generations.
#[map]
static GENERATION: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Processes to capture when the process filter is on.
#[map]
static TGID_FILTER: HashMap<u32, u8> = HashMap::with_max_entries(1024, 0);

/// Ports to capture when the port filter is on.
#[map]
static PORT_FILTER: HashMap<u16, u8> = HashMap::with_max_entries(1024, 0);

/// Processes never captured (the agent, an embedded or local collector).
#[map]
static TGID_EXCLUDE: HashMap<u32, u8> = HashMap::with_max_entries(64, 0);

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(16 * 1024 * 1024, 0);

#[inline(always)]
fn count(index: u32, by: u64) {
    if let Some(c) = COUNTERS.get_ptr_mut(0) {
        // Per-CPU value: no other CPU writes it.
        unsafe { (*c).values[(index & (counter::SLOTS - 1)) as usize] += by };
    }
}

#[inline(always)]
fn config() -> Option<&'static Config> {
    CONFIG.get(0)
}

#[inline(always)]
fn fd_key(tgid: u32, fd: i32) -> u64 {
    ((tgid as u64) << 32) | (fd as u32 as u64)
}

/// Wake user space only when enough bytes wait; a timer drains the rest (one wake-up per event
/// would cost more than the copy).
#[inline(always)]
fn wakeup_flags(cfg: &Config) -> u64 {
    if EVENTS.query(BPF_RB_AVAIL_DATA) >= cfg.wakeup_threshold {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

fn excluded(cfg: &Config, tgid: u32) -> bool {
    if tgid == cfg.self_tgid {
        return true;
    }
    if cfg.exclude_enabled != 0 && unsafe { TGID_EXCLUDE.get(&tgid) }.is_some() {
        return true;
    }
    cfg.tgid_filter_enabled != 0 && unsafe { TGID_FILTER.get(&tgid) }.is_none()
}

// ---------------------------------------------------------------------------------------------
// sys_enter: remember the call.

#[inline(always)]
fn enter(ctx: &TracePointContext, dir: u8, vectored: u8, sendfile: u8, peek: bool) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let Some(slot) = CALL_SLOT.get_ptr_mut(0) else {
        return 0;
    };
    let slot = unsafe { &mut *slot };
    slot.id = id;
    slot.nr = ctx_field::<i32, SYSCALL_NR>(ctx);
    let fd = ctx_field::<u64, ARG0>(ctx) as i32;
    let (arg1, arg2) = (ctx_field::<u64, ARG1>(ctx), ctx_field::<u64, ARG2>(ctx));
    match prepare_call::<true>(id, fd, arg1, arg2, dir, vectored, sendfile, peek) {
        Ok(call) => {
            slot.state = slot_state::ARGS;
            slot.call = call;
        }
        Err(()) => slot.state = slot_state::SKIP,
    }
    0
}

/// The call to remember for `sys_exit`, or `Err` when it is not captured. `COUNT`: count the
/// skipped calls (false when a call is rebuilt at exit, its entry having counted them). The fd
/// table is not consulted here: the exit looks the fd up anyway, and a lookup at both ends cost
/// one hash lookup more per captured call.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn prepare_call<const COUNT: bool>(
    id: u64,
    fd: i32,
    arg1: u64,
    arg2: u64,
    dir: u8,
    vectored: u8,
    sendfile: u8,
    peek: bool,
) -> Result<PendingCall, ()> {
    if peek {
        if COUNT {
            count(counter::PEEK_CALLS, 1);
        }
        return Err(());
    }
    let tgid = (id >> 32) as u32;
    let cfg = config().ok_or(())?;
    if excluded(cfg, tgid) {
        return Err(());
    }
    // recvmsg/sendmsg: `buf` is the msghdr, read at the exit of a TCP call with data only
    // (most msghdr calls on a host are on unix sockets).
    let (buf, count_arg) = if sendfile != 0 { (0, 0) } else { (arg1, arg2) };
    Ok(PendingCall {
        buf,
        count: count_arg,
        sk: 0,
        fd,
        direction: dir,
        vectored,
        is_tcp: 0,
        not_tcp: 0,
        sendfile,
        done: 0,
        _pad: [0; 6],
    })
}

/// recvfrom and recvmsg with MSG_PEEK leave the bytes in the socket: they are read again later.
#[inline(always)]
fn peeking<const FLAGS_AT: usize>(ctx: &TracePointContext) -> bool {
    ctx_field::<u64, FLAGS_AT>(ctx) & MSG_PEEK != 0
}

#[tracepoint]
pub fn sys_enter_read(ctx: TracePointContext) -> u32 {
    enter(&ctx, direction::INGRESS, 0, 0, false)
}

#[tracepoint]
pub fn sys_enter_write(ctx: TracePointContext) -> u32 {
    enter(&ctx, direction::EGRESS, 0, 0, false)
}

#[tracepoint]
pub fn sys_enter_readv(ctx: TracePointContext) -> u32 {
    enter(&ctx, direction::INGRESS, 1, 0, false)
}

#[tracepoint]
pub fn sys_enter_writev(ctx: TracePointContext) -> u32 {
    enter(&ctx, direction::EGRESS, 1, 0, false)
}

#[tracepoint]
pub fn sys_enter_recvfrom(ctx: TracePointContext) -> u32 {
    let peek = peeking::<ARG3>(&ctx);
    enter(&ctx, direction::INGRESS, 0, 0, peek)
}

#[tracepoint]
pub fn sys_enter_sendto(ctx: TracePointContext) -> u32 {
    enter(&ctx, direction::EGRESS, 0, 0, false)
}

#[tracepoint]
pub fn sys_enter_recvmsg(ctx: TracePointContext) -> u32 {
    let peek = peeking::<ARG2>(&ctx);
    enter(&ctx, direction::INGRESS, 1, 0, peek)
}

#[tracepoint]
pub fn sys_enter_sendmsg(ctx: TracePointContext) -> u32 {
    enter(&ctx, direction::EGRESS, 1, 0, false)
}

/// sendfile(out_fd, in_fd, ...): no user buffer, the length travels as known-missing bytes.
#[tracepoint]
pub fn sys_enter_sendfile64(ctx: TracePointContext) -> u32 {
    enter(&ctx, direction::EGRESS, 0, 1, false)
}

// ---------------------------------------------------------------------------------------------
// Inside the syscall: is it TCP?

#[inline(always)]
fn mark_socket(sk: u64, family: u16, protocol: u16) {
    let id = bpf_get_current_pid_tgid();
    let Some(slot) = CALL_SLOT.get_ptr_mut(0) else {
        return;
    };
    let slot = unsafe { &mut *slot };
    if slot.id != id || slot.state == slot_state::LEARNT {
        // The thread's entry is on another CPU (it slept in the call and moved), another
        // thread took this slot meanwhile, or the call has no entry hook (sendmmsg, io_uring,
        // a kernel socket): keep what this tracepoint learns for the exit, which rebuilds the
        // arguments.
        let Some(cfg) = config() else {
            return;
        };
        if !cfg.regs.known() {
            return;
        }
        slot.id = id;
        slot.nr = user_reg(user_regs(), cfg.regs.nr) as i32;
        slot.state = slot_state::LEARNT;
        slot.call = PendingCall::default();
    } else if slot.state == slot_state::SKIP {
        return;
    }
    let call = &mut slot.call;
    if (family == AF_INET || family == AF_INET6) && protocol == IPPROTO_TCP {
        call.is_tcp = 1;
        call.sk = sk;
    } else {
        call.not_tcp = 1;
    }
}

#[inline(always)]
fn sock_length(ctx: &TracePointContext) -> u32 {
    let Some(cfg) = config() else {
        return 0;
    };
    let tp = &cfg.tp;
    // The fields right after the common header, as the tracepoints define them: direct loads;
    // any other layout tracefs reports is read through the helper.
    let (sk, family, protocol) =
        if tp.sock_len_sk == 8 && tp.sock_len_family == 16 && tp.sock_len_protocol == 18 {
            (
                ctx_field::<u64, 8>(ctx),
                ctx_field::<u16, 16>(ctx),
                ctx_field::<u16, 18>(ctx),
            )
        } else {
            (
                unsafe { ctx.read_at(tp.sock_len_sk as usize) }.unwrap_or(0),
                unsafe { ctx.read_at(tp.sock_len_family as usize) }.unwrap_or(0),
                unsafe { ctx.read_at(tp.sock_len_protocol as usize) }.unwrap_or(0),
            )
        };
    mark_socket(sk, family, protocol);
    0
}

#[tracepoint]
pub fn sock_send_length(ctx: TracePointContext) -> u32 {
    sock_length(&ctx)
}

#[tracepoint]
pub fn sock_recv_length(ctx: TracePointContext) -> u32 {
    sock_length(&ctx)
}

/// Strategy for kernels with kprobes: `tcp_sendmsg(struct sock *sk, ...)` is TCP by definition.
#[kprobe]
pub fn kprobe_tcp_sendmsg(ctx: ProbeContext) -> u32 {
    let sk: u64 = ctx.arg(0).unwrap_or(0);
    mark_socket(sk, AF_INET, IPPROTO_TCP);
    0
}

#[kprobe]
pub fn kprobe_tcp_recvmsg(ctx: ProbeContext) -> u32 {
    let sk: u64 = ctx.arg(0).unwrap_or(0);
    mark_socket(sk, AF_INET, IPPROTO_TCP);
    0
}

/// Addresses of TCP sockets as they become established, so data calls can name their peers.
#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    let Some(cfg) = config() else {
        return 0;
    };
    let tp = &cfg.tp;
    let protocol: u16 = unsafe { ctx.read_at(tp.state_protocol as usize) }.unwrap_or(0);
    if protocol != IPPROTO_TCP {
        return 0;
    }
    let Ok(skaddr) = (unsafe { ctx.read_at::<u64>(tp.state_skaddr as usize) }) else {
        return 0;
    };
    let newstate: i32 = unsafe { ctx.read_at(tp.state_newstate as usize) }.unwrap_or(0);
    if newstate == TCP_LISTEN
        || (newstate == TCP_CLOSE
            && unsafe { ctx.read_at::<i32>(tp.state_oldstate as usize) } == Ok(TCP_LISTEN))
    {
        listener_changed(&ctx, cfg, newstate == TCP_LISTEN);
        return 0;
    }
    if newstate == TCP_CLOSE {
        let _ = SOCK_ADDRS.remove(&skaddr);
        return 0;
    }
    if newstate != TCP_ESTABLISHED {
        return 0;
    }
    let family: u16 = unsafe { ctx.read_at(tp.state_family as usize) }.unwrap_or(0);
    let mut addrs = SockAddrs {
        family,
        local_port: unsafe { ctx.read_at(tp.state_sport as usize) }.unwrap_or(0),
        remote_port: unsafe { ctx.read_at(tp.state_dport as usize) }.unwrap_or(0),
        _pad: 0,
        local_addr: [0; 16],
        remote_addr: [0; 16],
    };
    if family == AF_INET6 {
        addrs.local_addr = unsafe { ctx.read_at(tp.state_saddr_v6 as usize) }.unwrap_or([0; 16]);
        addrs.remote_addr = unsafe { ctx.read_at(tp.state_daddr_v6 as usize) }.unwrap_or([0; 16]);
    } else {
        let l: [u8; 4] = unsafe { ctx.read_at(tp.state_saddr as usize) }.unwrap_or([0; 4]);
        let r: [u8; 4] = unsafe { ctx.read_at(tp.state_daddr as usize) }.unwrap_or([0; 4]);
        addrs.local_addr[..4].copy_from_slice(&l);
        addrs.remote_addr[..4].copy_from_slice(&r);
    }
    if SOCK_ADDRS.insert(&skaddr, &addrs, 0).is_err() {
        count(counter::MAP_FULL, 1);
    }
    0
}

/// A socket started or stopped listening. `listen()` and the last `close()` of a listening
/// socket run in its process, so the current tgid is the listener's owner; a listener of an
/// excluded process is left out, so its local clients keep their own view.
#[inline(never)]
fn listener_changed(ctx: &TracePointContext, cfg: &Config, listening: bool) {
    let tp = &cfg.tp;
    let family: u16 = unsafe { ctx.read_at(tp.state_family as usize) }.unwrap_or(0);
    let mut key = ListenerKey {
        family,
        port: unsafe { ctx.read_at(tp.state_sport as usize) }.unwrap_or(0),
        _pad: 0,
        addr: [0; 16],
    };
    if family == AF_INET6 {
        key.addr = unsafe { ctx.read_at(tp.state_saddr_v6 as usize) }.unwrap_or([0; 16]);
    } else {
        let a: [u8; 4] = unsafe { ctx.read_at(tp.state_saddr as usize) }.unwrap_or([0; 4]);
        key.addr[..4].copy_from_slice(&a);
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if !listening || excluded(cfg, tgid) {
        let _ = LISTENERS.remove(&key);
    } else if LISTENERS.insert(&key, &tgid, 0).is_err() {
        count(counter::MAP_FULL, 1);
    }
}

/// Whether a client socket's peer is a captured listening socket of this host: the exact
/// address, or a wildcard listener (also a dual-stack `::` one for IPv4) when the destination is
/// loopback or the client's own address (a wildcard listener does not make a remote host's
/// port local).
#[inline(never)]
fn peer_is_local_listener(addrs: &SockAddrs) -> bool {
    // Addresses as words: byte-wise copies and comparisons put every byte on the stack, and this
    // frame adds to that of every program that opens connections.
    let (l, r) = addr_words(addrs);
    let mut key = ListenerKey {
        family: addrs.family,
        port: addrs.remote_port,
        _pad: 0,
        // SAFETY: two u64s are 16 valid bytes.
        addr: unsafe { core::mem::transmute::<[u64; 2], [u8; 16]>(r) },
    };
    if unsafe { LISTENERS.get(&key) }.is_some() {
        return true;
    }
    let loopback = if addrs.family == AF_INET6 {
        r[0] == 0 && r[1] == 1 << 56
    } else {
        r[0] as u8 == 127
    };
    if !loopback && r != l {
        return false;
    }
    key.addr = [0; 16];
    if unsafe { LISTENERS.get(&key) }.is_some() {
        return true;
    }
    key.family = AF_INET6;
    addrs.family == AF_INET && unsafe { LISTENERS.get(&key) }.is_some()
}

/// The local and remote addresses of `addrs`, each as two little-endian words.
#[inline(always)]
fn addr_words(addrs: &SockAddrs) -> ([u64; 2], [u64; 2]) {
    // SAFETY: SockAddrs is 40 bytes, 8-byte aligned (five words); the addresses are words 1-2
    // and 3-4.
    let w = unsafe { &*(addrs as *const SockAddrs).cast::<[u64; 5]>() };
    ([w[1], w[2]], [w[3], w[4]])
}

// ---------------------------------------------------------------------------------------------
// Connection hints: connect makes a client, accept a server.

#[inline(always)]
fn hint(tgid: u32, fd: i32, r: u8) {
    let key = fd_key(tgid, fd);
    let st = FdState {
        kind: fd_kind::HINT,
        role: r,
        ..FdState::default()
    };
    if let Some(old) = unsafe { FDS.get(&key) }
        && old.kind == fd_kind::CONN
    {
        // The fd was reused without a close we saw: end the old connection first.
        emit_close(tgid, fd, old.generation);
    }
    if FDS.insert(&key, &st, 0).is_err() {
        count(counter::MAP_FULL, 1);
    }
}

#[tracepoint]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    let Some(cfg) = config() else {
        return 0;
    };
    if excluded(cfg, tgid) {
        return 0;
    }
    let fd = ctx_field::<u64, ARG0>(&ctx);
    hint(tgid, fd as i32, role::CLIENT);
    0
}

#[inline(always)]
fn accept_exit(ctx: &TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    let Some(cfg) = config() else {
        return 0;
    };
    if excluded(cfg, tgid) {
        return 0;
    }
    let ret = ctx_field::<i64, RET>(ctx);
    if ret < 0 {
        return 0;
    }
    hint(tgid, ret as i32, role::SERVER);
    0
}

#[tracepoint]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    accept_exit(&ctx)
}

#[tracepoint]
pub fn sys_exit_accept4(ctx: TracePointContext) -> u32 {
    accept_exit(&ctx)
}

// ---------------------------------------------------------------------------------------------
// Close and fd replacement.

#[inline(always)]
fn forget_fd(tgid: u32, fd: i32) {
    let key = fd_key(tgid, fd);
    if let Some(st) = unsafe { FDS.get(&key) } {
        if st.kind == fd_kind::CONN {
            emit_close(tgid, fd, st.generation);
        }
        let _ = FDS.remove(&key);
    }
}

#[tracepoint]
pub fn sys_enter_close(ctx: TracePointContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    forget_fd(tgid, ctx_field::<u64, ARG0>(&ctx) as i32);
    0
}

/// dup2/dup3 close `newfd` implicitly.
#[inline(always)]
fn dup_enter(ctx: &TracePointContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    forget_fd(tgid, ctx_field::<u64, ARG1>(ctx) as i32);
    0
}

#[tracepoint]
pub fn sys_enter_dup2(ctx: TracePointContext) -> u32 {
    dup_enter(&ctx)
}

#[tracepoint]
pub fn sys_enter_dup3(ctx: TracePointContext) -> u32 {
    dup_enter(&ctx)
}

fn emit_close(tgid: u32, fd: i32, generation: u32) {
    let Some(cfg) = config() else {
        return;
    };
    let ev = CloseEvent {
        kind: kind::CLOSE,
        _pad0: [0; 3],
        tgid,
        fd,
        generation,
        ts_ns: unsafe { bpf_ktime_get_ns() },
    };
    if EVENTS.output::<CloseEvent>(&ev, wakeup_flags(cfg)).is_err() {
        count(counter::RING_FULL_CONN, 1);
    } else {
        count(counter::CONNS_CLOSED, 1);
    }
}

// ---------------------------------------------------------------------------------------------
// sys_exit: copy the bytes.

/// `DIR`, `VECTORED`, `SENDFILE`, `MSGHDR`: what the syscall is (as its entry hook passes them);
/// `PEEK_ARG`: the argument holding recv flags (0: none).
#[inline(always)]
fn exit<
    const DIR: u8,
    const VECTORED: bool,
    const SENDFILE: bool,
    const MSGHDR: bool,
    const PEEK_ARG: usize,
>(
    ctx: &TracePointContext,
) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let Some(slot) = CALL_SLOT.get_ptr_mut(0) else {
        return 0;
    };
    let (matched, state) = unsafe {
        (
            (*slot).id == id && (*slot).nr == ctx_field::<i32, SYSCALL_NR>(ctx),
            (*slot).state,
        )
    };
    if matched {
        unsafe { (*slot).id = 0 };
        if state == slot_state::SKIP {
            return 0;
        }
    }
    // One path into the copy below for both cases, so the verifier walks it once.
    if (!matched || state != slot_state::ARGS)
        && rebuild_call::<DIR, VECTORED, SENDFILE, MSGHDR, PEEK_ARG>(
            id,
            matched as u8,
            ctx_field::<i64, RET>(ctx),
        ) != 0
    {
        return 0;
    }
    let call = unsafe { (*slot).call };
    let _ = try_exit::<VECTORED, SENDFILE, MSGHDR>(id, &call, ctx_field::<i64, RET>(ctx));
    0
}

/// The current thread's user registers, saved when it entered the kernel.
#[inline(always)]
fn user_regs() -> u64 {
    unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) as u64 }
}

#[inline(always)]
fn user_reg(regs: u64, offset: u16) -> u64 {
    unsafe { bpf_probe_read_kernel((regs + offset as u64) as *const u64) }.unwrap_or(0)
}

/// The exit of a call whose slot was lost (its thread moved to this CPU while it slept, or
/// another thread took the slot): the arguments come from the thread's saved registers and
/// the entry's checks run again; the call is left in this CPU's slot (taken from any other
/// thread, which then rebuilds its own) for the exit to copy. `learnt`: the slot holds what the
/// sock tracepoint learnt during the call; without it only a known connection is TCP. Returns
/// 0 when the call is to be copied. A BPF function of its own so that this rare path adds no
/// states to the verification of the common one.
#[inline(never)]
fn rebuild_call<
    const DIR: u8,
    const VECTORED: bool,
    const SENDFILE: bool,
    const MSGHDR: bool,
    const PEEK_ARG: usize,
>(
    id: u64,
    learnt: u8,
    ret: i64,
) -> u32 {
    clear_stale_slots(id);
    let Some(cfg) = config() else {
        return 1;
    };
    let Some(slot) = CALL_SLOT.get_ptr_mut(0) else {
        return 1;
    };
    let slot = unsafe { &mut *slot };
    if !cfg.regs.known() {
        return 1;
    }
    let regs = user_regs();
    let fd = user_reg(regs, cfg.regs.arg[0]) as i32;
    let peek = PEEK_ARG != 0 && user_reg(regs, cfg.regs.arg[PEEK_ARG & 3]) & MSG_PEEK != 0;
    let (arg1, arg2) = (
        user_reg(regs, cfg.regs.arg[1]),
        user_reg(regs, cfg.regs.arg[2]),
    );
    let Ok(mut call) = prepare_call::<false>(
        id,
        fd,
        arg1,
        arg2,
        DIR,
        VECTORED as u8,
        SENDFILE as u8,
        peek,
    ) else {
        return 1;
    };
    if learnt != 0 {
        call.is_tcp = slot.call.is_tcp;
        call.not_tcp = slot.call.not_tcp;
        call.sk = slot.call.sk;
    } else if cfg.sock_tracepoints != 0 {
        // The sock tracepoint ran on another CPU or not at all (a file): a connection the
        // table knows is TCP, anything else is left for its next call to tell.
        let tgid = (id >> 32) as u32;
        match unsafe { FDS.get(&fd_key(tgid, fd)) } {
            Some(st) if st.kind == fd_kind::CONN => call.is_tcp = 1,
            Some(st) if st.kind == fd_kind::HINT && ret > 0 => {
                // A new connection's first call: the sock tracepoint that would have named
                // the socket ran on the CPU the thread left. Not shipped, but counted.
                count(counter::MIGRATED_UNNAMED, 1);
                return 1;
            }
            _ => return 1,
        }
    }
    slot.id = 0;
    slot.call = call;
    0
}

/// Clears the slots this thread left on other CPUs (entered there, left here), so a later
/// call of the thread never takes one of them for its own.
#[inline(never)]
fn clear_stale_slots(id: u64) {
    let key: u32 = 0;
    for cpu in 0..MAX_CPUS {
        let p = unsafe {
            bpf_map_lookup_percpu_elem(
                &CALL_SLOT as *const _ as *mut core::ffi::c_void,
                &key as *const u32 as *const core::ffi::c_void,
                cpu,
            )
        };
        if p.is_null() {
            break;
        }
        let slot = p.cast::<CallSlot>();
        unsafe {
            if (*slot).id == id {
                (*slot).id = 0;
            }
        }
    }
}

/// A new generation for an fd that became a connection. The BPF target has no atomic
/// fetch-add in `core`, so the per-CPU counter is combined with the CPU's clock: two connections
/// on one fd are never opened within the same 64 ns on the same CPU.
fn next_generation() -> u32 {
    let Some(p) = GENERATION.get_ptr_mut(0) else {
        return 1;
    };
    let g = unsafe {
        *p += 1;
        *p
    };
    let t = unsafe { bpf_ktime_get_ns() } >> 6;
    ((t ^ (g << 24)) as u32) | 1
}

fn port_allowed(addrs: &SockAddrs) -> bool {
    unsafe { PORT_FILTER.get(&addrs.local_port) }.is_some()
        || unsafe { PORT_FILTER.get(&addrs.remote_port) }.is_some()
}

/// Create the connection state on its first TCP data and announce it to user space.
#[inline(always)]
fn open_conn(cfg: &Config, tgid: u32, fd: i32, sk: u64, hinted: Option<u8>) -> Result<(), ()> {
    let key = fd_key(tgid, fd);
    let generation = next_generation();
    let mut ev = OpenEvent {
        kind: kind::OPEN,
        role: hinted.unwrap_or(role::UNKNOWN),
        flags: if hinted.is_none() {
            open_flags::MID_STREAM
        } else {
            0
        },
        tgid,
        fd,
        generation,
        ts_ns: unsafe { bpf_ktime_get_ns() },
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        addrs: SockAddrs::default(),
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    if let Some(a) = unsafe { SOCK_ADDRS.get(&sk) } {
        ev.addrs = *a;
        ev.flags |= open_flags::ADDRS_KNOWN;
    } else if sk != 0 && cfg.sock.known != 0 && sock_addrs_from_sk(cfg, sk, &mut ev.addrs) != 0 {
        ev.flags |= open_flags::ADDRS_KNOWN;
    }
    let filtered = cfg.port_filter_enabled != 0
        && ev.flags & open_flags::ADDRS_KNOWN != 0
        && !port_allowed(&ev.addrs);
    let local_peer = !filtered
        && cfg.local_peer_skip != 0
        && ev.role == role::CLIENT
        && ev.flags & open_flags::ADDRS_KNOWN != 0
        && peer_is_local_listener(&ev.addrs);
    if local_peer {
        ev.flags |= open_flags::LOCAL_PEER;
        count(counter::LOCAL_PEER_CONNS, 1);
    }
    let st = FdState {
        generation,
        kind: fd_kind::CONN,
        role: ev.role,
        class: class::UNKNOWN,
        filtered: filtered as u8,
        local_peer: local_peer as u8,
        ..FdState::default()
    };
    if FDS.insert(&key, &st, 0).is_err() {
        count(counter::MAP_FULL, 1);
        return Err(());
    }
    if filtered {
        return Ok(());
    }
    if EVENTS.output::<OpenEvent>(&ev, wakeup_flags(cfg)).is_err() {
        count(counter::RING_FULL_CONN, 1);
    } else {
        count(counter::CONNS_OPENED, 1);
    }
    Ok(())
}

/// Reads the addresses of a connection the kernel side never saw established (it predates
/// capture) from its `struct sock`, at the offsets user space found in the kernel's BTF. Returns
/// 1 when `out` holds TCP/IP addresses. A BPF function of its own, so its branches end here.
#[inline(never)]
fn sock_addrs_from_sk(cfg: &Config, sk: u64, out: &mut SockAddrs) -> u32 {
    let o = &cfg.sock;
    let field = |off: u16| sk + off as u64;
    let Ok(family) = (unsafe { bpf_probe_read_kernel(field(o.family) as *const u16) }) else {
        return 0;
    };
    let ports = (
        unsafe { bpf_probe_read_kernel(field(o.num) as *const u16) },
        unsafe { bpf_probe_read_kernel(field(o.dport) as *const u16) },
    );
    let (Ok(local_port), Ok(remote_port_be)) = ports else {
        return 0;
    };
    out.family = family;
    out.local_port = local_port;
    out.remote_port = u16::from_be(remote_port_be);
    if family == AF_INET6 {
        let (Ok(l), Ok(r)) = (
            unsafe { bpf_probe_read_kernel(field(o.v6_rcv_saddr) as *const [u8; 16]) },
            unsafe { bpf_probe_read_kernel(field(o.v6_daddr) as *const [u8; 16]) },
        ) else {
            return 0;
        };
        out.local_addr = l;
        out.remote_addr = r;
    } else if family == AF_INET {
        let (Ok(l), Ok(r)) = (
            unsafe { bpf_probe_read_kernel(field(o.rcv_saddr) as *const [u8; 4]) },
            unsafe { bpf_probe_read_kernel(field(o.daddr) as *const [u8; 4]) },
        ) else {
            return 0;
        };
        out.local_addr[..4].copy_from_slice(&l);
        out.remote_addr[..4].copy_from_slice(&r);
    } else {
        return 0;
    }
    1
}

/// Whether bytes start like an HTTP/2 frame header: a known type, a length within the default
/// maximum frame size, the reserved bit clear, and a stream id that fits the type. Only used for
/// connections met mid-stream, which have no preface to go by.
#[inline(always)]
fn plausible_h2_frame(b: &[u8; 16]) -> bool {
    let len = ((b[0] as u32) << 16) | ((b[1] as u32) << 8) | b[2] as u32;
    let kind = b[3];
    let stream =
        (((b[5] & 0x7f) as u32) << 24) | ((b[6] as u32) << 16) | ((b[7] as u32) << 8) | b[8] as u32;
    if b[5] & 0x80 != 0 || len > 16384 || kind > 9 {
        return false;
    }
    match kind {
        // SETTINGS, PING, GOAWAY belong to the connection.
        4 | 6 | 7 => stream == 0,
        // WINDOW_UPDATE may be either.
        8 => true,
        _ => stream != 0,
    }
}

/// Reads the first bytes at `buf` and classifies them. A separate BPF function on purpose: its
/// stack frame (and every range the comparisons learnt about the bytes) ends at the return, so
/// the verifier does not carry one state per classification outcome into the copy loops.
#[inline(never)]
fn classify_user(buf: u64, mid_stream: bool, frame_sized: bool) -> u8 {
    let mut first = [0u8; 16];
    if unsafe { bpf_probe_read_user_buf(buf as *const u8, &mut first) }.is_err() {
        return class::UNKNOWN;
    }
    let c = classify(&first, mid_stream);
    // Frame headers are 9 bytes: a shorter call that matched one only by chance is not HTTP/2.
    if c == class::HTTP2 && !frame_sized && first[0] != b'P' {
        return class::UNKNOWN;
    }
    c
}

/// Classify a connection on its first bytes: HTTP/1 request or status line, HTTP/2 preface (or,
/// met mid-stream, a frame header), TLS record header, or something else.
#[inline(always)]
fn classify(first: &[u8; 16], mid_stream: bool) -> u8 {
    let w = u32::from_le_bytes([first[0], first[1], first[2], first[3]]);
    const fn tag(s: &[u8; 4]) -> u32 {
        u32::from_le_bytes(*s)
    }
    if w == tag(b"PRI ") {
        return class::HTTP2;
    }
    if w == tag(b"GET ")
        || w == tag(b"POST")
        || w == tag(b"PUT ")
        || w == tag(b"HEAD")
        || w == tag(b"DELE")
        || w == tag(b"PATC")
        || w == tag(b"OPTI")
        || w == tag(b"CONN")
        || w == tag(b"TRAC")
        || w == tag(b"HTTP")
    {
        return class::HTTP1;
    }
    // TLS record: handshake (22) or application data (23), version 3.x.
    if (first[0] == 0x16 || first[0] == 0x17) && first[1] == 0x03 && first[2] <= 0x04 {
        return class::TLS;
    }
    if mid_stream && plausible_h2_frame(first) {
        return class::HTTP2;
    }
    // An HTTP/2 server may speak first: its preface is a SETTINGS frame (type 4, no flags,
    // stream 0, a whole number of 6-byte settings) sent as soon as it accepts.
    if !mid_stream
        && first[3] == 4
        && first[4] == 0
        && first[5] | first[6] | first[7] | first[8] == 0
        && first[0] == 0
        && first[2] % 6 == 0
    {
        return class::HTTP2;
    }
    class::UNKNOWN
}

#[inline(always)]
fn try_exit<const VECTORED: bool, const SENDFILE: bool, const MSGHDR: bool>(
    id: u64,
    call: &PendingCall,
    ret: i64,
) -> Result<(), ()> {
    let cfg = config().ok_or(())?;
    let tgid = (id >> 32) as u32;
    let key = fd_key(tgid, call.fd);
    let found = FDS.get_ptr_mut(&key);
    let found_kind = found.map(|p| unsafe { (*p).kind });
    if found_kind == Some(fd_kind::NOT_TCP) {
        return Ok(());
    }

    let is_tcp = if cfg.sock_tracepoints != 0 {
        call.is_tcp != 0
    } else {
        // Fallback strategy: only connect/accept tell sockets apart.
        call.not_tcp == 0 && found.is_some()
    };
    if !is_tcp {
        // Remember non-TCP fds so their next calls stop at sys_enter. A failed call tells
        // nothing (EBADF, or a socket call that failed before the socket layer).
        if (call.not_tcp != 0 || ret >= 0) && cfg.sock_tracepoints != 0 && found.is_none() {
            let st = FdState {
                kind: fd_kind::NOT_TCP,
                ..FdState::default()
            };
            let _ = FDS.insert(&key, &st, 0);
        }
        return Ok(());
    }
    // A TLS library call in progress on this thread learns its socket here (also when the
    // syscall returns EAGAIN).
    match found {
        Some(p) => unsafe {
            note_syscall_fd(id, call.fd, (*p).class, (*p).tls_lib, (*p).local_peer)
        },
        None => note_syscall_fd(id, call.fd, class::UNKNOWN, tls_lib::UNKNOWN, 0),
    }
    if ret <= 0 {
        return Ok(());
    }
    let len = ret as u64;
    let (buf, iovcnt) = if MSGHDR {
        msghdr_iov(call.buf)
    } else {
        (call.buf, call.count)
    };

    let st = match (found, found_kind) {
        (Some(p), Some(fd_kind::CONN)) => p,
        (Some(p), Some(fd_kind::HINT)) => {
            open_conn(cfg, tgid, call.fd, call.sk, Some(unsafe { (*p).role }))?;
            FDS.get_ptr_mut(&key).ok_or(())?
        }
        _ => {
            open_conn(cfg, tgid, call.fd, call.sk, None)?;
            FDS.get_ptr_mut(&key).ok_or(())?
        }
    };
    let st = unsafe { &mut *st };
    if st.filtered != 0 {
        count(counter::FILTERED_CALLS, 1);
        return Ok(());
    }
    if st.local_peer != 0 {
        // Classified all the same (once), so that later calls of a cleartext one skip the
        // TLS library lookup above.
        if st.class == class::UNKNOWN && !SENDFILE && len >= 4 {
            let c = classify_user(first_buffer::<VECTORED>(buf), false, len >= 9);
            st.class = if c == class::UNKNOWN { class::OTHER } else { c };
        }
        count(counter::LOCAL_PEER_SKIPPED, 1);
        return Ok(());
    }
    if st.class == class::OTHER {
        count(counter::NON_HTTP_CALLS, 1);
        return Ok(());
    }
    let dir = (call.direction & 1) as usize;
    if st.class == class::UNKNOWN && !SENDFILE {
        if len >= 4 {
            let c = classify_user(
                first_buffer::<VECTORED>(buf),
                st.role == role::UNKNOWN,
                len >= 9,
            );
            if c != class::UNKNOWN {
                st.class = c;
            }
        }
        if st.class == class::UNKNOWN {
            st.probe_calls = st.probe_calls.saturating_add(1);
            // A connection seen from its start that does not open with HTTP is not HTTP; one
            // joined mid-stream gets a few calls to show a message start.
            let from_start = st.role != role::UNKNOWN && st.offset[0] == 0 && st.offset[1] == 0;
            if from_start || st.probe_calls > CLASSIFY_PROBE_CALLS {
                st.class = class::OTHER;
            }
        }
        if st.class == class::OTHER {
            count(counter::NON_HTTP_CONNS, 1);
            count(counter::NON_HTTP_CALLS, 1);
            // User space can forget the connection now.
            emit_close(tgid, call.fd, st.generation);
            return Ok(());
        }
        if st.class == class::TLS {
            // Kept open: its plaintext may come from a TLS library, and its handshake is
            // shipped below.
            count(counter::TLS_CONNS, 1);
        }
    }

    // TLS ciphertext: shipped until the direction's first application_data record (the
    // handshake, for posture analysis in user space), at most TLS_HANDSHAKE_CAP bytes.
    let mut copy_len = len;
    if st.class == class::TLS {
        let bit = 1u8 << dir;
        let sent = st.handshake_bytes[dir] as u64;
        if SENDFILE
            || st.handshake_done & bit != 0
            || sent >= TLS_HANDSHAKE_CAP as u64
            || first_byte(first_buffer::<VECTORED>(buf)) == TLS_APPLICATION_DATA
        {
            st.handshake_done |= bit;
            count(counter::NON_HTTP_CALLS, 1);
            return Ok(());
        }
        copy_len = min_u64(len, TLS_HANDSHAKE_CAP as u64 - sent);
        let total = sent + len;
        st.handshake_bytes[dir] = if total > u16::MAX as u64 {
            u16::MAX
        } else {
            total as u16
        };
        count(counter::TLS_HANDSHAKE_BYTES, copy_len);
    }

    // Calls on one fd from several threads at once could interleave here; HTTP clients and
    // servers serialise I/O per connection, and user space sees any mismatch as a gap.
    let offset = st.offset[dir];
    st.offset[dir] = offset + len;
    let mut hdr = DataHeader {
        kind: kind::DATA,
        source: source::SYSCALL,
        direction: call.direction,
        _pad0: 0,
        tgid,
        tid: id as u32,
        fd: call.fd,
        generation: st.generation,
        len: 0,
        captured: 0,
        _pad1: 0,
        offset,
        ts_ns: unsafe { bpf_ktime_get_ns() },
    };

    if SENDFILE {
        count(counter::SENDFILE_BYTES, len);
        emit_length_only(cfg, &mut hdr, len);
        return Ok(());
    }
    let max_chunks = if cfg.max_chunks_per_call < MAX_CHUNKS_PER_CALL {
        cfg.max_chunks_per_call
    } else {
        MAX_CHUNKS_PER_CALL
    };
    let chunk = if cfg.chunk_size > 0 && (cfg.chunk_size as u64) < CHUNK_SIZE as u64 {
        cfg.chunk_size as u64
    } else {
        CHUNK_SIZE as u64
    };
    let flags = wakeup_flags(cfg);
    // One lookup for every counter the copy loops bump; kept in map memory rather than in
    // registers, where per-path counts would keep the verifier from merging loop states.
    let tally = COUNTERS.get_ptr_mut(0).ok_or(())?;
    // A single iovec (nginx's response headers, most writev calls) is copied as a plain
    // buffer: the iovec loop's per-entry state costs more than the copy of a small header.
    let single = VECTORED && iovcnt == 1;
    let done = if VECTORED && !single {
        emit_iovecs(&hdr, buf, iovcnt, copy_len, chunk, max_chunks, flags, tally)
    } else {
        let base = if single {
            first_buffer::<true>(buf)
        } else {
            buf
        };
        emit_buffer(&hdr, base, copy_len, chunk, max_chunks, flags, tally)
    };
    if done < len {
        if done < copy_len {
            unsafe {
                let t = &mut (*tally).values;
                t[counter::CAP_EXCEEDED_CALLS as usize] += 1;
                t[counter::CAP_EXCEEDED_BYTES as usize] += copy_len - done;
            }
        }
        hdr.offset = offset + done;
        emit_length_only(cfg, &mut hdr, len - done);
    }
    Ok(())
}

/// The iovec array and count of a `struct user_msghdr` (msg_iov at 16, msg_iovlen at 24);
/// none when unreadable, so the call travels as a length-only record.
#[inline(always)]
fn msghdr_iov(msg: u64) -> (u64, u64) {
    match unsafe { bpf_probe_read_user(msg as *const [u64; 4]) } {
        Ok(m) => (m[2], m[3]),
        Err(_) => {
            count(counter::READ_USER_FAILED, 1);
            (0, 0)
        }
    }
}

/// Where a call's bytes start: the buffer, or the first iovec's. Read only where the first
/// bytes are looked at (classification, the end of a TLS handshake), not on every vectored
/// call of a known connection.
#[inline(always)]
fn first_buffer<const VECTORED: bool>(buf: u64) -> u64 {
    if VECTORED {
        unsafe { bpf_probe_read_user(buf as *const u64) }.unwrap_or(0)
    } else {
        buf
    }
}

/// The first byte at `buf` (0 when unreadable). A BPF function of its own, like
/// [`classify_user`], so what the comparison learns ends at the return.
#[inline(never)]
fn first_byte(buf: u64) -> u8 {
    unsafe { bpf_probe_read_user(buf as *const u8) }.unwrap_or(0)
}

/// A record that covers `len` bytes at `hdr.offset`, none of which were copied.
#[inline(always)]
fn emit_length_only(cfg: &Config, hdr: &mut DataHeader, len: u64) {
    hdr.len = if len > u32::MAX as u64 {
        u32::MAX
    } else {
        len as u32
    };
    hdr.captured = 0;
    if EVENTS
        .output::<DataHeader>(&*hdr, wakeup_flags(cfg))
        .is_err()
    {
        count(counter::RING_FULL_DATA, 1);
    } else {
        count(counter::DATA_EVENTS, 1);
    }
}

/// All ones when `x` is negative, else zero. BPF has no conditional moves, so every comparison
/// that produces a value is a branch, and branches inside the copy loops multiply the states the
/// verifier walks; arithmetic shifts keep the loop bodies straight-line.
#[inline(always)]
fn negative_mask(x: i64) -> u64 {
    (x >> 63) as u64
}

/// `min(a, b)` without a branch, for values below 2^63.
#[inline(always)]
fn min_u64(a: u64, b: u64) -> u64 {
    let a_bigger = negative_mask(b.wrapping_sub(a) as i64);
    (b & a_bigger) | (a & !a_bigger)
}

/// Copies up to `n` bytes from user memory straight into a ring record and submits it; the
/// record covers `n` bytes whether or not the copy succeeded.
///
/// Records come in three sizes (512, 2048 and 16384 payload bytes) so small messages do not
/// take a chunk's worth of ring, while each reservation stays the compile-time constant the
/// verifier requires; the copy length is masked to the class, the bound the verifier accepts.
#[inline(always)]
fn emit_one(hdr: &DataHeader, offset: u64, src: u64, n: u64, flags: u64, tally: *mut Counters) {
    if n < 512 {
        emit_sized::<{ DATA_HEADER_SIZE + 512 }, 511>(hdr, offset, src, n, flags, tally);
    } else if n < 2048 {
        emit_sized::<{ DATA_HEADER_SIZE + 2048 }, 2047>(hdr, offset, src, n, flags, tally);
    } else {
        emit_sized::<{ DATA_HEADER_SIZE + 16384 }, 16383>(hdr, offset, src, n, flags, tally);
    }
}

#[inline(always)]
fn emit_sized<const SIZE: usize, const MASK: u64>(
    hdr: &DataHeader,
    offset: u64,
    src: u64,
    n: u64,
    flags: u64,
    tally: *mut Counters,
) {
    let n = core::hint::black_box(n) & MASK;
    let Some(mut entry) = EVENTS.reserve_bytes(SIZE, 0) else {
        unsafe { (*tally).values[counter::RING_FULL_DATA as usize] += 1 };
        return;
    };
    let rec = entry.as_mut_ptr();
    let ret = unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_user(
            rec.add(DATA_HEADER_SIZE).cast(),
            n as u32,
            src as *const core::ffi::c_void,
        )
    };
    let failed = negative_mask(ret);
    let captured = n & !failed;
    let mut h = *hdr;
    h.offset = offset;
    h.len = n as u32;
    h.captured = captured as u32;
    unsafe {
        // Ring records are 8-byte aligned: one store per word, not a byte-wise copy.
        core::ptr::write(rec.cast::<DataHeader>(), h);
        let t = &mut (*tally).values;
        t[counter::READ_USER_FAILED as usize] += failed & 1;
        t[counter::DATA_EVENTS as usize] += 1;
        t[counter::CAPTURED_BYTES as usize] += captured;
    }
    entry.submit(flags);
}

/// Loop state of the copy loops, kept in map memory: the verifier tracks stack and register
/// values exactly, so per-path differences (which record size class a chunk took) would keep it
/// from ever merging states and it would walk every combination of every iteration. Values read
/// back from a map are unknown to it, so each iteration's paths merge at the loop head.
#[repr(C)]
#[derive(Clone, Copy)]
struct CopyState {
    done: u64,
    offset: u64,
    base: u64,
    left_in_entry: u64,
    index: u64,
    chunks: u64,
}

#[map]
static COPY_STATE: PerCpuArray<CopyState> = PerCpuArray::with_max_entries(1, 0);

/// Ships `len` bytes at `buf` as records of at most `chunk` bytes; returns the bytes covered.
#[inline(always)]
fn emit_buffer(
    hdr: &DataHeader,
    buf: u64,
    len: u64,
    chunk: u64,
    max_chunks: u32,
    flags: u64,
    tally: *mut Counters,
) -> u64 {
    let Some(st) = COPY_STATE.get_ptr_mut(0) else {
        return 0;
    };
    unsafe {
        (*st).done = 0;
        (*st).offset = hdr.offset;
    }
    for i in 0..MAX_CHUNKS_PER_CALL {
        let done = unsafe { (*st).done };
        if done >= len || i >= max_chunks {
            break;
        }
        let n = min_u64(len - done, chunk);
        emit_one(hdr, unsafe { (*st).offset }, buf + done, n, flags, tally);
        unsafe {
            (*st).offset += n;
            (*st).done = done + n;
        }
    }
    unsafe { (*st).done }
}

/// Ships the first `len` bytes described by an iovec array, walking chunks and iovec entries in
/// one flat loop (nested loops multiply the verifier's states); returns the bytes covered.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn emit_iovecs(
    hdr: &DataHeader,
    iov: u64,
    iovcnt: u64,
    len: u64,
    chunk: u64,
    max_chunks: u32,
    flags: u64,
    tally: *mut Counters,
) -> u64 {
    let Some(st) = COPY_STATE.get_ptr_mut(0) else {
        return 0;
    };
    unsafe {
        *st = CopyState {
            done: 0,
            offset: hdr.offset,
            base: 0,
            left_in_entry: 0,
            index: 0,
            chunks: 0,
        };
    }
    for _ in 0..(MAX_CHUNKS_PER_CALL + MAX_IOVECS) {
        let s = unsafe { *st };
        if s.done >= len || s.chunks >= max_chunks as u64 {
            break;
        }
        if s.left_in_entry == 0 {
            if s.index >= iovcnt || s.index >= MAX_IOVECS as u64 {
                break;
            }
            let Ok(entry) =
                (unsafe { bpf_probe_read_user((iov + s.index * 16) as *const [u64; 2]) })
            else {
                unsafe { (*tally).values[counter::READ_USER_FAILED as usize] += 1 };
                break;
            };
            unsafe {
                (*st).index = s.index + 1;
                (*st).base = entry[0];
                (*st).left_in_entry = entry[1];
            }
            continue;
        }
        let n = min_u64(min_u64(len - s.done, s.left_in_entry), chunk);
        emit_one(hdr, s.offset, s.base, n, flags, tally);
        unsafe {
            (*st).offset = s.offset + n;
            (*st).base = s.base + n;
            (*st).left_in_entry = s.left_in_entry - n;
            (*st).done = s.done + n;
            (*st).chunks = s.chunks + 1;
        }
    }
    unsafe { (*st).done }
}

#[tracepoint]
pub fn sys_exit_read(ctx: TracePointContext) -> u32 {
    exit::<{ direction::INGRESS }, false, false, false, 0>(&ctx)
}

#[tracepoint]
pub fn sys_exit_write(ctx: TracePointContext) -> u32 {
    exit::<{ direction::EGRESS }, false, false, false, 0>(&ctx)
}

#[tracepoint]
pub fn sys_exit_readv(ctx: TracePointContext) -> u32 {
    exit::<{ direction::INGRESS }, true, false, false, 0>(&ctx)
}

#[tracepoint]
pub fn sys_exit_writev(ctx: TracePointContext) -> u32 {
    exit::<{ direction::EGRESS }, true, false, false, 0>(&ctx)
}

#[tracepoint]
pub fn sys_exit_recvfrom(ctx: TracePointContext) -> u32 {
    exit::<{ direction::INGRESS }, false, false, false, 3>(&ctx)
}

#[tracepoint]
pub fn sys_exit_sendto(ctx: TracePointContext) -> u32 {
    exit::<{ direction::EGRESS }, false, false, false, 0>(&ctx)
}

#[tracepoint]
pub fn sys_exit_recvmsg(ctx: TracePointContext) -> u32 {
    exit::<{ direction::INGRESS }, true, false, true, 2>(&ctx)
}

#[tracepoint]
pub fn sys_exit_sendmsg(ctx: TracePointContext) -> u32 {
    exit::<{ direction::EGRESS }, true, false, true, 0>(&ctx)
}

#[tracepoint]
pub fn sys_exit_sendfile64(ctx: TracePointContext) -> u32 {
    exit::<{ direction::EGRESS }, false, true, false, 0>(&ctx)
}

// ---------------------------------------------------------------------------------------------
// TLS libraries: plaintext of SSL_read / SSL_write (OpenSSL, BoringSSL, LibreSSL).

/// Tells an SSL call in progress on this thread the socket of its syscall, unless that is
/// needless: connections known to be cleartext HTTP, and those whose plaintext comes from Go
/// (whose probes read the socket from the `tls.Conn`), skip the lookup. OpenSSL connections
/// keep it on every call, so a socket whose `SSL*` fell out of the LRU cache is learnt again. A
/// BPF function of its own, so the branches on the connection's fields end at its return
/// instead of multiplying the exit's states.
#[inline(never)]
fn note_syscall_fd(id: u64, fd: i32, class: u8, lib: u8, local_peer: u8) {
    if lib != tls_lib::GO && class != class::HTTP1 && class != class::HTTP2 {
        note_ssl_fd(id, fd, local_peer);
    }
}

/// Remembers the socket a thread's SSL call in progress reads or writes: the first TCP
/// syscall made inside the call (the library's BIO does it on the same thread).
/// `local_peer`: the socket is a local client view, whose plaintext the return skips without
/// looking anything up.
#[inline(always)]
fn note_ssl_fd(id: u64, fd: i32, local_peer: u8) {
    if let Some(a) = SSL_ARGS.get_ptr_mut(&id) {
        let a = unsafe { &mut *a };
        if a.active != 0 && a.fd_seen == 0 {
            a.fd = fd;
            a.fd_seen = 1;
            a.local_peer = local_peer;
        }
    }
}

#[inline(always)]
fn ssl_enter(ctx: &ProbeContext, dir: u8, ex: bool) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let Some(cfg) = config() else {
        return 0;
    };
    if excluded(cfg, (id >> 32) as u32) {
        return 0;
    }
    let call = SslCall {
        ssl: ctx.arg::<u64>(0).unwrap_or(0),
        buf: ctx.arg::<u64>(1).unwrap_or(0),
        done_ptr: if ex {
            ctx.arg::<u64>(3).unwrap_or(0)
        } else {
            0
        },
        fd: -1,
        direction: dir,
        active: 1,
        fd_seen: 0,
        local_peer: 0,
    };
    save_call(&SSL_ARGS, &id, &call);
    0
}

/// Saves a TLS call in progress for its return: overwritten in place, not inserted and deleted
/// per call (a thread's or goroutine's entry serves all its calls; the LRU forgets the rest).
/// An entry still active was never returned from (the thread exited or unwound mid-call).
#[inline(always)]
fn save_call<K>(map: &LruHashMap<K, SslCall>, key: &K, call: &SslCall) {
    if let Some(slot) = map.get_ptr_mut(key) {
        if unsafe { (*slot).active } != 0 {
            count(counter::TLS_STALE_ARGS, 1);
        }
        unsafe { *slot = *call };
    } else if map.insert(key, call, 0).is_err() {
        count(counter::MAP_FULL, 1);
    }
}

/// `int SSL_read(SSL *ssl, void *buf, int num)`
#[uprobe]
pub fn ssl_read_entry(ctx: ProbeContext) -> u32 {
    ssl_enter(&ctx, direction::INGRESS, false)
}

/// `int SSL_write(SSL *ssl, const void *buf, int num)`
#[uprobe]
pub fn ssl_write_entry(ctx: ProbeContext) -> u32 {
    ssl_enter(&ctx, direction::EGRESS, false)
}

/// `int SSL_read_ex(SSL *ssl, void *buf, size_t num, size_t *readbytes)`
#[uprobe]
pub fn ssl_read_ex_entry(ctx: ProbeContext) -> u32 {
    ssl_enter(&ctx, direction::INGRESS, true)
}

/// `int SSL_write_ex(SSL *ssl, const void *buf, size_t num, size_t *written)`
#[uprobe]
pub fn ssl_write_ex_entry(ctx: ProbeContext) -> u32 {
    ssl_enter(&ctx, direction::EGRESS, true)
}

/// Return of SSL_read / SSL_write: the byte count is the return value.
#[uretprobe]
pub fn ssl_return(ctx: RetProbeContext) -> u32 {
    ssl_exit(&ctx, false)
}

/// Return of SSL_read_ex / SSL_write_ex: 1 on success, the byte count behind the saved pointer.
#[uretprobe]
pub fn ssl_ex_return(ctx: RetProbeContext) -> u32 {
    ssl_exit(&ctx, true)
}

/// `int SSL_set_fd(SSL *ssl, int fd)`: fills the `SSL*` → fd cache before the first call.
#[uprobe]
pub fn ssl_set_fd_entry(ctx: ProbeContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let key = SslKey {
        ssl: ctx.arg::<u64>(0).unwrap_or(0),
        tgid,
        _pad: 0,
    };
    let fd = ctx.arg::<u64>(1).unwrap_or(u64::MAX) as i32;
    if fd >= 0 && SSL_FDS.insert(&key, &fd, 0).is_err() {
        count(counter::MAP_FULL, 1);
    }
    0
}

/// SSL_peek / SSL_peek_ex / SSL_sendfile: counted only (peeked bytes are read again by
/// SSL_read; sendfile plaintext never passes through user memory).
#[uprobe]
pub fn ssl_uncaptured_entry(_ctx: ProbeContext) -> u32 {
    count(counter::TLS_UNCAPTURED_CALLS, 1);
    0
}

#[inline(always)]
fn ssl_exit(ctx: &RetProbeContext, ex: bool) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let Some(slot) = SSL_ARGS.get_ptr_mut(&id) else {
        return 0;
    };
    let call = unsafe { *slot };
    if call.active == 0 {
        return 0;
    }
    unsafe { (*slot).active = 0 };
    let ret: i64 = ctx.ret();
    let ret = ret as i32;
    let len = if ex {
        if ret != 1 {
            return 0;
        }
        unsafe { bpf_probe_read_user(call.done_ptr as *const u64) }.unwrap_or(0)
    } else {
        if ret <= 0 {
            return 0;
        }
        ret as u64
    };
    if len == 0 {
        return 0;
    }
    if call.fd_seen != 0 && call.local_peer != 0 {
        count(counter::LOCAL_PEER_SKIPPED, 1);
        return 0;
    }
    let _ = try_ssl_exit(id, &call, len);
    0
}

#[inline(always)]
fn try_ssl_exit(id: u64, call: &SslCall, len: u64) -> Result<(), ()> {
    let cfg = config().ok_or(())?;
    let tgid = (id >> 32) as u32;
    let ssl_key = SslKey {
        ssl: call.ssl,
        tgid,
        _pad: 0,
    };
    let fd = if call.fd_seen != 0 {
        let cached = unsafe { SSL_FDS.get(&ssl_key) }.copied();
        if cached != Some(call.fd) && SSL_FDS.insert(&ssl_key, &call.fd, 0).is_err() {
            count(counter::MAP_FULL, 1);
        }
        call.fd
    } else if let Some(fd) = unsafe { SSL_FDS.get(&ssl_key) } {
        *fd
    } else {
        count(counter::TLS_FD_UNKNOWN, 1);
        return Err(());
    };
    tls_plaintext(cfg, id, fd, call, len, true)
}

/// Ships `len` plaintext bytes of a TLS library call on socket `fd` as records of source TLS.
/// `open_unknown`: an fd the syscall hooks have not seen yet is opened as a connection (the fd
/// came from the library's own syscall); otherwise it is counted as unknown and dropped.
#[inline(always)]
fn tls_plaintext(
    cfg: &Config,
    id: u64,
    fd: i32,
    call: &SslCall,
    len: u64,
    open_unknown: bool,
) -> Result<(), ()> {
    let tgid = (id >> 32) as u32;
    let key = fd_key(tgid, fd);
    let st = match FDS.get_ptr_mut(&key) {
        Some(p) if unsafe { (*p).kind } == fd_kind::CONN => p,
        Some(p) if unsafe { (*p).kind } == fd_kind::HINT => {
            open_conn(cfg, tgid, fd, 0, Some(unsafe { (*p).role }))?;
            FDS.get_ptr_mut(&key).ok_or(())?
        }
        Some(_) => {
            // Not a TCP socket (TLS over a unix socket or a pipe): not captured.
            count(counter::FILTERED_CALLS, 1);
            return Err(());
        }
        None if open_unknown => {
            open_conn(cfg, tgid, fd, 0, None)?;
            FDS.get_ptr_mut(&key).ok_or(())?
        }
        None => {
            count(counter::TLS_FD_UNKNOWN, 1);
            return Err(());
        }
    };
    let st = unsafe { &mut *st };
    if st.filtered != 0 {
        count(counter::FILTERED_CALLS, 1);
        return Ok(());
    }
    // A local client of a captured listener: its server's side carries the same calls, as for
    // cleartext (`capture.skip_local_client_views`).
    if st.local_peer != 0 {
        count(counter::LOCAL_PEER_SKIPPED, 1);
        return Ok(());
    }
    st.tls_lib = if open_unknown {
        tls_lib::OPENSSL
    } else {
        tls_lib::GO
    };
    let dir = (call.direction & 1) as usize;
    if st.tls_class == class::UNKNOWN {
        if len >= 4 {
            let c = classify_user(call.buf, st.role == role::UNKNOWN, len >= 9);
            if c == class::HTTP1 || c == class::HTTP2 {
                st.tls_class = c;
            }
        }
        if st.tls_class == class::UNKNOWN {
            st.tls_probe_calls = st.tls_probe_calls.saturating_add(1);
            let from_start =
                st.role != role::UNKNOWN && st.tls_offset[0] == 0 && st.tls_offset[1] == 0;
            if from_start || st.tls_probe_calls > CLASSIFY_PROBE_CALLS {
                st.tls_class = class::OTHER;
                count(counter::TLS_NON_HTTP_CONNS, 1);
            }
        }
    }
    if st.tls_class == class::OTHER {
        count(counter::NON_HTTP_CALLS, 1);
        return Ok(());
    }
    let offset = st.tls_offset[dir];
    st.tls_offset[dir] = offset + len;
    let mut hdr = DataHeader {
        kind: kind::DATA,
        source: source::TLS,
        direction: call.direction,
        _pad0: 0,
        tgid,
        tid: id as u32,
        fd,
        generation: st.generation,
        len: 0,
        captured: 0,
        _pad1: 0,
        offset,
        ts_ns: unsafe { bpf_ktime_get_ns() },
    };
    let max_chunks = if cfg.max_chunks_per_call < MAX_CHUNKS_PER_CALL {
        cfg.max_chunks_per_call
    } else {
        MAX_CHUNKS_PER_CALL
    };
    let chunk = if cfg.chunk_size > 0 && (cfg.chunk_size as u64) < CHUNK_SIZE as u64 {
        cfg.chunk_size as u64
    } else {
        CHUNK_SIZE as u64
    };
    let flags = wakeup_flags(cfg);
    let tally = COUNTERS.get_ptr_mut(0).ok_or(())?;
    let done = emit_buffer(&hdr, call.buf, len, chunk, max_chunks, flags, tally);
    unsafe { (*tally).values[counter::TLS_PLAINTEXT_CALLS as usize] += 1 };
    if done < len {
        unsafe {
            let t = &mut (*tally).values;
            t[counter::CAP_EXCEEDED_CALLS as usize] += 1;
            t[counter::CAP_EXCEEDED_BYTES as usize] += len - done;
        }
        hdr.offset = offset + done;
        emit_length_only(cfg, &mut hdr, len - done);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Go crypto/tls: `(*Conn).Read` and `(*Conn).Write` (Go >= 1.17, amd64 register ABI).
//
// Go stacks move and goroutines migrate between threads, so there are no uretprobes: user space
// attaches `go_tls_return` at every RET instruction of the two functions, and a call in progress
// is keyed by its goroutine (the `g` pointer Go keeps in R14), not by thread. Arguments and
// results travel in registers: receiver RAX, buffer RBX (length RCX); byte count back in RAX.

/// Calls in progress, by (goroutine, process).
#[map]
static GO_TLS_ARGS: LruHashMap<SslKey, SslCall> = LruHashMap::with_max_entries(16384, 0);

/// Offsets along `tls.Conn.conn` (a `net.Conn` interface: type word, data word) → `*net.TCPConn`
/// (whose first word is `*netFD`) → `netFD.pfd.Sysfd` (after the 16-byte `fdMutex`). These Go
/// runtime layouts have not changed since Go 1.9; a wrong fd is caught by the FDS lookup, which
/// must know it as a TCP connection.
const GO_CONN_IFACE_DATA: u64 = 8;
const GO_NETFD_SYSFD: u64 = 16;

#[inline(always)]
fn go_regs(ctx: &ProbeContext) -> &aya_ebpf::bindings::pt_regs {
    // SAFETY: a uprobe's context is the user registers; the verifier checks every field load.
    unsafe { &*ctx.regs }
}

/// `func (c *Conn) Read(b []byte) (int, error)`: saves the receiver and buffer for the RETs.
#[uprobe]
pub fn go_tls_read_entry(ctx: ProbeContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let Some(cfg) = config() else {
        return 0;
    };
    let tgid = (id >> 32) as u32;
    if excluded(cfg, tgid) {
        return 0;
    }
    let regs = go_regs(&ctx);
    let key = SslKey {
        ssl: regs.r14,
        tgid,
        _pad: 0,
    };
    let call = SslCall {
        ssl: regs.rax,
        buf: regs.rbx,
        done_ptr: 0,
        fd: -1,
        direction: direction::INGRESS,
        active: 1,
        fd_seen: 0,
        local_peer: 0,
    };
    // By goroutine: the runtime reuses a `g` for later goroutines.
    save_call(&GO_TLS_ARGS, &key, &call);
    0
}

/// `func (c *Conn) Write(b []byte) (int, error)`: the plaintext is shipped here, before it is
/// encrypted and sent. Shipped at the return, it could follow the peer's answer, which another
/// goroutine reads meanwhile, and the response would come before its request. Write returns
/// less than `len(b)` only with an error that ends the connection.
#[uprobe]
pub fn go_tls_write_entry(ctx: ProbeContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let Some(cfg) = config() else {
        return 0;
    };
    if excluded(cfg, (id >> 32) as u32) {
        return 0;
    }
    let regs = go_regs(&ctx);
    let len = regs.rcx;
    if len == 0 || len > i64::MAX as u64 {
        return 0;
    }
    let fd = go_conn_fd(regs.rax);
    if fd < 0 {
        count(counter::TLS_FD_UNKNOWN, 1);
        return 0;
    }
    let call = SslCall {
        ssl: regs.rax,
        buf: regs.rbx,
        done_ptr: 0,
        fd,
        direction: direction::EGRESS,
        active: 1,
        fd_seen: 1,
        local_peer: 0,
    };
    let _ = tls_plaintext(cfg, id, fd, &call, len, false);
    0
}

/// At each RET of Read: RAX holds the byte count.
#[uprobe]
pub fn go_tls_return(ctx: ProbeContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let regs = go_regs(&ctx);
    let key = SslKey {
        ssl: regs.r14,
        tgid: (id >> 32) as u32,
        _pad: 0,
    };
    let n = regs.rax as i64;
    let Some(slot) = GO_TLS_ARGS.get_ptr_mut(&key) else {
        return 0;
    };
    let call = unsafe { *slot };
    if call.active == 0 {
        return 0;
    }
    unsafe { (*slot).active = 0 };
    if n <= 0 {
        return 0;
    }
    let Some(cfg) = config() else {
        return 0;
    };
    let fd = go_conn_fd(call.ssl);
    if fd < 0 {
        count(counter::TLS_FD_UNKNOWN, 1);
        return 0;
    }
    let _ = tls_plaintext(cfg, id, fd, &call, n as u64, false);
    0
}

/// The socket fd under a `*tls.Conn`, or -1.
#[inline(always)]
fn go_conn_fd(conn: u64) -> i32 {
    let Ok(tcp_conn) = (unsafe { bpf_probe_read_user((conn + GO_CONN_IFACE_DATA) as *const u64) })
    else {
        return -1;
    };
    let Ok(net_fd) = (unsafe { bpf_probe_read_user(tcp_conn as *const u64) }) else {
        return -1;
    };
    let Ok(sysfd) = (unsafe { bpf_probe_read_user((net_fd + GO_NETFD_SYSFD) as *const i64) })
    else {
        return -1;
    };
    if (0..1 << 24).contains(&sysfd) {
        sysfd as i32
    } else {
        -1
    }
}

// ---------------------------------------------------------------------------------------------
// Processes: exec and exit tell user space where TLS libraries may appear and disappear.

#[inline(always)]
fn emit_proc(k: u8, tgid: u32) {
    let Some(cfg) = config() else {
        return;
    };
    if tgid == cfg.self_tgid {
        return;
    }
    let ev = ProcEvent {
        kind: k,
        _pad0: [0; 3],
        tgid,
        ts_ns: unsafe { bpf_ktime_get_ns() },
    };
    // Forces a wake-up: the attachment delay of a new process counts from here.
    if EVENTS
        .output::<ProcEvent>(&ev, BPF_RB_FORCE_WAKEUP as u64)
        .is_err()
    {
        count(counter::RING_FULL_PROC, 1);
    } else {
        count(counter::PROC_EVENTS, 1);
    }
}

/// `sched/sched_process_exec`: the process has its new executable mapped.
#[tracepoint]
pub fn proc_exec(_ctx: TracePointContext) -> u32 {
    emit_proc(kind::EXEC, (bpf_get_current_pid_tgid() >> 32) as u32);
    0
}

/// `sched/sched_process_exit`: fires per thread; only the thread-group leader's exit counts.
#[tracepoint]
pub fn proc_exit(_ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    if id as u32 == (id >> 32) as u32 {
        emit_proc(kind::EXIT, (id >> 32) as u32);
    }
    0
}

/// Do nothing: attached at the TLS uprobe points in place of the real programs, they measure
/// the floor of the uprobe set (`sonde-agent capture --empty-programs`).
#[uprobe]
pub fn empty_uprobe(_ctx: ProbeContext) -> u32 {
    0
}

#[uretprobe]
pub fn empty_uretprobe(_ctx: RetProbeContext) -> u32 {
    0
}

/// Does nothing: attached to the same hooks in place of the real programs, it measures the cost
/// floor of the hook set (`sonde-agent capture --empty-programs`, used by `cargo xtask bench`).
#[tracepoint]
pub fn empty_tracepoint(_ctx: TracePointContext) -> u32 {
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
