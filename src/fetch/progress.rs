//! Download progress bars on stderr (hidden when stderr is not a terminal).

use std::sync::OnceLock;

use hf_hub::progress::{DownloadEvent, ProgressEvent, ProgressHandler};
use indicatif::{ProgressBar, ProgressStyle};

/// A byte-count bar for one file, created on the first byte so that cache hits stay quiet.
pub struct DownloadBar {
    label: String,
    bar: OnceLock<ProgressBar>,
}

impl DownloadBar {
    pub fn new(label: impl Into<String>) -> Self {
        Self {
            label: label.into(),
            bar: OnceLock::new(),
        }
    }

    fn bar(&self, total: u64) -> &ProgressBar {
        self.bar.get_or_init(|| bytes_bar(&self.label, total))
    }

    pub fn set(&self, done: u64, total: u64) {
        let bar = self.bar(total);
        if total > 0 {
            bar.set_length(total);
        }
        bar.set_position(done);
    }

    pub fn finish(&self) {
        if let Some(bar) = self.bar.get() {
            bar.finish_and_clear();
        }
    }
}

impl Drop for DownloadBar {
    fn drop(&mut self) {
        self.finish();
    }
}

impl ProgressHandler for DownloadBar {
    fn on_progress(&self, event: &ProgressEvent) {
        let ProgressEvent::Download(event) = event else {
            return;
        };
        match event {
            DownloadEvent::Start { total_bytes, .. } => self.set(0, *total_bytes),
            DownloadEvent::Progress { files } => {
                for file in files {
                    self.set(file.bytes_completed, file.total_bytes);
                }
            }
            DownloadEvent::AggregateProgress {
                bytes_completed,
                total_bytes,
                ..
            } => self.set(*bytes_completed, *total_bytes),
            DownloadEvent::Complete => self.finish(),
        }
    }
}

/// A bar counting bytes, for downloads and for hashing large files.
pub fn bytes_bar(label: &str, total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template(
        "{msg:30!} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(label.to_string());
    bar
}
