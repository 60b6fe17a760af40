//! The scheduler registry: every class builds from a config, saves back the config it was
//! built from, and lists exactly the keys its config struct (diff-format) takes.

use diff_schedulers::{SCHEDULER_CLASSES, SCHEDULER_REGISTRY, Scheduler};
use serde_json::{Map, Value, json};
use std::collections::BTreeSet;

fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}

/// The config keys of a saved config: everything but the `_`-prefixed bookkeeping keys.
fn init_keys(config: &Map<String, Value>) -> BTreeSet<String> {
    config
        .keys()
        .filter(|k| !k.starts_with('_'))
        .cloned()
        .collect()
}

#[test]
fn the_class_list_and_the_registry_agree() {
    let names: Vec<&str> = SCHEDULER_REGISTRY.iter().map(|c| c.name).collect();
    assert_eq!(names, SCHEDULER_CLASSES);
    let unique: BTreeSet<&str> = names.iter().copied().collect();
    assert_eq!(unique.len(), names.len(), "a class is registered twice");
    assert!(Scheduler::registered("NoSuchScheduler").is_none());
    assert!(Scheduler::config_keys("NoSuchScheduler").is_none());
}

#[test]
fn every_registered_class_round_trips_from_config_to_config_json() {
    for class in SCHEDULER_REGISTRY {
        let name = class.name;
        // Defaults: built from `{}`, every key is a default and is listed as such.
        let built = Scheduler::from_config_as(name, &Map::new(), &Map::new())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(built.class_name(), name);
        assert_eq!(built.compatibles(), class.compatibles, "{name}");
        assert_eq!(built.order(), class.order, "{name}");
        let saved = built.config_json().unwrap();
        assert_eq!(saved["_class_name"], json!(name));

        // The listed keys are the config struct's keys, no more, no fewer.
        let listed: BTreeSet<String> = class.config_keys.iter().map(|k| k.to_string()).collect();
        assert_eq!(init_keys(&saved), listed, "{name}: config keys");
        assert_eq!(Scheduler::config_keys(name), Some(class.config_keys));

        // from_config(config_json) gives the same scheduler config back.
        let again = Scheduler::from_config(&saved).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(again.class_name(), name);
        assert_eq!(again.config_json().unwrap(), saved, "{name}: round trip");

        // With every key written out (no `_use_default_values`), the saved config is the input
        // plus `_class_name`, and a foreign key survives.
        let mut explicit = saved.clone();
        explicit.remove("_use_default_values");
        explicit.insert("some_other_class_key".into(), json!(7));
        let built = Scheduler::from_config(&explicit).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(built.config_json().unwrap(), explicit, "{name}: explicit");
    }
}

#[test]
fn an_override_the_class_does_not_take_is_ignored_and_the_keys_say_so() {
    let config = object(json!({"_class_name": "DDIMScheduler", "num_train_timesteps": 1000}));
    let overrides = object(json!({"use_karras_sigmas": true}));
    let keys = Scheduler::config_keys("DDIMScheduler").unwrap();
    assert!(!keys.contains(&"use_karras_sigmas"));
    assert!(keys.contains(&"timestep_spacing"));
    let s = Scheduler::from_config_as("DDIMScheduler", &config, &overrides).unwrap();
    assert!(!s.config_json().unwrap().contains_key("use_karras_sigmas"));
    // Euler takes it.
    assert!(
        Scheduler::config_keys("EulerDiscreteScheduler")
            .unwrap()
            .contains(&"use_karras_sigmas")
    );
}
