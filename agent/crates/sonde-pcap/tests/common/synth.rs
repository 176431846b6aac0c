//! Builds captures in memory: TCP packets made with etherparse's builder, written as pcap or
//! pcapng with pcap-file's writers.
#![allow(dead_code)]

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use etherparse::{IpHeaders, PacketBuilder, PacketBuilderStep};
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapTsResolution, PcapWriter};
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption, InterfaceTsResolution,
};
use pcap_file::{DataLink, Endianness};

/// Link framing of the generated records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    Ethernet,
    LinuxSll,
    LinuxSll2,
    RawIp,
    Null,
}

impl Framing {
    pub fn datalink(self) -> DataLink {
        match self {
            Framing::Ethernet => DataLink::ETHERNET,
            Framing::LinuxSll => DataLink::LINUX_SLL,
            Framing::LinuxSll2 => DataLink::LINUX_SLL2,
            Framing::RawIp => DataLink::RAW,
            Framing::Null => DataLink::NULL,
        }
    }
}

/// TCP flags of a generated segment.
#[derive(Clone, Copy, Debug, Default)]
pub struct Flags {
    pub syn: bool,
    pub fin: bool,
    pub rst: bool,
    pub ack: Option<u32>,
}

pub const SYN: Flags = Flags {
    syn: true,
    fin: false,
    rst: false,
    ack: None,
};

pub fn ack(n: u32) -> Flags {
    Flags {
        ack: Some(n),
        ..Flags::default()
    }
}

pub fn syn_ack(n: u32) -> Flags {
    Flags {
        syn: true,
        ack: Some(n),
        ..Flags::default()
    }
}

pub fn fin_ack(n: u32) -> Flags {
    Flags {
        fin: true,
        ack: Some(n),
        ..Flags::default()
    }
}

pub fn rst() -> Flags {
    Flags {
        rst: true,
        ..Flags::default()
    }
}

#[derive(Clone, Debug)]
pub struct Frame {
    pub ts_ns: u64,
    pub data: Vec<u8>,
}

/// A capture being written: frames in order, one millisecond apart unless told otherwise.
#[derive(Clone, Debug)]
pub struct Synth {
    pub framing: Framing,
    pub snaplen: u32,
    pub frames: Vec<Frame>,
    pub ts_ns: u64,
}

impl Synth {
    pub fn new(framing: Framing) -> Synth {
        Synth {
            framing,
            snaplen: 65535,
            frames: Vec::new(),
            ts_ns: 1_700_000_000_000_001_000,
        }
    }

    fn ip_step(&self, from: SocketAddr, to: SocketAddr) -> PacketBuilderStep<IpHeaders> {
        match (self.framing, from.ip(), to.ip()) {
            (Framing::Ethernet, IpAddr::V4(a), IpAddr::V4(b)) => PacketBuilder::ethernet2(
                [2, 0, 0, 0, 0, 1],
                [2, 0, 0, 0, 0, 2],
            )
            .ipv4(a.octets(), b.octets(), 64),
            (Framing::Ethernet, IpAddr::V6(a), IpAddr::V6(b)) => PacketBuilder::ethernet2(
                [2, 0, 0, 0, 0, 1],
                [2, 0, 0, 0, 0, 2],
            )
            .ipv6(a.octets(), b.octets(), 64),
            (_, IpAddr::V4(a), IpAddr::V4(b)) => PacketBuilder::ipv4(a.octets(), b.octets(), 64),
            (_, IpAddr::V6(a), IpAddr::V6(b)) => PacketBuilder::ipv6(a.octets(), b.octets(), 64),
            _ => panic!("mixed address families"),
        }
    }

    /// The bytes of one TCP packet in this capture's framing.
    pub fn frame(
        &self,
        from: SocketAddr,
        to: SocketAddr,
        seq: u32,
        flags: Flags,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut tcp = self
            .ip_step(from, to)
            .tcp(from.port(), to.port(), seq, 65535);
        if flags.syn {
            tcp = tcp.syn();
        }
        if flags.fin {
            tcp = tcp.fin();
        }
        if flags.rst {
            tcp = tcp.rst();
        }
        if let Some(n) = flags.ack {
            tcp = tcp.ack(n);
        }
        let mut packet = Vec::with_capacity(tcp.size(payload.len()) + 20);
        tcp.write(&mut packet, payload)
            .expect("packet fits in memory");
        let ether_type: u16 = if from.is_ipv4() { 0x0800 } else { 0x86dd };
        let prefix: Vec<u8> = match self.framing {
            Framing::Ethernet | Framing::RawIp => Vec::new(),
            Framing::Null => {
                let family: u32 = if from.is_ipv4() { 2 } else { 10 };
                family.to_ne_bytes().to_vec()
            }
            Framing::LinuxSll => {
                let mut h = vec![0, 0, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0];
                h.extend_from_slice(&ether_type.to_be_bytes());
                h
            }
            Framing::LinuxSll2 => {
                let mut h = ether_type.to_be_bytes().to_vec();
                h.extend_from_slice(&[0, 0, 0, 0, 0, 2, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0]);
                h
            }
        };
        [prefix, packet].concat()
    }

    pub fn tcp(
        &mut self,
        from: SocketAddr,
        to: SocketAddr,
        seq: u32,
        flags: Flags,
        payload: &[u8],
    ) -> &mut Synth {
        let data = self.frame(from, to, seq, flags, payload);
        self.raw(data)
    }

    /// Appends arbitrary record bytes.
    pub fn raw(&mut self, data: Vec<u8>) -> &mut Synth {
        self.ts_ns += 1_000_000;
        self.frames.push(Frame {
            ts_ns: self.ts_ns,
            data,
        });
        self
    }

    /// A classic pcap (µs resolution unless `nanos`), records cut to the snap length.
    pub fn pcap(&self, nanos: bool) -> Vec<u8> {
        self.pcap_in(nanos, Endianness::Little)
    }

    pub fn pcap_in(&self, nanos: bool, endianness: Endianness) -> Vec<u8> {
        let header = PcapHeader {
            endianness,
            datalink: self.framing.datalink(),
            snaplen: self.snaplen,
            ts_resolution: if nanos {
                PcapTsResolution::NanoSecond
            } else {
                PcapTsResolution::MicroSecond
            },
            ..PcapHeader::default()
        };
        let mut writer = PcapWriter::with_header(Vec::new(), header).expect("pcap header");
        for frame in &self.frames {
            let kept = frame.data.len().min(self.snaplen as usize);
            let packet = PcapPacket::new(
                Duration::from_nanos(frame.ts_ns),
                frame.data.len() as u32,
                &frame.data[..kept],
            )
            .expect("valid packet");
            writer.write_packet(&packet).expect("write packet");
        }
        writer.into_inner()
    }

    /// A pcapng with one interface at nanosecond resolution.
    pub fn pcapng(&self) -> Vec<u8> {
        let mut writer = PcapNgWriter::new(Vec::new()).expect("pcapng section");
        let mut idb = InterfaceDescriptionBlock::new(self.framing.datalink(), self.snaplen);
        idb.options.push(InterfaceDescriptionOption::IfTsResol(
            InterfaceTsResolution::NANO,
        ));
        writer.write_pcapng_block(idb).expect("interface block");
        for frame in &self.frames {
            let kept = frame.data.len().min(self.snaplen as usize);
            let epb = EnhancedPacketBlock {
                interface_id: 0,
                timestamp: Duration::from_nanos(frame.ts_ns),
                original_len: frame.data.len() as u32,
                data: Cow::Borrowed(&frame.data[..kept]),
                options: vec![],
            };
            writer.write_pcapng_block(epb).expect("packet block");
        }
        writer.into_inner()
    }
}
