//! Rules as the user writes them ([`Rule`], the rules-file format in [`parse`]) and as the probe
//! reads them ([`compile`]). Matching semantics are documented in docs/rules.md.

mod compile;
mod parse;
mod trie;

use std::{fmt, net::IpAddr};

pub use compile::{CompileError, Compiled, compile};
pub use parse::{
    LoadError, MAX_FILE_BYTES, ParseError, RulesError, parse_rule, parse_rules, read_rules,
};

/// An address prefix: the network address (host bits zero) and its length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl Cidr {
    /// The address family: 4 or 6.
    #[must_use]
    pub fn family(&self) -> u8 {
        if self.addr.is_ipv4() { 4 } else { 6 }
    }

    /// The address as 128 bits, left-aligned (IPv4 in the top 32 bits).
    #[must_use]
    pub fn bits(&self) -> u128 {
        match self.addr {
            IpAddr::V4(a) => u128::from(u32::from(a)) << 96,
            IpAddr::V6(a) => u128::from(a),
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// What a matching packet gets besides being counted under the rule's label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Count only (the default).
    Count,
    /// Count, and emit a metadata event for one of every N matching packets (per CPU).
    Sample(u32),
    /// Count, then drop the packet.
    Drop,
    /// Count, then hand the packet to the agent through its AF_XDP socket (XDP_REDIRECT), or
    /// pass it when no agent socket takes it.
    Steer,
}

/// One rule: a label, what it matches, its priority and action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub label: String,
    pub src: Option<Cidr>,
    pub dst: Option<Cidr>,
    /// IP protocol number (after IPv6 extension headers).
    pub protocol: Option<u8>,
    /// Destination port range, inclusive.
    pub dst_ports: Option<(u16, u16)>,
    /// Lower matches first; rules of equal priority match in file order.
    pub priority: u32,
    pub action: Action,
}

pub const DEFAULT_PRIORITY: u32 = 100;

pub(crate) const PROTOCOL_NAMES: [(&str, u8); 4] =
    [("icmp", 1), ("tcp", 6), ("udp", 17), ("icmpv6", 58)];

impl Rule {
    /// A rule with this label that matches every IP packet.
    #[must_use]
    pub fn new(label: &str) -> Self {
        Self {
            label: label.to_owned(),
            src: None,
            dst: None,
            protocol: None,
            dst_ports: None,
            priority: DEFAULT_PRIORITY,
            action: Action::Count,
        }
    }

    /// The family the rule is limited to by its addresses or ICMP protocol, if any.
    #[must_use]
    pub fn family(&self) -> Option<u8> {
        self.dst
            .or(self.src)
            .map(|c| c.family())
            .or(match self.protocol {
                Some(1) => Some(4),
                Some(58) => Some(6),
                _ => None,
            })
    }
}

/// The rules-file form of a rule; [`parse_rule`] reads it back unchanged.
impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.label)?;
        if let Some(src) = self.src {
            write!(f, " src {src}")?;
        }
        if let Some(dst) = self.dst {
            write!(f, " dst {dst}")?;
        }
        if let Some(protocol) = self.protocol {
            match PROTOCOL_NAMES.iter().find(|(_, n)| *n == protocol) {
                Some((name, _)) => write!(f, " proto {name}")?,
                None => write!(f, " proto {protocol}")?,
            }
        }
        match self.dst_ports {
            Some((lo, hi)) if lo == hi => write!(f, " dport {lo}")?,
            Some((lo, hi)) => write!(f, " dport {lo}-{hi}")?,
            None => {}
        }
        if self.priority != DEFAULT_PRIORITY {
            write!(f, " priority {}", self.priority)?;
        }
        match self.action {
            Action::Count => Ok(()),
            Action::Sample(n) => write!(f, " action sample {n}"),
            Action::Drop => write!(f, " action drop"),
            Action::Steer => write!(f, " action steer"),
        }
    }
}

/// What [`check`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checked {
    pub labels: usize,
    pub trie_nodes: u32,
}

/// Checks that `rules` compile within a capacity, without touching any map.
pub fn check(rules: &[Rule], max_rules: u32, trie_nodes: u32) -> Result<Checked, crate::Error> {
    let mut ids = std::collections::HashMap::new();
    for rule in rules {
        let next = ids.len() as u32 + 1;
        ids.entry(rule.label.clone()).or_insert(next);
    }
    let capacity = xdt_common::labels::MAX_LABELS - 1;
    if ids.len() > capacity as usize {
        return Err(crate::Error::LabelTableFull {
            count: ids.len(),
            capacity,
        });
    }
    let compiled = compile(rules, &ids, max_rules, trie_nodes)?;
    Ok(Checked {
        labels: ids.len(),
        trie_nodes: compiled.child_nodes(),
    })
}
