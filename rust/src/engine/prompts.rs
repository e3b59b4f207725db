//! A bundle that takes no prompt (`steer.prompts: false`, read and checked with the rest of
//! `dpr.json`: `SteerConfig::prompts`) refuses every non-blank prompt (whose prompt input is
//! not all zeros) with [`NO_PROMPT`].

use super::ModelError;

/// The refusal of a prompt by a bundle that takes none.
pub(super) const NO_PROMPT: &str =
    "this bundle steers no attribute family, so it takes no prompt; use include/exclude filters";

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
