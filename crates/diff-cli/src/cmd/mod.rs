//! One module per subcommand.

pub mod convert;
pub mod download;
pub mod generate;
pub mod inspect;
pub mod push;
pub mod save;
pub mod schedule;
pub mod validate;
