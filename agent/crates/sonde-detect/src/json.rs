//! Records per response, counted cheaply from the body sample.

/// Elements of the top-level JSON array, or of the first array directly inside a top-level object
/// (`{"data": [...]}`). When the sample ends inside that array, the count is extrapolated to the
/// body's wire length. `None` when the sample is not JSON of that shape.
pub fn record_count(sample: &[u8], wire_len: u64) -> Option<u64> {
    let mut i = 0;
    while i < sample.len() && sample[i].is_ascii_whitespace() {
        i += 1;
    }
    let target = match sample.get(i)? {
        b'[' => 1u32,
        b'{' => 2u32,
        _ => return None,
    };
    let mut depth = 0u32;
    let mut in_str = false;
    let mut esc = false;
    let mut in_target = false;
    let mut count = 0u64;
    let mut pending = false; // a value started in the target array since the last comma
    for (pos, &b) in sample.iter().enumerate().skip(i) {
        if in_str {
            if esc {
                esc = false;
            } else if b == b'\\' {
                esc = true;
            } else if b == b'"' {
                in_str = false;
            }
            continue;
        }
        match b {
            b'"' => {
                in_str = true;
                if in_target && depth == target {
                    pending = true;
                }
            }
            b'[' | b'{' => {
                if in_target && depth == target {
                    pending = true;
                }
                depth += 1;
                if b == b'[' && depth == target && !in_target {
                    in_target = true;
                }
            }
            b']' | b'}' => {
                if in_target && depth == target {
                    return Some(count + u64::from(pending));
                }
                if depth <= 1 {
                    return if in_target { Some(count) } else { Some(0) };
                }
                depth -= 1;
            }
            b',' if in_target && depth == target => {
                count += 1;
                pending = false;
            }
            b if b.is_ascii_whitespace() => {}
            _ => {
                if in_target && depth == target {
                    pending = true;
                }
            }
        }
        let _ = pos;
    }
    if !in_target {
        return None;
    }
    // Cut inside the array: extrapolate over the whole body.
    let seen = sample.len() as u64;
    let partial = count + u64::from(pending);
    if seen == 0 || wire_len <= seen {
        return Some(partial);
    }
    Some(partial.saturating_mul(wire_len) / seen)
}

#[cfg(test)]
mod tests {
    use super::record_count;

    #[test]
    fn shapes() {
        assert_eq!(record_count(b"[]", 2), Some(0));
        assert_eq!(record_count(b" [1,2,3]", 8), Some(3));
        assert_eq!(record_count(br#"[{"a":[1,2]},{"b":"x,y]"}]"#, 24), Some(2));
        assert_eq!(
            record_count(br#"{"total":3,"data":[{"id":1},{"id":2},{"id":3}]}"#, 40),
            Some(3)
        );
        assert_eq!(record_count(br#"{"id":1}"#, 8), Some(0));
        assert_eq!(record_count(b"hello", 5), None);
        // Cut after 2 of the records, body 10x longer than the sample.
        let s = br#"[{"id":1},{"id":2},{"i"#;
        assert_eq!(record_count(s, s.len() as u64 * 10), Some(30));
    }

    #[test]
    fn never_panics_on_garbage() {
        for s in [&b"]]]]"[..], b"[[[[", b"{\"", b"[\"\\", b"{}}}", b"[,,,]"] {
            let _ = record_count(s, 100);
        }
    }
}
