//! Ring-buffer records → [`CaptureEvent`]s.
//!
//! Records are read in place from the ring; payload bytes are copied once into an arena that
//! backs every chunk of a drained batch, so decoding allocates per batch, not per event.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::{Bytes, BytesMut};
use sonde_common::{
    CloseEvent, DATA_HEADER_SIZE, DataHeader, OpenEvent, ProcEvent, SockAddrs, direction, kind,
    open_flags, role, source,
};
use sonde_model::{
    CaptureEvent, ConnClose, ConnId, ConnOpen, DataChunk, Direction, ProcessInfo, Role, Source,
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes is too short for its kind")]
    Short(usize),
    #[error("record kind {0} is unknown")]
    UnknownKind(u8),
    #[error("data record claims {claimed} payload bytes but carries {present}")]
    PayloadMismatch { claimed: usize, present: usize },
}

/// A decoded record; `Open` may still lack addresses that user space must resolve.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    Event(CaptureEvent),
    /// An open whose role, or addresses, the kernel did not know (the socket predates capture).
    OpenNeedsAddrs(ConnOpen),
    /// A process exec'd or exited: for the TLS attacher, not the pipeline.
    Proc(super::tls::ProcNotice),
}

/// Turns kernel timestamps (CLOCK_MONOTONIC) into Unix-epoch nanoseconds.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    offset_ns: i128,
}

impl Clock {
    /// Reads both clocks now.
    pub fn now() -> Clock {
        let mono = clock_ns(libc::CLOCK_MONOTONIC);
        let real = clock_ns(libc::CLOCK_REALTIME);
        Clock {
            offset_ns: real as i128 - mono as i128,
        }
    }

    pub fn fixed(offset_ns: i128) -> Clock {
        Clock { offset_ns }
    }

    pub fn to_unix_ns(self, mono_ns: u64) -> u64 {
        (mono_ns as i128 + self.offset_ns).clamp(0, u64::MAX as i128) as u64
    }
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out-pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Bytes reserved for payloads at a time. Below the allocator's mmap threshold on purpose: a
/// fresh mmap per batch costs a page fault per 4 KiB touched, more than the copy itself.
const ARENA_BYTES: usize = 64 * 1024;

/// Decodes records, copying payloads into an arena frozen per batch.
pub struct Decoder {
    clock: Clock,
    arena: BytesMut,
    /// Payload length of every data event decoded since the last batch, in order.
    lens: Vec<usize>,
}

impl Decoder {
    pub fn new(clock: Clock) -> Decoder {
        Decoder {
            clock,
            arena: BytesMut::with_capacity(1 << 20),
            lens: Vec::with_capacity(1024),
        }
    }

    /// Decodes one record. Payload bytes are appended to the arena; the chunk's `data` refers to
    /// them once [`Decoder::finish_batch`] has run, so call that before using the events.
    pub fn decode(&mut self, rec: &[u8]) -> Result<Decoded, DecodeError> {
        let Some(&k) = rec.first() else {
            return Err(DecodeError::Short(0));
        };
        match k {
            kind::DATA => self
                .decode_data(rec)
                .map(|d| Decoded::Event(CaptureEvent::Data(d))),
            kind::OPEN => Ok(self.decode_open(rec)?),
            kind::CLOSE => {
                let c: CloseEvent = read_pod(rec)?;
                Ok(Decoded::Event(CaptureEvent::Close(ConnClose {
                    conn: ConnId {
                        tgid: c.tgid,
                        fd: c.fd,
                        generation: c.generation,
                    },
                    ts_ns: self.clock.to_unix_ns(c.ts_ns),
                })))
            }
            kind::EXEC | kind::EXIT => {
                let p: ProcEvent = read_pod(rec)?;
                Ok(Decoded::Proc(if k == kind::EXEC {
                    super::tls::ProcNotice::Exec {
                        tgid: p.tgid,
                        ts_ns: p.ts_ns,
                    }
                } else {
                    super::tls::ProcNotice::Exit { tgid: p.tgid }
                }))
            }
            other => Err(DecodeError::UnknownKind(other)),
        }
    }

    fn decode_data(&mut self, rec: &[u8]) -> Result<DataChunk, DecodeError> {
        let h: DataHeader = read_pod(rec)?;
        let payload = rec.get(DATA_HEADER_SIZE..).unwrap_or_default();
        let claimed = h.captured as usize;
        if payload.len() < claimed || h.captured > h.len {
            return Err(DecodeError::PayloadMismatch {
                claimed,
                present: payload.len(),
            });
        }
        // Appended now, handed out by finish_batch.
        self.arena.extend_from_slice(&payload[..claimed]);
        self.lens.push(claimed);
        let data = Bytes::new();
        Ok(DataChunk {
            conn: ConnId {
                tgid: h.tgid,
                fd: h.fd,
                generation: h.generation,
            },
            direction: if h.direction == direction::EGRESS {
                Direction::Egress
            } else {
                Direction::Ingress
            },
            source: if h.source == source::TLS {
                Source::Tls
            } else {
                Source::Syscall
            },
            offset: h.offset,
            len: u64::from(h.len),
            data,
            ts_ns: self.clock.to_unix_ns(h.ts_ns),
            tid: h.tid,
        })
    }

    fn decode_open(&mut self, rec: &[u8]) -> Result<Decoded, DecodeError> {
        let o: OpenEvent = read_pod(rec)?;
        let comm_len = o.comm.iter().position(|&b| b == 0).unwrap_or(o.comm.len());
        let (local, remote) = if o.flags & open_flags::ADDRS_KNOWN != 0 {
            sock_addrs(&o.addrs)
        } else {
            (None, None)
        };
        let open = ConnOpen {
            conn: ConnId {
                tgid: o.tgid,
                fd: o.fd,
                generation: o.generation,
            },
            ts_ns: self.clock.to_unix_ns(o.ts_ns),
            role: match o.role {
                role::CLIENT => Role::Client,
                role::SERVER => Role::Server,
                _ => Role::Unknown,
            },
            process: ProcessInfo {
                pid: o.tgid,
                comm: String::from_utf8_lossy(&o.comm[..comm_len]).into_owned(),
                cgroup_id: o.cgroup_id,
                workload: None,
            },
            local,
            remote,
        };
        // Met mid-stream (the socket predates capture): its role, and its addresses unless the
        // kernel read them from the socket, come from /proc.
        if local.is_none() || open.role == Role::Unknown {
            Ok(Decoded::OpenNeedsAddrs(open))
        } else {
            Ok(Decoded::Event(CaptureEvent::Open(open)))
        }
    }

    /// Forgets the payload of the data event decoded last, when the caller drops that event
    /// instead of passing it to [`Decoder::finish_batch`] (which hands bytes out in order).
    pub fn discard_last_data(&mut self) {
        if let Some(n) = self.lens.pop() {
            let keep = self.arena.len().saturating_sub(n);
            self.arena.truncate(keep);
        }
    }

    /// Splits the arena into the payloads of `events` (every data event decoded since the last
    /// batch, in the order decoded) and hands them their bytes.
    pub fn finish_batch(&mut self, events: &mut [CaptureEvent]) {
        let mut frozen = self.arena.split().freeze();
        let mut lens = self.lens.drain(..);
        for ev in events.iter_mut() {
            if let CaptureEvent::Data(d) = ev {
                let n = lens.next().unwrap_or(0);
                if n > 0 {
                    d.data = frozen.split_to(n.min(frozen.len()));
                }
            }
        }
        if self.arena.capacity() < ARENA_BYTES / 4 {
            self.arena.reserve(ARENA_BYTES);
        }
    }
}

/// Addresses from the kernel's record, or `None` for an unknown family.
pub fn sock_addrs(a: &SockAddrs) -> (Option<SocketAddr>, Option<SocketAddr>) {
    let ip = |b: &[u8; 16]| -> Option<IpAddr> {
        match a.family {
            2 => Some(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))),
            10 => {
                let v6 = Ipv6Addr::from(*b);
                Some(match v6.to_ipv4_mapped() {
                    Some(v4) => IpAddr::V4(v4),
                    None => IpAddr::V6(v6),
                })
            }
            _ => None,
        }
    };
    (
        ip(&a.local_addr).map(|i| SocketAddr::new(i, a.local_port)),
        ip(&a.remote_addr).map(|i| SocketAddr::new(i, a.remote_port)),
    )
}

fn read_pod<T: Copy>(rec: &[u8]) -> Result<T, DecodeError> {
    if rec.len() < std::mem::size_of::<T>() {
        return Err(DecodeError::Short(rec.len()));
    }
    // SAFETY: T is a repr(C) plain-old-data type of sonde-common (every bit pattern valid), and
    // the length was checked; read_unaligned copes with the ring's 8-byte alignment.
    Ok(unsafe { std::ptr::read_unaligned(rec.as_ptr().cast::<T>()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn as_bytes<T>(v: &T) -> Vec<u8> {
        // SAFETY: test helper over repr(C) POD values.
        unsafe {
            std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>())
        }
        .to_vec()
    }

    fn data_record(offset: u64, len: u32, payload: &[u8]) -> Vec<u8> {
        let h = DataHeader {
            kind: kind::DATA,
            direction: direction::INGRESS,
            tgid: 42,
            tid: 43,
            fd: 7,
            generation: 9,
            len,
            captured: payload.len() as u32,
            offset,
            ts_ns: 1_000,
            ..DataHeader::default()
        };
        let mut rec = as_bytes(&h);
        rec.extend_from_slice(payload);
        rec
    }

    #[test]
    fn data_records_keep_offsets_lengths_and_payloads_of_a_batch() {
        let mut dec = Decoder::new(Clock::fixed(5));
        let recs = [
            data_record(0, 5, b"GET /"),
            data_record(5, 100, b""),
            data_record(105, 4, b"\r\n\r\n"),
        ];
        let mut events = Vec::new();
        for r in &recs {
            match dec.decode(r).expect("decodes") {
                Decoded::Event(e) => events.push(e),
                other => panic!("unexpected {other:?}"),
            }
        }
        dec.finish_batch(&mut events);
        let chunks: Vec<_> = events
            .iter()
            .map(|e| match e {
                CaptureEvent::Data(d) => (d.offset, d.len, d.data.clone(), d.missing(), d.ts_ns),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(chunks[0], (0, 5, Bytes::from_static(b"GET /"), 0, 1_005));
        assert_eq!(chunks[1], (5, 100, Bytes::new(), 100, 1_005));
        assert_eq!(
            chunks[2],
            (105, 4, Bytes::from_static(b"\r\n\r\n"), 0, 1_005)
        );
        match &events[0] {
            CaptureEvent::Data(d) => {
                assert_eq!(
                    d.conn,
                    ConnId {
                        tgid: 42,
                        fd: 7,
                        generation: 9
                    }
                );
                assert_eq!(d.direction, Direction::Ingress);
                assert_eq!(d.tid, 43);
            }
            _ => unreachable!(),
        }
    }

    #[test]
    fn a_dropped_data_event_takes_its_payload_with_it() {
        let mut dec = Decoder::new(Clock::fixed(0));
        let mut events = Vec::new();
        for (i, r) in [
            data_record(0, 4, b"keep"),
            data_record(4, 4, b"drop"),
            data_record(8, 4, b"also"),
        ]
        .iter()
        .enumerate()
        {
            let Decoded::Event(e) = dec.decode(r).expect("decodes") else {
                panic!("not an event");
            };
            if i == 1 {
                dec.discard_last_data();
            } else {
                events.push(e);
            }
        }
        dec.finish_batch(&mut events);
        let payloads: Vec<Bytes> = events
            .iter()
            .map(|e| match e {
                CaptureEvent::Data(d) => d.data.clone(),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(
            payloads,
            vec![Bytes::from_static(b"keep"), Bytes::from_static(b"also")]
        );
    }

    #[test]
    fn truncated_and_lying_records_are_errors_not_panics() {
        let mut dec = Decoder::new(Clock::fixed(0));
        assert_eq!(dec.decode(&[]), Err(DecodeError::Short(0)));
        assert_eq!(dec.decode(&[kind::DATA, 0, 0]), Err(DecodeError::Short(3)));
        assert_eq!(dec.decode(&[99; 64]), Err(DecodeError::UnknownKind(99)));
        let mut rec = data_record(0, 10, b"0123456789");
        rec.truncate(rec.len() - 3);
        assert!(matches!(
            dec.decode(&rec),
            Err(DecodeError::PayloadMismatch { .. })
        ));
        // captured > len
        let mut h: DataHeader = read_pod(&data_record(0, 2, b"abcd")).expect("pod");
        h.len = 2;
        let mut rec = as_bytes(&h);
        rec.extend_from_slice(b"abcd");
        assert!(matches!(
            dec.decode(&rec),
            Err(DecodeError::PayloadMismatch { .. })
        ));
    }

    #[test]
    fn open_records_carry_process_role_and_addresses() {
        let mut addrs = SockAddrs {
            family: 2,
            local_port: 8080,
            remote_port: 51000,
            ..Default::default()
        };
        addrs.local_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        addrs.remote_addr[..4].copy_from_slice(&[127, 0, 0, 2]);
        let mut comm = [0u8; 16];
        comm[..5].copy_from_slice(b"nginx");
        let o = OpenEvent {
            kind: kind::OPEN,
            role: role::SERVER,
            flags: open_flags::ADDRS_KNOWN,
            tgid: 10,
            fd: 3,
            generation: 1,
            ts_ns: 0,
            cgroup_id: 77,
            addrs,
            comm,
        };
        let mut dec = Decoder::new(Clock::fixed(0));
        let Decoded::Event(CaptureEvent::Open(open)) = dec.decode(&as_bytes(&o)).expect("decodes")
        else {
            panic!("not an open event");
        };
        assert_eq!(open.role, Role::Server);
        assert_eq!(open.process.comm, "nginx");
        assert_eq!(open.process.cgroup_id, 77);
        assert_eq!(open.local, Some("127.0.0.1:8080".parse().expect("addr")));
        assert_eq!(open.remote, Some("127.0.0.2:51000".parse().expect("addr")));

        let mut o6 = o;
        o6.flags = open_flags::MID_STREAM;
        assert!(matches!(
            dec.decode(&as_bytes(&o6)),
            Ok(Decoded::OpenNeedsAddrs(_))
        ));

        // Met mid-stream with addresses read from the socket: only the role is left to find.
        let mut o7 = o;
        o7.flags = open_flags::MID_STREAM | open_flags::ADDRS_KNOWN;
        o7.role = role::UNKNOWN;
        let Ok(Decoded::OpenNeedsAddrs(open)) = dec.decode(&as_bytes(&o7)) else {
            panic!("the role is still to resolve");
        };
        assert_eq!(open.local, Some("127.0.0.1:8080".parse().expect("addr")));
    }

    #[test]
    fn v4_mapped_v6_addresses_are_shown_as_v4() {
        let mut a = SockAddrs {
            family: 10,
            local_port: 1,
            remote_port: 2,
            ..Default::default()
        };
        a.local_addr = Ipv4Addr::new(10, 1, 2, 3).to_ipv6_mapped().octets();
        a.remote_addr = Ipv6Addr::LOCALHOST.octets();
        let (l, r) = sock_addrs(&a);
        assert_eq!(l, Some("10.1.2.3:1".parse().expect("addr")));
        assert_eq!(r, Some("[::1]:2".parse().expect("addr")));
    }
}
