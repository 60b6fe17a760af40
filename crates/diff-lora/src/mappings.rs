//! Key-name tables of diffusers' `utils/state_dict_utils.py` (diffusers 0.42.1), applied as
//! `convert_state_dict` applies them: `.processor.` is always dropped, then the FIRST pattern of
//! the table found in a key is replaced (every occurrence) and the rest of the table skipped.
//! Their order matters and is diffusers'.

use crate::LoraTensor;

pub(crate) const UNET_TO_DIFFUSERS: &[(&str, &str)] = &[
    (".to_out_lora.up", ".to_out.0.lora_B"),
    (".to_out_lora.down", ".to_out.0.lora_A"),
    (".to_q_lora.down", ".to_q.lora_A"),
    (".to_q_lora.up", ".to_q.lora_B"),
    (".to_k_lora.down", ".to_k.lora_A"),
    (".to_k_lora.up", ".to_k.lora_B"),
    (".to_v_lora.down", ".to_v.lora_A"),
    (".to_v_lora.up", ".to_v.lora_B"),
    (".lora.up", ".lora_B"),
    (".lora.down", ".lora_A"),
    (
        ".to_out.lora_magnitude_vector",
        ".to_out.0.lora_magnitude_vector",
    ),
];
pub(crate) const DIFFUSERS_TO_PEFT: &[(&str, &str)] = &[
    (".q_proj.lora_linear_layer.up", ".q_proj.lora_B"),
    (".q_proj.lora_linear_layer.down", ".q_proj.lora_A"),
    (".k_proj.lora_linear_layer.up", ".k_proj.lora_B"),
    (".k_proj.lora_linear_layer.down", ".k_proj.lora_A"),
    (".v_proj.lora_linear_layer.up", ".v_proj.lora_B"),
    (".v_proj.lora_linear_layer.down", ".v_proj.lora_A"),
    (".out_proj.lora_linear_layer.up", ".out_proj.lora_B"),
    (".out_proj.lora_linear_layer.down", ".out_proj.lora_A"),
    (".lora_linear_layer.up", ".lora_B"),
    (".lora_linear_layer.down", ".lora_A"),
    (
        "text_projection.lora.down.weight",
        "text_projection.lora_A.weight",
    ),
    (
        "text_projection.lora.up.weight",
        "text_projection.lora_B.weight",
    ),
];
pub(crate) const DIFFUSERS_OLD_TO_PEFT: &[(&str, &str)] = &[
    (".to_q_lora.up", ".q_proj.lora_B"),
    (".to_q_lora.down", ".q_proj.lora_A"),
    (".to_k_lora.up", ".k_proj.lora_B"),
    (".to_k_lora.down", ".k_proj.lora_A"),
    (".to_v_lora.up", ".v_proj.lora_B"),
    (".to_v_lora.down", ".v_proj.lora_A"),
    (".to_out_lora.up", ".out_proj.lora_B"),
    (".to_out_lora.down", ".out_proj.lora_A"),
    (".lora_linear_layer.up", ".lora_B"),
    (".lora_linear_layer.down", ".lora_A"),
];
pub(crate) const PEFT_TO_DIFFUSERS: &[(&str, &str)] = &[
    (".q_proj.lora_B", ".q_proj.lora_linear_layer.up"),
    (".q_proj.lora_A", ".q_proj.lora_linear_layer.down"),
    (".k_proj.lora_B", ".k_proj.lora_linear_layer.up"),
    (".k_proj.lora_A", ".k_proj.lora_linear_layer.down"),
    (".v_proj.lora_B", ".v_proj.lora_linear_layer.up"),
    (".v_proj.lora_A", ".v_proj.lora_linear_layer.down"),
    (".out_proj.lora_B", ".out_proj.lora_linear_layer.up"),
    (".out_proj.lora_A", ".out_proj.lora_linear_layer.down"),
    ("to_k.lora_A", "to_k.lora.down"),
    ("to_k.lora_B", "to_k.lora.up"),
    ("to_q.lora_A", "to_q.lora.down"),
    ("to_q.lora_B", "to_q.lora.up"),
    ("to_v.lora_A", "to_v.lora.down"),
    ("to_v.lora_B", "to_v.lora.up"),
    ("to_out.0.lora_A", "to_out.0.lora.down"),
    ("to_out.0.lora_B", "to_out.0.lora.up"),
];
pub(crate) const DIFFUSERS_OLD_TO_DIFFUSERS: &[(&str, &str)] = &[
    (".to_q_lora.up", ".q_proj.lora_linear_layer.up"),
    (".to_q_lora.down", ".q_proj.lora_linear_layer.down"),
    (".to_k_lora.up", ".k_proj.lora_linear_layer.up"),
    (".to_k_lora.down", ".k_proj.lora_linear_layer.down"),
    (".to_v_lora.up", ".v_proj.lora_linear_layer.up"),
    (".to_v_lora.down", ".v_proj.lora_linear_layer.down"),
    (".to_out_lora.up", ".out_proj.lora_linear_layer.up"),
    (".to_out_lora.down", ".out_proj.lora_linear_layer.down"),
    (
        ".to_k.lora_magnitude_vector",
        ".k_proj.lora_magnitude_vector",
    ),
    (
        ".to_v.lora_magnitude_vector",
        ".v_proj.lora_magnitude_vector",
    ),
    (
        ".to_q.lora_magnitude_vector",
        ".q_proj.lora_magnitude_vector",
    ),
    (
        ".to_out.lora_magnitude_vector",
        ".out_proj.lora_magnitude_vector",
    ),
];

/// `convert_state_dict(state_dict, mapping)`: a later key equal to an earlier one replaces its
/// value and keeps its position, as a Python dict does.
pub(crate) fn convert(
    tensors: Vec<(String, LoraTensor)>,
    mapping: &[(&str, &str)],
) -> Vec<(String, LoraTensor)> {
    let mut out: Vec<(String, LoraTensor)> = Vec::with_capacity(tensors.len());
    let mut pos = std::collections::HashMap::new();
    for (key, t) in tensors {
        let mut k = key.replace(".processor.", ".");
        if let Some((from, to)) = mapping.iter().find(|(from, _)| k.contains(from)) {
            k = k.replace(from, to);
        }
        match pos.get(&k) {
            Some(&i) => out[i] = (k, t),
            None => {
                pos.insert(k.clone(), out.len());
                out.push((k, t));
            }
        }
    }
    out
}
