//! One load level's result: committed writes per second and latency percentiles, computed
//! the same way for both systems (nearest rank, as `om bench` does).

use std::time::Duration;

/// What one system did at one concurrency.
#[derive(Debug, Clone, Default)]
pub struct Level {
    pub clients: usize,
    pub writes: usize,
    pub errors: u64,
    pub per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl Level {
    /// Summarizes the latencies of the writes that succeeded within `elapsed`.
    pub fn new(clients: usize, mut lat: Vec<Duration>, errors: u64, elapsed: Duration) -> Level {
        lat.sort();
        let pct = |p: f64| -> f64 {
            if lat.is_empty() {
                return 0.0;
            }
            let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
            lat[i].as_secs_f64() * 1000.0
        };
        Level {
            clients,
            writes: lat.len(),
            errors,
            per_second: lat.len() as f64 / elapsed.as_secs_f64(),
            p50_ms: pct(0.50),
            p99_ms: pct(0.99),
        }
    }
}

/// Runs `clients` copies of `one` (each returns its latencies and error count) and merges
/// what they measured in `[start + warmup, deadline)`.
pub async fn run_clients<F, Fut>(clients: usize, warmup: Duration, secs: Duration, one: F) -> Level
where
    F: Fn(usize, tokio::time::Instant, tokio::time::Instant) -> Fut,
    Fut: std::future::Future<Output = (Vec<Duration>, u64)> + Send + 'static,
{
    let from = tokio::time::Instant::now() + warmup;
    let until = from + secs;
    let tasks: Vec<_> = (0..clients)
        .map(|i| tokio::spawn(one(i, from, until)))
        .collect();
    let mut lat = Vec::new();
    let mut errors = 0;
    for t in tasks {
        if let Ok((l, e)) = t.await {
            lat.extend(l);
            errors += e;
        }
    }
    Level::new(clients, lat, errors, secs)
}
