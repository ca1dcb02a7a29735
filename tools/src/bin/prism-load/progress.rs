//! The progress display on the terminal while a run measures (`indicatif`).
//!
//! One spinner line on standard error, redrawn in place; drawn only when standard error
//! is a terminal (in CI logs and pipes nothing is drawn) and never with `--quiet`.
//! Lines that are results (ramp stages) go through [`line`], printed above the spinner
//! whether or not it is drawn.

use std::sync::OnceLock;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

static BAR: OnceLock<ProgressBar> = OnceLock::new();

fn bar() -> &'static ProgressBar {
    BAR.get_or_init(|| {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    })
}

/// Replaces the progress line's text.
pub fn set(msg: String) {
    let bar = bar();
    if bar.is_finished() {
        bar.reset();
        bar.enable_steady_tick(Duration::from_millis(120));
    }
    bar.set_message(msg);
}

/// Prints a result line above the progress line (always, terminal or not).
pub fn line(msg: &str) {
    bar().suspend(|| eprintln!("{msg}"));
}

/// Removes the progress line (the run is over, or interrupted); a later [`set`] shows
/// it again.
pub fn clear() {
    if let Some(bar) = BAR.get() {
        bar.finish_and_clear();
    }
}
