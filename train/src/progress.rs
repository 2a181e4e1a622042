//! Progress bars for long work (hidden when stderr is not a terminal or NAVIGEN_NO_PROGRESS is set).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub fn bar(len: u64, label: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    if std::env::var_os("NAVIGEN_NO_PROGRESS").is_some() {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    }
    pb.set_style(
        ProgressStyle::with_template("{msg:>18} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_message(label.to_string());
    pb
}
