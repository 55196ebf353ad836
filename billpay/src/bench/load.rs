//! The closed-loop load driver: `concurrency` workers, each sending its next call as
//! soon as the last one answered, for a fixed time; latencies kept whole and sorted
//! once at the end (a 10 s run at 50k calls/s is 500k samples, 2 MB).

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

/// What one run measured.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Measured {
    pub calls: u64,
    pub errors: u64,
    pub seconds: f64,
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// CPU time the whole process (client and servers) spent per call, in µs: less
    /// sensitive than the rates to other work on a shared machine.
    pub cpu_us_per_call: f64,
}

/// Runs `call(worker, sequence)` from `concurrency` workers for `duration`. A call
/// returns `true` when it succeeded as the scenario expects; anything else counts as
/// an error. Progress goes to stderr once a second.
pub async fn closed_loop<F, Fut>(
    label: &str,
    concurrency: usize,
    duration: Duration,
    call: F,
) -> Measured
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
{
    let call = Arc::new(call);
    let cpu_before = process_cpu_seconds();
    let done = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|worker| {
            let (call, done, calls) = (Arc::clone(&call), Arc::clone(&done), Arc::clone(&calls));
            tokio::spawn(async move {
                let mut latencies_us = Vec::with_capacity(4096);
                let mut errors = 0_u64;
                let mut sequence = 0_u64;
                while !done.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    let ok = call(worker, sequence).await;
                    latencies_us.push(elapsed_us(sent));
                    errors += u64::from(!ok);
                    sequence += 1;
                    calls.fetch_add(1, Ordering::Relaxed);
                }
                (latencies_us, errors)
            })
        })
        .collect();
    let progress = tokio::spawn(report_progress(
        label.to_owned(),
        Arc::clone(&calls),
        Arc::clone(&done),
    ));
    tokio::time::sleep(duration).await;
    done.store(true, Ordering::Relaxed);
    let mut latencies_us = Vec::new();
    let mut errors = 0;
    for worker in workers {
        if let Ok((mut samples, worker_errors)) = worker.await {
            latencies_us.append(&mut samples);
            errors += worker_errors;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu_seconds = process_cpu_seconds() - cpu_before;
    progress.abort();
    let mut measured = summarise(latencies_us, errors, seconds);
    if measured.calls > 0 {
        measured.cpu_us_per_call = cpu_seconds * 1e6 / measured.calls as f64;
    }
    measured
}

/// User plus system CPU time of this process so far, from `/proc/self/stat` (in
/// USER_HZ ticks, 100 a second on Linux); 0 where there is no such file.
pub fn process_cpu_seconds() -> f64 {
    const TICKS_PER_SECOND: f64 = 100.0;
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) start at its ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks = |index: usize| {
        fields
            .get(index)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / TICKS_PER_SECOND
}

/// Microseconds since `since`, saturating.
pub(super) fn elapsed_us(since: Instant) -> u32 {
    u32::try_from(since.elapsed().as_micros()).unwrap_or(u32::MAX)
}

/// Counts, rate and percentiles of one run's latencies.
pub fn summarise(mut latencies_us: Vec<u32>, errors: u64, seconds: f64) -> Measured {
    latencies_us.sort_unstable();
    let calls = latencies_us.len() as u64;
    let percentile = |p: f64| -> f64 {
        if latencies_us.is_empty() {
            return 0.0;
        }
        let rank = ((latencies_us.len() as f64) * p).ceil() as usize;
        f64::from(latencies_us[rank.clamp(1, latencies_us.len()) - 1]) / 1000.0
    };
    Measured {
        calls,
        errors,
        seconds,
        rps: if seconds > 0.0 {
            calls as f64 / seconds
        } else {
            0.0
        },
        p50_ms: percentile(0.50),
        p99_ms: percentile(0.99),
        max_ms: latencies_us
            .last()
            .map_or(0.0, |max| f64::from(*max) / 1000.0),
        cpu_us_per_call: 0.0,
    }
}

async fn report_progress(label: String, calls: Arc<AtomicU64>, done: Arc<AtomicBool>) {
    let mut last = 0;
    while !done.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = calls.load(Ordering::Relaxed);
        eprint!("\r  {label}: {now} calls, {}/s    ", now - last);
        last = now;
    }
    eprint!("\r{:60}\r", "");
}

#[cfg(test)]
mod tests {
    use super::summarise;

    #[test]
    fn percentiles_are_ranks_of_the_sorted_samples() {
        let samples: Vec<u32> = (1..=100).rev().map(|ms| ms * 1000).collect();
        let measured = summarise(samples, 3, 2.0);
        assert_eq!(measured.calls, 100);
        assert_eq!(measured.errors, 3);
        assert!((measured.rps - 50.0).abs() < 1e-9);
        assert!((measured.p50_ms - 50.0).abs() < 1e-9);
        assert!((measured.p99_ms - 99.0).abs() < 1e-9);
        assert!((measured.max_ms - 100.0).abs() < 1e-9);
    }

    #[test]
    fn busy_work_shows_as_process_cpu_time() {
        // The clock ticks 100 times a second: spin until it has moved, within a deadline.
        let before = super::process_cpu_seconds();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut spent = 0_u64;
        while super::process_cpu_seconds() <= before && std::time::Instant::now() < deadline {
            for i in 0..100_000_u64 {
                spent = std::hint::black_box(spent.wrapping_add(i));
            }
        }
        assert!(
            super::process_cpu_seconds() > before,
            "no CPU time counted after {spent} additions"
        );
    }

    #[test]
    fn an_empty_run_reports_zeros() {
        let measured = summarise(Vec::new(), 0, 1.0);
        assert_eq!(measured.calls, 0);
        assert!(measured.p99_ms.abs() < 1e-9);
    }
}
