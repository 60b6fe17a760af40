//! The bundled demo pipeline (`tests/fixtures/demo-shapes`, a tiny Stable Diffusion trained by
//! `tests/fixtures/demo-shapes/train.py` on coloured shapes) draws what the prompt asks, and our
//! pipeline matches real diffusers on it (`tests/fixtures/80-demo-parity`).
//!
//! The drawing check reads the training set's description (`dataset.json`: the named colours
//! and the shapes) and, for a handful of prompts and seeds, classifies the centre of the picture
//! (where the shape is) and its four corners (background) by the nearest named colour; both must
//! be the colours the prompt names.

use diff_pipelines::{
    CallArgs, DiffusionPipeline, FloatImages, Generators, LoadOptions, OutputType,
};
use serde_json::Value;
use std::path::Path;

#[macro_use]
mod common;
use common::{compare, fixtures, read_tensor, strings};

/// The training set's palette and shapes, as `train.py` wrote them.
struct Dataset {
    colours: Vec<(String, [f32; 3])>,
    shapes: Vec<String>,
}

fn dataset() -> Dataset {
    let path = fixtures().join("demo-shapes/dataset.json");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let colours = v["colours"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, rgb)| {
            let c: Vec<f32> = rgb
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32 / 255.0)
                .collect();
            (name.clone(), [c[0], c[1], c[2]])
        })
        .collect();
    let shapes = strings(&v["shapes"]).unwrap();
    Dataset { colours, shapes }
}

fn load() -> DiffusionPipeline {
    let dir = fixtures().join("demo-shapes");
    DiffusionPipeline::from_pretrained(dir.to_str().unwrap(), &LoadOptions::default())
        .unwrap_or_else(|e| panic!("loading {}: {e}", dir.display()))
}

/// Pixel `(x, y)` of image `index`.
fn pixel(images: &FloatImages, index: usize, x: usize, y: usize) -> [f32; 3] {
    let at = ((index * images.height + y) * images.width + x) * 3;
    [images.data[at], images.data[at + 1], images.data[at + 2]]
}

fn distance(a: [f32; 3], b: [f32; 3]) -> f32 {
    (0..3).map(|i| (a[i] - b[i]).powi(2)).sum()
}

/// The named colour nearest to `rgb`.
fn nearest(colours: &[(String, [f32; 3])], rgb: [f32; 3]) -> &str {
    colours
        .iter()
        .min_by(|a, b| distance(a.1, rgb).total_cmp(&distance(b.1, rgb)))
        .map(|c| c.0.as_str())
        .unwrap()
}

/// The named colour most pixels of the square `[x0, x0 + n) x [y0, y0 + n)` are nearest to.
fn majority<'a>(
    colours: &'a [(String, [f32; 3])],
    images: &FloatImages,
    index: usize,
    (x0, y0, n): (usize, usize, usize),
) -> &'a str {
    let mut votes = vec![0usize; colours.len()];
    for y in y0..y0 + n {
        for x in x0..x0 + n {
            let name = nearest(colours, pixel(images, index, x, y));
            votes[colours.iter().position(|c| c.0 == name).unwrap()] += 1;
        }
    }
    let best = (0..colours.len()).max_by_key(|&i| votes[i]).unwrap();
    &colours[best].0
}

/// A handful of prompts (every colour as shape colour and as background, every shape), each
/// drawn with two seeds.
const PROMPTS: &[(&str, &str, &str)] = &[
    ("circle", "red", "blue"),
    ("square", "yellow", "black"),
    ("triangle", "white", "green"),
    ("circle", "blue", "yellow"),
    ("square", "green", "red"),
    ("triangle", "black", "white"),
];

#[test]
fn the_demo_model_draws_the_colours_the_prompt_asks_for() {
    let data = dataset();
    let pipe = load();
    for (shape, colour, background) in PROMPTS {
        for name in [colour, background] {
            assert!(
                data.colours.iter().any(|c| c.0 == *name),
                "{name} is a trained colour"
            );
        }
        assert!(
            data.shapes.iter().any(|s| s == shape),
            "{shape} is a trained shape"
        );
    }
    let prompts: Vec<String> = PROMPTS
        .iter()
        .map(|(s, c, b)| format!("a {c} {s} on a {b} background"))
        .collect();
    let mut failures = Vec::new();
    for seed in [0u64, 1] {
        let seeds = (0..prompts.len() as u64).map(|i| seed * 100 + i).collect();
        let args = CallArgs {
            generator: Generators::Seeds(seeds),
            num_inference_steps: 15,
            output_type: OutputType::Np,
            prompt: prompts.clone(),
            ..CallArgs::default()
        };
        let out = pipe.call(&args, None).unwrap();
        let images = out.images.as_ref().unwrap();
        let (w, h) = (images.width, images.height);
        // The centre eighth (inside every trained shape) and a tenth at each corner (outside).
        let (c, m) = (w / 8, w / 10);
        for (index, (_, colour, background)) in PROMPTS.iter().enumerate() {
            let centre = majority(
                &data.colours,
                images,
                index,
                (w / 2 - c / 2, h / 2 - c / 2, c),
            );
            let corners: Vec<&str> = [(0, 0), (w - m, 0), (0, h - m), (w - m, h - m)]
                .iter()
                .map(|&(x, y)| majority(&data.colours, images, index, (x, y, m)))
                .collect();
            let report = format!(
                "seed {}: {:?} -> centre {centre}, corners {corners:?}",
                seed * 100 + index as u64,
                prompts[index]
            );
            eprintln!("{report}");
            if centre != *colour || corners.iter().any(|c| c != background) {
                failures.push(report);
            }
        }
    }
    assert!(
        failures.is_empty(),
        "not the colours the prompt asks for:\n{}",
        failures.join("\n")
    );
}

fn run_case(name: &str) {
    let dir = fixtures().join("80-demo-parity");
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let max_tol = meta["tolerance"]["max_abs"].as_f64().unwrap() as f32;
    let mean_tol = meta["tolerance"]["mean_abs"].as_f64().unwrap() as f32;
    let case = common::case_named(&meta, "cases", name);
    let mut pipe = load();
    pipe.swap_scheduler(
        case["scheduler_class"].as_str().unwrap(),
        &Default::default(),
    )
    .unwrap();
    let a = &case["args"];
    let args = CallArgs {
        negative_prompt: a.get("negative_prompt").and_then(strings),
        num_inference_steps: a["num_inference_steps"].as_u64().unwrap() as usize,
        guidance_scale: a["guidance_scale"].as_f64().map(|v| v as f32),
        generator: match (a.get("seed"), a.get("seeds")) {
            (Some(s), _) => Generators::Seed(s.as_u64().unwrap()),
            (_, Some(s)) => Generators::Seeds(
                s.as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap())
                    .collect(),
            ),
            _ => panic!("{name}: the case records its seeds"),
        },
        output_type: OutputType::Np,
        prompt: strings(&a["prompt"]).unwrap(),
        ..CallArgs::default()
    };
    let out = pipe
        .call(&args, None)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let file = dir.join(format!("{name}.safetensors"));
    let (ishape, want_images) = read_tensor(&file, "images");
    let imgs = out.images.as_ref().unwrap();
    assert_eq!(
        vec![imgs.count, imgs.height, imgs.width, 3],
        ishape,
        "{name}: image shape"
    );
    let (_, want_latents) = read_tensor(&file, "latents");
    let got_latents: Vec<f32> = out
        .latents
        .clone()
        .into_data()
        .convert::<f32>()
        .try_to_vec()
        .unwrap();
    let lat = compare(
        &format!("{name} latents"),
        &got_latents,
        &want_latents,
        max_tol * 10.0,
        mean_tol * 10.0,
    );
    let img = compare(
        &format!("{name} images"),
        &imgs.data,
        &want_images,
        max_tol,
        mean_tol,
    );
    eprintln!("{name}: images {img:?}; latents {lat:?}");
    img.unwrap();
    lat.unwrap();
}

parity! {
    demo_dpmsolver_two_prompts => the_saved_dpmsolver_scheduler_on_two_prompts_matches_diffusers;
    demo_ddim_negative_prompt => ddim_with_a_negative_prompt_matches_diffusers;
    demo_euler_ancestral => euler_ancestral_matches_diffusers;
    demo_unseen_words_and_punctuation => unseen_words_and_punctuation_match_diffusers;
}

#[test]
fn every_recorded_case_is_tested() {
    let dir: &Path = &fixtures().join("80-demo-parity");
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let recorded: Vec<&str> = meta["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(recorded, TESTED);
}
