//! How many connection-close warnings central writes. A fleet that reconnects at once (every
//! agent after central restarts, refused by the admission rate until its turn) or a peer that
//! keeps failing makes one close per connection, thousands in seconds: one line each would bury
//! the log's other lines, and journald's rate limit then drops lines without choosing which.
//! So per kind of reason at most [`LINES`] lines per [`WINDOW`] are written; the others are
//! counted, and the next line of that kind says how many were not written. The counters of
//! `/metrics` (`agents_refused`, `handshake_timeouts`, ...) count every close.

use std::{
    collections::HashMap,
    mem::Discriminant,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use crate::error::CloseReason;

/// The window of each kind's budget of lines.
pub(crate) const WINDOW: Duration = Duration::from_secs(10);
/// Lines of one kind written per window.
pub(crate) const LINES: u32 = 5;

/// Budgets of close lines, one per kind of [`CloseReason`].
#[derive(Debug, Default)]
pub(crate) struct CloseLog {
    budgets: Mutex<HashMap<Discriminant<CloseReason>, Budget>>,
}

impl CloseLog {
    /// Whether a close for `reason` at `now` is written: `Some(n)` with the closes of its kind
    /// not written since the last one that was, `None` if this one is not.
    pub(crate) fn admit(&self, reason: &CloseReason, now: Instant) -> Option<u64> {
        self.budgets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(std::mem::discriminant(reason))
            .or_default()
            .admit(now)
    }
}

/// One kind's window.
#[derive(Debug, Default)]
struct Budget {
    started: Option<Instant>,
    written: u32,
    unwritten: u64,
}

impl Budget {
    fn admit(&mut self, now: Instant) -> Option<u64> {
        if self
            .started
            .is_none_or(|started| now.saturating_duration_since(started) >= WINDOW)
        {
            self.started = Some(now);
            self.written = 0;
        }
        if self.written < LINES {
            self.written += 1;
            Some(std::mem::take(&mut self.unwritten))
        } else {
            self.unwritten += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_gets_its_lines_per_window_and_the_next_line_counts_the_rest() {
        let log = CloseLog::default();
        let start = Instant::now();
        let refused = CloseReason::TooManyNewAgents;
        let timeout = CloseReason::HelloTimeout { seconds: 5.0 };
        let written: Vec<_> = (0..1000)
            .filter_map(|_| log.admit(&refused, start))
            .collect();
        assert_eq!(written, vec![0; LINES as usize]);
        // Another kind has its own budget.
        assert_eq!(log.admit(&timeout, start), Some(0));
        // Still within the window: not written.
        assert_eq!(log.admit(&refused, start + WINDOW / 2), None);
        // The next window's first line says how many were not written.
        assert_eq!(log.admit(&refused, start + WINDOW), Some(1000 - 5 + 1));
        assert_eq!(log.admit(&refused, start + WINDOW), Some(0));
    }
}
