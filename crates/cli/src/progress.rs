//! Progress of long commands (`migrate import`, `migrate compare`, `redrive`) on stderr: a bar
//! with rate and ETA when stderr is a terminal; otherwise (logs, CI, a pipe) a plain line at
//! most every few seconds, since a bar's redraws would fill a log file with control codes.
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often the plain lines come.
const PLAIN_LINE_EVERY: Duration = Duration::from_secs(5);

pub struct ProgressLine {
    /// The command, named on the plain lines.
    what: &'static str,
    /// What is counted ("rows", "dead letters").
    unit: &'static str,
    bar: Option<indicatif::ProgressBar>,
    last_line: Mutex<Instant>,
}

impl ProgressLine {
    pub fn new(what: &'static str, unit: &'static str) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(&format!(
                    "{{bar:40}} {{pos}}/{{len}} {unit}  {{per_sec}}  ETA {{eta}}  {{msg}}"
                ))
                .expect("a valid template"),
            );
            bar
        });
        Self {
            what,
            unit,
            bar,
            last_line: Mutex::new(Instant::now()),
        }
    }

    /// Whether progress is drawn as a bar (stderr is a terminal).
    pub fn is_bar(&self) -> bool {
        self.bar.is_some()
    }

    /// `done` of `total`, with an optional note ("last legacy id 42").
    pub fn update(&self, done: u64, total: u64, note: Option<String>) {
        match &self.bar {
            Some(bar) => {
                bar.set_length(total.max(done));
                bar.set_position(done);
                if let Some(note) = note {
                    bar.set_message(note);
                }
            }
            None => {
                let mut last = self.last_line.lock().expect("not poisoned");
                if last.elapsed() >= PLAIN_LINE_EVERY {
                    *last = Instant::now();
                    let note = note.map(|n| format!(", {n}")).unwrap_or_default();
                    eprintln!("{}: {done}/{total} {}{note}", self.what, self.unit);
                }
            }
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
