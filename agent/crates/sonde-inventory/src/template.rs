//! Path templating: typed segments (`{int}`, `{uuid}`, `{email}`, ...) and a per-service trie that
//! learns parameters from cardinality and folds existing endpoints when a position becomes one.

use serde::{Deserialize, Serialize};

/// The type of a path parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParamKind {
    /// Decimal integer.
    Int,
    /// RFC 4122 UUID.
    Uuid,
    /// Hex digest (16 or more hex digits).
    Hash,
    /// `YYYY-MM-DD`, optionally followed by a time.
    Date,
    /// An email address (never kept).
    Email,
    /// Opaque identifier: short hex (`5f1c2a`), prefixed (`cus_9fK2LmQ8`), mixed letters and digits.
    Id,
    /// Long token: base64/base64url, JWT.
    Token,
    /// Learnt from cardinality: many distinct literals at this position.
    Param,
    /// Segments past the depth bound.
    Rest,
}

impl ParamKind {
    pub fn placeholder(self) -> &'static str {
        match self {
            ParamKind::Int => "{int}",
            ParamKind::Uuid => "{uuid}",
            ParamKind::Hash => "{hash}",
            ParamKind::Date => "{date}",
            ParamKind::Email => "{email}",
            ParamKind::Id => "{id}",
            ParamKind::Token => "{token}",
            ParamKind::Param => "{param}",
            ParamKind::Rest => "{rest}",
        }
    }

    pub fn name(self) -> &'static str {
        let p = self.placeholder();
        &p[1..p.len() - 1]
    }
}

/// Classifies one path segment (percent-decoded bytes). `None`: it looks like a literal.
pub fn classify_segment(s: &[u8]) -> Option<ParamKind> {
    let len = s.len();
    // Every typed kind has a digit or an `@`: most literals are rejected in one cheap pass.
    if len == 0 || !s.iter().any(|c| c.is_ascii_digit() || *c == b'@') {
        return None;
    }
    let (mut digits, mut upper, mut lower, mut hex_letters, mut other, mut transitions) =
        (0, 0, 0, 0, 0, 0);
    let mut prev_digit: Option<bool> = None;
    for &c in s {
        let is_digit = c.is_ascii_digit();
        if is_digit {
            digits += 1;
        } else if c.is_ascii_uppercase() {
            upper += 1;
            if c <= b'F' {
                hex_letters += 1;
            }
        } else if c.is_ascii_lowercase() {
            lower += 1;
            if c <= b'f' {
                hex_letters += 1;
            }
        } else {
            other += 1;
        }
        if c.is_ascii_alphanumeric() {
            if prev_digit.is_some_and(|p| p != is_digit) {
                transitions += 1;
            }
            prev_digit = Some(is_digit);
        }
    }
    let letters = upper + lower;
    if digits == len {
        return Some(ParamKind::Int);
    }
    if is_uuid(s) {
        return Some(ParamKind::Uuid);
    }
    if is_date(s) {
        return Some(ParamKind::Date);
    }
    if s.contains(&b'@') && is_email(s) {
        return Some(ParamKind::Email);
    }
    let all_hex = other == 0 && hex_letters == letters;
    if all_hex && len >= 16 && digits > 0 {
        return Some(ParamKind::Hash);
    }
    if all_hex && len >= 6 && digits > 0 && letters > 0 {
        return Some(ParamKind::Id);
    }
    if s.starts_with(b"eyJ") && s.iter().filter(|c| **c == b'.').count() == 2 {
        return Some(ParamKind::Token);
    }
    // Prefixed opaque id: `cus_9fK2LmQ8`, `ord-0012`, `user_01HX3...`.
    if let Some(sep) = s.iter().position(|c| *c == b'_' || *c == b'-') {
        let (prefix, rest) = (&s[..sep], &s[sep + 1..]);
        if (2..=12).contains(&prefix.len())
            && prefix.iter().all(u8::is_ascii_alphabetic)
            && rest.len() >= 4
            && rest.iter().all(u8::is_ascii_alphanumeric)
            && rest.iter().any(u8::is_ascii_digit)
            && (rest.iter().all(u8::is_ascii_digit) || rest.len() >= 6)
        {
            return Some(ParamKind::Id);
        }
    }
    let b64 = s
        .iter()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'+' | b'=' | b'.' | b'~'));
    if b64 && len >= 20 && digits > 0 && upper > 0 && lower > 0 {
        return Some(ParamKind::Token);
    }
    if other == 0 && len >= 8 && digits >= 2 && transitions >= 3 {
        return Some(ParamKind::Id);
    }
    if b64 && len >= 32 && digits > 0 && letters > 0 {
        return Some(ParamKind::Token);
    }
    // Personal data or a secret in a path (`/by-ssn/123-45-6789`, `/cards/4111...`) is a value,
    // and must never become part of an endpoint's name.
    if !crate::sensitive::scan_text(s).is_empty() {
        return Some(ParamKind::Id);
    }
    None
}

fn is_uuid(s: &[u8]) -> bool {
    s.len() == 36
        && s.iter().enumerate().all(|(i, c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                *c == b'-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

fn is_date(s: &[u8]) -> bool {
    if s.len() < 10 || !(s.len() == 10 || matches!(s.get(10), Some(b'T' | b't' | b' ' | b'_'))) {
        return false;
    }
    let d = |r: std::ops::Range<usize>| -> Option<u32> {
        let part = s.get(r)?;
        part.iter()
            .all(u8::is_ascii_digit)
            .then(|| part.iter().fold(0, |a, c| a * 10 + u32::from(c - b'0')))
    };
    let (Some(y), Some(m), Some(day)) = (d(0..4), d(5..7), d(8..10)) else {
        return false;
    };
    s.get(4) == Some(&b'-')
        && s.get(7) == Some(&b'-')
        && (1900..=2200).contains(&y)
        && (1..=12).contains(&m)
        && (1..=31).contains(&day)
}

fn is_email(s: &[u8]) -> bool {
    let Some(at) = s.iter().position(|c| *c == b'@') else {
        return false;
    };
    let (local, domain) = (&s[..at], &s[at + 1..]);
    !local.is_empty()
        && local
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || b"._%+-!#$&'*/=?^`{|}~".contains(c))
        && domain.contains(&b'.')
        && !domain.starts_with(b".")
        && !domain.ends_with(b".")
        && domain
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'.')
}

/// Percent-decodes into `buf` (bounded by its capacity); invalid escapes stay as they are.
pub fn percent_decode_into<'a>(seg: &'a [u8], buf: &'a mut Vec<u8>) -> &'a [u8] {
    if !seg.contains(&b'%') {
        return seg;
    }
    buf.clear();
    let mut i = 0;
    while i < seg.len() {
        let c = seg[i];
        if c == b'%' {
            let hi = seg.get(i + 1).and_then(|h| (*h as char).to_digit(16));
            let lo = seg.get(i + 2).and_then(|h| (*h as char).to_digit(16));
            if let (Some(hi), Some(lo)) = (hi, lo) {
                buf.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
        }
        buf.push(c);
        i += 1;
    }
    buf
}

/// A parameter position in a template: typed/learnt, or named by a declared spec.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ParamLabel {
    Kind(ParamKind),
    Named(Box<str>),
}

impl ParamLabel {
    fn write(&self, out: &mut String) {
        match self {
            ParamLabel::Kind(k) => out.push_str(k.placeholder()),
            ParamLabel::Named(n) => {
                out.push('{');
                out.push_str(n);
                out.push('}');
            }
        }
    }
}

/// How one segment enters the trie.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SegLabel<'a> {
    Literal(&'a str),
    Param(ParamLabel),
}

pub type NodeId = u32;
/// Index of an endpoint in the inventory's table.
pub type EndpointId = u32;

#[derive(Clone, Debug)]
enum NodeLabel {
    Root,
    Literal(Box<str>),
    Param(ParamLabel),
}

#[derive(Clone, Debug)]
struct Node {
    parent: NodeId,
    label: NodeLabel,
    alive: bool,
    /// Literal positions became a learnt `{param}`.
    learnt: bool,
    literals: Vec<(Box<str>, NodeId)>,
    params: Vec<(ParamLabel, NodeId)>,
    /// Endpoints ending at this node, by method index.
    endpoints: Vec<(u16, EndpointId)>,
}

impl Node {
    fn new(parent: NodeId, label: NodeLabel) -> Node {
        Node {
            parent,
            label,
            alive: true,
            learnt: false,
            literals: Vec::new(),
            params: Vec::new(),
            endpoints: Vec::new(),
        }
    }
}

/// What a fold did to endpoints; the inventory applies it to its records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrieChange {
    /// `from` and `into` now have the same template and method: merge `from` into `into`.
    Merged { from: EndpointId, into: EndpointId },
    /// The endpoint now sits at `node` (under a parameter): its template changed.
    Retemplated { endpoint: EndpointId, node: NodeId },
}

/// Error of a walk: the node budget is spent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodesExhausted;

/// Path trie of one service.
#[derive(Clone, Debug)]
pub struct PathTrie {
    nodes: Vec<Node>,
    live: usize,
    max_nodes: usize,
    hard_cap: usize,
    param_min_distinct: usize,
}

impl PathTrie {
    pub fn new(max_nodes: usize, param_min_distinct: usize) -> PathTrie {
        PathTrie {
            nodes: vec![Node::new(0, NodeLabel::Root)],
            live: 1,
            max_nodes,
            hard_cap: max_nodes.saturating_mul(2).min(u32::MAX as usize),
            param_min_distinct: param_min_distinct.max(2),
        }
    }

    pub const ROOT: NodeId = 0;

    /// Lowers (or restores, up to the value given at creation's hard cap) the live-node budget.
    pub fn set_max_nodes(&mut self, max: usize) {
        self.max_nodes = max;
    }

    pub fn live_nodes(&self) -> usize {
        self.live
    }

    fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id as usize]
    }

    fn node_mut(&mut self, id: NodeId) -> &mut Node {
        &mut self.nodes[id as usize]
    }

    fn alloc(&mut self, parent: NodeId, label: NodeLabel) -> Result<NodeId, NodesExhausted> {
        // Folded nodes stay as tombstones: bound the arena itself too, not only the live count.
        if self.live >= self.max_nodes || self.nodes.len() >= self.hard_cap {
            return Err(NodesExhausted);
        }
        self.live += 1;
        self.nodes.push(Node::new(parent, label));
        Ok((self.nodes.len() - 1) as NodeId)
    }

    /// Whether `node` turns unknown literals into `{param}`.
    pub fn is_learnt(&self, node: NodeId) -> bool {
        self.node(node).learnt
    }

    /// One step down from `node`. A literal at a learnt position, or one that pushes the number of
    /// literal siblings past the threshold, goes to `{param}` (the latter folds the siblings).
    pub fn step(
        &mut self,
        node: NodeId,
        label: SegLabel<'_>,
        changes: &mut Vec<TrieChange>,
    ) -> Result<NodeId, NodesExhausted> {
        match label {
            SegLabel::Literal(lit) => {
                if let Some((_, c)) = self.node(node).literals.iter().find(|(l, _)| &**l == lit) {
                    return Ok(*c);
                }
                if self.node(node).learnt {
                    return self.param_child(node, ParamLabel::Kind(ParamKind::Param));
                }
                if self.node(node).literals.len() + 1 > self.param_min_distinct {
                    self.fold(node, changes)?;
                    return self.param_child(node, ParamLabel::Kind(ParamKind::Param));
                }
                let c = self.alloc(node, NodeLabel::Literal(lit.into()))?;
                self.node_mut(node).literals.push((lit.into(), c));
                Ok(c)
            }
            SegLabel::Param(p) => self.param_child(node, p),
        }
    }

    /// Like `step` for a literal, without cardinality learning (declared paths, gRPC methods).
    pub fn step_no_learn(
        &mut self,
        node: NodeId,
        label: SegLabel<'_>,
    ) -> Result<NodeId, NodesExhausted> {
        match label {
            SegLabel::Literal(lit) => {
                if let Some((_, c)) = self.node(node).literals.iter().find(|(l, _)| &**l == lit) {
                    return Ok(*c);
                }
                let c = self.alloc(node, NodeLabel::Literal(lit.into()))?;
                self.node_mut(node).literals.push((lit.into(), c));
                Ok(c)
            }
            SegLabel::Param(p) => self.param_child(node, p),
        }
    }

    fn param_child(&mut self, node: NodeId, p: ParamLabel) -> Result<NodeId, NodesExhausted> {
        if let Some((_, c)) = self.node(node).params.iter().find(|(l, _)| *l == p) {
            return Ok(*c);
        }
        let c = self.alloc(node, NodeLabel::Param(p.clone()))?;
        self.node_mut(node).params.push((p, c));
        Ok(c)
    }

    /// Turns the literal children of `node` into one `{param}` child, merging their subtrees.
    fn fold(&mut self, node: NodeId, changes: &mut Vec<TrieChange>) -> Result<(), NodesExhausted> {
        // The param child may need a node: make room by folding first when the budget is spent.
        let existing = self
            .node(node)
            .params
            .iter()
            .find(|(l, _)| *l == ParamLabel::Kind(ParamKind::Param))
            .map(|(_, c)| *c);
        let dst = match existing {
            Some(d) => d,
            None => {
                let first = self.node(node).literals.first().map(|(_, c)| *c);
                match first {
                    // Reuse the first literal child as the param node: no allocation needed.
                    Some(c) => {
                        self.node_mut(node).literals.remove(0);
                        self.node_mut(c).label =
                            NodeLabel::Param(ParamLabel::Kind(ParamKind::Param));
                        self.node_mut(node)
                            .params
                            .push((ParamLabel::Kind(ParamKind::Param), c));
                        c
                    }
                    None => self.param_child(node, ParamLabel::Kind(ParamKind::Param))?,
                }
            }
        };
        let literals = std::mem::take(&mut self.node_mut(node).literals);
        for (_, c) in literals {
            self.merge_into(c, dst, changes);
        }
        self.node_mut(node).learnt = true;
        self.collect_endpoints(dst, changes);
        // Siblings brought together may now exceed the threshold themselves.
        let mut stack = vec![dst];
        while let Some(n) = stack.pop() {
            if !self.node(n).alive {
                continue;
            }
            if self.node(n).literals.len() > self.param_min_distinct {
                self.fold(n, changes)?;
            }
            stack.extend(self.node(n).literals.iter().map(|(_, c)| *c));
            stack.extend(self.node(n).params.iter().map(|(_, c)| *c));
        }
        Ok(())
    }

    fn merge_into(&mut self, src: NodeId, dst: NodeId, changes: &mut Vec<TrieChange>) {
        if src == dst {
            return;
        }
        let s = std::mem::replace(self.node_mut(src), Node::new(0, NodeLabel::Root));
        self.live -= 1;
        self.node_mut(src).alive = false;
        for (lit, c) in s.literals {
            let existing = self
                .node(dst)
                .literals
                .iter()
                .find(|(l, _)| *l == lit)
                .map(|(_, d)| *d);
            match existing {
                Some(d) => self.merge_into(c, d, changes),
                None if self.node(dst).learnt => {
                    self.node_mut(c).label = NodeLabel::Param(ParamLabel::Kind(ParamKind::Param));
                    let p = self
                        .node(dst)
                        .params
                        .iter()
                        .find(|(l, _)| *l == ParamLabel::Kind(ParamKind::Param))
                        .map(|(_, d)| *d);
                    match p {
                        Some(d) => self.merge_into(c, d, changes),
                        None => {
                            self.node_mut(c).parent = dst;
                            self.node_mut(dst)
                                .params
                                .push((ParamLabel::Kind(ParamKind::Param), c));
                        }
                    }
                }
                None => {
                    self.node_mut(c).parent = dst;
                    self.node_mut(dst).literals.push((lit, c));
                }
            }
        }
        for (p, c) in s.params {
            let existing = self
                .node(dst)
                .params
                .iter()
                .find(|(l, _)| *l == p)
                .map(|(_, d)| *d);
            match existing {
                Some(d) => self.merge_into(c, d, changes),
                None => {
                    self.node_mut(c).parent = dst;
                    self.node_mut(dst).params.push((p, c));
                }
            }
        }
        for (m, e) in s.endpoints {
            let existing = self
                .node(dst)
                .endpoints
                .iter()
                .find(|(dm, _)| *dm == m)
                .map(|(_, d)| *d);
            match existing {
                Some(d) => changes.push(TrieChange::Merged { from: e, into: d }),
                None => self.node_mut(dst).endpoints.push((m, e)),
            }
        }
        if s.learnt {
            self.node_mut(dst).learnt = true;
        }
    }

    fn collect_endpoints(&self, root: NodeId, changes: &mut Vec<TrieChange>) {
        let mut stack = vec![root];
        while let Some(n) = stack.pop() {
            let node = self.node(n);
            changes.extend(node.endpoints.iter().map(|(_, e)| TrieChange::Retemplated {
                endpoint: *e,
                node: n,
            }));
            stack.extend(node.literals.iter().map(|(_, c)| *c));
            stack.extend(node.params.iter().map(|(_, c)| *c));
        }
    }

    pub fn endpoint(&self, node: NodeId, method: u16) -> Option<EndpointId> {
        self.node(node)
            .endpoints
            .iter()
            .find(|(m, _)| *m == method)
            .map(|(_, e)| *e)
    }

    /// Detaches the endpoint of `method` from `node` (it is being moved elsewhere).
    pub fn remove_endpoint(&mut self, node: NodeId, method: u16) {
        self.node_mut(node).endpoints.retain(|(m, _)| *m != method);
    }

    pub fn set_endpoint(&mut self, node: NodeId, method: u16, id: EndpointId) {
        let n = self.node_mut(node);
        match n.endpoints.iter_mut().find(|(m, _)| *m == method) {
            Some(slot) => slot.1 = id,
            None => n.endpoints.push((method, id)),
        }
    }

    /// Template text of `node`: `/api/{id}/org/projects`.
    pub fn template(&self, node: NodeId) -> String {
        let mut labels = Vec::new();
        let mut n = node;
        while n != Self::ROOT {
            let nd = self.node(n);
            labels.push(&nd.label);
            n = nd.parent;
        }
        let mut out = String::new();
        for l in labels.iter().rev() {
            out.push('/');
            match l {
                NodeLabel::Root => {}
                NodeLabel::Literal(s) => out.push_str(s),
                NodeLabel::Param(p) => p.write(&mut out),
            }
        }
        if out.is_empty() {
            out.push('/');
        }
        out
    }

    /// Approximate heap bytes of the trie (for the memory report).
    pub fn heap_bytes(&self) -> usize {
        self.nodes.capacity() * std::mem::size_of::<Node>()
            + self
                .nodes
                .iter()
                .map(|n| {
                    n.literals.capacity() * std::mem::size_of::<(Box<str>, NodeId)>()
                        + n.literals.iter().map(|(l, _)| l.len()).sum::<usize>()
                        + n.params.capacity() * std::mem::size_of::<(ParamLabel, NodeId)>()
                        + n.endpoints.capacity() * 8
                        + match &n.label {
                            NodeLabel::Literal(s) => s.len(),
                            _ => 0,
                        }
                })
                .sum::<usize>()
    }
}

#[cfg(test)]
mod pii_segment_tests {
    use super::*;

    #[test]
    fn personal_data_in_a_segment_is_a_parameter() {
        assert_eq!(classify_segment(b"123-45-6789"), Some(ParamKind::Id));
        assert_eq!(classify_segment(b"4111111111111111"), Some(ParamKind::Int));
        assert_eq!(classify_segment(b"v2"), None);
        assert_eq!(classify_segment(b"onboardingStatus"), None);
    }
}
