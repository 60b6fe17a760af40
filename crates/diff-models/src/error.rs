//! The error type of diff-models.

/// What went wrong while building, loading or running a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// A config value this implementation does not support.
    #[error("{model}: config key `{key}` = {value} is not supported: {reason}")]
    UnsupportedConfig {
        /// The model class, e.g. `UNet2DConditionModel`.
        model: String,
        /// The config key, verbatim.
        key: String,
        /// The offending value, as JSON.
        value: String,
        /// Why, or what is supported.
        reason: String,
    },
}
