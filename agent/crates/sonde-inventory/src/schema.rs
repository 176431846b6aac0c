//! Bounded body analysis: JSON field paths and types, and the sensitive kinds per field path.
//!
//! The JSON walker is ours rather than serde_json: samples are cut mid-document, may nest a
//! million levels deep and must cost ~1 ns/byte. It keeps no tree, only the current path, skips
//! levels past the depth bound by counting brackets, and reports how far the document was valid.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::sensitive::{self, KindSet, SensitiveKind};
use crate::template::classify_segment;

/// The JSON types seen at one field path, one bit each.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct JsonTypes(pub u8);

impl JsonTypes {
    pub const NULL: u8 = 1;
    pub const BOOLEAN: u8 = 2;
    pub const INTEGER: u8 = 4;
    pub const NUMBER: u8 = 8;
    pub const STRING: u8 = 16;
    pub const OBJECT: u8 = 32;
    pub const ARRAY: u8 = 64;
    const NAMES: [(u8, &'static str); 7] = [
        (Self::NULL, "null"),
        (Self::BOOLEAN, "boolean"),
        (Self::INTEGER, "integer"),
        (Self::NUMBER, "number"),
        (Self::STRING, "string"),
        (Self::OBJECT, "object"),
        (Self::ARRAY, "array"),
    ];

    pub fn names(self) -> Vec<&'static str> {
        Self::NAMES
            .iter()
            .filter(|(b, _)| self.0 & b != 0)
            .map(|(_, n)| *n)
            .collect()
    }

    pub fn contains(self, bit: u8) -> bool {
        self.0 & bit != 0
    }
}

impl Serialize for JsonTypes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.names().serialize(s)
    }
}

impl<'de> Deserialize<'de> for JsonTypes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let names = Vec::<String>::deserialize(d)?;
        let mut bits = 0;
        for n in names {
            if let Some((b, _)) = Self::NAMES.iter().find(|(_, name)| *name == n) {
                bits |= b;
            }
        }
        Ok(JsonTypes(bits))
    }
}

/// One field of a body schema.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldSchema {
    pub types: JsonTypes,
    /// Bodies in which the field appeared.
    pub seen: u64,
}

/// Field paths (`$.user.email`, `$.items[].id`) and their types, bounded in number.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BodySchema {
    pub fields: BTreeMap<String, FieldSchema>,
    /// Field paths not kept because the cap was reached.
    pub fields_dropped: u64,
    /// Bodies analysed as JSON.
    pub json_bodies: u64,
    /// Bodies whose sample was not valid JSON up to its end.
    pub invalid_json: u64,
}

impl BodySchema {
    pub fn merge(&mut self, other: &BodySchema, cap: usize) {
        for (k, v) in &other.fields {
            if let Some(f) = self.fields.get_mut(k) {
                f.types.0 |= v.types.0;
                f.seen = f.seen.saturating_add(v.seen);
            } else if self.fields.len() < cap {
                self.fields.insert(k.clone(), v.clone());
            } else {
                self.fields_dropped += 1;
            }
        }
        self.fields_dropped += other.fields_dropped;
        self.json_bodies += other.json_bodies;
        self.invalid_json += other.invalid_json;
    }

    pub fn heap_bytes(&self) -> usize {
        self.fields.keys().map(|k| k.capacity() + 64).sum()
    }
}

/// Accumulated facts of one field within one body.
#[derive(Clone, Copy, Debug, Default)]
pub struct FieldFacts {
    pub types: u8,
    pub kinds: KindSet,
    /// Kind implied by the field's name (`password`), computed once per path and body.
    name_kind: Option<SensitiveKind>,
    /// Kind a bare number in this field would be (`phone`, `ssn`), computed once.
    numeric_kind: Option<SensitiveKind>,
}

/// Children of a JSON field: by key, plus the array-items child. `hint` is where the next key
/// is looked for first: objects in an array repeat their keys in order, so lookups are O(1).
#[derive(Debug, Default)]
struct FieldNode {
    /// (offset into `BodyFacts::keys`, length, field index).
    children: Vec<(u32, u32, usize)>,
    items: Option<usize>,
    hint: usize,
}

/// Result of analysing one body sample: per field path, types and sensitive kinds. Reused across
/// calls (cleared, not freed) so the hot path does not allocate per body.
#[derive(Debug, Default)]
pub struct BodyFacts {
    pub fields: Vec<(String, FieldFacts)>,
    /// JSON fields as a tree parallel to `fields` (same index); no hashing per value.
    tree: Vec<FieldNode>,
    /// Non-JSON paths (`header.x`, `query.y`).
    index: ahash::AHashMap<String, usize>,
    /// Key labels of `tree`, back to back.
    keys: Vec<u8>,
    pub dropped: u64,
    pub is_json: bool,
    pub outcome: Option<WalkOutcome>,
    unescape: Vec<u8>,
}

impl BodyFacts {
    pub fn clear(&mut self) {
        self.fields.clear();
        self.tree.clear();
        self.index.clear();
        self.keys.clear();
        self.dropped = 0;
        self.is_json = false;
        self.outcome = None;
    }

    fn push(
        &mut self,
        path: String,
        name: &[u8],
        inherit: Option<usize>,
        cap: usize,
    ) -> Option<usize> {
        if self.fields.len() >= cap {
            self.dropped += 1;
            return None;
        }
        let facts = match inherit.and_then(|i| self.fields.get(i)) {
            Some((_, parent)) => FieldFacts {
                types: 0,
                kinds: KindSet::EMPTY,
                ..*parent
            },
            None => {
                let name = std::str::from_utf8(name).unwrap_or("");
                FieldFacts {
                    types: 0,
                    kinds: KindSet::EMPTY,
                    name_kind: sensitive::kind_for_field_name(name),
                    numeric_kind: sensitive::numeric_field_kind(name),
                }
            }
        };
        self.fields.push((path, facts));
        self.tree.push(FieldNode::default());
        Some(self.fields.len() - 1)
    }

    /// The document root `$`.
    fn root(&mut self, cap: usize) -> Option<usize> {
        if self.tree.is_empty() {
            self.push("$".to_owned(), b"", None, cap)
        } else {
            Some(0)
        }
    }

    /// Child of `parent` for object key `key` (raw bytes); keys that are values (ids, emails)
    /// share one `{kind}` child.
    fn child(&mut self, parent: usize, key: &[u8], cap: usize) -> Option<usize> {
        let key = &key[..key.len().min(MAX_KEY)];
        let node = self.tree.get(parent)?;
        let keys = &self.keys;
        let label_of = |&(off, len, _): &(u32, u32, usize)| {
            keys.get(off as usize..(off + len) as usize)
                .unwrap_or_default()
        };
        let n = node.children.len();
        if n > 0 {
            let h = if node.hint < n { node.hint } else { 0 };
            let found = if node
                .children
                .get(h)
                .is_some_and(|c| same_bytes(label_of(c), key))
            {
                Some(h)
            } else {
                node.children
                    .iter()
                    .position(|c| same_bytes(label_of(c), key))
            };
            if let Some(i) = found {
                let idx = node.children.get(i).map(|c| c.2);
                if let Some(node) = self.tree.get_mut(parent) {
                    node.hint = i + 1;
                }
                return idx;
            }
        }
        let typed = classify_segment(key);
        let label: &[u8] = match typed {
            Some(kind) => kind.placeholder().as_bytes(),
            None => key,
        };
        if typed.is_some()
            && let Some(c) = node.children.iter().find(|c| label_of(c) == label)
        {
            return Some(c.2);
        }
        let parent_path = &self.fields.get(parent)?.0;
        let mut path = String::with_capacity(parent_path.len() + 1 + label.len());
        path.push_str(parent_path);
        path.push('.');
        path.push_str(utf8_prefix(label).unwrap_or("{invalid}"));
        let idx = self.push(path, key, None, cap)?;
        // Labels live in one arena: lookups compare contiguous bytes, no pointer per key.
        let off = self.keys.len() as u32;
        self.keys.extend_from_slice(label);
        if let Some(node) = self.tree.get_mut(parent) {
            node.children.push((off, label.len() as u32, idx));
        }
        Some(idx)
    }

    /// The items child of an array field; it inherits the name hints (`"phones": [...]`).
    fn items(&mut self, parent: usize, cap: usize) -> Option<usize> {
        if let Some(i) = self.tree.get(parent)?.items {
            return Some(i);
        }
        let path = format!("{}[]", self.fields.get(parent)?.0);
        let idx = self.push(path, b"", Some(parent), cap)?;
        if let Some(node) = self.tree.get_mut(parent) {
            node.items = Some(idx);
        }
        Some(idx)
    }

    fn mark(&mut self, idx: Option<usize>, bit: u8, kinds: KindSet) {
        if let Some((_, f)) = idx.and_then(|i| self.fields.get_mut(i)) {
            f.types |= bit;
            f.kinds = f.kinds.union(kinds);
        }
    }

    /// Only kinds, at a non-JSON path (text and form bodies, headers and query strings).
    pub fn add_kinds(&mut self, path: &str, kinds: KindSet, cap: usize) {
        if kinds.is_empty() {
            return;
        }
        let idx = match self.index.get(path) {
            Some(&i) => Some(i),
            None => {
                let i = self.push(path.to_owned(), b"", None, cap);
                if let Some(i) = i {
                    self.index.insert(path.to_owned(), i);
                }
                i
            }
        };
        self.mark(idx, 0, kinds);
    }
}

/// How far a JSON sample was understood.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalkOutcome {
    /// One complete document.
    Complete,
    /// The sample ended inside the document (a cut sample): everything before was recorded.
    Truncated,
    /// Not JSON from this byte offset on.
    Invalid { offset: usize },
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum FrameKind {
    Object,
    Array,
}

/// An open container: its field slot (`None` past the width cap).
#[derive(Clone, Copy)]
struct Frame {
    kind: FrameKind,
    slot: Option<usize>,
}

struct Walker<'a, 'f> {
    b: &'a [u8],
    pos: usize,
    facts: &'f mut BodyFacts,
    max_depth: usize,
    max_fields: usize,
}

const MAX_KEY: usize = 64;

/// Walks a JSON sample, recording every field path with its types and sensitive kinds.
pub fn walk_json(
    sample: &[u8],
    max_depth: usize,
    max_fields: usize,
    facts: &mut BodyFacts,
) -> WalkOutcome {
    facts.is_json = true;
    let mut w = Walker {
        b: sample,
        pos: 0,
        facts,
        max_depth,
        max_fields,
    };
    let outcome = w.run();
    w.facts.outcome = Some(outcome);
    outcome
}

enum Step {
    Value,
    AfterValue,
}

impl Walker<'_, '_> {
    fn ws(&mut self) {
        while let Some(c) = self.b.get(self.pos) {
            if matches!(c, b' ' | b'\n' | b'\r' | b'\t') {
                self.pos += 1;
            } else {
                break;
            }
        }
    }

    fn run(&mut self) -> WalkOutcome {
        let cap = self.max_fields;
        let mut stack: Vec<Frame> = Vec::new();
        let mut step = Step::Value;
        // Field slot of the value about to be parsed.
        let mut cur = self.facts.root(cap);
        loop {
            self.ws();
            let Some(&c) = self.b.get(self.pos) else {
                return if stack.is_empty() && matches!(step, Step::AfterValue) {
                    WalkOutcome::Complete
                } else {
                    WalkOutcome::Truncated
                };
            };
            match step {
                Step::Value => match c {
                    b'{' | b'[' => {
                        let bit = if c == b'{' {
                            JsonTypes::OBJECT
                        } else {
                            JsonTypes::ARRAY
                        };
                        self.facts.mark(cur, bit, KindSet::EMPTY);
                        if stack.len() >= self.max_depth {
                            match self.skip_container() {
                                Some(()) => step = Step::AfterValue,
                                None => return WalkOutcome::Truncated,
                            }
                            continue;
                        }
                        self.pos += 1;
                        self.ws();
                        if c == b'{' {
                            if self.b.get(self.pos) == Some(&b'}') {
                                self.pos += 1;
                                step = Step::AfterValue;
                                continue;
                            }
                            stack.push(Frame {
                                kind: FrameKind::Object,
                                slot: cur,
                            });
                            match self.key(cur) {
                                Ok(slot) => cur = slot,
                                Err(o) => return o,
                            }
                        } else {
                            if self.b.get(self.pos) == Some(&b']') {
                                self.pos += 1;
                                step = Step::AfterValue;
                                continue;
                            }
                            let items = cur.and_then(|p| self.facts.items(p, cap));
                            stack.push(Frame {
                                kind: FrameKind::Array,
                                slot: items,
                            });
                            cur = items;
                        }
                    }
                    b'"' => {
                        let Some((s, e, escaped)) = self.string() else {
                            return WalkOutcome::Truncated;
                        };
                        if let Some(idx) = cur {
                            let kinds = self.scan_string(s, e, escaped, idx);
                            self.facts.mark(cur, JsonTypes::STRING, kinds);
                        }
                        step = Step::AfterValue;
                    }
                    b'-' | b'0'..=b'9' => {
                        let s = self.pos;
                        let mut integer = true;
                        while let Some(&d) = self.b.get(self.pos) {
                            match d {
                                b'0'..=b'9' | b'-' => {}
                                b'.' | b'e' | b'E' | b'+' => integer = false,
                                _ => break,
                            }
                            self.pos += 1;
                        }
                        let digits = &self.b[s..self.pos];
                        let mut kinds = KindSet::EMPTY;
                        if integer && digits.len() >= 7 {
                            kinds = sensitive::scan_text(digits);
                            if let Some(k) = cur
                                .and_then(|i| self.facts.fields.get(i))
                                .and_then(|(_, f)| f.numeric_kind)
                                && sensitive::numeric_kind_fits(k, digits.len())
                            {
                                kinds.insert(k);
                            }
                        }
                        self.facts.mark(
                            cur,
                            if integer {
                                JsonTypes::INTEGER
                            } else {
                                JsonTypes::NUMBER
                            },
                            kinds,
                        );
                        step = Step::AfterValue;
                    }
                    b't' | b'f' | b'n' => {
                        let (lit, bit): (&[u8], u8) = match c {
                            b't' => (b"true", JsonTypes::BOOLEAN),
                            b'f' => (b"false", JsonTypes::BOOLEAN),
                            _ => (b"null", JsonTypes::NULL),
                        };
                        let avail = &self.b[self.pos..self.b.len().min(self.pos + lit.len())];
                        if avail != &lit[..avail.len()] {
                            return WalkOutcome::Invalid { offset: self.pos };
                        }
                        if avail.len() < lit.len() {
                            return WalkOutcome::Truncated;
                        }
                        self.pos += lit.len();
                        self.facts.mark(cur, bit, KindSet::EMPTY);
                        step = Step::AfterValue;
                    }
                    _ => return WalkOutcome::Invalid { offset: self.pos },
                },
                Step::AfterValue => {
                    let Some(&frame) = stack.last() else {
                        // Trailing bytes after a complete document.
                        return WalkOutcome::Invalid { offset: self.pos };
                    };
                    match (frame.kind, c) {
                        (_, b',') => {
                            self.pos += 1;
                            if frame.kind == FrameKind::Object {
                                match self.key(frame.slot) {
                                    Ok(slot) => cur = slot,
                                    Err(o) => return o,
                                }
                            } else {
                                cur = frame.slot;
                            }
                            step = Step::Value;
                        }
                        (FrameKind::Object, b'}') | (FrameKind::Array, b']') => {
                            self.pos += 1;
                            stack.pop();
                        }
                        _ => return WalkOutcome::Invalid { offset: self.pos },
                    }
                }
            }
        }
    }

    /// Parses `"key":` and returns the slot of the value that follows.
    fn key(&mut self, parent: Option<usize>) -> Result<Option<usize>, WalkOutcome> {
        self.ws();
        match self.b.get(self.pos) {
            Some(b'"') => {}
            Some(_) => return Err(WalkOutcome::Invalid { offset: self.pos }),
            None => return Err(WalkOutcome::Truncated),
        }
        let Some((s, e, _)) = self.string() else {
            return Err(WalkOutcome::Truncated);
        };
        self.ws();
        match self.b.get(self.pos) {
            Some(b':') => self.pos += 1,
            Some(_) => return Err(WalkOutcome::Invalid { offset: self.pos }),
            None => return Err(WalkOutcome::Truncated),
        }
        let cap = self.max_fields;
        Ok(parent.and_then(|p| self.facts.child(p, &self.b[s..e], cap)))
    }

    /// String at `pos` (on the opening quote): content range and whether it has escapes.
    fn string(&mut self) -> Option<(usize, usize, bool)> {
        let start = self.pos + 1;
        let mut i = start;
        let mut escaped = false;
        // Most JSON strings are short: a plain loop over the first bytes beats the SIMD search's
        // set-up cost.
        let quick_end = self.b.len().min(start + 24);
        while i < quick_end {
            match self.b[i] {
                b'"' => {
                    self.pos = i + 1;
                    return Some((start, i, escaped));
                }
                b'\\' => {
                    escaped = true;
                    i += 2;
                }
                _ => i += 1,
            }
        }
        loop {
            let rest = self.b.get(i..)?;
            let off = memchr::memchr2(b'"', b'\\', rest)?;
            i += off;
            if self.b.get(i) == Some(&b'\\') {
                escaped = true;
                i += 2;
                continue;
            }
            self.pos = i + 1;
            return Some((start, i, escaped));
        }
    }

    fn scan_string(&mut self, s: usize, e: usize, escaped: bool, idx: usize) -> KindSet {
        let raw = &self.b[s..e];
        let mut kinds = if escaped {
            let mut buf = std::mem::take(&mut self.facts.unescape);
            unescape_into(raw, &mut buf);
            let k = sensitive::scan_value(&buf);
            self.facts.unescape = buf;
            k
        } else {
            sensitive::scan_value(raw)
        };
        if raw.is_empty() {
            return kinds;
        }
        let Some((_, f)) = self.facts.fields.get(idx) else {
            return kinds;
        };
        if let Some(k) = f.name_kind {
            kinds.insert(k);
        }
        if let Some(k) = f.numeric_kind {
            // Digits with the usual separators only: `(415) 555-0123`, `123 45 6789`.
            let (mut digits, mut others) = (0, 0);
            for c in raw {
                if c.is_ascii_digit() {
                    digits += 1;
                } else if !matches!(c, b' ' | b'-' | b'(' | b')' | b'+' | b'.') {
                    others += 1;
                }
            }
            if others == 0 && sensitive::numeric_kind_fits(k, digits) {
                kinds.insert(k);
            }
        }
        kinds
    }

    /// Skips a container past the depth bound by counting brackets outside strings.
    fn skip_container(&mut self) -> Option<()> {
        let mut depth: u64 = 0;
        while let Some(&c) = self.b.get(self.pos) {
            match c {
                b'"' => {
                    self.string()?;
                    continue;
                }
                b'{' | b'[' => depth += 1,
                b'}' | b']' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        self.pos += 1;
                        return Some(());
                    }
                }
                _ => {}
            }
            self.pos += 1;
        }
        None
    }
}

/// Byte equality without a libc call for the short keys JSON objects have.
#[inline]
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && (a.len() > 16 && a == b || a.iter().zip(b).all(|(x, y)| x == y))
}

/// The text of `b`, or of its valid start when the cut at `MAX_KEY` split a character.
fn utf8_prefix(b: &[u8]) -> Option<&str> {
    match std::str::from_utf8(b) {
        Ok(s) => Some(s),
        Err(e) if e.error_len().is_none() && e.valid_up_to() > 0 => {
            std::str::from_utf8(&b[..e.valid_up_to()]).ok()
        }
        Err(_) => None,
    }
}

/// JSON string unescaping (`\n`, `\uXXXX` incl. surrogate pairs), lossy on bad escapes.
fn unescape_into(raw: &[u8], out: &mut Vec<u8>) {
    out.clear();
    let mut i = 0;
    while i < raw.len() {
        let c = raw[i];
        if c != b'\\' {
            out.push(c);
            i += 1;
            continue;
        }
        let esc = raw.get(i + 1).copied().unwrap_or(b'\\');
        i += 2;
        match esc {
            b'n' => out.push(b'\n'),
            b't' => out.push(b'\t'),
            b'r' => out.push(b'\r'),
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'u' => {
                let hex = |at: usize| {
                    raw.get(at..at + 4)
                        .and_then(|h| std::str::from_utf8(h).ok())
                        .and_then(|h| u32::from_str_radix(h, 16).ok())
                };
                let Some(mut cp) = hex(i) else { continue };
                i += 4;
                if (0xD800..0xDC00).contains(&cp)
                    && raw.get(i) == Some(&b'\\')
                    && raw.get(i + 1) == Some(&b'u')
                    && let Some(lo) = hex(i + 2).filter(|lo| (0xDC00..0xE000).contains(lo))
                {
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    i += 6;
                }
                let ch = char::from_u32(cp).unwrap_or('\u{FFFD}');
                let mut tmp = [0u8; 4];
                out.extend_from_slice(ch.encode_utf8(&mut tmp).as_bytes());
            }
            other => out.push(other),
        }
    }
}

/// Scans `a=b&c=d` (query strings and form bodies): records kinds under `<prefix>.<name>`.
/// Returns nothing: names are visited through `on_name` for the inventory's name list.
pub fn scan_pairs(
    input: &[u8],
    prefix: &str,
    facts: &mut BodyFacts,
    cap: usize,
    mut on_name: impl FnMut(&str),
) {
    let mut path = String::with_capacity(prefix.len() + 32);
    let mut decoded = Vec::new();
    for pair in input.split(|c| *c == b'&') {
        if pair.is_empty() {
            continue;
        }
        let (name, value) = match memchr::memchr(b'=', pair) {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &[][..]),
        };
        let mut name_buf = Vec::new();
        let name = crate::template::percent_decode_into(name, &mut name_buf);
        let name_str = match classify_segment(name) {
            Some(k) => k.placeholder().to_owned(),
            None => String::from_utf8_lossy(&name[..name.len().min(MAX_KEY)]).into_owned(),
        };
        on_name(&name_str);
        if value.is_empty() {
            continue;
        }
        decoded.clear();
        decoded.extend(value.iter().map(|c| if *c == b'+' { b' ' } else { *c }));
        let mut buf = Vec::new();
        let value = crate::template::percent_decode_into(&decoded, &mut buf);
        let mut kinds = sensitive::scan_value(value);
        if let Some(k) = sensitive::kind_for_field_name(&name_str) {
            kinds.insert(k);
        }
        if crate::auth::is_credential_query_param(&name_str) {
            kinds.insert(SensitiveKind::Secret);
        }
        path.clear();
        path.push_str(prefix);
        path.push('.');
        path.push_str(&name_str);
        facts.add_kinds(&path, kinds, cap);
    }
}
