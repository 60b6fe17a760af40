//! Typed component configs. Each struct's fields are the JSON keys verbatim, defaults equal the
//! Python class's `__init__` defaults, and unknown keys are kept in `extra` so a load -> save
//! round-trips them.

pub mod clip;
pub mod motion_adapter;
pub mod scheduler;
pub mod tokenizer;
pub mod unet;
pub mod vae;
