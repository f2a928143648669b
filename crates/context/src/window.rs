//! Which keys each layer may see.
//!
//! Qwen2's sliding window (`use_sliding_window`, `sliding_window`, `max_window_layers`): layers
//! with index `>= max_window_layers` see the last `sliding_window` keys, counting the query's own
//! position. The report's layer-wise window: shorter windows for lower layers, longer for higher.

use serde::{Deserialize, Serialize};

use crate::{ContextError, Result};

/// What the model asks about attention windows.
pub trait AttentionWindow: Send + Sync + std::fmt::Debug {
    /// Keys layer `layer` may see, counting the query itself; `None` = all earlier keys.
    fn window(&self, layer: usize) -> Option<usize>;
}

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

impl AttentionWindow for LayerWindows {
    fn window(&self, layer: usize) -> Option<usize> {
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
}
