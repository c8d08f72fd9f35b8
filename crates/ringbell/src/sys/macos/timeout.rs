//! The arithmetic of an `os_sync` wait, apart from the call, so that it is tested on every
//! OS.
//!
//! `os_sync_wait_on_address_with_deadline` takes a deadline in Mach absolute ticks, whose
//! ratio to nanoseconds differs between Apple silicon and Intel (`mach_timebase_info`);
//! `os_sync_wait_on_address_with_timeout` takes the time to wait in nanoseconds. We use
//! the timeout: an [`Instant`] gives the time left in nanoseconds with no conversion to get
//! wrong, and the caller (`core::wait::wait_until`) recomputes it from its own absolute
//! deadline before every sleep, so retries never stretch a deadline either way.

use std::time::{Duration, Instant};

/// The longest single sleep: the wait loop sleeps in slices shorter than this anyway (until
/// its next peer check, 50 ms), so this only bounds a sleep asked with no deadline, which
/// may end early like any other.
pub(super) const LONGEST_SLEEP: Duration = Duration::from_secs(1);

/// The `timeout_ns` argument for a sleep until `deadline`, from `now`: `None` if the
/// deadline has passed (do not sleep). Never 0, which `os_sync` refuses with `EINVAL`.
pub(super) fn timeout_ns(deadline: Option<Instant>, now: Instant) -> Option<u64> {
    let left = match deadline {
        None => LONGEST_SLEEP,
        Some(deadline) => deadline.checked_duration_since(now)?.min(LONGEST_SLEEP),
    };
    if left.is_zero() {
        return None;
    }
    // At least a nanosecond, since `left` is not zero; at most a second, so it fits.
    Some(u64::try_from(left.as_nanos()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_becomes_the_nanoseconds_left_never_zero() {
        let now = Instant::now();
        assert_eq!(
            timeout_ns(Some(now + Duration::from_micros(250)), now),
            Some(250_000)
        );
        assert_eq!(
            timeout_ns(Some(now + Duration::from_nanos(1)), now),
            Some(1)
        );
        // A deadline now or past: no sleep at all, rather than the invalid 0.
        assert_eq!(timeout_ns(Some(now), now), None);
        assert_eq!(timeout_ns(Some(now), now + Duration::from_secs(1)), None);
    }

    #[test]
    fn long_and_missing_deadlines_sleep_a_bounded_slice() {
        let now = Instant::now();
        let second = LONGEST_SLEEP.as_nanos() as u64;
        assert_eq!(timeout_ns(None, now), Some(second));
        assert_eq!(
            timeout_ns(Some(now + Duration::from_secs(3600)), now),
            Some(second)
        );
    }
}
