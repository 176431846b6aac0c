//! Reassembly on captures generated in the test: handshake and close, reordering,
//! retransmission, overlap, loss, wraparound, mid-stream join, RST, snaplen cuts, link types,
//! hostile input and file errors.

mod common;

use std::collections::VecDeque;
use std::io::Cursor;
use std::net::SocketAddr;

use std::borrow::Cow;
use std::time::Duration;

use pcap_file::Endianness;
use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption, InterfaceTsResolution,
};
use pcap_file::pcapng::blocks::simple_packet::SimplePacketBlock;
use pcap_file::pcapng::{Block, PcapNgWriter};
use sonde_model::{CaptureEvent, Direction, Role};
use sonde_pcap::{
    LinkType, PIECE_COST, PcapError, PcapReader, ReassemblyLimits, TcpReassembler, decode_frame,
};

use common::synth::{Framing, SYN, Synth, ack, fin_ack, rst, syn_ack};
use common::{Replay, replay};

fn client() -> SocketAddr {
    "10.0.0.1:51000".parse().expect("addr")
}

fn server() -> SocketAddr {
    "10.0.0.2:8080".parse().expect("addr")
}

fn read_with(bytes: Vec<u8>, limits: ReassemblyLimits) -> Replay {
    replay(
        PcapReader::from_reader("synthetic.pcap", Cursor::new(bytes), limits)
            .expect("valid capture"),
    )
}

fn read(bytes: Vec<u8>) -> Replay {
    read_with(bytes, ReassemblyLimits::default())
}

/// SYN, SYN-ACK, ACK between `c` and `s`.
fn handshake(cap: &mut Synth, c: SocketAddr, s: SocketAddr, c_isn: u32, s_isn: u32) {
    cap.tcp(c, s, c_isn, SYN, b"");
    cap.tcp(s, c, s_isn, syn_ack(c_isn.wrapping_add(1)), b"");
    cap.tcp(c, s, c_isn.wrapping_add(1), ack(s_isn.wrapping_add(1)), b"");
}

const REQUEST: &[u8] = b"GET /items/42 HTTP/1.1\r\nHost: shop.example\r\n\r\n";
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";

/// A whole exchange with a clean FIN/FIN close.
fn exchange(framing: Framing, c: SocketAddr, s: SocketAddr) -> Synth {
    let mut cap = Synth::new(framing);
    let (ci, si) = (1000u32, 5000u32);
    handshake(&mut cap, c, s, ci, si);
    let c_next = ci + 1 + REQUEST.len() as u32;
    let s_next = si + 1 + RESPONSE.len() as u32;
    cap.tcp(c, s, ci + 1, ack(si + 1), REQUEST);
    cap.tcp(s, c, si + 1, ack(c_next), RESPONSE);
    cap.tcp(c, s, c_next, fin_ack(s_next), b"");
    cap.tcp(s, c, s_next, fin_ack(c_next + 1), b"");
    cap.tcp(c, s, c_next + 1, ack(s_next + 1), b"");
    cap
}

fn only_conn(replay: &Replay) -> &common::Conn {
    assert_eq!(replay.conns.len(), 1, "{:?}", replay.conns.keys());
    replay.conns.values().next().expect("one connection")
}

#[test]
fn exchange_is_seen_from_the_server_side_and_closed() {
    let cap = exchange(Framing::Ethernet, client(), server());
    for (label, bytes) in [
        ("pcap µs", cap.pcap(false)),
        ("pcap ns", cap.pcap(true)),
        ("pcap big-endian", cap.pcap_in(false, Endianness::Big)),
        ("pcapng", cap.pcapng()),
    ] {
        let r = read(bytes);
        assert!(r.error.is_none(), "{label}");
        let conn = only_conn(&r);
        assert_eq!(conn.open.role, Role::Server, "{label}");
        assert_eq!(conn.open.local, Some(server()), "{label}");
        assert_eq!(conn.open.remote, Some(client()), "{label}");
        assert_eq!(conn.open.conn.tgid, 0);
        assert_eq!(conn.stream(Direction::Ingress).bytes, REQUEST, "{label}");
        assert_eq!(conn.stream(Direction::Egress).bytes, RESPONSE, "{label}");
        // Open at the SYN, the request at the 4th record, Close at the second FIN.
        let ts: Vec<u64> = r.events.iter().map(CaptureEvent::ts_ns).collect();
        let first = cap.frames[0].ts_ns;
        assert_eq!(
            ts,
            vec![
                first,
                first + 3_000_000,
                first + 4_000_000,
                first + 6_000_000
            ],
            "{label}"
        );
        assert!(
            matches!(r.events.last(), Some(CaptureEvent::Close(_))),
            "{label}"
        );
        let s = r.stats.reassembly;
        assert_eq!(
            (
                s.connections_opened,
                s.connections_closed,
                s.gaps,
                s.retransmitted_segments
            ),
            (1, 1, 0, 0)
        );
        assert_eq!(r.stats.records, 8);
    }
}

#[test]
fn link_types_and_ipv6_decode_the_same_exchange() {
    let v6c: SocketAddr = "[2001:db8::1]:40000".parse().expect("addr");
    let v6s: SocketAddr = "[2001:db8::2]:443".parse().expect("addr");
    let cases = [
        (Framing::LinuxSll, client(), server()),
        (Framing::LinuxSll2, client(), server()),
        (Framing::RawIp, client(), server()),
        (Framing::Null, client(), server()),
        (Framing::Ethernet, v6c, v6s),
        (Framing::LinuxSll, v6c, v6s),
    ];
    for (framing, c, s) in cases {
        let cap = exchange(framing, c, s);
        for bytes in [cap.pcap(false), cap.pcapng()] {
            let r = read(bytes);
            let conn = only_conn(&r);
            assert_eq!(conn.open.local, Some(s), "{framing:?}");
            assert_eq!(
                conn.stream(Direction::Ingress).bytes,
                REQUEST,
                "{framing:?} {c}"
            );
            assert_eq!(
                conn.stream(Direction::Egress).bytes,
                RESPONSE,
                "{framing:?} {c}"
            );
            assert_eq!(r.stats.malformed + r.stats.non_tcp, 0, "{framing:?}");
        }
    }
}

#[test]
fn out_of_order_segments_are_put_back_in_order() {
    let mut cap = Synth::new(Framing::Ethernet);
    handshake(&mut cap, client(), server(), 100, 900);
    let (a, rest) = REQUEST.split_at(10);
    let (b, c) = rest.split_at(15);
    cap.tcp(client(), server(), 101, ack(901), a);
    cap.tcp(client(), server(), 101 + 25, ack(901), c);
    cap.tcp(client(), server(), 101 + 10, ack(901), b);
    let r = read(cap.pcap(false));
    let stream = only_conn(&r).stream(Direction::Ingress).clone();
    assert_eq!(stream.bytes, REQUEST);
    assert_eq!(stream.chunks, 3);
    assert!(stream.gaps.is_empty());
    assert_eq!(r.stats.reassembly.reordered_segments, 1);
    assert_eq!(r.stats.reassembly.gaps, 0);
}

#[test]
fn identical_retransmissions_are_dropped() {
    let mut cap = Synth::new(Framing::Ethernet);
    handshake(&mut cap, client(), server(), 100, 900);
    let (a, b) = REQUEST.split_at(20);
    cap.tcp(client(), server(), 101, ack(901), a);
    cap.tcp(client(), server(), 101, ack(901), a);
    // A retransmission that repeats `a` and carries `b`: only `b` is new.
    cap.tcp(client(), server(), 101, ack(901), REQUEST);
    cap.tcp(client(), server(), 101 + 20, ack(901), b);
    let r = read(cap.pcap(false));
    assert_eq!(only_conn(&r).stream(Direction::Ingress).bytes, REQUEST);
    let s = r.stats.reassembly;
    assert_eq!(s.retransmitted_segments, 2);
    assert_eq!(s.retransmitted_bytes, 20 + 20 + b.len() as u64);
    assert_eq!(s.overlap_conflict_bytes, 0);
}

#[test]
fn overlapping_bytes_keep_the_first_copy() {
    let mut cap = Synth::new(Framing::Ethernet);
    handshake(&mut cap, client(), server(), 100, 900);
    cap.tcp(client(), server(), 111, ack(901), b"BBBBBBBBBB"); // [10, 20), held
    cap.tcp(client(), server(), 101, ack(901), b"aaaaaaaaaaCCCCC"); // [0, 15): [10, 15) conflicts
    cap.tcp(client(), server(), 116, ack(901), b"DDDDDDDDDD"); // [15, 25): [15, 20) delivered
    let r = read(cap.pcap(false));
    assert_eq!(
        only_conn(&r).stream(Direction::Ingress).bytes,
        b"aaaaaaaaaaBBBBBBBBBBDDDDD"
    );
    let s = r.stats.reassembly;
    assert_eq!(
        (s.overlap_conflict_segments, s.overlap_conflict_bytes),
        (1, 5)
    );
    assert_eq!(s.retransmitted_bytes, 5);
}

#[test]
fn a_lost_segment_becomes_a_gap_of_its_exact_length_once_acknowledged() {
    let mut cap = Synth::new(Framing::Ethernet);
    handshake(&mut cap, client(), server(), 100, 900);
    let body = [b'x'; 200];
    cap.tcp(client(), server(), 101, ack(901), &body[..100]);
    // [100, 150) never captured.
    cap.tcp(client(), server(), 251, ack(901), &body[150..]);
    cap.tcp(server(), client(), 901, ack(301), b"");
    let r = read(cap.pcap(false));
    let chunks: Vec<(u64, u64, usize)> = r
        .events
        .iter()
        .filter_map(|e| match e {
            CaptureEvent::Data(d) => Some((d.offset, d.len, d.data.len())),
            _ => None,
        })
        .collect();
    assert_eq!(chunks, vec![(0, 100, 100), (100, 50, 0), (150, 50, 50)]);
    // The gap came with the ACK (record 6), not at the end of the capture.
    let gap_ts = r.events.iter().find_map(|e| match e {
        CaptureEvent::Data(d) if d.data.is_empty() => Some(d.ts_ns),
        _ => None,
    });
    assert_eq!(gap_ts, Some(cap.frames[5].ts_ns));
    assert_eq!(
        (r.stats.reassembly.gaps, r.stats.reassembly.gap_bytes),
        (1, 50)
    );
}

#[test]
fn an_unacknowledged_hole_is_flushed_as_a_gap_at_the_end() {
    let mut cap = Synth::new(Framing::Ethernet);
    handshake(&mut cap, client(), server(), 100, 900);
    cap.tcp(client(), server(), 101, ack(901), b"0123456789");
    cap.tcp(client(), server(), 121, fin_ack(901), b"abcdefghij"); // [20, 30) and FIN; [10, 20) lost
    let r = read(cap.pcap(false));
    let conn = only_conn(&r);
    let stream = conn.stream(Direction::Ingress);
    assert_eq!(stream.bytes, b"0123456789abcdefghij");
    assert_eq!(stream.gaps, vec![(10, 10)]);
    assert_eq!(stream.len, 30);
    assert_eq!(r.stats.reassembly.connections_unfinished, 1);
}

#[test]
fn a_full_reorder_buffer_gives_up_on_the_hole() {
    let mut cap = Synth::new(Framing::Ethernet);
    handshake(&mut cap, client(), server(), 100, 900);
    let seg = |i: u32| vec![b'a' + i as u8; 10];
    cap.tcp(client(), server(), 101, ack(901), &seg(0));
    for i in 2..6 {
        cap.tcp(client(), server(), 101 + 10 * i, ack(901), &seg(i));
    }
    cap.tcp(client(), server(), 111, ack(901), &seg(1)); // too late
    let limits = ReassemblyLimits {
        max_pending_segments: 2,
        ..ReassemblyLimits::default()
    };
    let r = read_with(cap.pcap(false), limits);
    let stream = only_conn(&r).stream(Direction::Ingress).clone();
    assert_eq!(stream.gaps, vec![(10, 10)]);
    assert_eq!(stream.len, 60);
    let expected: Vec<u8> = [0, 2, 3, 4, 5].iter().flat_map(|&i| seg(i)).collect();
    assert_eq!(stream.bytes, expected);
    let s = r.stats.reassembly;
    assert_eq!(s.reorder_buffer_overflows, 1);
    assert_eq!(
        s.retransmitted_segments, 1,
        "the late segment is behind the stream"
    );
}

#[test]
fn sequence_numbers_wrap_around() {
    let c_isn = u32::MAX - 5;
    let s_isn = u32::MAX - 20;
    let mut cap = Synth::new(Framing::Ethernet);
    handshake(&mut cap, client(), server(), c_isn, s_isn);
    let payload: Vec<u8> = (0..100u8).collect();
    let first = c_isn.wrapping_add(1);
    // Second half first: reordering across the wrap.
    cap.tcp(
        client(),
        server(),
        first.wrapping_add(50),
        ack(s_isn.wrapping_add(1)),
        &payload[50..],
    );
    cap.tcp(
        client(),
        server(),
        first,
        ack(s_isn.wrapping_add(1)),
        &payload[..50],
    );
    cap.tcp(
        server(),
        client(),
        s_isn.wrapping_add(1),
        ack(first.wrapping_add(100)),
        RESPONSE,
    );
    cap.tcp(
        server(),
        client(),
        s_isn.wrapping_add(1),
        ack(first.wrapping_add(100)),
        RESPONSE,
    );
    let r = read(cap.pcap(false));
    let conn = only_conn(&r);
    assert_eq!(conn.stream(Direction::Ingress).bytes, payload);
    assert_eq!(conn.stream(Direction::Egress).bytes, RESPONSE);
    let s = r.stats.reassembly;
    assert_eq!(
        (s.gaps, s.retransmitted_segments, s.out_of_window_segments),
        (0, 1, 0)
    );
}

#[test]
fn mid_stream_join_takes_the_lower_port_as_server() {
    for server_first in [false, true] {
        let mut cap = Synth::new(Framing::Ethernet);
        if server_first {
            cap.tcp(server(), client(), 7_000_000, ack(3_000_000), RESPONSE);
        }
        cap.tcp(client(), server(), 3_000_000, ack(7_000_000), REQUEST);
        if !server_first {
            cap.tcp(
                server(),
                client(),
                7_000_000,
                ack(3_000_000 + REQUEST.len() as u32),
                RESPONSE,
            );
        }
        let r = read(cap.pcap(false));
        let conn = only_conn(&r);
        assert_eq!(conn.open.role, Role::Unknown);
        assert_eq!(conn.open.local, Some(server()));
        assert_eq!(conn.open.remote, Some(client()));
        assert_eq!(conn.stream(Direction::Ingress).bytes, REQUEST);
        assert_eq!(conn.stream(Direction::Egress).bytes, RESPONSE);
        assert_eq!(r.stats.reassembly.connections_midstream, 1);
        assert_eq!(r.stats.reassembly.gaps, 0);
    }
}

#[test]
fn rst_closes_and_a_later_syn_is_a_new_connection() {
    let mut cap = Synth::new(Framing::Ethernet);
    handshake(&mut cap, client(), server(), 100, 900);
    cap.tcp(client(), server(), 101, ack(901), REQUEST);
    cap.tcp(server(), client(), 901, rst(), b"");
    cap.tcp(client(), server(), 101, ack(901), REQUEST); // after the close: ignored
    handshake(&mut cap, client(), server(), 40_000, 80_000);
    cap.tcp(
        client(),
        server(),
        40_001,
        ack(80_001),
        b"GET /again HTTP/1.1\r\n\r\n",
    );
    let r = read(cap.pcap(false));
    assert_eq!(r.conns.len(), 2);
    let mut conns = r.conns.values();
    let (old, new) = (conns.next().expect("first"), conns.next().expect("second"));
    assert_ne!(old.open.conn, new.open.conn);
    assert_eq!(old.stream(Direction::Ingress).bytes, REQUEST);
    assert_eq!(
        new.stream(Direction::Ingress).bytes,
        b"GET /again HTTP/1.1\r\n\r\n"
    );
    // The RST's Close comes right after the request, before the second Open.
    let kinds: Vec<&str> = r
        .events
        .iter()
        .map(|e| match e {
            CaptureEvent::Open(_) => "open",
            CaptureEvent::Data(_) => "data",
            CaptureEvent::Close(_) => "close",
        })
        .collect();
    assert_eq!(
        kinds,
        vec!["open", "data", "close", "open", "data", "close"]
    );
    let s = r.stats.reassembly;
    assert_eq!(
        (
            s.connections_closed,
            s.segments_after_close,
            s.connections_unfinished
        ),
        (1, 1, 1)
    );
}

#[test]
fn a_new_isn_on_a_live_tuple_replaces_the_connection() {
    let mut cap = Synth::new(Framing::Ethernet);
    handshake(&mut cap, client(), server(), 100, 900);
    cap.tcp(client(), server(), 101, ack(901), REQUEST);
    cap.tcp(client(), server(), 100, SYN, b""); // retransmitted SYN: same ISN, ignored
    handshake(&mut cap, client(), server(), 5_000_000, 6_000_000);
    let r = read(cap.pcap(false));
    assert_eq!(r.conns.len(), 2);
    let s = r.stats.reassembly;
    assert_eq!(
        (
            s.connections_reused,
            s.syn_retransmissions,
            s.connections_opened
        ),
        (1, 1, 2)
    );
}

#[test]
fn snaplen_cut_segments_report_their_missing_tail() {
    let mut cap = Synth::new(Framing::Ethernet);
    cap.snaplen = 14 + 20 + 20 + 100;
    handshake(&mut cap, client(), server(), 100, 900);
    cap.tcp(client(), server(), 101, ack(901), &[b'p'; 1000]);
    cap.tcp(client(), server(), 1101, ack(901), &[b'q'; 200]);
    cap.tcp(client(), server(), 1301, ack(901), b"tail");
    for bytes in [cap.pcap(false), cap.pcapng()] {
        let r = read(bytes);
        let chunks: Vec<(u64, u64, usize)> = r
            .events
            .iter()
            .filter_map(|e| match e {
                CaptureEvent::Data(d) => Some((d.offset, d.len, d.data.len())),
                _ => None,
            })
            .collect();
        assert_eq!(chunks, vec![(0, 1000, 100), (1000, 200, 100), (1200, 4, 4)]);
        let s = r.stats.reassembly;
        assert_eq!(
            (s.truncated_segments, s.truncated_bytes, s.gaps),
            (2, 1000, 0)
        );
        let stream = only_conn(&r).stream(Direction::Ingress);
        assert_eq!(stream.missing, 1000);
        assert!(stream.bytes.ends_with(b"qqtail"));
    }
}

#[test]
fn the_connection_table_stays_within_its_cap() {
    let limits = ReassemblyLimits {
        max_connections: 64,
        ..ReassemblyLimits::default()
    };
    let mut reassembler = TcpReassembler::new(limits);
    let mut out = VecDeque::new();
    let cap = Synth::new(Framing::Ethernet);
    let mut opens = 0;
    for i in 0..1000u32 {
        let c: SocketAddr = format!("10.1.{}.{}:{}", i / 250, i % 250 + 1, 20_000 + i)
            .parse()
            .expect("addr");
        for (from, to, seq, flags, payload) in [
            (c, server(), i, SYN, &b""[..]),
            (c, server(), i + 1, ack(1), &b"GET / HTTP/1.1\r\n\r\n"[..]),
        ] {
            let frame = cap.frame(from, to, seq, flags, payload);
            let seg = decode_frame(LinkType::Ethernet, &frame, frame.len() as u32).expect("tcp");
            reassembler.on_segment(u64::from(i) * 1000, &seg, &mut out);
            assert!(reassembler.tracked_connections() <= 64);
        }
        opens += out
            .iter()
            .filter(|e| matches!(e, CaptureEvent::Open(_)))
            .count();
        out.clear();
    }
    reassembler.finish(&mut out);
    assert_eq!(opens, 1000);
    let s = reassembler.stats();
    assert_eq!(s.connections_evicted + s.connections_unfinished, 1000);
    assert!(s.connections_evicted >= 1000 - 64);
    assert_eq!(reassembler.tracked_connections(), 0);
}

#[test]
fn reorder_buffers_stay_within_the_global_bound() {
    let limits = ReassemblyLimits {
        max_pending_bytes_total: 10_000,
        ..ReassemblyLimits::default()
    };
    let mut reassembler = TcpReassembler::new(limits);
    let mut out = VecDeque::new();
    let cap = Synth::new(Framing::Ethernet);
    for i in 0..50u32 {
        let c: SocketAddr = format!("10.2.0.{}:{}", i + 1, 30_000 + i)
            .parse()
            .expect("addr");
        // Every connection holds 1000 bytes behind a 1-byte hole.
        for (seq, flags, payload) in [(7, SYN, &[][..]), (9, ack(1), &[b'z'; 1000][..])] {
            let frame = cap.frame(c, server(), seq, flags, payload);
            let seg = decode_frame(LinkType::Ethernet, &frame, frame.len() as u32).expect("tcp");
            reassembler.on_segment(u64::from(i), &seg, &mut out);
            assert!(reassembler.pending_bytes() <= 10_000 + 1000);
        }
    }
    assert!(reassembler.stats().global_buffer_overflows > 0);
    reassembler.finish(&mut out);
    assert_eq!(reassembler.pending_bytes(), 0);
    // Every hole ended as a 1-byte gap.
    let gaps = out
        .iter()
        .filter(|e| matches!(e, CaptureEvent::Data(d) if d.data.is_empty() && d.len == 1))
        .count();
    assert_eq!(gaps, 50);
}

#[test]
fn pieces_without_captured_bytes_are_still_charged() {
    // Snap length 54: every payload byte is cut, yet each held piece costs memory.
    let limits = ReassemblyLimits {
        max_pending_bytes_total: 64 * PIECE_COST,
        ..ReassemblyLimits::default()
    };
    let mut reassembler = TcpReassembler::new(limits);
    let mut out = VecDeque::new();
    let mut cap = Synth::new(Framing::Ethernet);
    cap.snaplen = 54;
    for i in 0..40u32 {
        let c: SocketAddr = format!("10.3.0.{}:{}", i + 1, 40_000 + i)
            .parse()
            .expect("addr");
        let frames = [cap.frame(c, server(), 1, SYN, b"")]
            .into_iter()
            .chain((1..6).map(|k| cap.frame(c, server(), 2 + 1000 * k, ack(1), &[b'y'; 1000])));
        for frame in frames {
            let cut = &frame[..frame.len().min(54)];
            let seg = decode_frame(LinkType::Ethernet, cut, frame.len() as u32).expect("tcp");
            reassembler.on_segment(u64::from(i), &seg, &mut out);
            assert!(reassembler.pending_bytes() <= 64 * PIECE_COST + PIECE_COST);
        }
    }
    assert!(reassembler.stats().global_buffer_overflows > 0);
    reassembler.finish(&mut out);
    // Per connection: a 1000-byte gap for the lost first segment, then five uncaptured chunks.
    let chunks: Vec<(u64, u64, usize)> = out
        .iter()
        .filter_map(|e| match e {
            CaptureEvent::Data(d) => Some((d.offset, d.len, d.data.len())),
            _ => None,
        })
        .collect();
    assert_eq!(chunks.len(), 40 * 6);
    assert!(
        chunks
            .iter()
            .all(|&(offset, len, data)| offset % 1000 == 0 && len == 1000 && data == 0)
    );
}

#[test]
fn garbage_records_are_counted_and_skipped() {
    let mut cap = Synth::new(Framing::Ethernet);
    handshake(&mut cap, client(), server(), 100, 900);
    cap.raw(vec![]); // empty record
    cap.raw(vec![0xff; 7]); // shorter than an Ethernet header
    let request = cap.frame(client(), server(), 101, ack(901), REQUEST);
    cap.raw(request[..40].to_vec()); // TCP header cut
    let mut arp = vec![0xff; 12];
    arp.extend_from_slice(&[0x08, 0x06]);
    arp.extend_from_slice(&[0; 28]);
    cap.raw(arp);
    let mut fragment = request.clone();
    fragment[14 + 6] |= 0x20; // IPv4 "more fragments"
    cap.raw(fragment);
    let mut lcg = 0x2545_f491_u32;
    for len in [13usize, 60, 200, 1500] {
        let bytes = (0..len)
            .map(|_| {
                lcg = lcg.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (lcg >> 16) as u8
            })
            .collect();
        cap.raw(bytes);
    }
    cap.tcp(client(), server(), 101, ack(901), REQUEST);
    let r = read(cap.pcap(false));
    assert_eq!(only_conn(&r).stream(Direction::Ingress).bytes, REQUEST);
    let s = r.stats;
    assert_eq!(s.records, 3 + 5 + 4 + 1);
    assert_eq!(s.ip_fragments, 1);
    assert!(s.malformed >= 3, "{s:?}");
    assert!(s.non_tcp >= 1, "{s:?}");
    assert_eq!(
        s.malformed + s.non_tcp + s.ip_fragments + s.reassembly.segments,
        s.records
    );
}

#[test]
fn a_segment_implausibly_far_ahead_is_dropped() {
    let mut cap = Synth::new(Framing::Ethernet);
    handshake(&mut cap, client(), server(), 100, 900);
    cap.tcp(
        client(),
        server(),
        101u32.wrapping_add(1_500_000_000),
        ack(901),
        b"junk",
    );
    cap.tcp(client(), server(), 101, ack(901), REQUEST);
    let r = read(cap.pcap(false));
    let stream = only_conn(&r).stream(Direction::Ingress);
    assert_eq!(stream.bytes, REQUEST);
    assert_eq!(stream.len, REQUEST.len() as u64);
    assert_eq!(r.stats.reassembly.out_of_window_segments, 1);
}

#[test]
fn randomly_cut_shuffled_and_duplicated_segments_rebuild_the_stream() {
    let mut lcg = 0x9e37_79b9_u64;
    let mut next = |bound: u64| {
        lcg = lcg
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (lcg >> 33) % bound
    };
    for round in 0..25 {
        let payload: Vec<u8> = (0..5000).map(|_| next(256) as u8).collect();
        let isn = next(u64::from(u32::MAX)) as u32;
        let mut segments = Vec::new();
        let mut at = 0usize;
        while at < payload.len() {
            let len = (1 + next(700) as usize).min(payload.len() - at);
            segments.push((at, len));
            at += len;
        }
        // Shuffle inside windows of 4 and repeat some segments.
        for window in segments.chunks_mut(4) {
            for i in (1..window.len()).rev() {
                window.swap(i, next(i as u64 + 1) as usize);
            }
        }
        let mut cap = Synth::new(Framing::Ethernet);
        handshake(&mut cap, client(), server(), isn, 1);
        for &(start, len) in &segments {
            let seq = isn.wrapping_add(1).wrapping_add(start as u32);
            let copies = if next(5) == 0 { 2 } else { 1 };
            for _ in 0..copies {
                cap.tcp(
                    client(),
                    server(),
                    seq,
                    ack(2),
                    &payload[start..start + len],
                );
            }
        }
        let r = read(cap.pcap(false));
        let stream = only_conn(&r).stream(Direction::Ingress);
        assert_eq!(stream.bytes, payload, "round {round}");
        assert!(stream.gaps.is_empty(), "round {round}");
        assert_eq!(r.stats.reassembly.overlap_conflict_bytes, 0);
    }
}

#[test]
fn file_errors_name_the_file() {
    let missing = std::env::temp_dir().join("sonde-pcap-no-such-file.pcap");
    let err = PcapReader::open(&missing).expect_err("missing file");
    assert!(matches!(err, PcapError::Open { .. }));
    assert!(
        err.to_string().contains("sonde-pcap-no-such-file.pcap"),
        "{err}"
    );

    for bytes in [b"hello world".to_vec(), Vec::new()] {
        let err =
            PcapReader::from_reader("notes.txt", Cursor::new(bytes), ReassemblyLimits::default())
                .expect_err("not a capture");
        assert!(matches!(err, PcapError::UnknownFormat { .. }));
        assert!(err.to_string().contains("notes.txt"), "{err}");
    }
}

#[test]
fn a_file_cut_inside_a_record_reports_it_and_still_closes_connections() {
    let mut cap = Synth::new(Framing::Ethernet);
    handshake(&mut cap, client(), server(), 100, 900);
    cap.tcp(client(), server(), 101, ack(901), REQUEST);
    cap.tcp(
        server(),
        client(),
        901,
        ack(101 + REQUEST.len() as u32),
        RESPONSE,
    );
    for bytes in [cap.pcap(false), cap.pcapng()] {
        let cut = bytes.len() - 10;
        let r = read(bytes[..cut].to_vec());
        let err = r.error.as_ref().expect("truncation reported");
        assert!(
            matches!(err, PcapError::Truncated { records: 4, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("synthetic.pcap"), "{err}");
        let conn = only_conn(&r);
        assert_eq!(conn.stream(Direction::Ingress).bytes, REQUEST);
        assert!(conn.stream(Direction::Egress).bytes.is_empty());
    }
}

#[test]
fn corrupted_corpus_captures_never_panic() {
    let Some(dir) = common::corpus("suricata-verify/tests") else {
        return;
    };
    let pcaps = [
        "http-gap-simple/input.pcap",
        "http-multiple100/input.pcap",
        "http2-continuation/input.pcap",
    ];
    let mut lcg = 7u64;
    for name in pcaps {
        let original = std::fs::read(dir.join(name)).expect("corpus pcap");
        for round in 0..40 {
            let mut bytes = original.clone();
            for _ in 0..(1 + round % 8) {
                lcg = lcg.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                // Leave the 24-byte file header alone half of the time.
                let floor = if round % 2 == 0 { 24 } else { 0 };
                let at = floor + (lcg >> 33) as usize % (bytes.len() - floor);
                bytes[at] = (lcg >> 20) as u8;
            }
            if round % 5 == 4 {
                bytes.truncate(bytes.len() * 2 / 3);
            }
            let Ok(reader) =
                PcapReader::from_reader(name, Cursor::new(bytes), ReassemblyLimits::default())
            else {
                continue;
            };
            // Corrupt captures may end with an error, but every event stream stays consistent.
            let _ = replay(reader);
        }
    }
}

#[test]
fn pcapng_interfaces_keep_their_own_link_type_and_clock() {
    // Interface 0: Ethernet, default microsecond clock. Interface 1: raw IP, ten-nanosecond
    // ticks (if_tsresol 8). A simple packet block (no timestamp) rides on interface 0.
    let eth = exchange(Framing::Ethernet, client(), server());
    let other_client: SocketAddr = "10.0.0.3:52000".parse().expect("addr");
    let raw = exchange(Framing::RawIp, other_client, server());
    let mut writer = PcapNgWriter::new(Vec::new()).expect("section");
    writer
        .write_pcapng_block(InterfaceDescriptionBlock::new(
            Framing::Ethernet.datalink(),
            65535,
        ))
        .expect("idb 0");
    let mut idb = InterfaceDescriptionBlock::new(Framing::RawIp.datalink(), 65535);
    idb.options.push(InterfaceDescriptionOption::IfTsResol(
        InterfaceTsResolution::from_u8(8).expect("resolution"),
    ));
    writer.write_pcapng_block(idb).expect("idb 1");
    let base = 1_600_000_000_000_000_000u64;
    for (i, (e, r)) in eth.frames.iter().zip(&raw.frames).enumerate() {
        let ts = base + i as u64 * 1_000_000;
        for (interface, frame, ts) in [(0, e, ts), (1, r, ts + 10)] {
            let epb = EnhancedPacketBlock {
                interface_id: interface,
                timestamp: Duration::from_nanos(ts),
                original_len: frame.data.len() as u32,
                data: Cow::Borrowed(&frame.data),
                options: vec![],
            };
            writer.write_pcapng_block(epb).expect("epb");
        }
    }
    // A late retransmission of the request on interface 0 as a simple packet block.
    let request = &eth.frames[3].data;
    let spb = SimplePacketBlock {
        original_len: request.len() as u32,
        data: Cow::Borrowed(request),
    };
    writer.write_block(&Block::SimplePacket(spb)).expect("spb");
    let r = read(writer.into_inner());
    assert!(r.error.is_none(), "{:?}", r.error);
    assert_eq!(r.conns.len(), 2);
    for conn in r.conns.values() {
        assert_eq!(conn.stream(Direction::Ingress).bytes, REQUEST);
        assert_eq!(conn.stream(Direction::Egress).bytes, RESPONSE);
    }
    let opens: Vec<(SocketAddr, u64)> = r
        .events
        .iter()
        .filter_map(|e| match e {
            CaptureEvent::Open(o) => Some((o.remote.expect("remote"), o.ts_ns)),
            _ => None,
        })
        .collect();
    assert_eq!(opens, vec![(client(), base), (other_client, base + 10)]);
    assert_eq!(r.stats.records, 2 * eth.frames.len() as u64 + 1);
    assert_eq!(r.stats.reassembly.segments_after_close, 1);
}

#[test]
fn records_of_an_undecoded_link_type_are_counted() {
    use pcap_file::DataLink;
    use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
    let header = PcapHeader {
        datalink: DataLink::IEEE802_11,
        ..PcapHeader::default()
    };
    let mut writer = PcapWriter::with_header(Vec::new(), header).expect("header");
    for i in 0..3u64 {
        let packet =
            PcapPacket::new(Duration::from_secs(i), 4, &[1u8, 2, 3, 4][..]).expect("packet");
        writer.write_packet(&packet).expect("write");
    }
    let r = read(writer.into_inner());
    assert!(r.error.is_none());
    assert!(r.events.is_empty());
    assert_eq!((r.stats.records, r.stats.unsupported_link), (3, 3));
}
