//! Rates as the paper defines them, and what they become at 1 GB.
//!
//! rate = compressed / raw; adjusted rate = (compressed + model file) / raw. The
//! extrapolation to 1 GB (the paper's dataset size) assumes the rate measured on the drawn
//! chunks holds for 1 GB of such chunks; only the model's share changes. It is an
//! extrapolation, labelled so wherever it appears.

/// The paper's dataset size: 1 GB of each modality.
pub const GB: f64 = 1e9;

pub fn rate(compressed: f64, raw: f64) -> f64 {
    compressed / raw
}

pub fn adjusted(compressed: f64, model: f64, raw: f64) -> f64 {
    (compressed + model) / raw
}

/// The adjusted rate at `size` bytes of data compressing at `rate`.
pub fn adjusted_at(rate: f64, model: f64, size: f64) -> f64 {
    rate + model / size
}

/// Smallest dataset size at which a model of `model` bytes compressing at `rate` beats a
/// model-free compressor at `baseline` on adjusted rate; `None` if it never does.
pub fn break_even(rate: f64, model: f64, baseline: f64) -> Option<f64> {
    (rate < baseline).then(|| model / (baseline - rate))
}

/// The paper's way of counting a classical compressor: its header once for the whole
/// dataset, not once per chunk.
pub fn header_once(compressed: f64, header: f64, chunks: f64) -> f64 {
    compressed - header * (chunks - 1.0).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adjusted_rate_adds_the_model_and_fades_with_size() {
        assert_eq!(rate(25.0, 100.0), 0.25);
        assert_eq!(adjusted(25.0, 75.0, 100.0), 1.0);
        assert!((adjusted_at(0.2, 1e8, GB) - 0.3).abs() < 1e-12);
        assert!(adjusted_at(0.2, 1e8, 1e6) > 100.0);
    }

    #[test]
    fn break_even_is_where_the_adjusted_rates_meet() {
        let d = break_even(0.2, 1e8, 0.3).unwrap();
        assert!((adjusted_at(0.2, 1e8, d) - 0.3).abs() < 1e-12);
        assert_eq!(break_even(0.4, 1e8, 0.3), None);
    }

    #[test]
    fn header_counted_once() {
        assert_eq!(header_once(100.0, 10.0, 4.0), 70.0);
        assert_eq!(header_once(100.0, 10.0, 1.0), 100.0);
    }
}
