//! A job's throttle: at most `rate` device steps started per second, spaced evenly (not in
//! bursts), so a job over a large fleet never floods the gateway.

use std::time::Duration;

use tokio::time::Instant;

/// Hands out start slots `1 / rate` apart.
#[derive(Debug)]
pub(super) struct Pacer {
    interval: Option<Duration>,
    next: Instant,
}

impl Pacer {
    /// `rate` steps per second; `None` or 0 is no limit.
    pub(super) fn new(rate: Option<u32>) -> Self {
        Pacer {
            interval: rate
                .filter(|r| *r > 0)
                .map(|r| Duration::from_secs_f64(1.0 / f64::from(r))),
            next: Instant::now(),
        }
    }

    /// Waits for the next slot.
    pub(super) async fn wait(&mut self) {
        let Some(interval) = self.interval else {
            return;
        };
        let now = Instant::now();
        if self.next > now {
            tokio::time::sleep_until(self.next).await;
        }
        // A pacer that fell behind (a slow step) does not burst to catch up.
        self.next = self.next.max(now) + interval;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn slots_are_spaced_by_the_rate() {
        let mut pacer = Pacer::new(Some(50));
        let start = Instant::now();
        for _ in 0..6 {
            pacer.wait().await;
        }
        // The first slot is now, the sixth five intervals (100 ms) later.
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(95), "{took:?}");
        assert!(took < Duration::from_millis(1_000), "{took:?}");
        let mut free = Pacer::new(None);
        let start = Instant::now();
        for _ in 0..100 {
            free.wait().await;
        }
        assert!(start.elapsed() < Duration::from_millis(50));
    }
}
