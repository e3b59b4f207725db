//! Probes for the tests of the binding's two promises: compute runs with the GIL released,
//! and a panic surfaces as a `RuntimeError`. Private (underscore) names, not user API.

use pyo3::prelude::*;

use super::detached;

static GIL_PROBE: (std::sync::Mutex<bool>, std::sync::Condvar) =
    (std::sync::Mutex::new(false), std::sync::Condvar::new());

/// For tests of GIL release: waits inside [`detached`] (the wrapper of every compute entry
/// point) up to `timeout_s` for another Python thread to call [`_gil_probe_signal`]. That
/// thread can only run Python code if the GIL is free, so the result is `true` exactly when
/// the GIL was released.
#[pyfunction]
fn _gil_probe_wait(py: Python<'_>, timeout_s: f64) -> PyResult<bool> {
    let timeout = std::time::Duration::from_secs_f64(timeout_s.clamp(0.0, 600.0));
    detached(py, "_gil_probe_wait", || {
        let (lock, signal) = &GIL_PROBE;
        let mut seen = lock.lock().unwrap_or_else(|e| e.into_inner());
        *seen = false;
        let (mut seen, _) = signal
            .wait_timeout_while(seen, timeout, |seen| !*seen)
            .unwrap_or_else(|e| e.into_inner());
        std::mem::replace(&mut *seen, false)
    })
}

/// The other half of [`_gil_probe_wait`].
#[pyfunction]
fn _gil_probe_signal() {
    let (lock, signal) = &GIL_PROBE;
    *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
    signal.notify_all();
}

/// For tests of the panic boundary: panics inside [`detached`], which must surface in Python
/// as a `RuntimeError` naming the panic, not a `PanicException` or an abort (an empty
/// `message` returns normally).
#[pyfunction]
fn _panic_probe(py: Python<'_>, message: &str) -> PyResult<()> {
    detached(py, "_panic_probe", || {
        if !message.is_empty() {
            panic!("{message}");
        }
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(_gil_probe_wait, m)?)?;
    m.add_function(wrap_pyfunction!(_gil_probe_signal, m)?)?;
    m.add_function(wrap_pyfunction!(_panic_probe, m)?)?;
    Ok(())
}
