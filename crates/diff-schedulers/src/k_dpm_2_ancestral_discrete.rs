//! `KDPM2AncestralDiscreteScheduler`: DPM-Solver-2 with ancestral noise in every second stage
//! (the machinery is shared with `k_dpm_2_discrete`).

use diff_format::configs::scheduler::KDPM2AncestralDiscreteSchedulerConfig;

crate::k_dpm_2_discrete::kdpm2_class!(
    /// diffusers' `KDPM2AncestralDiscreteScheduler`.
    KDPM2AncestralDiscreteScheduler,
    KDPM2AncestralDiscreteSchedulerConfig,
    ancestral: true
);
