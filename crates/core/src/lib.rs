//! Placeholder: the engine is being built (issue 2).
