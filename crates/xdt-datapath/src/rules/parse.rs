//! The rules file: one rule per line, `#` starts a comment.
//!
//! ```text
//! # label  [src CIDR] [dst CIDR] [proto P] [dport N|N-M] [priority N] [action count|drop|sample N]
//! web      dst 10.0.0.0/8 proto tcp dport 80-443
//! dns      proto udp dport 53 action sample 10
//! blocked  src 192.0.2.0/24 action drop priority 1
//! ```
//!
//! A file is parsed completely before anything is applied; the first error names the line.
//!
//! One job, the text of the rules: about 360 lines of parser and checks with 200 of unit tests
//! beside them (every error a rule can get), which is why the file is over 500 lines.

use std::{collections::HashMap, net::IpAddr, path::Path, str::FromStr};

use super::{Action, Cidr, PROTOCOL_NAMES, Rule};
use xdt_common::labels::MAX_NAME_LEN;
use xdt_systemd::input::{self, clip};

/// Longest rules file: 4 MiB, 16,384 rules of 256 characters (the probe holds 4,096 by
/// default).
pub const MAX_FILE_BYTES: u64 = 4 << 20;

/// Why one rule is invalid.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    /// The label is empty, too long or has characters outside `A-Za-z0-9_.:-`.
    #[error("bad label {label:?}: use 1-{MAX_NAME_LEN} characters of A-Z a-z 0-9 _ . : -")]
    BadLabel { label: String },
    /// A word that is not one of the rule's keys.
    #[error("unknown key {key:?} (expected src, dst, proto, dport, priority or action)")]
    UnknownKey { key: String },
    /// A key at the end of the line without its value.
    #[error("{key} needs a value")]
    MissingValue { key: &'static str },
    /// The same key twice in one rule.
    #[error("{key} given twice")]
    DuplicateKey { key: &'static str },
    /// Not an address, or a prefix length out of range.
    #[error("bad CIDR {text:?}: {reason}")]
    BadCidr { text: String, reason: &'static str },
    /// The address has bits set past the prefix length.
    #[error("bad CIDR {text:?}: host bits are set past /{len} (did you mean {network}?)")]
    HostBits {
        text: String,
        len: u8,
        network: String,
    },
    /// Source and destination of different address families.
    #[error("src is IPv{src} but dst is IPv{dst}")]
    FamilyMismatch { src: u8, dst: u8 },
    /// ICMP with an IPv6 address or ICMPv6 with an IPv4 one.
    #[error("proto {protocol} cannot match IPv{family} addresses")]
    ProtocolFamily { protocol: &'static str, family: u8 },
    /// Neither a protocol name nor a number 0-255.
    #[error("bad protocol {text:?} (expected tcp, udp, icmp, icmpv6 or a number 0-255)")]
    BadProtocol { text: String },
    /// Not a port or an ascending range of ports.
    #[error("bad port {text:?} (expected N or N-M with 0 <= N <= M <= 65535)")]
    BadPort { text: String },
    /// dport without a protocol that has ports.
    #[error("dport needs proto tcp or udp")]
    PortWithoutProtocol,
    /// Not a number 0-4294967295.
    #[error("bad priority {text:?} (expected a number 0-4294967295, lower matches first)")]
    BadPriority { text: String },
    /// Not one of the actions.
    #[error("bad action {text:?} (expected count, drop, steer, or sample N)")]
    BadAction { text: String },
    /// `sample` with a rate that is not a number from 1.
    #[error("bad sample rate {text:?} (expected N >= 1: one event every N packets)")]
    BadSampleRate { text: String },
    /// Words are separated by spaces and tabs; a no-break space (or any other Unicode space)
    /// looks like one and is not.
    #[error(
        "{character:?} (U+{code:04X}) in {word:?}: separate words with spaces or tabs",
        code = u32::from(*character)
    )]
    UnicodeSpace { character: char, word: String },
    /// The very same rule twice.
    #[error("the same rule as line {first}")]
    Duplicate { first: usize },
}

/// A rules file that could not be read or parsed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read rules file {}: {source}", path.display())]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Parse(#[from] RulesError),
}

/// Reads (a regular file of at most [`MAX_FILE_BYTES`]) and parses the rules file at `path`.
pub fn read_rules(path: &Path) -> Result<Vec<Rule>, LoadError> {
    let text = input::read_text(path, MAX_FILE_BYTES).map_err(|source| LoadError::Read {
        path: path.to_owned(),
        source,
    })?;
    Ok(parse_rules(&text, &path.display().to_string())?)
}

/// A rules file that failed to parse: where, and why.
#[derive(Debug, thiserror::Error)]
#[error("{origin}:{line}: {reason}")]
pub struct RulesError {
    /// The file name (or `command line`).
    pub origin: String,
    /// 1-based line number.
    pub line: usize,
    pub reason: ParseError,
}

/// Parses a whole rules file; `origin` names it in errors. The very same rule twice is an
/// error (the second would only shadow the first).
pub fn parse_rules(text: &str, origin: &str) -> Result<Vec<Rule>, RulesError> {
    let mut rules = Vec::new();
    // Each rule's canonical text (Display round-trips) and its line.
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (index, line) in text.lines().enumerate() {
        let error = |reason| RulesError {
            origin: origin.to_owned(),
            line: index + 1,
            reason,
        };
        let line = line.split('#').next().unwrap_or("");
        let words: Vec<&str> = line.split_ascii_whitespace().collect();
        if words.is_empty() {
            if let Some(character) = line.chars().find(|c| c.is_whitespace()) {
                return Err(error(ParseError::UnicodeSpace {
                    character,
                    word: clip(line.trim_ascii()).into_owned(),
                }));
            }
            continue;
        }
        let rule = parse_rule(&words).map_err(error)?;
        if let Some(first) = seen.insert(rule.to_string(), index + 1) {
            return Err(error(ParseError::Duplicate { first }));
        }
        rules.push(rule);
    }
    Ok(rules)
}

/// Whether `text` is a number in plain decimal digits (`parse` also takes a leading `+`).
fn number<T: FromStr>(text: &str) -> Option<T> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Parses one rule from its words: the label, then key/value pairs.
pub fn parse_rule(words: &[&str]) -> Result<Rule, ParseError> {
    for word in words {
        if let Some(character) = word.chars().find(|c| c.is_whitespace()) {
            return Err(ParseError::UnicodeSpace {
                character,
                word: clip(word).into_owned(),
            });
        }
    }
    let (label, mut rest) = match words {
        [label, rest @ ..] => (*label, rest),
        [] => {
            return Err(ParseError::BadLabel {
                label: String::new(),
            });
        }
    };
    check_label(label)?;
    let mut rule = Rule::new(label);
    let mut seen: Vec<&'static str> = Vec::new();
    while let [key, tail @ ..] = rest {
        let key: &'static str = match *key {
            "src" => "src",
            "dst" => "dst",
            "proto" => "proto",
            "dport" => "dport",
            "priority" => "priority",
            "action" => "action",
            other => {
                return Err(ParseError::UnknownKey {
                    key: clip(other).into_owned(),
                });
            }
        };
        if seen.contains(&key) {
            return Err(ParseError::DuplicateKey { key });
        }
        seen.push(key);
        let [value, tail @ ..] = tail else {
            return Err(ParseError::MissingValue { key });
        };
        rest = tail;
        match key {
            "src" => rule.src = Some(parse_cidr(value)?),
            "dst" => rule.dst = Some(parse_cidr(value)?),
            "proto" => rule.protocol = Some(parse_protocol(value)?),
            "dport" => rule.dst_ports = Some(parse_ports(value)?),
            "priority" => {
                rule.priority = number(value).ok_or_else(|| ParseError::BadPriority {
                    text: clip(value).into_owned(),
                })?;
            }
            _ => {
                rule.action = match *value {
                    "count" => Action::Count,
                    "drop" => Action::Drop,
                    "steer" => Action::Steer,
                    "sample" => {
                        let [rate, tail @ ..] = rest else {
                            return Err(ParseError::BadSampleRate {
                                text: String::new(),
                            });
                        };
                        rest = tail;
                        match number::<u32>(rate) {
                            Some(n) if n >= 1 => Action::Sample(n),
                            _ => {
                                return Err(ParseError::BadSampleRate {
                                    text: clip(rate).into_owned(),
                                });
                            }
                        }
                    }
                    other => {
                        return Err(ParseError::BadAction {
                            text: clip(other).into_owned(),
                        });
                    }
                };
            }
        }
    }
    check_consistency(&rule)?;
    Ok(rule)
}

fn check_label(label: &str) -> Result<(), ParseError> {
    let ok = !label.is_empty()
        && label.len() <= MAX_NAME_LEN
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ParseError::BadLabel {
            label: clip(label).into_owned(),
        })
    }
}

fn check_consistency(rule: &Rule) -> Result<(), ParseError> {
    if let (Some(src), Some(dst)) = (rule.src, rule.dst)
        && src.family() != dst.family()
    {
        return Err(ParseError::FamilyMismatch {
            src: src.family(),
            dst: dst.family(),
        });
    }
    let address_family = rule.dst.or(rule.src).map(|c| c.family());
    match (rule.protocol, address_family) {
        (Some(1), Some(6)) => {
            return Err(ParseError::ProtocolFamily {
                protocol: "icmp",
                family: 6,
            });
        }
        (Some(58), Some(4)) => {
            return Err(ParseError::ProtocolFamily {
                protocol: "icmpv6",
                family: 4,
            });
        }
        _ => {}
    }
    if rule.dst_ports.is_some() && !matches!(rule.protocol, Some(6 | 17)) {
        return Err(ParseError::PortWithoutProtocol);
    }
    Ok(())
}

/// `ADDR/LEN` or a bare address (a host prefix).
pub(crate) fn parse_cidr(text: &str) -> Result<Cidr, ParseError> {
    let bad = |reason| ParseError::BadCidr {
        text: clip(text).into_owned(),
        reason,
    };
    let (addr, len) = match text.split_once('/') {
        Some((addr, len)) => (addr, Some(len)),
        None => (text, None),
    };
    let addr = IpAddr::from_str(addr).map_err(|_| bad("not an IPv4 or IPv6 address"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(len) => match number::<u8>(len) {
            Some(len) if len <= max => len,
            _ if addr.is_ipv4() => return Err(bad("prefix length must be 0-32 for IPv4")),
            _ => return Err(bad("prefix length must be 0-128 for IPv6")),
        },
    };
    let cidr = Cidr { addr, len };
    let network = masked(cidr);
    if network != cidr {
        return Err(ParseError::HostBits {
            text: clip(text).into_owned(),
            len,
            network: network.to_string(),
        });
    }
    Ok(cidr)
}

fn masked(cidr: Cidr) -> Cidr {
    let addr = match cidr.addr {
        IpAddr::V4(a) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(cidr.len)).unwrap_or(0);
            IpAddr::V4((u32::from(a) & mask).into())
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(cidr.len))
                .unwrap_or(0);
            IpAddr::V6((u128::from(a) & mask).into())
        }
    };
    Cidr {
        addr,
        len: cidr.len,
    }
}

fn parse_protocol(text: &str) -> Result<u8, ParseError> {
    PROTOCOL_NAMES
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(text))
        .map(|(_, number)| *number)
        .or_else(|| number(text))
        .ok_or_else(|| ParseError::BadProtocol {
            text: clip(text).into_owned(),
        })
}

fn parse_ports(text: &str) -> Result<(u16, u16), ParseError> {
    let bad = || ParseError::BadPort {
        text: clip(text).into_owned(),
    };
    let (lo, hi) = text.split_once('-').unwrap_or((text, text));
    let lo: u16 = number(lo).ok_or_else(bad)?;
    let hi: u16 = number(hi).ok_or_else(bad)?;
    if lo > hi {
        return Err(bad());
    }
    Ok((lo, hi))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(line: &str) -> ParseError {
        let words: Vec<&str> = line.split_whitespace().collect();
        parse_rule(&words).expect_err(line)
    }

    #[test]
    fn parses_every_key() {
        let rules = parse_rules(
            "# comment\n\nweb dst 10.0.0.0/8 proto tcp dport 80-443 priority 5 # trailing\n\
             dns proto udp dport 53 action sample 10\n\
             v6 src 2001:db8::/32 dst 2001:db8:1::1 action drop\n\
             api proto tcp dport 8081 action steer\n",
            "t",
        )
        .expect("valid");
        assert_eq!(rules.len(), 4);
        assert_eq!(rules[0].dst, Some(parse_cidr("10.0.0.0/8").expect("cidr")));
        assert_eq!(rules[0].protocol, Some(6));
        assert_eq!(rules[0].dst_ports, Some((80, 443)));
        assert_eq!(rules[0].priority, 5);
        assert_eq!(rules[1].action, Action::Sample(10));
        assert_eq!(rules[1].priority, super::super::DEFAULT_PRIORITY);
        assert_eq!(rules[2].dst.map(|c| c.len), Some(128));
        assert_eq!(rules[2].action, Action::Drop);
        assert_eq!(rules[3].action, Action::Steer);
    }

    #[test]
    fn display_round_trips() {
        let text = "a\nb src 10.1.0.0/16 dst 10.2.0.0/16 proto tcp dport 22 priority 7 action drop\n\
                    c dst ::/0 proto 47 action sample 3\nd proto icmpv6\ne proto udp dport 1-2\nf proto tcp dport 80 action steer\n";
        let rules = parse_rules(text, "t").expect("valid");
        let again: Vec<String> = rules.iter().map(ToString::to_string).collect();
        let again = again.join("\n") + "\n";
        assert_eq!(parse_rules(&again, "t").expect("valid"), rules);
        assert_eq!(again, text);
    }

    #[test]
    fn errors_name_the_line_and_reason() {
        let e = parse_rules("ok\nok dst 10.0.0.0/8\nbad dst 10.0.0.0/33\n", "rules.txt")
            .expect_err("bad CIDR");
        assert_eq!(e.line, 3);
        assert_eq!(
            e.to_string(),
            "rules.txt:3: bad CIDR \"10.0.0.0/33\": prefix length must be 0-32 for IPv4"
        );
    }

    #[test]
    fn rejects_bad_input() {
        assert!(matches!(
            err("x dst 10.0.0.1/8"),
            ParseError::HostBits { len: 8, .. }
        ));
        assert!(matches!(err("x dst 10.0.0/8"), ParseError::BadCidr { .. }));
        assert!(matches!(
            err("x dst fe80::/129"),
            ParseError::BadCidr { .. }
        ));
        assert!(matches!(
            err("x src 10.0.0.0/8 dst ::/0"),
            ParseError::FamilyMismatch { .. }
        ));
        assert!(matches!(
            err("x dst ::/0 proto icmp"),
            ParseError::ProtocolFamily { .. }
        ));
        assert!(matches!(
            err("x dst 1.2.3.4 proto icmpv6"),
            ParseError::ProtocolFamily { .. }
        ));
        assert!(matches!(err("x proto gre"), ParseError::BadProtocol { .. }));
        assert!(matches!(err("x proto 256"), ParseError::BadProtocol { .. }));
        assert!(matches!(
            err("x proto tcp dport 70000"),
            ParseError::BadPort { .. }
        ));
        assert!(matches!(
            err("x proto tcp dport 9-1"),
            ParseError::BadPort { .. }
        ));
        assert_eq!(err("x dport 80"), ParseError::PortWithoutProtocol);
        assert_eq!(
            err("x proto icmp dport 80"),
            ParseError::PortWithoutProtocol
        );
        assert!(matches!(err("x colour red"), ParseError::UnknownKey { .. }));
        assert_eq!(err("x dst"), ParseError::MissingValue { key: "dst" });
        assert_eq!(
            err("x proto tcp proto udp"),
            ParseError::DuplicateKey { key: "proto" }
        );
        assert!(matches!(
            err("x priority -1"),
            ParseError::BadPriority { .. }
        ));
        assert!(matches!(
            err("x action sample 0"),
            ParseError::BadSampleRate { .. }
        ));
        assert!(matches!(
            err("x action sample"),
            ParseError::BadSampleRate { .. }
        ));
        assert!(matches!(
            err("x action reject"),
            ParseError::BadAction { .. }
        ));
        assert!(matches!(
            err("<img> dst 1.2.3.4"),
            ParseError::BadLabel { .. }
        ));
        assert!(matches!(err(&"l".repeat(61)), ParseError::BadLabel { .. }));
    }

    /// Numbers are plain digits: `parse` alone takes `/+8`, `+80`, `+5`.
    #[test]
    fn numbers_are_digits_only() {
        assert!(matches!(
            err("x dst 10.0.0.0/+8"),
            ParseError::BadCidr { .. }
        ));
        assert!(matches!(
            err("x proto tcp dport +80"),
            ParseError::BadPort { .. }
        ));
        assert!(matches!(
            err("x proto tcp dport 80-+90"),
            ParseError::BadPort { .. }
        ));
        assert!(matches!(err("x proto +6"), ParseError::BadProtocol { .. }));
        assert!(matches!(
            err("x priority +5"),
            ParseError::BadPriority { .. }
        ));
        assert!(matches!(
            err("x action sample +10"),
            ParseError::BadSampleRate { .. }
        ));
        assert_eq!(
            parse_rules("x dst 10.0.0.0/08\n", "t").expect("leading zero")[0]
                .dst
                .map(|c| c.len),
            Some(8)
        );
    }

    /// A no-break space looks like a space: the line is refused, naming the character, not
    /// split there.
    #[test]
    fn unicode_spaces_are_refused() {
        let e = parse_rules("ok\nweb\u{a0}dst 10.0.0.0/8\n", "rules.txt").expect_err("nbsp");
        assert_eq!(e.line, 2);
        assert_eq!(
            e.to_string(),
            "rules.txt:2: '\\u{a0}' (U+00A0) in \"web\\u{a0}dst\": separate words with spaces or tabs"
        );
        let e = parse_rules("\u{2003}\n", "t").expect_err("em space alone");
        assert!(matches!(
            e.reason,
            ParseError::UnicodeSpace {
                character: '\u{2003}',
                ..
            }
        ));
        assert!(matches!(
            parse_rule(&["web", "dst\u{a0}10.0.0.0/8"]),
            Err(ParseError::UnicodeSpace { .. })
        ));
    }

    #[test]
    fn the_same_rule_twice_is_refused() {
        let e = parse_rules(
            "web dst 10.0.0.0/8 proto tcp\ndns proto udp\nweb  proto TCP   dst 10.0.0.0/8 # again\n",
            "rules.txt",
        )
        .expect_err("duplicate");
        assert_eq!(e.to_string(), "rules.txt:3: the same rule as line 1");
        // The same match under another label, or another action, is another rule.
        parse_rules(
            "a dst 10.0.0.0/8\nb dst 10.0.0.0/8\na dst 10.0.0.0/8 action drop\n",
            "t",
        )
        .expect("different rules");
    }

    #[test]
    fn long_words_are_clipped_in_errors() {
        let long = format!("10.0.0.0/{}", "9".repeat(1_000_000));
        let e = parse_rules(&format!("x dst {long}\n"), "t").expect_err("bad");
        assert!(e.to_string().len() < 300, "{}", &e.to_string()[..300]);
        assert!(e.to_string().contains("1000009 bytes"), "{e}");
    }
}
