//! Recordings: decoded capture events written to a file (rmp-serde after a versioned header), so
//! later stages can be developed and tested without root from real captures.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sonde_model::CaptureEvent;

/// First bytes of every recording.
pub const MAGIC: &[u8; 8] = b"SONDEREC";
/// Bumped on any incompatible change of [`CaptureEvent`] or [`RecordingHeader`].
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a Sonde recording")]
    NotARecording { path: PathBuf },
    #[error("{path}: recording format version {found}, this agent reads version {FORMAT_VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error("{path}: event {index}: {message}")]
    Decode {
        path: PathBuf,
        index: u64,
        message: String,
    },
    #[error("{path}: {message}")]
    Encode { path: PathBuf, message: String },
}

/// Where and how a recording was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordingHeader {
    pub version: u32,
    pub host: String,
    pub kernel: String,
    pub strategy: String,
    pub started_unix_ns: u64,
}

pub struct Recorder {
    path: PathBuf,
    out: BufWriter<File>,
    events: u64,
}

impl Recorder {
    pub fn create(path: &Path, header: &RecordingHeader) -> Result<Recorder, RecordError> {
        let io = |source| RecordError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::create(path).map_err(io)?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(MAGIC).map_err(io)?;
        out.write_all(&FORMAT_VERSION.to_le_bytes()).map_err(io)?;
        let mut r = Recorder {
            path: path.to_path_buf(),
            out,
            events: 0,
        };
        r.encode(header)?;
        Ok(r)
    }

    fn encode<T: Serialize>(&mut self, v: &T) -> Result<(), RecordError> {
        rmp_serde::encode::write(&mut self.out, v).map_err(|e| RecordError::Encode {
            path: self.path.clone(),
            message: e.to_string(),
        })
    }

    pub fn write(&mut self, ev: &CaptureEvent) -> Result<(), RecordError> {
        self.encode(ev)?;
        self.events += 1;
        Ok(())
    }

    pub fn events(&self) -> u64 {
        self.events
    }

    pub fn finish(mut self) -> Result<u64, RecordError> {
        self.out.flush().map_err(|source| RecordError::Io {
            path: self.path.clone(),
            source,
        })?;
        Ok(self.events)
    }
}

/// Reads a recording back, event by event.
pub struct Replay {
    path: PathBuf,
    input: BufReader<File>,
    header: RecordingHeader,
    index: u64,
    /// Set after an error: a damaged stream is not resynchronised.
    failed: bool,
}

impl Replay {
    pub fn open(path: &Path) -> Result<Replay, RecordError> {
        let io = |source| RecordError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut input = BufReader::with_capacity(1 << 20, File::open(path).map_err(io)?);
        let mut magic = [0u8; 8];
        input
            .read_exact(&mut magic)
            .map_err(|_| RecordError::NotARecording {
                path: path.to_path_buf(),
            })?;
        if &magic != MAGIC {
            return Err(RecordError::NotARecording {
                path: path.to_path_buf(),
            });
        }
        let mut v = [0u8; 4];
        input.read_exact(&mut v).map_err(io)?;
        let found = u32::from_le_bytes(v);
        if found != FORMAT_VERSION {
            return Err(RecordError::Version {
                path: path.to_path_buf(),
                found,
            });
        }
        let header: RecordingHeader =
            rmp_serde::decode::from_read(&mut input).map_err(|e| RecordError::Decode {
                path: path.to_path_buf(),
                index: 0,
                message: e.to_string(),
            })?;
        Ok(Replay {
            path: path.to_path_buf(),
            input,
            header,
            index: 0,
            failed: false,
        })
    }

    pub fn header(&self) -> &RecordingHeader {
        &self.header
    }
}

impl Iterator for Replay {
    type Item = Result<CaptureEvent, RecordError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        // A clean end of file between events ends the replay.
        match self.input.fill_buf_empty() {
            Ok(true) => return None,
            Ok(false) => {}
            Err(source) => {
                return Some(Err(RecordError::Io {
                    path: self.path.clone(),
                    source,
                }));
            }
        }
        self.index += 1;
        let ev = rmp_serde::decode::from_read(&mut self.input).map_err(|e| RecordError::Decode {
            path: self.path.clone(),
            index: self.index,
            message: e.to_string(),
        });
        self.failed = ev.is_err();
        Some(ev)
    }
}

trait FillBufEmpty {
    fn fill_buf_empty(&mut self) -> std::io::Result<bool>;
}

impl<R: Read> FillBufEmpty for BufReader<R> {
    fn fill_buf_empty(&mut self) -> std::io::Result<bool> {
        use std::io::BufRead as _;
        Ok(self.fill_buf()?.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use sonde_model::{
        ConnClose, ConnId, ConnOpen, DataChunk, Direction, ProcessInfo, Role, Source,
    };

    fn events() -> Vec<CaptureEvent> {
        let conn = ConnId {
            tgid: 1,
            fd: 2,
            generation: 3,
        };
        vec![
            CaptureEvent::Open(ConnOpen {
                conn,
                ts_ns: 1,
                role: Role::Server,
                process: ProcessInfo {
                    pid: 1,
                    comm: "nginx".into(),
                    cgroup_id: 9,
                    workload: None,
                },
                local: Some("127.0.0.1:80".parse().expect("addr")),
                remote: Some("127.0.0.1:5000".parse().expect("addr")),
            }),
            CaptureEvent::Data(DataChunk {
                conn,
                direction: Direction::Ingress,
                source: Source::Syscall,
                offset: 0,
                len: 18,
                data: Bytes::from_static(b"GET / HTTP/1.1\r\n\r\n"),
                ts_ns: 2,
                tid: 1,
            }),
            CaptureEvent::Close(ConnClose { conn, ts_ns: 3 }),
        ]
    }

    #[test]
    fn a_recording_replays_exactly_what_was_written() {
        let dir = tempdir();
        let path = dir.join("r.sondrec");
        let header = RecordingHeader {
            version: FORMAT_VERSION,
            host: "h".into(),
            kernel: "k".into(),
            strategy: "sock-tracepoints".into(),
            started_unix_ns: 7,
        };
        let mut rec = Recorder::create(&path, &header).expect("create");
        for e in events() {
            rec.write(&e).expect("write");
        }
        assert_eq!(rec.finish().expect("finish"), 3);
        let replay = Replay::open(&path).expect("open");
        assert_eq!(replay.header(), &header);
        let back: Vec<_> = replay.collect::<Result<_, _>>().expect("replays");
        assert_eq!(back, events());
    }

    #[test]
    fn foreign_truncated_and_future_files_are_clear_errors() {
        let dir = tempdir();
        let p = dir.join("x");
        std::fs::write(&p, b"hello world, not a recording").expect("write");
        assert!(matches!(
            Replay::open(&p),
            Err(RecordError::NotARecording { .. })
        ));
        let mut future = MAGIC.to_vec();
        future.extend_from_slice(&99u32.to_le_bytes());
        std::fs::write(&p, &future).expect("write");
        let err = Replay::open(&p).err().expect("version error");
        assert!(err.to_string().contains("version 99"), "{err}");

        let header = RecordingHeader {
            version: FORMAT_VERSION,
            host: String::new(),
            kernel: String::new(),
            strategy: String::new(),
            started_unix_ns: 0,
        };
        let mut rec = Recorder::create(&p, &header).expect("create");
        for e in events() {
            rec.write(&e).expect("write");
        }
        rec.finish().expect("finish");
        let full = std::fs::read(&p).expect("read");
        std::fs::write(&p, &full[..full.len() - 5]).expect("truncate");
        let results: Vec<_> = Replay::open(&p).expect("open").collect();
        assert_eq!(results.len(), 3);
        assert!(results[..2].iter().all(|r| r.is_ok()));
        assert!(matches!(
            results[2],
            Err(RecordError::Decode { index: 3, .. })
        ));
    }

    fn tempdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "sonde-record-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&d).expect("mkdir");
        d
    }
}
