//! Time behind a trait, so retention and rolling are tested by moving a simulated clock.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of wall-clock time in microseconds since the Unix epoch (UTC).
pub trait Clock: Send + Sync + 'static {
    /// Now, in microseconds since 1970-01-01T00:00:00Z.
    fn now_us(&self) -> i64;
}

/// The operating system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_us(&self) -> i64 {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
            // A clock before 1970 is a misconfigured host; report the epoch rather than panic.
            Err(_) => 0,
        }
    }
}

/// A clock that only moves when told to.
#[derive(Debug, Default)]
pub struct SimClock {
    now_us: AtomicI64,
}

impl SimClock {
    /// A clock standing at `now_us`.
    pub fn new(now_us: i64) -> Self {
        SimClock { now_us: AtomicI64::new(now_us) }
    }

    /// Moves the clock forward by `delta_us`.
    pub fn advance_us(&self, delta_us: i64) {
        self.now_us.fetch_add(delta_us, Ordering::SeqCst);
    }

    /// Sets the clock to `now_us`.
    pub fn set_us(&self, now_us: i64) {
        self.now_us.store(now_us, Ordering::SeqCst);
    }
}

impl Clock for SimClock {
    fn now_us(&self) -> i64 {
        self.now_us.load(Ordering::SeqCst)
    }
}
