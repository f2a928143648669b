//! BPE training (being written).
