//! Which keys each layer may see.
//!
//! Qwen2's sliding window (`use_sliding_window`, `sliding_window`, `max_window_layers`): layers
//! with index `>= max_window_layers` see the last `sliding_window` keys, counting the query's own
//! position. The report's layer-wise window attention (section 3.3): "lower layers are more
//! sensitive in context length extension", so lower layers get shorter windows and higher layers
//! longer ones ([`LayerWindows::layer_wise`]).
//!
//! A window also bounds memory: a layer with window `w` never needs more than the last `w - 1`
//! keys after a step, so the model's KV cache drops the older ones (see `qwen-model`'s `KvCache`).

use serde::{Deserialize, Serialize};

use crate::{ContextError, Result};

/// A window per layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct LayerWindows {
    pub windows: Vec<Option<usize>>,
}

impl LayerWindows {
    /// Full attention in every layer.
    pub fn full(layers: usize) -> Self {
        Self { windows: vec![None; layers] }
    }

    /// Qwen2's rule: layers `max_window_layers..` use `sliding_window`.
    pub fn qwen2(layers: usize, sliding_window: usize, max_window_layers: usize) -> Result<Self> {
        if sliding_window == 0 {
            return Err(ContextError::InvalidWindow("sliding_window must be > 0".into()));
        }
        Ok(Self { windows: (0..layers).map(|l| (l >= max_window_layers).then_some(sliding_window)).collect() })
    }
}

impl LayerWindows {
    /// The report's layer-wise window attention: windows grow linearly from `lowest` (layer 0) to
    /// `highest` (the top layer), rounded to whole tokens.
    ///
    /// # Errors
    /// [`ContextError::InvalidWindow`] if `lowest` is 0, `lowest > highest` or there are no layers.
    pub fn layer_wise(layers: usize, lowest: usize, highest: usize) -> Result<Self> {
        if layers == 0 || lowest == 0 || lowest > highest {
            return Err(ContextError::InvalidWindow(format!(
                "layer-wise windows need layers > 0 and 0 < lowest <= highest (got {layers} layers, {lowest}..{highest})"
            )));
        }
        let span = (highest - lowest) as f64;
        let windows = (0..layers)
            .map(|l| {
                let t = if layers == 1 { 1.0 } else { l as f64 / (layers - 1) as f64 };
                Some(lowest + (span * t).round() as usize)
            })
            .collect();
        Ok(Self { windows })
    }

    /// The same window in every layer.
    pub fn uniform(layers: usize, window: usize) -> Result<Self> {
        Self::layer_wise(layers, window, window)
    }

    /// Whether any layer has a window.
    pub fn any(&self) -> bool {
        self.windows.iter().any(Option::is_some)
    }
}

impl LayerWindows {
    /// Keys layer `layer` may see, counting the query itself; `None` = all earlier keys.
    pub fn window(&self, layer: usize) -> Option<usize> {
        self.windows.get(layer).copied().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qwen2_rule_windows_upper_layers() {
        let w = LayerWindows::qwen2(4, 6, 2).unwrap();
        assert_eq!((0..4).map(|l| w.window(l)).collect::<Vec<_>>(), [None, None, Some(6), Some(6)]);
        assert!(LayerWindows::qwen2(4, 0, 2).is_err());
    }

    #[test]
    fn layer_wise_grows_from_lowest_to_highest() {
        let w = LayerWindows::layer_wise(4, 64, 256).unwrap();
        assert_eq!(w.windows, [Some(64), Some(128), Some(192), Some(256)]);
        let w = LayerWindows::layer_wise(1, 64, 256).unwrap();
        assert_eq!(w.windows, [Some(256)]);
        assert_eq!(LayerWindows::uniform(3, 8).unwrap().windows, [Some(8); 3]);
        assert!(w.any() && !LayerWindows::full(2).any());
        for (l, lo, hi) in [(0, 1, 2), (2, 0, 2), (2, 3, 2)] {
            assert!(matches!(LayerWindows::layer_wise(l, lo, hi), Err(ContextError::InvalidWindow(_))));
        }
    }
}
