//! AutoPipelines and `from_pipe` between classes against `tests/fixtures/57-auto-pipeline`
//! (what diffusers 0.42.1 builds from the tiny SD and SDXL pipelines): each recorded step is
//! replayed through `AutoTask::from_pretrained` / `AutoTask::from_pipe` /
//! `DiffusionPipeline::from_pipe` / `from_pretrained`, and the class, the scalar config (with
//! the underscore keys diffusers stashes), `_name_or_path`, `pag_applied_layers` and the refusals
//! must be diffusers'. The PAG images of AutoPipeline `from_pipe` are gated in `pag_parity.rs`.

use diff_pipelines::{
    AutoTask, DiffusionPipeline, LoadOptions, Passed, PassedComponents, PipelineClass,
};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

mod common;
use common::fixtures;

fn meta() -> Value {
    let path = fixtures().join("57-auto-pipeline/cases.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The keyword arguments of a step: components (`safety_checker=None`), `enable_pag`, the
/// scalar config (and `pag_applied_layers`).
fn kwargs(step: &Value) -> (PassedComponents, BTreeMap<String, Value>, Option<bool>) {
    let mut passed = PassedComponents::default();
    let mut config = BTreeMap::new();
    let mut enable_pag = None;
    for (k, v) in step["kwargs"].as_object().unwrap() {
        match k.as_str() {
            "safety_checker" => {
                assert!(v.is_null());
                passed.safety_checker = Passed::Drop;
            }
            "enable_pag" => enable_pag = v.as_bool(),
            _ => {
                config.insert(k.clone(), v.clone());
            }
        }
    }
    (passed, config, enable_pag)
}

fn run(
    step: &Value,
    pipes: &HashMap<String, DiffusionPipeline>,
) -> Result<DiffusionPipeline, String> {
    let how = step["how"].as_str().unwrap();
    let source = step["source"].as_str().unwrap();
    let target = step["target"].as_str().unwrap();
    let (passed, config, enable_pag) = kwargs(step);
    let folder = || fixtures().join(source).display().to_string();
    let options = || LoadOptions {
        components: passed.clone(),
        config: config.clone(),
        ..LoadOptions::default()
    };
    let auto = || AutoTask::from_name(&format!("AutoPipelineFor{target}")).unwrap();
    let r = match how {
        "from_pretrained" => {
            let options = LoadOptions {
                pipeline_class: Some(PipelineClass::from_name(target).unwrap()),
                ..options()
            };
            DiffusionPipeline::from_pretrained(&folder(), &options)
        }
        "auto_from_pretrained" => auto().from_pretrained(&folder(), &options(), enable_pag),
        "auto_from_pipe" => auto().from_pipe(&pipes[source], &passed, &config, enable_pag),
        "from_pipe" => {
            pipes[source].from_pipe(PipelineClass::from_name(target).unwrap(), &passed, &config)
        }
        other => panic!("unknown step kind {other}"),
    };
    r.map_err(|e| e.to_string())
}

#[test]
fn auto_pipelines_and_from_pipe_build_what_diffusers_builds() {
    let meta = meta();
    let mut pipes: HashMap<String, DiffusionPipeline> = HashMap::new();
    for step in meta["steps"].as_array().unwrap() {
        let name = step["name"].as_str().unwrap();
        let got = run(step, &pipes);
        if let Some(want) = step.get("error").and_then(Value::as_str) {
            let e = got
                .err()
                .unwrap_or_else(|| panic!("{name}: built, diffusers refuses: {want}"));
            // The same refusal: the class named, and for the missing-component case the
            // components diffusers expected.
            let key = if want.contains("can't find a pipeline linked to") {
                want.to_owned()
            } else {
                want.split(" expected ")
                    .next()
                    .unwrap()
                    .rsplit('.')
                    .next()
                    .unwrap()
                    .trim_end_matches("'>")
                    .to_owned()
            };
            assert!(e.contains(&key), "{name}: {e}\n  diffusers: {want}");
            eprintln!("{name}: refused: {e}");
            continue;
        }
        let pipe = got.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            pipe.class().name(),
            step["class_name"].as_str().unwrap(),
            "{name}"
        );
        let want_config = step["config"].as_object().unwrap();
        let mut got_config: BTreeMap<String, Value> = pipe.config().clone();
        let name_or_path = std::path::Path::new(pipe.name_or_path())
            .file_name()
            .unwrap()
            .to_string_lossy()
            .to_string();
        got_config.insert("_name_or_path".into(), Value::from(name_or_path));
        let want: BTreeMap<String, Value> = want_config
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        assert_eq!(got_config, want, "{name}: config");
        if let Some(layers) = step["pag_applied_layers"].as_array() {
            let layers: Vec<&str> = layers.iter().map(|v| v.as_str().unwrap()).collect();
            assert_eq!(pipe.pag_applied_layers(), layers.as_slice(), "{name}");
        }
        pipes.insert(name.to_owned(), pipe);
    }
    // from_pipe shares the models: no weights are copied.
    let sd = &pipes["sd"];
    let pag = &pipes["sd_to_pag"];
    assert!(Arc::ptr_eq(sd.unet().unwrap(), pag.unet().unwrap()));
    assert!(Arc::ptr_eq(
        sd.vae().unwrap(),
        pipes["pag_to_i2i"].vae().unwrap()
    ));
}
