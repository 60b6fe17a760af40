//! One module per subcommand.

pub mod download;
pub mod convert;
pub mod generate;
pub mod inspect;
pub mod push;
pub mod save;
pub mod schedule;
pub mod validate;
