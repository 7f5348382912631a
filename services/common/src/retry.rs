//! The delays between two attempts to reach a dependency that is down (the broker, the database):
//! exponential from 100 ms, capped at 500 ms plus up to as much jitter, so that a dependency
//! coming back is found within about a second, and many clients do not hammer it in step.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// First pause after a failed attempt.
pub const RETRY_MIN: Duration = Duration::from_millis(100);
/// The cap the delays grow to (before jitter, which may double it), unless a caller sets its own.
pub const RETRY_MAX: Duration = Duration::from_millis(500);

/// An endless sequence of retry delays: 100 ms doubling up to `max`, each plus a random part of
/// up to its own length (backon's jitter). Start a new one after a success.
pub fn retry_delays(max: Duration) -> RetryDelays {
    RetryDelays(
        ExponentialBuilder::default()
            .with_min_delay(RETRY_MIN.min(max))
            .with_max_delay(max)
            .with_jitter()
            .without_max_times()
            .build(),
    )
}

/// See [`retry_delays`].
#[derive(Debug)]
pub struct RetryDelays(ExponentialBackoff);

impl RetryDelays {
    /// The pause before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        self.0.next().unwrap_or(RETRY_MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_with_jitter_and_never_end() {
        let mut delays = retry_delays(RETRY_MAX);
        let first: Vec<Duration> = (0..40).map(|_| delays.next_delay()).collect();
        assert!(
            first[0] >= RETRY_MIN && first[0] <= 2 * RETRY_MIN,
            "{first:?}"
        );
        // Capped: a dependency that is back is tried again within a second at worst.
        assert!(first.iter().all(|d| *d <= 2 * RETRY_MAX), "{first:?}");
        assert!(first[20..].iter().all(|d| *d >= RETRY_MAX), "{first:?}");
        // Jitter: two clients do not wait the same.
        let other: Vec<Duration> = {
            let mut delays = retry_delays(RETRY_MAX);
            (0..40).map(|_| delays.next_delay()).collect()
        };
        assert_ne!(first, other);
    }
}
