//! What a nudge does: a poll now, or one poll when the interval since the
//! last nudged poll is over, or nothing more (one is already due). However
//! many nudges arrive, real or forged, they cause at most one poll per
//! interval.

use std::time::{Duration, Instant};

/// What to do with one nudge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nudge {
    /// Poll now.
    Poll,
    /// A poll was scheduled for this time.
    Deferred(Instant),
    /// A poll is already scheduled; this nudge adds nothing.
    Coalesced,
}

#[derive(Debug, Clone)]
pub struct Limiter {
    interval: Duration,
    last: Option<Instant>,
    due: Option<Instant>,
}

impl Limiter {
    pub fn new(interval: Duration) -> Limiter {
        Limiter {
            interval,
            last: None,
            due: None,
        }
    }

    /// A nudge arrived at `now`.
    pub fn nudge(&mut self, now: Instant) -> Nudge {
        if self.due.is_some() {
            return Nudge::Coalesced;
        }
        match self.last {
            Some(last) if now.saturating_duration_since(last) < self.interval => {
                let at = last + self.interval;
                self.due = Some(at);
                Nudge::Deferred(at)
            }
            _ => {
                self.last = Some(now);
                Nudge::Poll
            }
        }
    }

    /// When a deferred poll is due.
    pub fn due(&self) -> Option<Instant> {
        self.due
    }

    /// The deferred poll's time has come: poll (true) once.
    pub fn fire(&mut self, now: Instant) -> bool {
        match self.due {
            Some(at) if at <= now => {
                self.due = None;
                self.last = Some(now);
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_flood_is_one_poll_now_and_one_later() {
        let t0 = Instant::now();
        let mut l = Limiter::new(Duration::from_secs(10));
        assert_eq!(l.nudge(t0), Nudge::Poll);
        let later = t0 + Duration::from_secs(10);
        assert_eq!(l.nudge(t0 + Duration::from_secs(1)), Nudge::Deferred(later));
        for i in 2..100 {
            assert_eq!(
                l.nudge(t0 + Duration::from_millis(i * 50)),
                Nudge::Coalesced
            );
        }
        assert!(!l.fire(t0 + Duration::from_secs(9)));
        assert!(l.fire(later));
        assert!(!l.fire(later));
        // A quiet interval later, a nudge polls at once again.
        assert_eq!(l.nudge(later + Duration::from_secs(10)), Nudge::Poll);
    }

    proptest! {
        /// Polls (immediate or fired) are at least `interval` apart, and a
        /// nudge is never lost: a poll follows the last one within
        /// `interval`.
        #[test]
        fn polls_are_spaced_and_no_nudge_is_lost(gaps in proptest::collection::vec(0u64..3000, 1..60)) {
            let interval = Duration::from_millis(1000);
            let t0 = Instant::now();
            let mut l = Limiter::new(interval);
            let mut polls = Vec::new();
            let mut now = t0;
            let mut last_nudge = t0;
            for g in gaps {
                let next = now + Duration::from_millis(g);
                // Deferred polls fire on time.
                if let Some(at) = l.due()
                    && at <= next
                {
                    prop_assert!(l.fire(at));
                    polls.push(at);
                }
                now = next;
                last_nudge = now;
                if l.nudge(now) == Nudge::Poll {
                    polls.push(now);
                }
            }
            if let Some(at) = l.due() {
                prop_assert!(l.fire(at));
                polls.push(at);
            }
            for w in polls.windows(2) {
                prop_assert!(w[1] - w[0] >= interval);
            }
            let last_poll = *polls.last().unwrap();
            // The last nudge is answered by a poll at or after it…
            prop_assert!(last_poll >= last_nudge);
            // …within one interval.
            prop_assert!(last_poll <= last_nudge + interval);
        }
    }
}
