//! Issue 11's sharing rule: a model shared by `from_pipe` is one object, so an attention
//! processor or a LoRA adapter set through one pipeline is seen by every pipeline holding it
//! (diffusers' pipelines share `nn.Module`s the same way), and sharing copies no weights.

mod common;

use burn::tensor::TensorData;
use diff_models::LoraModel;
use diff_models::attention_processor::{AttnProcessorRef, CrossAttnStoreProcessor};
use diff_pipelines::{DiffusionPipeline, LoadOptions, Passed, PipelineClass};
use serde_json::Value;
use std::sync::Arc;

fn tiny_sd() -> DiffusionPipeline {
    let mut o = LoadOptions::default();
    o.components.safety_checker = Passed::Drop;
    o.config
        .insert("requires_safety_checker".into(), Value::Bool(false));
    DiffusionPipeline::from_pretrained(common::fixtures().join("tiny-sd").to_str().unwrap(), &o)
        .unwrap()
}

const MID_ATTN1: &str = "mid_block.attentions.0.transformer_blocks.0.attn1.processor";

fn processor_name(pipe: &DiffusionPipeline, key: &str) -> String {
    pipe.unet()
        .unwrap()
        .attn_processors()
        .into_iter()
        .find(|(name, _)| name == key)
        .map(|(_, p)| p.name().to_owned())
        .unwrap()
}

#[test]
fn a_processor_set_through_one_pipeline_is_seen_by_the_other() {
    let sd = tiny_sd();
    let img2img = sd
        .from_pipe(
            PipelineClass::StableDiffusionImg2Img,
            &Default::default(),
            &Default::default(),
        )
        .unwrap();
    assert!(Arc::ptr_eq(sd.unet().unwrap(), img2img.unet().unwrap()));
    let before = processor_name(&img2img, MID_ATTN1);
    // Through the first pipeline: SAG's store processor on every attention layer.
    let store: AttnProcessorRef = Arc::new(CrossAttnStoreProcessor::new());
    sd.unet().unwrap().set_attn_processor(store).unwrap();
    let after = processor_name(&img2img, MID_ATTN1);
    assert_ne!(before, after);
    assert_eq!(after, processor_name(&sd, MID_ATTN1));
    // And back through the second one.
    img2img.unet().unwrap().set_default_attn_processor().ok();
    let reset = processor_name(&sd, MID_ATTN1);
    assert_eq!(reset, processor_name(&img2img, MID_ATTN1));
}

#[test]
fn an_adapter_added_through_one_pipeline_is_seen_by_the_other() {
    let sd = tiny_sd();
    let inpaint = sd
        .from_pipe(
            PipelineClass::StableDiffusionInpaint,
            &Default::default(),
            &Default::default(),
        )
        .unwrap();
    let name = "mid_block.attentions.0.transformer_blocks.0.attn1.to_q";
    let layer = sd
        .unet()
        .unwrap()
        .lora_layer(name)
        .expect("adapter-capable layer");
    let diff_models::LoraLayerRef::Linear(linear) = layer else {
        panic!("{name} is a linear layer");
    };
    let [d_in, d_out] = linear.dims();
    let a = TensorData::new(vec![0.01f32; 2 * d_in], [2, d_in]);
    let b = TensorData::new(vec![0.02f32; d_out * 2], [d_out, 2]);
    layer.add_adapter_data("style", a, b, 2.0, false).unwrap();
    let other = inpaint.unet().unwrap();
    assert_eq!(other.list_adapters(), vec!["style".to_string()]);
    // set_adapters through the second pipeline is seen by the first.
    other.set_adapters(&[("style", 0.5)]).unwrap();
    assert_eq!(
        sd.unet().unwrap().active_adapters(),
        vec!["style".to_string()]
    );
    let scaling = sd
        .unet()
        .unwrap()
        .lora_layer(name)
        .unwrap()
        .adapters()
        .scaling("style")
        .unwrap();
    assert!((scaling - 0.5).abs() < 1e-12, "scaling {scaling}");
    // Deleting through the first pipeline removes it for both.
    sd.unet().unwrap().delete_adapters(&["style"]).unwrap();
    assert!(inpaint.unet().unwrap().list_adapters().is_empty());
}
