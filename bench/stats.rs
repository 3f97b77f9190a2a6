//! Sample sets, percentiles and the formatting of durations.

use std::time::Duration;

/// One set of timed samples (µs).
#[derive(Clone, Debug, Default)]
pub struct Samples {
    us: Vec<f64>,
}

impl Samples {
    pub fn new() -> Samples {
        Samples { us: Vec::new() }
    }

    pub fn push(&mut self, d: Duration) {
        self.us.push(d.as_secs_f64() * 1e6);
    }

    pub fn len(&self) -> usize {
        self.us.len()
    }

    pub fn is_empty(&self) -> bool {
        self.us.is_empty()
    }

    /// Nearest-rank percentile, `p` in 0..=100; 0 for an empty set.
    pub fn pct(&self, p: f64) -> f64 {
        if self.us.is_empty() {
            return 0.0;
        }
        let mut v = self.us.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
        v[rank.clamp(1, v.len()) - 1]
    }

    pub fn p50(&self) -> f64 {
        self.pct(50.0)
    }

    pub fn p90(&self) -> f64 {
        self.pct(90.0)
    }

    pub fn p95(&self) -> f64 {
        self.pct(95.0)
    }

    pub fn min(&self) -> f64 {
        self.us.iter().copied().fold(f64::INFINITY, f64::min)
    }

    pub fn max(&self) -> f64 {
        self.us.iter().copied().fold(0.0, f64::max)
    }

    pub fn mean(&self) -> f64 {
        if self.us.is_empty() {
            0.0
        } else {
            self.us.iter().sum::<f64>() / self.us.len() as f64
        }
    }

    /// Element-wise sum with another set of the same length (e.g. Mount
    /// and Unmount of the same iteration).
    pub fn zip_sum(&self, other: &Samples) -> Samples {
        Samples {
            us: self.us.iter().zip(&other.us).map(|(a, b)| a + b).collect(),
        }
    }

    /// A sub-range of the samples (in the order they were taken).
    pub fn slice(&self, from: usize, to: usize) -> Samples {
        let to = to.min(self.us.len());
        let from = from.min(to);
        Samples {
            us: self.us[from..to].to_vec(),
        }
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "n": self.len(),
            "p50_us": round1(self.p50()),
            "p90_us": round1(self.p90()),
            "p95_us": round1(self.p95()),
            "min_us": round1(if self.is_empty() { 0.0 } else { self.min() }),
            "mean_us": round1(self.mean()),
            "max_us": round1(self.max()),
        })
    }
}

pub fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// A duration given in µs, in a unit that keeps 3 significant digits.
pub fn fmt_us(us: f64) -> String {
    if us < 1.0 {
        format!("{:.2} µs", us)
    } else if us < 1000.0 {
        format!("{:.0} µs", us)
    } else if us < 10_000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else if us < 1_000_000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

pub fn fmt_d(d: Duration) -> String {
    fmt_us(d.as_secs_f64() * 1e6)
}

pub fn fmt_bytes(b: u64) -> String {
    const K: f64 = 1024.0;
    let f = b as f64;
    if f < K {
        format!("{b} B")
    } else if f < K * K {
        format!("{:.1} KiB", f / K)
    } else if f < K * K * K {
        format!("{:.1} MiB", f / K / K)
    } else {
        format!("{:.2} GiB", f / K / K / K)
    }
}
