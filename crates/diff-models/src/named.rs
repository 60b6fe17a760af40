//! diffusers' module names for the layers that carry runtime state (attention processors, LoRA
//! adapters): a walk over a model in PyTorch's `named_modules` order, giving each
//! [`Attention`], [`LoraLinear`] and [`LoraConv2d`] its dotted name
//! (`down_blocks.1.attentions.0.transformer_blocks.0.attn2`).
//!
//! Each container lists its children in the order its diffusers `__init__` registers them
//! (which is not always the state-dict order of our fields: a UNet registers `up_blocks` before
//! `mid_block`, a cross-attention block `attentions` before `resnets`).

use crate::attention::Attention;
use crate::lora::{LoraConv2d, LoraLinear};

/// A layer met on the walk.
#[derive(Debug, Clone, Copy)]
pub(crate) enum NamedLayer<'a> {
    /// An adapter-capable linear layer.
    Linear(&'a LoraLinear),
    /// An adapter-capable convolution.
    Conv2d(&'a LoraConv2d),
    /// An attention layer (carries a processor).
    Attention(&'a Attention),
}

/// A module whose stateful layers can be listed by name.
pub(crate) trait NamedLayers {
    /// Calls `f` for each stateful layer under `prefix` (the module's own name, `""` at the
    /// root), in `named_modules` order.
    fn visit_named<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, NamedLayer<'a>));
}

/// `prefix.name`, or `name` at the root.
pub(crate) fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}.{name}")
    }
}

/// Visits fields of `self` in the given order, each under its own name.
macro_rules! visit_fields {
    ($self:ident, $prefix:ident, $f:ident; $($field:ident),* $(,)?) => {
        $( $crate::named::NamedLayers::visit_named(
            &$self.$field,
            &$crate::named::join($prefix, stringify!($field)),
            $f,
        ); )*
    };
}
pub(crate) use visit_fields;

impl<T: NamedLayers> NamedLayers for Vec<T> {
    fn visit_named<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, NamedLayer<'a>)) {
        for (i, item) in self.iter().enumerate() {
            item.visit_named(&join(prefix, &i.to_string()), f);
        }
    }
}

impl<T: NamedLayers> NamedLayers for Option<T> {
    fn visit_named<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, NamedLayer<'a>)) {
        if let Some(item) = self {
            item.visit_named(prefix, f);
        }
    }
}

impl NamedLayers for LoraLinear {
    fn visit_named<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, NamedLayer<'a>)) {
        f(prefix, NamedLayer::Linear(self));
    }
}

impl NamedLayers for LoraConv2d {
    fn visit_named<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, NamedLayer<'a>)) {
        f(prefix, NamedLayer::Conv2d(self));
    }
}

/// Implements [`crate::lora::LoraModel`] for a model from its [`NamedLayers`] walk.
macro_rules! lora_model_from_named {
    ($ty:ty) => {
        impl $crate::lora::LoraModel for $ty {
            fn for_each_lora_layer<'a>(
                &'a self,
                f: &mut dyn FnMut(&str, $crate::lora::LoraLayerRef<'a>),
            ) {
                $crate::named::NamedLayers::visit_named(self, "", &mut |name, layer| match layer {
                    $crate::named::NamedLayer::Linear(l) => {
                        f(name, $crate::lora::LoraLayerRef::Linear(l))
                    }
                    $crate::named::NamedLayer::Conv2d(c) => {
                        f(name, $crate::lora::LoraLayerRef::Conv2d(c))
                    }
                    $crate::named::NamedLayer::Attention(_) => {}
                });
            }
        }
    };
}
pub(crate) use lora_model_from_named;
