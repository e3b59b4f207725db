//! Whether a bundle takes prompts: `dpr.json` `steer.prompts` (docs/bundle.md), `false` for a
//! filter-only bundle, one exported from a backbone without steering. Such a bundle refuses
//! every non-blank prompt (whose prompt input is not all zeros) with [`NO_PROMPT`].

use std::path::Path;

use serde_json::Value;

use super::ModelError;
use crate::bundle::{Bundle, BundleError, CONFIG_FILE};

/// The refusal of a prompt by a bundle that takes none.
pub(super) const NO_PROMPT: &str =
    "this bundle steers no attribute family, so it takes no prompt; use include/exclude filters";

/// `steer.prompts` of the bundle `bundle` opened at `root`: absent means `true`; `false` is
/// only valid for a bundle that steers no family and has no intent read-out.
pub(super) fn takes_prompts(root: &Path, bundle: &Bundle) -> Result<bool, ModelError> {
    let text = std::fs::read_to_string(root.join(CONFIG_FILE))
        .map_err(|e| BundleError::unreadable(CONFIG_FILE, e.to_string()))?;
    let config: Value = serde_json::from_str(&text)
        .map_err(|e| BundleError::unreadable(CONFIG_FILE, format!("not valid JSON ({e})")))?;
    parse(&config, bundle.steer.attribute_dim, bundle.intent.is_some())
}

/// The rule of [`takes_prompts`] on a parsed `dpr.json`.
fn parse(config: &Value, attribute_dim: usize, has_intent: bool) -> Result<bool, ModelError> {
    let field = "steer.prompts";
    let takes = match config.get("steer").and_then(|s| s.get("prompts")) {
        None => true,
        Some(Value::Bool(takes)) => *takes,
        Some(other) => {
            return Err(BundleError::config(
                field,
                format!("steer.prompts must be true or false, got {other}"),
            )
            .into())
        }
    };
    if !takes && attribute_dim > 0 {
        return Err(BundleError::config(
            field,
            format!(
                "steer.prompts is false but the bundle steers {attribute_dim} attribute values"
            ),
        )
        .into());
    }
    if !takes && has_intent {
        return Err(BundleError::config(
            field,
            "steer.prompts is false but the bundle has an intent read-out",
        )
        .into());
    }
    Ok(takes)
}

/// `Ok` unless the bundle takes no prompt and `input` (a prompt input) is not all zeros.
pub(super) fn check(takes_prompts: bool, input: &[f32]) -> Result<(), ModelError> {
    if takes_prompts || input.iter().all(|&x| x == 0.0) {
        Ok(())
    } else {
        Err(ModelError::Argument(NO_PROMPT.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(prompts: Option<Value>) -> Value {
        let mut steer = serde_json::json!({"attribute_dim": 0});
        if let Some(p) = prompts {
            steer["prompts"] = p;
        }
        serde_json::json!({ "steer": steer })
    }

    #[test]
    fn prompts_default_to_true_and_false_needs_no_steered_value_and_no_intent() {
        assert!(parse(&config(None), 3, true).unwrap());
        assert!(parse(&config(Some(Value::Bool(true))), 3, true).unwrap());
        assert!(!parse(&config(Some(Value::Bool(false))), 0, false).unwrap());
        for (attribute_dim, intent) in [(2, false), (0, true)] {
            let e = parse(&config(Some(Value::Bool(false))), attribute_dim, intent).unwrap_err();
            assert!(
                matches!(&e, ModelError::Bundle(BundleError::Config { field, .. }) if field == "steer.prompts"),
                "{e:?}"
            );
        }
        let e = parse(&config(Some(serde_json::json!("no"))), 0, false).unwrap_err();
        assert!(e.to_string().contains("true or false"), "{e}");
    }

    #[test]
    fn a_bundle_without_prompts_refuses_a_non_zero_prompt_input_only() {
        assert!(check(false, &[0.0, 0.0]).is_ok());
        assert!(check(true, &[0.5, 0.0]).is_ok());
        let e = check(false, &[0.0, -1e-9]).unwrap_err();
        assert!(
            matches!(&e, ModelError::Argument(m) if m == NO_PROMPT),
            "{e:?}"
        );
    }
}
