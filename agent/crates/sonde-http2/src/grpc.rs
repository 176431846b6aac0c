//! gRPC over HTTP/2: content types, `/package.Service/Method` paths and length-prefixed messages.

/// Whether a `content-type` is gRPC's (`application/grpc`, `application/grpc+proto`, ...).
pub fn is_grpc_content_type(value: &str) -> bool {
    let v = value.trim();
    match v.get(..16) {
        Some(p) if p.eq_ignore_ascii_case("application/grpc") => {
            matches!(v.as_bytes().get(16), None | Some(b'+' | b';' | b' '))
        }
        _ => false,
    }
}

/// Splits `/package.Service/Method` into service and method; `None` when the path is not of
/// that form.
pub fn split_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix('/')?;
    let (service, method) = rest.split_once('/')?;
    if service.is_empty() || method.is_empty() || method.contains('/') {
        return None;
    }
    Some((service, method))
}

/// Decodes the percent-encoding gRPC applies to `grpc-message`.
pub fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok());
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Counts length-prefixed messages (1 byte compressed flag, 4 bytes big-endian length) in one
/// direction of a call, across DATA frames of any size.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MessageCounter {
    prefix: [u8; 5],
    prefix_len: u8,
    /// Payload bytes of the current message still to come.
    remaining: u64,
    pub messages: u64,
    pub message_bytes: u64,
    pub compressed: bool,
    /// Bytes were lost where a prefix was expected: counting stopped.
    pub lost_framing: bool,
}

impl MessageCounter {
    pub fn feed(&mut self, mut data: &[u8]) {
        if self.lost_framing {
            return;
        }
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = data
                    .len()
                    .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                self.remaining -= n as u64;
                data = data.get(n..).unwrap_or_default();
                continue;
            }
            let want = 5 - usize::from(self.prefix_len);
            let n = want.min(data.len());
            let (head, rest) = data.split_at(n);
            for (slot, b) in self
                .prefix
                .iter_mut()
                .skip(usize::from(self.prefix_len))
                .zip(head)
            {
                *slot = *b;
            }
            self.prefix_len += n as u8;
            data = rest;
            if self.prefix_len == 5 {
                let [flag, a, b, c, d] = self.prefix;
                let len = u64::from(u32::from_be_bytes([a, b, c, d]));
                self.compressed |= flag & 1 != 0;
                self.messages += 1;
                self.message_bytes += len;
                self.remaining = len;
                self.prefix_len = 0;
            }
        }
    }

    /// Bytes of the body were lost: counting continues only if they fell inside a message.
    pub fn skip(&mut self, len: u64) {
        if self.prefix_len == 0 && len <= self.remaining {
            self.remaining -= len;
        } else {
            self.lost_framing = true;
        }
    }

    /// A message was cut by the end of the stream.
    pub fn incomplete(&self) -> bool {
        self.prefix_len != 0 || self.remaining != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        assert!(is_grpc_content_type("application/grpc"));
        assert!(is_grpc_content_type("application/grpc+proto"));
        assert!(is_grpc_content_type("Application/GRPC+json"));
        assert!(!is_grpc_content_type("application/grpc-web"));
        assert!(!is_grpc_content_type("application/json"));
    }

    #[test]
    fn paths_and_messages() {
        assert_eq!(
            split_path("/helloworld.Greeter/SayHello"),
            Some(("helloworld.Greeter", "SayHello"))
        );
        assert_eq!(split_path("/a/b/c"), None);
        assert_eq!(split_path("/x"), None);
        assert_eq!(percent_decode("bad%20thing%"), "bad thing%");
    }

    #[test]
    fn counts_messages_split_at_every_byte() {
        let mut wire = vec![0u8, 0, 0, 0, 3, b'a', b'b', b'c', 1, 0, 0, 0, 0];
        wire.extend_from_slice(&[0, 0, 0, 1, 0]);
        wire.extend_from_slice(&[0u8; 256]);
        for split in 0..=wire.len() {
            let mut c = MessageCounter::default();
            let (a, b) = wire.split_at(split);
            c.feed(a);
            c.feed(b);
            assert_eq!(
                (c.messages, c.message_bytes, c.compressed),
                (3, 259, true),
                "split {split}"
            );
            assert!(!c.incomplete());
        }
    }
}
