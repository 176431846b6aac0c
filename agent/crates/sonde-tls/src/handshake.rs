//! Incremental parsing of one connection's handshake records.

use serde::{Deserialize, Serialize};
use sonde_model::Direction;
use tls_parser::{TlsExtension, TlsMessage, TlsMessageHandshake};

use crate::cert::CertificateInfo;
use crate::cipher::{CipherInfo, cipher_info};
use crate::record::{MAX_RECORD_PAYLOAD, RECORD_HEADER_LEN, content_type};
use crate::version::ProtocolVersion;

/// Largest handshake message kept for parsing. Certificate chains are the big ones (a few KiB,
/// rarely past 16 KiB); a longer message is skipped, counted, and ends the direction's parse.
pub const MAX_HANDSHAKE_MESSAGE: usize = 64 << 10;
/// Entries kept per list (ALPN protocols, versions, alerts): hellos with hundreds stay small.
const MAX_LIST: usize = 16;
/// Bytes kept of one ALPN protocol id or SNI name.
const MAX_NAME_LEN: usize = 255;

/// What the client offered.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ClientHelloInfo {
    /// `legacy_version` of the hello (TLS 1.3 clients say TLS 1.2 here).
    pub legacy_version: ProtocolVersion,
    /// server_name (host_name) extension.
    pub sni: Option<String>,
    /// application_layer_protocol_negotiation offered, in order.
    pub alpn: Vec<String>,
    /// supported_versions offered (GREASE values left out); empty without the extension.
    pub supported_versions: Vec<ProtocolVersion>,
    pub cipher_suites_offered: usize,
}

/// What the server chose.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerHelloInfo {
    /// The negotiated version: supported_versions when present (TLS 1.3), else the hello's.
    pub version: ProtocolVersion,
    pub cipher: CipherInfo,
    /// The ALPN protocol selected.
    pub alpn: Option<String>,
}

/// An alert seen in clear (a refused handshake says why here).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    pub level: u8,
    pub description: u8,
}

/// Everything learnt from both directions of one connection's handshake.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TlsSession {
    pub client_hello: Option<ClientHelloInfo>,
    /// The direction (seen from the socket's owner) the ClientHello travelled in.
    pub client_direction: Option<Direction>,
    pub server_hello: Option<ServerHelloInfo>,
    /// The first certificate of the server's Certificate message (TLS <= 1.2 only: TLS 1.3
    /// encrypts it).
    pub server_certificate: Option<CertificateInfo>,
    /// Certificates in the server's chain.
    pub chain_len: usize,
    pub alerts: Vec<Alert>,
}

impl TlsSession {
    pub fn version(&self) -> Option<ProtocolVersion> {
        self.server_hello.as_ref().map(|s| s.version)
    }

    pub fn sni(&self) -> Option<&str> {
        self.client_hello.as_ref()?.sni.as_deref()
    }

    /// The ALPN protocol the server selected.
    pub fn alpn(&self) -> Option<&str> {
        self.server_hello.as_ref()?.alpn.as_deref()
    }
}

/// Why a direction's parse stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StopReason {
    /// ChangeCipherSpec or application data: the rest is ciphertext (the normal end).
    Encrypted,
    /// The bytes are not TLS records.
    NotTls,
    /// A handshake message past [`MAX_HANDSHAKE_MESSAGE`].
    TooLarge,
}

/// Where one direction's parse is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum DirectionState {
    /// Reading handshake records.
    #[default]
    Handshake,
    /// After a gap: waiting for a chunk that starts with a record header. Writes of TLS
    /// libraries are whole records, so the next delivery usually starts one.
    Resync,
    Stopped(StopReason),
}

/// Counters of one direction (and, summed, of many).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ParserCounters {
    pub bytes: u64,
    pub records: u64,
    pub handshake_messages: u64,
    /// Handshake messages tls-parser (or x509-parser) refused; the parse goes on.
    pub malformed_messages: u64,
    /// Gaps after which parsing resumed at a record boundary.
    pub resyncs: u64,
    /// Bytes after the parse stopped (ciphertext, or what followed garbage or a gap).
    pub skipped_bytes: u64,
}

impl ParserCounters {
    pub fn add(&mut self, o: &ParserCounters) {
        self.bytes += o.bytes;
        self.records += o.records;
        self.handshake_messages += o.handshake_messages;
        self.malformed_messages += o.malformed_messages;
        self.resyncs += o.resyncs;
        self.skipped_bytes += o.skipped_bytes;
    }
}

/// One direction's record and handshake-message reassembly. Memory: at most one record
/// (header + [`MAX_RECORD_PAYLOAD`]) plus one handshake message ([`MAX_HANDSHAKE_MESSAGE`]).
#[derive(Debug, Default)]
pub struct DirectionParser {
    /// Bytes of an incomplete record, header included.
    record: Vec<u8>,
    /// Bytes of an incomplete handshake message (messages may span records).
    message: Vec<u8>,
    state: DirectionState,
    counters: ParserCounters,
}

impl DirectionParser {
    pub fn state(&self) -> DirectionState {
        self.state
    }

    pub fn counters(&self) -> &ParserCounters {
        &self.counters
    }

    /// Heap bytes held.
    pub fn held_bytes(&self) -> usize {
        self.record.capacity() + self.message.capacity()
    }

    fn stop(&mut self, reason: StopReason) {
        self.state = DirectionState::Stopped(reason);
        self.record = Vec::new();
        self.message = Vec::new();
    }

    /// Feeds the next bytes of the direction.
    pub fn push(&mut self, mut data: &[u8], dir: Direction, session: &mut TlsSession) {
        self.counters.bytes += data.len() as u64;
        if self.state == DirectionState::Resync && !data.is_empty() {
            if crate::record::looks_like_tls_record(data) {
                self.state = DirectionState::Handshake;
                self.counters.resyncs += 1;
            } else {
                // Mid-record: the boundary is still unknown.
                self.counters.skipped_bytes += data.len() as u64;
                return;
            }
        }
        while !data.is_empty() {
            if self.state != DirectionState::Handshake {
                self.counters.skipped_bytes += data.len() as u64;
                return;
            }
            // Complete the header first, then the payload it announces.
            let want = if self.record.len() < RECORD_HEADER_LEN {
                RECORD_HEADER_LEN - self.record.len()
            } else {
                RECORD_HEADER_LEN + self.record_len() - self.record.len()
            };
            let take = want.min(data.len());
            self.record.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.record.len() == RECORD_HEADER_LEN && !self.header_ok() {
                self.counters.skipped_bytes += (RECORD_HEADER_LEN + data.len()) as u64;
                self.stop(StopReason::NotTls);
                return;
            }
            if self.record.len() >= RECORD_HEADER_LEN
                && self.record.len() == RECORD_HEADER_LEN + self.record_len()
            {
                let record = std::mem::take(&mut self.record);
                self.on_record(record[0], &record[RECORD_HEADER_LEN..], dir, session);
                if self.state == DirectionState::Handshake {
                    // Keep the allocation for the next record.
                    self.record = record;
                    self.record.clear();
                }
            }
        }
    }

    /// `len` bytes of the direction were not captured.
    pub fn gap(&mut self, len: u64) {
        if self.state == DirectionState::Handshake {
            // What was held belongs to a record (and maybe a message) that is now incomplete.
            self.record = Vec::new();
            self.message = Vec::new();
            self.state = DirectionState::Resync;
        }
        self.counters.skipped_bytes += len;
    }

    fn record_len(&self) -> usize {
        u16::from_be_bytes([self.record[3], self.record[4]]) as usize
    }

    fn header_ok(&self) -> bool {
        let ty = self.record[0];
        (content_type::CHANGE_CIPHER_SPEC..=content_type::HEARTBEAT).contains(&ty)
            && self.record[1] == 3
            && self.record[2] <= 4
            && self.record_len() <= MAX_RECORD_PAYLOAD
    }

    fn on_record(&mut self, ty: u8, payload: &[u8], dir: Direction, session: &mut TlsSession) {
        self.counters.records += 1;
        match ty {
            content_type::HANDSHAKE => self.on_handshake_bytes(payload, dir, session),
            content_type::ALERT => {
                // A clear alert is two bytes; a longer one is an encrypted alert.
                if let [level, description] = payload
                    && session.alerts.len() < MAX_LIST
                {
                    session.alerts.push(Alert {
                        level: *level,
                        description: *description,
                    });
                }
            }
            content_type::CHANGE_CIPHER_SPEC | content_type::APPLICATION_DATA => {
                self.stop(StopReason::Encrypted)
            }
            _ => {}
        }
    }

    fn on_handshake_bytes(&mut self, mut payload: &[u8], dir: Direction, session: &mut TlsSession) {
        while !payload.is_empty() {
            let want = if self.message.len() < 4 {
                4 - self.message.len()
            } else {
                4 + self.message_len() - self.message.len()
            };
            let take = want.min(payload.len());
            self.message.extend_from_slice(&payload[..take]);
            payload = &payload[take..];
            if self.message.len() < 4 {
                continue;
            }
            if self.message_len() > MAX_HANDSHAKE_MESSAGE {
                self.counters.skipped_bytes += (self.message.len() + payload.len()) as u64;
                self.stop(StopReason::TooLarge);
                return;
            }
            if self.message.len() == 4 + self.message_len() {
                let message = std::mem::take(&mut self.message);
                self.counters.handshake_messages += 1;
                if !on_message(&message, dir, session) {
                    self.counters.malformed_messages += 1;
                }
                self.message = message;
                self.message.clear();
            }
        }
    }

    fn message_len(&self) -> usize {
        u32::from_be_bytes([0, self.message[1], self.message[2], self.message[3]]) as usize
    }
}

/// Takes the facts out of one complete handshake message; false when it did not parse.
fn on_message(message: &[u8], dir: Direction, session: &mut TlsSession) -> bool {
    let Ok((_, TlsMessage::Handshake(msg))) = tls_parser::parse_tls_message_handshake(message)
    else {
        return false;
    };
    match msg {
        TlsMessageHandshake::ClientHello(ch) => {
            let mut info = ClientHelloInfo {
                legacy_version: ProtocolVersion(ch.version.0),
                cipher_suites_offered: ch.ciphers.len(),
                ..ClientHelloInfo::default()
            };
            let mut ok = true;
            if let Some(ext) = ch.ext {
                match tls_parser::parse_tls_client_hello_extensions(ext) {
                    Ok((_, exts)) => {
                        for e in exts {
                            match e {
                                TlsExtension::SNI(names) => {
                                    info.sni = names
                                        .iter()
                                        .find(|(ty, _)| ty.0 == 0)
                                        .map(|(_, n)| text(n));
                                }
                                TlsExtension::ALPN(protos) => {
                                    info.alpn =
                                        protos.iter().take(MAX_LIST).map(|p| text(p)).collect();
                                }
                                TlsExtension::SupportedVersions(vs) => {
                                    info.supported_versions = vs
                                        .iter()
                                        .map(|v| ProtocolVersion(v.0))
                                        .filter(|v| !v.is_grease())
                                        .take(MAX_LIST)
                                        .collect();
                                }
                                _ => {}
                            }
                        }
                    }
                    Err(_) => ok = false,
                }
            }
            session.client_hello = Some(info);
            session.client_direction = Some(dir);
            ok
        }
        TlsMessageHandshake::ServerHello(sh) => {
            let mut version = ProtocolVersion(sh.version.0);
            let mut alpn = None;
            let mut ok = true;
            if let Some(ext) = sh.ext {
                match tls_parser::parse_tls_server_hello_extensions(ext) {
                    Ok((_, exts)) => {
                        for e in exts {
                            match e {
                                TlsExtension::SupportedVersions(vs) => {
                                    if let Some(v) = vs.first() {
                                        version = ProtocolVersion(v.0);
                                    }
                                }
                                TlsExtension::ALPN(protos) => {
                                    alpn = protos.first().map(|p| text(p));
                                }
                                _ => {}
                            }
                        }
                    }
                    Err(_) => ok = false,
                }
            }
            if session.client_direction.is_none() {
                session.client_direction = Some(dir.opposite());
            }
            session.server_hello = Some(ServerHelloInfo {
                version,
                cipher: cipher_info(sh.cipher.0),
                alpn,
            });
            ok
        }
        TlsMessageHandshake::Certificate(c) => {
            // A client certificate (mutual TLS) comes from the client's side.
            if session.client_direction == Some(dir) {
                return true;
            }
            session.chain_len = c.cert_chain.len();
            match c.cert_chain.first() {
                Some(leaf) => match CertificateInfo::from_der(leaf.data) {
                    Some(info) => {
                        session.server_certificate = Some(info);
                        true
                    }
                    None => false,
                },
                None => true,
            }
        }
        _ => true,
    }
}

/// Protocol ids and host names as text, bounded; bytes that are not UTF-8 are replaced.
fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(MAX_NAME_LEN)]).into_owned()
}

/// Both directions of one TLS connection and what they told.
#[derive(Debug, Default)]
pub struct TlsConnection {
    dirs: [DirectionParser; 2],
    pub session: TlsSession,
}

impl TlsConnection {
    pub fn new() -> TlsConnection {
        TlsConnection::default()
    }

    /// Feeds bytes of one direction.
    pub fn push(&mut self, dir: Direction, data: &[u8]) {
        self.dirs[dir.index()].push(data, dir, &mut self.session);
    }

    /// `len` bytes of one direction were not captured.
    pub fn gap(&mut self, dir: Direction, len: u64) {
        self.dirs[dir.index()].gap(len);
    }

    pub fn direction(&self, dir: Direction) -> &DirectionParser {
        &self.dirs[dir.index()]
    }

    /// Both directions stopped reading records (nothing more will be learnt).
    pub fn finished(&self) -> bool {
        self.dirs
            .iter()
            .all(|d| matches!(d.state(), DirectionState::Stopped(_)))
    }

    pub fn counters(&self) -> ParserCounters {
        let mut c = *self.dirs[0].counters();
        c.add(self.dirs[1].counters());
        c
    }

    pub fn held_bytes(&self) -> usize {
        self.dirs.iter().map(DirectionParser::held_bytes).sum()
    }
}
