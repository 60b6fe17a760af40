//! The weight loader against a tiny diffusers `ModelMixin` saved by Python
//! (`tests/fixtures/20-clip/loader`, made by `generate.py`).

#[path = "common/clip_fixtures.rs"]
mod common;

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{
    Embedding, EmbeddingConfig, GroupNorm, GroupNormConfig, LayerNorm, LayerNormConfig, Linear,
    LinearConfig, PaddingConfig2d,
};
use burn::tensor::{DType, Device, Tensor};
use common::{check, fixture, int_tensor, io, tensor, values};
use diff_models::ModelError;
use diff_models::weights::{LoadOptions, Naming, load_component, load_file};

/// One entry of the Python `nn.ModuleList([Linear, LayerNorm])`; the enum adds no key segment.
#[derive(Module, Debug)]
enum Block {
    Linear(Linear),
    Norm(LayerNorm),
}

#[derive(Module, Debug)]
struct TinyLoaderModel {
    emb: Embedding,
    linear_sq: Linear,
    blocks: Vec<Block>,
    conv: Conv2d,
    norm: GroupNorm,
}

impl TinyLoaderModel {
    fn new(device: &Device) -> Self {
        Self {
            emb: EmbeddingConfig::new(10, 8).init(device),
            linear_sq: LinearConfig::new(8, 8).init(device),
            blocks: vec![
                Block::Linear(LinearConfig::new(8, 5).with_bias(false).init(device)),
                Block::Norm(LayerNormConfig::new(5).init(device)),
            ],
            conv: Conv2dConfig::new([4, 4], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device),
            norm: GroupNormConfig::new(2, 4).init(device),
        }
    }

    fn forward(
        &self,
        ids: Tensor<2, burn::tensor::Int>,
        image: Tensor<4>,
    ) -> (Tensor<3>, Tensor<4>) {
        let mut x = self.linear_sq.forward(self.emb.forward(ids));
        for block in &self.blocks {
            x = match block {
                Block::Linear(l) => l.forward(x),
                Block::Norm(n) => n.forward(x),
            };
        }
        (x, self.norm.forward(self.conv.forward(image)))
    }
}

fn run(model: &TinyLoaderModel, tol: f32) {
    let device = Device::default();
    let src = io("loader");
    let ids = int_tensor::<2>(&src, "ids", &device);
    let image = tensor::<4>(&src, "image", &device);
    let (x, y) = model.forward(ids, image);
    check("loader x", x, &src, "x", tol);
    check("loader y", y, &src, "y", tol);
}

#[test]
fn plain_f32_checkpoint_loads_and_matches_diffusers_forward() {
    let device = Device::default();
    let (model, report) = load_component(
        TinyLoaderModel::new(&device),
        &fixture("loader/plain"),
        Naming::Diffusers,
        None,
        None,
        &LoadOptions::new(),
    )
    .expect("load");
    assert!(report.is_clean(), "{}", report.summary());
    assert_eq!(report.loaded, 10);
    run(&model, 1e-5);
}

#[test]
fn fp16_and_bf16_variants_load_into_an_f32_model() {
    let device = Device::default();
    for (variant, tol) in [("fp16", 2e-3), ("bf16", 2e-2)] {
        let (model, _) = load_component(
            TinyLoaderModel::new(&device),
            &fixture("loader/plain"),
            Naming::Diffusers,
            Some(variant),
            None,
            &LoadOptions::new(),
        )
        .expect("load variant");
        assert_eq!(model.linear_sq.weight.val().dtype(), DType::F32);
        run(&model, tol);
    }
}

#[test]
fn sharded_index_loads_the_same_values_as_the_single_file() {
    let device = Device::default();
    let (a, _) = load_component(
        TinyLoaderModel::new(&device),
        &fixture("loader/plain"),
        Naming::Diffusers,
        None,
        None,
        &LoadOptions::new(),
    )
    .expect("plain");
    let (b, report) = load_component(
        TinyLoaderModel::new(&device),
        &fixture("loader/sharded"),
        Naming::Diffusers,
        None,
        None,
        &LoadOptions::new(),
    )
    .expect("sharded");
    assert!(
        report
            .source
            .ends_with("diffusion_pytorch_model.safetensors.index.json")
    );
    assert_eq!(
        values(a.linear_sq.weight.val()),
        values(b.linear_sq.weight.val())
    );
    assert_eq!(values(a.conv.weight.val()), values(b.conv.weight.val()));
    run(&b, 1e-5);
}

#[test]
fn f16_model_on_cpu_runs_within_1e2_of_f32_reference() {
    let device = Device::default();
    let (model, _) = load_component(
        TinyLoaderModel::new(&device),
        &fixture("loader/plain"),
        Naming::Diffusers,
        None,
        None,
        &LoadOptions::new().with_dtype(DType::F16),
    )
    .expect("load f16");
    assert_eq!(model.linear_sq.weight.val().dtype(), DType::F16);
    let src = io("loader");
    let ids = int_tensor::<2>(&src, "ids", &device);
    let image = tensor::<4>(&src, "image", &device).cast(DType::F16);
    let (x, y) = model.forward(ids, image);
    check("loader x f16", x.cast(DType::F32), &src, "x", 1e-2);
    check("loader y f16", y.cast(DType::F32), &src, "y", 1e-2);
}

/// The model with one renamed field (`linear_sq` -> `linear_square`) and a wider conv.
#[derive(Module, Debug)]
struct WrongModel {
    emb: Embedding,
    linear_square: Linear,
    blocks: Vec<Block>,
    conv: Conv2d,
    norm: GroupNorm,
}

fn wrong_model(device: &Device) -> WrongModel {
    WrongModel {
        emb: EmbeddingConfig::new(10, 8).init(device),
        linear_square: LinearConfig::new(8, 8).init(device),
        blocks: vec![
            Block::Linear(LinearConfig::new(8, 5).with_bias(false).init(device)),
            Block::Norm(LayerNormConfig::new(5).init(device)),
        ],
        conv: Conv2dConfig::new([4, 6], [3, 3]).init(device),
        norm: GroupNormConfig::new(2, 4).init(device),
    }
}

#[test]
fn strict_load_names_missing_unexpected_and_mis_shaped_keys() {
    let device = Device::default();
    let err = load_component(
        wrong_model(&device),
        &fixture("loader/plain"),
        Naming::Diffusers,
        None,
        None,
        &LoadOptions::new(),
    )
    .expect_err("strict load must fail");
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(matches!(err, ModelError::StateDictMismatch { .. }));
    assert!(
        msg.contains("missing key(s): `linear_square.bias` (did you mean `linear_sq.bias`?)"),
        "{msg}"
    );
    assert!(
        msg.contains("unexpected key(s): `linear_sq.bias`, `linear_sq.weight`"),
        "{msg}"
    );
    assert!(
        msg.contains(
            "`conv.weight` expected shape [6, 4, 3, 3], found [4, 4, 3, 3] in the checkpoint"
        ),
        "{msg}"
    );
    assert!(msg.contains("diffusion_pytorch_model.safetensors"), "{msg}");
}

#[test]
fn lenient_load_reports_missing_and_unexpected_keys() {
    let device = Device::default();
    let model = TinyLoaderModel {
        emb: EmbeddingConfig::new(10, 8).init(&device),
        linear_sq: LinearConfig::new(8, 8).init(&device),
        blocks: vec![Block::Linear(
            LinearConfig::new(8, 5).with_bias(false).init(&device),
        )],
        conv: Conv2dConfig::new([4, 4], [3, 3]).init(&device),
        norm: GroupNormConfig::new(2, 4).init(&device),
    };
    let (_, report) = load_component(
        model,
        &fixture("loader/plain"),
        Naming::Diffusers,
        None,
        None,
        &LoadOptions::new().lenient(),
    )
    .expect("lenient load");
    assert!(report.missing.is_empty());
    assert_eq!(
        report.unexpected,
        vec!["blocks.1.bias".to_string(), "blocks.1.weight".to_string()]
    );
    assert_eq!(report.loaded, 8);
}

#[test]
fn a_missing_variant_lists_the_names_it_looked_for() {
    let device = Device::default();
    let err = load_component(
        TinyLoaderModel::new(&device),
        &fixture("loader/plain"),
        Naming::Diffusers,
        Some("non_ema"),
        None,
        &LoadOptions::new(),
    )
    .expect_err("no such variant");
    // diffusers' message names the last file looked for (pickle is allowed by default).
    let msg = err.to_string();
    assert!(
        msg.contains("Error no file named diffusion_pytorch_model.non_ema.bin found in directory"),
        "{msg}"
    );
    let ModelError::WeightFiles(diff_format::FormatError::WeightsNotFound { tried, .. }) = err
    else {
        panic!("expected WeightsNotFound, got {err}");
    };
    assert_eq!(
        tried,
        [
            "diffusion_pytorch_model.non_ema.safetensors",
            "diffusion_pytorch_model.non_ema.bin"
        ]
    );
}

#[test]
fn corrupt_files_and_escaping_shard_names_are_errors_not_panics() {
    let device = Device::default();
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("diffusion_pytorch_model.safetensors");
    std::fs::write(&bad, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}").expect("write");
    let err =
        load_file(TinyLoaderModel::new(&device), &bad, &LoadOptions::new()).expect_err("corrupt");
    assert!(matches!(err, ModelError::WeightFile { .. }), "{err}");

    // Truncated: the header promises more bytes than the file has.
    let good =
        std::fs::read(fixture("loader/plain/diffusion_pytorch_model.safetensors")).expect("read");
    std::fs::write(&bad, &good[..good.len() - 10]).expect("write");
    let err =
        load_file(TinyLoaderModel::new(&device), &bad, &LoadOptions::new()).expect_err("truncated");
    assert!(matches!(err, ModelError::WeightFile { .. }), "{err}");

    let index = dir
        .path()
        .join("diffusion_pytorch_model.safetensors.index.json");
    std::fs::write(
        &index,
        r#"{"metadata": {"total_size": 1}, "weight_map": {"conv.bias": "../../etc/passwd"}}"#,
    )
    .expect("write");
    let err = load_file(TinyLoaderModel::new(&device), &index, &LoadOptions::new())
        .expect_err("traversal");
    assert!(
        err.to_string().contains("must be a bare file name"),
        "{err}"
    );

    let garbage = dir.path().join("sub");
    std::fs::create_dir(&garbage).expect("mkdir");
    std::fs::write(garbage.join("diffusion_pytorch_model.bin"), b"PK").expect("write");
    let err = load_component(
        TinyLoaderModel::new(&device),
        &garbage,
        Naming::Diffusers,
        None,
        None,
        &LoadOptions::new(),
    )
    .expect_err("bin");
    assert!(matches!(err, ModelError::WeightFile { .. }), "{err}");
}

#[test]
fn pickle_bin_checkpoint_loads_through_the_restricted_reader() {
    let device = Device::default();
    let (model, report) = load_component(
        TinyLoaderModel::new(&device),
        &fixture("loader/pickle"),
        Naming::Diffusers,
        None,
        None,
        &LoadOptions::new(),
    )
    .expect("load .bin");
    assert!(report.source.ends_with("diffusion_pytorch_model.bin"));
    assert_eq!(report.loaded, 10);
    run(&model, 1e-5);
}

#[test]
fn a_pickle_that_would_run_code_is_refused() {
    let device = Device::default();
    let err = load_component(
        TinyLoaderModel::new(&device),
        &fixture("loader/malicious"),
        Naming::Diffusers,
        None,
        None,
        &LoadOptions::new(),
    )
    .expect_err("malicious pickle");
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(matches!(err, ModelError::WeightFile { .. }), "{msg}");
    assert!(msg.contains("system"), "the refused global is named: {msg}");
}

#[test]
fn sharded_fp16_variant_loads_through_its_variant_index() {
    let device = Device::default();
    let (model, report) = load_component(
        TinyLoaderModel::new(&device),
        &fixture("loader/sharded"),
        Naming::Diffusers,
        Some("fp16"),
        None,
        &LoadOptions::new(),
    )
    .expect("sharded fp16");
    assert!(
        report
            .source
            .ends_with("diffusion_pytorch_model.safetensors.index.fp16.json")
    );
    assert_eq!(report.loaded, 10);
    // The on-disk values are f16-rounded; tolerance as for the single-file fp16 variant.
    run(&model, 2e-3);
}
