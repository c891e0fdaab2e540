//! Money: prices per million tokens are micro-dollars per token, so cost is an integer product.
//! Worst-case estimates bound what a request may cost before it is sent.

use crate::providers::Usage;
use crate::snapshot::Price;

/// Micro-dollars for the tokens a provider reported (rounded up: never under-bill).
pub fn micros(price: &Price, usage: Usage) -> u64 {
    let cost =
        usage.prompt_tokens as f64 * price.input_per_mtok + usage.completion_tokens as f64 * price.output_per_mtok;
    cost.ceil() as u64
}

/// Output bound when neither the request nor the pricing table gives one.
pub const DEFAULT_MAX_OUTPUT: u64 = 4096;

/// Worst-case tokens of a request: every body byte may be a prompt token, and the completion may
/// use its whole `max_tokens` (else the model's `max_output_tokens`).
pub fn worst_case_usage(body_len: usize, max_tokens: Option<u64>, price: Option<&Price>) -> Usage {
    let max_output = price.and_then(|p| p.max_output_tokens).unwrap_or(DEFAULT_MAX_OUTPUT);
    Usage { prompt_tokens: body_len as u64, completion_tokens: max_tokens.map_or(max_output, |m| m.min(max_output)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn price() -> Price {
        Price {
            input_per_mtok: 0.15,
            output_per_mtok: 0.60,
            cached_input_per_mtok: None,
            max_output_tokens: Some(1000),
        }
    }

    #[test]
    fn cost_is_tokens_times_price_in_micro_dollars() {
        // 1000 prompt tokens at $0.15/M = 150 µ$, 100 completion tokens at $0.60/M = 60 µ$.
        assert_eq!(micros(&price(), Usage { prompt_tokens: 1000, completion_tokens: 100 }), 210);
        assert_eq!(micros(&price(), Usage { prompt_tokens: 1, completion_tokens: 0 }), 1);
    }

    #[test]
    fn the_worst_case_is_bounded_by_max_tokens_and_the_model_limit() {
        assert_eq!(
            worst_case_usage(500, Some(10), Some(&price())),
            Usage { prompt_tokens: 500, completion_tokens: 10 }
        );
        assert_eq!(worst_case_usage(500, None, Some(&price())).completion_tokens, 1000);
        assert_eq!(worst_case_usage(500, Some(5000), Some(&price())).completion_tokens, 1000);
        assert_eq!(worst_case_usage(1, None, None).completion_tokens, DEFAULT_MAX_OUTPUT);
    }
}
