//! Layer flattening and deterministic layers: one test binary, a module per concern.

mod common;
mod deterministic;
mod hostile;
mod memory;
mod placement;
mod semantics;
mod umoci;
