//! From one captured frame to the TCP segment it carries.
//!
//! Header parsing is etherparse's (lax mode, so a snaplen-truncated packet still yields its TCP
//! header and the captured prefix of its payload). Only two pseudo-headers are skipped here by
//! hand because etherparse has no slicer for them: BSD loopback (`NULL`/`LOOP`, a fixed 4-byte
//! address family) and Linux cooked capture v2 (`LINUX_SLL2`, a fixed 20-byte header whose first
//! two bytes are the EtherType).

use std::net::{IpAddr, SocketAddr};

use etherparse::{
    EtherType, LaxIpPayloadSlice, LaxNetSlice, LaxSlicedPacket, LenSource, LinuxSllProtocolType,
    LinuxSllSlice, TransportSlice,
};
use pcap_file::DataLink;

/// Link-layer framing of a capture's records (pcap `LINKTYPE_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LinkType {
    /// `LINKTYPE_ETHERNET` (1), including 802.1Q/802.1ad VLAN tags.
    Ethernet,
    /// `LINKTYPE_LINUX_SLL` (113), Linux cooked capture v1 (`tcpdump -i any`).
    LinuxSll,
    /// `LINKTYPE_LINUX_SLL2` (276), Linux cooked capture v2.
    LinuxSll2,
    /// `LINKTYPE_RAW` (101), `LINKTYPE_IPV4` (228), `LINKTYPE_IPV6` (229): the record starts with
    /// the IP header.
    RawIp,
    /// `LINKTYPE_NULL` (0) and `LINKTYPE_LOOP` (108): a 4-byte address family, then IP.
    Loopback,
    /// Anything else; its records are counted and skipped.
    Unsupported(u32),
}

impl LinkType {
    pub fn from_datalink(link: DataLink) -> LinkType {
        match link {
            DataLink::ETHERNET => LinkType::Ethernet,
            DataLink::LINUX_SLL => LinkType::LinuxSll,
            DataLink::LINUX_SLL2 => LinkType::LinuxSll2,
            DataLink::RAW | DataLink::IPV4 | DataLink::IPV6 => LinkType::RawIp,
            DataLink::NULL | DataLink::LOOP => LinkType::Loopback,
            other => LinkType::Unsupported(u32::from(other)),
        }
    }
}

/// The TCP flags the reassembler acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TcpFlags {
    pub syn: bool,
    pub ack: bool,
    pub fin: bool,
    pub rst: bool,
}

/// One TCP segment as captured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpSegment<'a> {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub seq: u32,
    pub ack: u32,
    pub flags: TcpFlags,
    /// The captured part of the payload.
    pub payload: &'a [u8],
    /// Payload length on the wire; larger than `payload.len()` when the record was cut by the
    /// snap length.
    pub payload_len: u32,
}

/// Why a frame carries no usable TCP segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// ARP, UDP, ICMP, non-IP EtherTypes, ...
    NotTcp,
    /// An IP fragment: TCP over fragmented IP is not reassembled.
    Fragment,
    /// A header (link, IP or TCP) is cut short or invalid.
    Malformed,
    /// The record's link type is not one we decode.
    UnsupportedLink,
}

/// Decodes one frame. `orig_len` is the frame's length on the wire, `data` its captured prefix.
pub fn decode_frame(link: LinkType, data: &[u8], orig_len: u32) -> Result<TcpSegment<'_>, Skip> {
    let sliced = match link {
        LinkType::Ethernet => LaxSlicedPacket::from_ethernet(data).map_err(|_| Skip::Malformed)?,
        LinkType::RawIp => LaxSlicedPacket::from_ip(data).map_err(|_| Skip::Malformed)?,
        LinkType::Loopback => {
            let ip = data.get(4..).ok_or(Skip::Malformed)?;
            LaxSlicedPacket::from_ip(ip).map_err(|_| Skip::Malformed)?
        }
        LinkType::LinuxSll => {
            let sll = LinuxSllSlice::from_slice(data).map_err(|_| Skip::Malformed)?;
            match sll.protocol_type() {
                LinuxSllProtocolType::EtherType(ether_type) => {
                    LaxSlicedPacket::from_ether_type(ether_type, sll.payload_slice())
                }
                _ => return Err(Skip::NotTcp),
            }
        }
        LinkType::LinuxSll2 => {
            let (Some(proto), Some(rest)) = (data.get(0..2), data.get(20..)) else {
                return Err(Skip::Malformed);
            };
            let ether_type = EtherType(u16::from_be_bytes([proto[0], proto[1]]));
            LaxSlicedPacket::from_ether_type(ether_type, rest)
        }
        LinkType::Unsupported(_) => return Err(Skip::UnsupportedLink),
    };
    let truncated_by = u64::from(orig_len).saturating_sub(data.len() as u64);
    segment_from(&sliced, truncated_by)
}

fn segment_from<'a>(
    sliced: &LaxSlicedPacket<'a>,
    truncated_by: u64,
) -> Result<TcpSegment<'a>, Skip> {
    let Some(net) = sliced.net.as_ref() else {
        return Err(match sliced.stop_err {
            // The link layer said IP but the IP header did not parse.
            Some(_) => Skip::Malformed,
            None => Skip::NotTcp,
        });
    };
    let (src_ip, dst_ip, ip_payload, declared_payload_len): (
        IpAddr,
        IpAddr,
        &LaxIpPayloadSlice<'a>,
        Option<u64>,
    ) = match net {
        LaxNetSlice::Ipv4(v4) => {
            let header = v4.header();
            let payload = v4.payload();
            // Bytes between the start of the IP header and the start of its payload
            // (header, options, authentication header).
            let before_payload = (payload.payload.as_ptr() as usize)
                .saturating_sub(header.slice().as_ptr() as usize)
                as u64;
            let declared = (payload.len_source == LenSource::Ipv4HeaderTotalLen)
                .then(|| u64::from(header.total_len()).saturating_sub(before_payload));
            (
                IpAddr::V4(header.source_addr()),
                IpAddr::V4(header.destination_addr()),
                payload,
                declared,
            )
        }
        LaxNetSlice::Ipv6(v6) => {
            let header = v6.header();
            let payload = v6.payload();
            let before_payload = (payload.payload.as_ptr() as usize)
                .saturating_sub(header.slice().as_ptr() as usize)
                .saturating_sub(header.slice().len()) as u64;
            let declared = (payload.len_source == LenSource::Ipv6HeaderPayloadLen)
                .then(|| u64::from(header.payload_length()).saturating_sub(before_payload));
            (
                IpAddr::V6(header.source_addr()),
                IpAddr::V6(header.destination_addr()),
                payload,
                declared,
            )
        }
        LaxNetSlice::Arp(_) => return Err(Skip::NotTcp),
    };
    if ip_payload.fragmented {
        return Err(Skip::Fragment);
    }
    if ip_payload.ip_number != etherparse::ip_number::TCP {
        return Err(Skip::NotTcp);
    }
    let Some(TransportSlice::Tcp(tcp)) = sliced.transport.as_ref() else {
        return Err(Skip::Malformed);
    };
    let payload = tcp.payload();
    let header_len = tcp.slice().len().saturating_sub(payload.len()) as u64;
    let captured = payload.len() as u64;
    let wire_len = if ip_payload.incomplete {
        // Cut by the snap length: the IP header says how long the payload really was.
        declared_payload_len.map_or(captured + truncated_by, |declared| {
            declared.saturating_sub(header_len)
        })
    } else if ip_payload.len_source == LenSource::Slice {
        // No usable length field (e.g. IPv4 total length 0 from TSO): what the record lost is
        // payload.
        captured + truncated_by
    } else {
        captured
    };
    let payload_len = u32::try_from(wire_len.max(captured)).map_err(|_| Skip::Malformed)?;
    Ok(TcpSegment {
        src: SocketAddr::new(src_ip, tcp.source_port()),
        dst: SocketAddr::new(dst_ip, tcp.destination_port()),
        seq: tcp.sequence_number(),
        ack: tcp.acknowledgment_number(),
        flags: TcpFlags {
            syn: tcp.syn(),
            ack: tcp.ack(),
            fin: tcp.fin(),
            rst: tcp.rst(),
        },
        payload,
        payload_len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    fn tcp_frame(payload: &[u8]) -> Vec<u8> {
        let builder = PacketBuilder::ethernet2([1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(40000, 80, 1000, 65535)
            .ack(77)
            .psh();
        let mut frame = Vec::with_capacity(builder.size(payload.len()));
        builder
            .write(&mut frame, payload)
            .expect("building a frame in memory");
        frame
    }

    #[test]
    fn full_ethernet_frame_yields_addresses_and_payload() {
        let frame = tcp_frame(b"GET / HTTP/1.1\r\n\r\n");
        let seg = decode_frame(LinkType::Ethernet, &frame, frame.len() as u32).expect("tcp");
        assert_eq!(seg.src, "10.0.0.1:40000".parse().expect("addr"));
        assert_eq!(seg.dst, "10.0.0.2:80".parse().expect("addr"));
        assert_eq!(seg.seq, 1000);
        assert_eq!(seg.ack, 77);
        assert!(seg.flags.ack && !seg.flags.syn && !seg.flags.fin && !seg.flags.rst);
        assert_eq!(seg.payload, b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(seg.payload_len, 18);
    }

    #[test]
    fn snaplen_cut_keeps_the_wire_length() {
        let frame = tcp_frame(&[b'x'; 1000]);
        let cut = &frame[..14 + 20 + 20 + 100];
        let seg = decode_frame(LinkType::Ethernet, cut, frame.len() as u32).expect("tcp");
        assert_eq!(seg.payload.len(), 100);
        assert_eq!(seg.payload_len, 1000);
    }

    #[test]
    fn ethernet_padding_is_not_payload() {
        let mut frame = tcp_frame(b"");
        frame.resize(60, 0);
        let seg = decode_frame(LinkType::Ethernet, &frame, 60).expect("tcp");
        assert_eq!(seg.payload_len, 0);
        assert!(seg.payload.is_empty());
    }

    #[test]
    fn cut_tcp_header_is_malformed_and_udp_is_not_tcp() {
        let frame = tcp_frame(b"abc");
        assert_eq!(
            decode_frame(LinkType::Ethernet, &frame[..40], frame.len() as u32),
            Err(Skip::Malformed)
        );
        let builder = PacketBuilder::ethernet2([0; 6], [0; 6])
            .ipv4([1, 1, 1, 1], [2, 2, 2, 2], 9)
            .udp(53, 53);
        let mut udp = Vec::new();
        builder.write(&mut udp, b"q").expect("udp frame");
        assert_eq!(
            decode_frame(LinkType::Ethernet, &udp, udp.len() as u32),
            Err(Skip::NotTcp)
        );
        assert_eq!(
            decode_frame(LinkType::Unsupported(147), &udp, 1),
            Err(Skip::UnsupportedLink)
        );
        assert_eq!(
            decode_frame(LinkType::Ethernet, &[], 0),
            Err(Skip::Malformed)
        );
    }

    #[test]
    fn ipv4_total_length_zero_from_segmentation_offload_uses_the_record() {
        // Captured on the sending host before TSO: the IPv4 total length field is 0.
        let mut frame = tcp_frame(&[b'z'; 3000]);
        frame[14 + 2] = 0;
        frame[14 + 3] = 0;
        let seg = decode_frame(LinkType::Ethernet, &frame, frame.len() as u32).expect("tcp");
        assert_eq!(seg.payload.len(), 3000);
        assert_eq!(seg.payload_len, 3000);
        // The same, cut by a snap length: the record's original length still tells.
        let cut = &frame[..14 + 40 + 500];
        let seg = decode_frame(LinkType::Ethernet, cut, frame.len() as u32).expect("tcp");
        assert_eq!((seg.payload.len(), seg.payload_len), (500, 3000));
    }

    #[test]
    fn vlan_tagged_frames_are_decoded() {
        let builder = PacketBuilder::ethernet2([1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12])
            .single_vlan(etherparse::VlanId::try_new(42).expect("vlan id"))
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(40000, 80, 1, 65535);
        let mut frame = Vec::new();
        builder.write(&mut frame, b"vlan").expect("frame");
        let seg = decode_frame(LinkType::Ethernet, &frame, frame.len() as u32).expect("tcp");
        assert_eq!(seg.payload, b"vlan");
        assert_eq!(seg.src.port(), 40000);
    }

    #[test]
    fn loopback_sll2_and_raw_framing() {
        let frame = tcp_frame(b"hi");
        let ip = &frame[14..];
        let mut null = vec![2, 0, 0, 0];
        null.extend_from_slice(ip);
        let mut sll2 = vec![
            0x08, 0x00, 0, 0, 0, 0, 0, 1, 0, 1, 0, 6, 1, 2, 3, 4, 5, 6, 0, 0,
        ];
        sll2.extend_from_slice(ip);
        for (link, bytes) in [
            (LinkType::RawIp, ip.to_vec()),
            (LinkType::Loopback, null),
            (LinkType::LinuxSll2, sll2),
        ] {
            let seg = decode_frame(link, &bytes, bytes.len() as u32).expect("tcp");
            assert_eq!(seg.payload, b"hi", "{link:?}");
            assert_eq!(seg.dst.port(), 80, "{link:?}");
        }
    }
}
