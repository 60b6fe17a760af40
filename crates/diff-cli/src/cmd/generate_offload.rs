//! `generate --offload model`: diffusers' `enable_model_cpu_offload()` (see
//! `diff_pipelines::offload`).

use anyhow::{Context, Result};
use burn_diffusers::pipelines::DiffusionPipeline;
use clap::{Args, ValueEnum};

/// What `--offload` keeps out of memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Offload {
    /// `enable_model_cpu_offload()`: each model's weights are resident only from its forward
    /// until the next model of the sequence starts (CPU device: they stay memory-mapped).
    Model,
}

/// The offload flag of `generate`.
#[derive(Debug, Clone, Default, Args)]
pub struct OffloadArgs {
    /// Model offload, as diffusers' `enable_model_cpu_offload()`: on the CPU each model's
    /// weights stay memory-mapped and are resident only while it runs, so peak memory is about
    /// the largest model instead of all of them; images are bit for bit the same.
    #[arg(long, value_enum, value_name = "MODE")]
    pub offload: Option<Offload>,
}

impl OffloadArgs {
    /// Before loading: with `--offload model` the models load with their weights left in the
    /// mapped files, so they are never copied.
    pub fn before_load(&self) {
        if self.offload == Some(Offload::Model) {
            burn_diffusers::models::offload::set_map_weights_default(true);
        }
    }

    /// Applies the flag to a loaded pipeline (call again after `from_pipe` is not needed:
    /// `from_pipe` re-applies it).
    pub fn apply(&self, pipe: &mut DiffusionPipeline) -> Result<()> {
        match self.offload {
            Some(Offload::Model) => pipe.enable_model_cpu_offload().context("--offload model"),
            None => Ok(()),
        }
    }
}
