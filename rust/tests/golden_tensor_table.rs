//! The Rust tensor name/shape table against `tests/golden/tensor_tables.json`, the golden file
//! the Python exporter's table is tested against too: the two languages cannot drift apart.

use std::collections::BTreeMap;

use _core::bundle::{
    attribute_shape, expected_float_shapes, BackboneConfig, IntentConfig, SteerConfig,
    ATTRIBUTE_PREFIX,
};
use serde_json::Value;

const GOLDEN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/golden/tensor_tables.json"
);

fn field<T: serde::de::DeserializeOwned>(config: &Value, name: &str) -> T {
    serde_json::from_value(config[name].clone())
        .unwrap_or_else(|e| panic!("golden config field {name}: {e}"))
}

#[test]
fn rust_tensor_table_matches_the_golden_file() {
    let text = std::fs::read_to_string(GOLDEN).expect("golden file readable");
    let golden: Value = serde_json::from_str(&text).expect("golden file is JSON");
    let cases = golden["cases"].as_array().expect("cases");
    assert!(!cases.is_empty());
    for case in cases {
        let name = case["name"].as_str().expect("case name");
        let config = &case["config"];
        let backbone: BackboneConfig = field(config, "backbone");
        let steer: SteerConfig = field(config, "steer");
        let intent: Option<IntentConfig> = field(config, "intent");
        let dim: usize = field(config, "dim");
        let num_items: usize = field(config, "num_items");
        let mut table = expected_float_shapes(&backbone, dim, num_items, &steer, intent.as_ref());
        let widths: BTreeMap<String, usize> =
            serde_json::from_value(case["attribute_widths"].clone()).expect("attribute_widths");
        for (family, width) in widths {
            table.insert(
                format!("{ATTRIBUTE_PREFIX}{family}"),
                attribute_shape(num_items, width).to_vec(),
            );
        }
        let want: BTreeMap<String, Vec<usize>> =
            serde_json::from_value(case["shapes"].clone()).expect("shapes");
        assert_eq!(table, want, "case {name}");
    }
}
