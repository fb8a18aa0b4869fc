//! Agent-supplied strings are clipped to the `MAX_*` lengths before they are kept, so a kept
//! agent, event or label has a bounded size whatever the agent sent.

use xdt_wire::{Event, SteeringStats};

use super::{MAX_INSPECTED, MAX_SHORT};

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
pub(crate) fn clipped(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Clips `s` to `max` bytes into an allocation of the clipped size: `truncate` would keep the
/// agent's whole allocation alive (a 1 MB label kept 1 MB per recent event).
pub(super) fn clip(s: &mut String, max: usize) {
    if s.len() > max {
        *s = clipped(s, max).to_owned();
    }
}

pub(super) fn clip_steering(mut s: SteeringStats) -> SteeringStats {
    clip(&mut s.mode, MAX_SHORT);
    clip(&mut s.reinject, MAX_SHORT);
    s
}

/// Clips the strings an agent sent in `e`, so a kept event's size is bounded.
pub(super) fn clip_event(e: &mut Event) {
    clip(&mut e.label, MAX_SHORT);
    clip(&mut e.action, MAX_SHORT);
    if let Some(i) = &mut e.inspection {
        if let Some(http) = &mut i.http {
            clip(&mut http.method, MAX_SHORT);
            clip(&mut http.path, MAX_INSPECTED);
            if let Some(host) = &mut http.host {
                clip(host, MAX_INSPECTED);
            }
        }
        if let Some(dns) = &mut i.dns {
            clip(&mut dns.name, MAX_INSPECTED);
        }
    }
}
