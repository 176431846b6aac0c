//! The HPACK static table and a size-bounded dynamic table that tolerates a late start.
//!
//! Modelling of what a passive observer does not know:
//! - Entries inserted before the observer joined (or before its state was reset after lost bytes)
//!   sit *behind* every entry it saw inserted. A reference past the known entries is therefore
//!   "unresolved" while such entries may exist (`unknown_tail`), and an error otherwise.
//! - An entry inserted with a name that refers to an unresolved entry has an unknown name. It is
//!   kept (so later indices stay right) with `name: None` and is accounted at a lower bound of its
//!   size (value + 32). Under-counting can only make us keep entries the encoder already evicted;
//!   the encoder never refers to those, so no reference ever resolves to a wrong value.
//! - While the real maximum size is unknown (late join, no size update seen yet) the table uses
//!   the configured hard limit, which again can only keep too much, never too little.

use std::collections::VecDeque;

/// Per-entry overhead counted by RFC 7541 §4.1.
pub const ENTRY_OVERHEAD: usize = 32;

/// RFC 7541 Appendix A.
pub const STATIC_TABLE: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// One dynamic-table entry. `name` is `None` when it was copied from an unresolved entry.
#[derive(Clone, Debug)]
pub struct Entry {
    pub name: Option<Box<[u8]>>,
    pub value: Box<[u8]>,
    /// Size as accounted (exact when `name` is known, a lower bound otherwise).
    pub size: usize,
}

/// What an index refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// Both texts known (an unknown name is reported as `None`).
    Found {
        name: Option<&'a [u8]>,
        value: &'a [u8],
    },
    /// The entry was inserted before we started observing (or before a reset).
    Unresolved,
    /// No such entry can exist: index 0, or past the end of a table known to be complete.
    Invalid,
}

#[derive(Debug)]
pub struct DynamicTable {
    entries: VecDeque<Entry>,
    size: usize,
    max_size: usize,
    /// The current maximum was set by a size update we saw (or is the protocol default at the start
    /// of a connection), rather than assumed.
    max_size_known: bool,
    /// Entries we never saw may exist behind the known ones.
    unknown_tail: bool,
}

impl DynamicTable {
    /// A table at the start of a connection: empty, default maximum, complete.
    pub fn fresh(max_size: usize) -> DynamicTable {
        DynamicTable {
            entries: VecDeque::new(),
            size: 0,
            max_size,
            max_size_known: true,
            unknown_tail: false,
        }
    }

    /// A table whose content is unknown (late join or after lost bytes).
    pub fn unknown(hard_limit: usize) -> DynamicTable {
        DynamicTable {
            entries: VecDeque::new(),
            size: 0,
            max_size: hard_limit,
            max_size_known: false,
            unknown_tail: true,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn size(&self) -> usize {
        self.size
    }

    pub fn max_size(&self) -> usize {
        self.max_size
    }

    pub fn has_unknown_tail(&self) -> bool {
        self.unknown_tail
    }

    /// Looks up a full HPACK index (1-based, static entries first).
    pub fn get(&self, index: usize) -> Lookup<'_> {
        if index == 0 {
            return Lookup::Invalid;
        }
        if let Some((name, value)) = STATIC_TABLE.get(index - 1) {
            return Lookup::Found {
                name: Some(name.as_bytes()),
                value: value.as_bytes(),
            };
        }
        let dyn_index = index - STATIC_TABLE.len() - 1;
        match self.entries.get(dyn_index) {
            Some(e) => Lookup::Found {
                name: e.name.as_deref(),
                value: &e.value,
            },
            None if self.unknown_tail => Lookup::Unresolved,
            None => Lookup::Invalid,
        }
    }

    /// Sets a new maximum size (a dynamic table size update) and evicts to fit.
    pub fn set_max_size(&mut self, max_size: usize) {
        self.max_size = max_size;
        self.max_size_known = true;
        self.evict_to(max_size);
        self.refresh_tail();
    }

    /// Inserts an entry, evicting the oldest ones to make room (RFC 7541 §4.4). An unknown name
    /// (`None`) is accounted as empty, a lower bound.
    pub fn insert(&mut self, name: Option<&[u8]>, value: &[u8]) {
        let size = name.map_or(0, <[u8]>::len) + value.len() + ENTRY_OVERHEAD;
        if size > self.max_size {
            // An entry larger than the table empties it (§4.4); nothing older can remain.
            self.entries.clear();
            self.size = 0;
            if self.max_size_known {
                self.unknown_tail = false;
            }
            return;
        }
        self.evict_to(self.max_size - size);
        self.entries.push_front(Entry {
            name: name.map(Box::from),
            value: Box::from(value),
            size,
        });
        self.size += size;
        self.refresh_tail();
    }

    /// Our view may now lack entries the encoder still has (a clamped size update, or an index we
    /// could not resolve in a table believed complete).
    pub fn mark_incomplete(&mut self) {
        self.unknown_tail = true;
        self.max_size_known = false;
    }

    fn evict_to(&mut self, target: usize) {
        while self.size > target {
            match self.entries.pop_back() {
                Some(e) => self.size -= e.size,
                None => {
                    self.size = 0;
                    break;
                }
            }
        }
    }

    /// Once the known entries fill the (known) maximum so that not even an empty entry fits behind
    /// them, no unseen entry can remain.
    fn refresh_tail(&mut self) {
        if self.unknown_tail && self.max_size_known && self.size + ENTRY_OVERHEAD > self.max_size {
            self.unknown_tail = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eviction_and_indexing_follow_rfc7541_c3() {
        let mut t = DynamicTable::fresh(4096);
        t.insert(Some(b":authority"), b"www.example.com");
        assert_eq!(t.size(), 57);
        t.insert(Some(b"cache-control"), b"no-cache");
        assert_eq!(t.size(), 110);
        assert_eq!(
            t.get(62),
            Lookup::Found {
                name: Some(b"cache-control"),
                value: b"no-cache"
            }
        );
        assert_eq!(t.get(64), Lookup::Invalid);
        t.set_max_size(60);
        assert_eq!(t.len(), 1);
        assert_eq!(t.get(63), Lookup::Invalid);
    }

    #[test]
    fn unknown_name_is_accounted_at_its_lower_bound() {
        // Encoder's view: max 100; "a: 1234567" (40) then "nm: v" (35) = 75, both kept.
        let mut t = DynamicTable::unknown(65536);
        t.set_max_size(100);
        t.insert(Some(b"a"), b"1234567");
        // Name copied from an entry we never saw: its length is unknown to us.
        t.insert(None, b"v");
        assert_eq!(
            t.get(62),
            Lookup::Found {
                name: None,
                value: b"v"
            }
        );
        // Over-counting the unknown name would have evicted this entry, which the encoder still
        // has and may refer to.
        assert_eq!(
            t.get(63),
            Lookup::Found {
                name: Some(b"a"),
                value: b"1234567"
            }
        );
        assert_eq!(t.size(), 40 + 33);
    }

    #[test]
    fn unknown_tail_clears_when_known_entries_fill_the_table() {
        let mut t = DynamicTable::unknown(65536);
        t.insert(Some(b"a"), b"b");
        assert_eq!(t.get(63), Lookup::Unresolved);
        t.set_max_size(100);
        assert!(t.has_unknown_tail());
        t.insert(Some(b"name"), b"0123456789012345678901234567");
        assert!(!t.has_unknown_tail());
        assert_eq!(t.get(64), Lookup::Invalid);
    }
}
